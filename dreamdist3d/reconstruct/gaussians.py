"""`Gaussians`: a set of 3D Gaussians (3D Gaussian Splatting's primitives, as LGM predicts them), and quaternion math.

Fields, with any leading batch shape `...` (one object: none; LGM's output: (B,)):

    means      (..., N, 3)  centres
    opacities  (..., N)     in (0, 1)
    scales     (..., N, 3)  standard deviations along the Gaussian's own axes (> 0, not log)
    rotations  (..., N, 4)  quaternions (w, x, y, z): the Gaussian's axes are the columns of R(q)
    colors     (..., N, 3)  RGB in [0, 1] (degree-0 colour; no view dependence)

Covariance = R(q)·diag(scales²)·R(q)ᵀ with R(q) the 3DGS rasteriser's formula applied to q AS GIVEN (the CUDA code
has the normalisation commented out: `glm::vec4 q = rot;// / glm::length(rot);`). For unit quaternions that is the
rotation of q. The legacy LGM checkpoints (see `lgm.py`) output quaternions far from unit length, and the official
renderer draws them with this formula, so `covariances()` keeps it; `canonical()` turns any set into unit
quaternions and scales with the same covariances (what a splat viewer, gsplat or a change of frame needs).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Union

import torch
from torch import Tensor

LGM_CHANNELS = 14  # LGM's packed layout: position 3, opacity 1, scale 3, rotation 4, rgb 3
UNIT_TOLERANCE = 1e-4  # |‖q‖ - 1| below this counts as a unit quaternion


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) (w, x, y, z) -> (..., 3, 3) by the 3DGS formula, without normalising q (see the module doc)."""
    r, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
        2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
        2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


def matrix_to_quaternion(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    The largest of the four candidates 1 ± m00 ± m11 ± m22 decides which component is solved first (Shepperd), so
    every rotation, including 180° turns, is exact to rounding."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    cands = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = cands.argmax(-1, keepdim=True)  # (..., 1)
    s = 2 * cands.gather(-1, best).clamp(min=1e-12).sqrt()  # (..., 1) = 4·|component|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    s = s[..., 0]
    options = torch.stack([
        torch.stack([s / 4, d21 / s, d02 / s, d10 / s], -1),
        torch.stack([d21 / s, s / 4, s01 / s, s02 / s], -1),
        torch.stack([d02 / s, s01 / s, s / 4, s12 / s], -1),
        torch.stack([d10 / s, s02 / s, s12 / s, s / 4], -1),
    ], -2)  # (..., 4 candidates, 4)
    q = options.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4))[..., 0, :]
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of (..., 4) (w, x, y, z) quaternions: R(a ⊗ b) = R(a)·R(b)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


@dataclass
class Gaussians:
    """3D Gaussians; see the module docstring for the fields and the quaternion convention."""

    means: Tensor
    opacities: Tensor
    scales: Tensor
    rotations: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[:-1]
        want = {"means": (*n, 3), "opacities": n, "scales": (*n, 3), "rotations": (*n, 4), "colors": (*n, 3)}
        bad = [f"{k} {tuple(getattr(self, k).shape)} (expected {tuple(s)})" for k, s in want.items()
               if tuple(getattr(self, k).shape) != tuple(s)]
        if self.means.ndim < 2 or self.means.shape[-1] != 3 or bad:
            what = "; ".join(bad) or f"means {tuple(self.means.shape)}"
            raise ValueError(f"Gaussians: inconsistent shapes: {what}")

    # ------------------------------------------------------------------ shape and conversion
    @property
    def num(self) -> int:
        """N, the Gaussians per object."""
        return int(self.means.shape[-2])

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def _map(self, fn) -> "Gaussians":
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> "Gaussians":
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self._map(Tensor.detach)

    def __getitem__(self, index: Union[int, slice]) -> "Gaussians":
        """Index the leading batch dimension (object `index` of a batch)."""
        if not self.batch_shape:
            raise IndexError("Gaussians of one object have no batch dimension to index")
        return self._map(lambda t: t[index])

    def unbind(self) -> List["Gaussians"]:
        """One `Gaussians` per object of a (B,) batch."""
        return [self[i] for i in range(self.batch_shape[0])]

    def select(self, mask: Tensor) -> "Gaussians":
        """The Gaussians of one object where `mask` (N,) bool (or an index tensor) holds."""
        if self.batch_shape:
            raise ValueError("select works on one object; index the batch first (gaussians[b])")
        return self._map(lambda t: t[mask])

    @classmethod
    def from_lgm(cls, packed: Tensor) -> "Gaussians":
        """From LGM's packed (..., N, 14) [pos 3, opacity 1, scale 3, rotation 4, rgb 3] (activated) tensor."""
        if packed.shape[-1] != LGM_CHANNELS:
            raise ValueError(f"LGM Gaussians have {LGM_CHANNELS} channels, got {tuple(packed.shape)}")
        pos, opa, scale, rot, rgb = packed.split([3, 1, 3, 4, 3], dim=-1)
        return cls(pos, opa[..., 0], scale, rot, rgb)

    def to_lgm(self) -> Tensor:
        """LGM's packed (..., N, 14) layout (what its `save_ply` and renderer take)."""
        return torch.cat([self.means, self.opacities[..., None], self.scales, self.rotations, self.colors], -1)

    # ------------------------------------------------------------------ geometry
    def is_unit(self, tolerance: float = UNIT_TOLERANCE) -> bool:
        """Whether every quaternion has unit length (to `tolerance`)."""
        return bool(((self.rotations.norm(dim=-1) - 1).abs() <= tolerance).all())

    def covariances(self) -> Tensor:
        """(..., N, 3, 3) R(q)·diag(s²)·R(q)ᵀ, q as stored (the official rasteriser's covariance)."""
        r = quaternion_to_matrix(self.rotations)
        return (r * self.scales[..., None, :].square()) @ r.transpose(-1, -2)

    def canonical(self) -> "Gaussians":
        """Unit quaternions (w >= 0) and scales giving the same covariances.

        Unit quaternions are only renormalised; others (legacy LGM output) are re-derived from the eigen-decomposition
        of their covariance (float64), so a viewer or renderer that normalises quaternions draws what the official
        renderer draws."""
        if self.is_unit():
            q = torch.nn.functional.normalize(self.rotations, dim=-1)
            return Gaussians(self.means, self.opacities, self.scales, torch.where(q[..., :1] < 0, -q, q), self.colors)
        evals, evecs = torch.linalg.eigh(self.covariances().double())  # ascending eigenvalues, eigenvector columns
        flip = torch.linalg.det(evecs) < 0
        evecs = torch.where(flip[..., None, None], evecs * evecs.new_tensor([1.0, 1.0, -1.0]), evecs)
        scales = evals.clamp(min=0).sqrt().to(self.scales.dtype)
        rotations = matrix_to_quaternion(evecs).to(self.rotations.dtype)
        return Gaussians(self.means, self.opacities, scales, rotations, self.colors)

    def transform(self, rotation: Tensor, translation: Optional[Tensor] = None, scale: float = 1.0) -> "Gaussians":
        """The Gaussians under p -> scale·rotation·p + translation (rotation (3,3) proper). Quaternions come out unit
        (the set is made `canonical()` first)."""
        g = self.canonical()
        rot = rotation.to(g.means)
        q = matrix_to_quaternion(rot).expand_as(g.rotations)
        means = scale * g.means @ rot.T
        if translation is not None:
            means = means + translation.to(means)
        return Gaussians(means, g.opacities, g.scales * scale, quaternion_multiply(q, g.rotations), g.colors)


__all__ = ["Gaussians", "LGM_CHANNELS", "matrix_to_quaternion", "quaternion_multiply", "quaternion_to_matrix"]
