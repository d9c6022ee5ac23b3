"""The one similarity transform from the field's world frame to the exported files' frame.

Source frame (threestudio): +z up, azimuth 0 camera on +x, so the object's front faces +x.
Export frame (glTF / Blender-import / three.js convention, `up_axis="y"`): +y up, front towards +z, right-handed.
That is the rotation (x, y, z)_world -> (y, z, x)_export (a cyclic axis permutation, det +1). Then, with
`normalize`, the mesh's axis-aligned bounding box is centred at the origin and scaled so its longest side is 1.

    p_export = scale · R · p_world + translation          (world_to_export, 4×4 in the sidecar JSON)

Every format (OBJ, GLB, PLY) gets the same transform, and the sidecar stores it together with its inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

__all__ = ["ExportTransform", "UP_ROTATIONS"]

UP_ROTATIONS: Dict[str, np.ndarray] = {
    # rows: new x, y, z expressed in world axes
    "y": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
    "z": np.eye(3),
}

FRAMES = {
    "y": "+y up, object front (threestudio azimuth 0, world +x) towards +z, right-handed (glTF convention)",
    "z": "threestudio world axes kept: +z up, object front towards +x",
}


@dataclass
class ExportTransform:
    rotation: np.ndarray  # (3, 3)
    scale: float
    translation: np.ndarray  # (3,)
    up_axis: str = "y"
    normalized: bool = True

    @classmethod
    def fit(cls, vertices_world: np.ndarray, up_axis: str = "y", normalize: bool = True) -> "ExportTransform":
        if up_axis not in UP_ROTATIONS:
            raise ValueError(f"up_axis must be one of {', '.join(UP_ROTATIONS)}, got '{up_axis}'")
        r = UP_ROTATIONS[up_axis]
        if not normalize:
            return cls(r.copy(), 1.0, np.zeros(3), up_axis, False)
        p = vertices_world @ r.T
        lo, hi = p.min(0), p.max(0)
        extent = float((hi - lo).max())
        scale = 1.0 / extent if extent > 0 else 1.0
        return cls(r.copy(), scale, -scale * 0.5 * (lo + hi), up_axis, True)

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    @property
    def inverse_matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation.T / self.scale
        m[:3, 3] = -(self.rotation.T @ self.translation) / self.scale
        return m

    def apply(self, points: np.ndarray) -> np.ndarray:
        """World (N, 3) -> export frame (N, 3)."""
        return self.scale * (points @ self.rotation.T) + self.translation

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Export frame (N, 3) -> world (N, 3)."""
        return ((points - self.translation) / self.scale) @ self.rotation

    def apply_directions(self, normals: np.ndarray) -> np.ndarray:
        return normals @ self.rotation.T

    def to_dict(self) -> Dict[str, object]:
        def rows(a: np.ndarray) -> List[List[float]]:
            return [[float(x) for x in row] for row in a]

        return {
            "world_to_export": rows(self.matrix),
            "export_to_world": rows(self.inverse_matrix),
            "rotation": rows(self.rotation),
            "scale": float(self.scale),
            "translation": [float(x) for x in self.translation],
            "up_axis": self.up_axis,
            "normalized": self.normalized,
            "source_frame": "threestudio world: +z up, object front (azimuth 0) towards +x",
            "export_frame": FRAMES[self.up_axis]
            + ("; unit bounding box (longest side 1), centred at the origin" if self.normalized else ""),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "ExportTransform":
        return cls(np.asarray(d["rotation"], dtype=np.float64), float(d["scale"]),
                   np.asarray(d["translation"], dtype=np.float64), str(d.get("up_axis", "y")),
                   bool(d.get("normalized", True)))
