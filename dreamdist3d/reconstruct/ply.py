"""3D Gaussian Splatting .ply files: the layout of the official 3DGS `save_ply`, which splat viewers read.

One `vertex` element, binary little-endian float32 properties, in this order:

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  [f_rest_0 … f_rest_{3·((d+1)²-1)-1}]  opacity  scale_0..2  rot_0..3

stored PRE-activation, as 3DGS trains them: f_dc = (rgb - 0.5) / C0 (C0 = 0.28209479177387814, the degree-0
spherical harmonic), opacity = logit(α), scale = log(σ), rot = a unit quaternion (w, x, y, z) (viewers normalise it
anyway; the legacy LGM quaternions are made unit by `Gaussians.canonical()` first, so a viewer draws what LGM's own
renderer draws). Normals are zero (3DGS writes zeros). `sh_degree` > 0 adds the zero higher-order coefficients some
viewers expect in the record (the original 3DGS `save_ply` always writes degree 3: `sh_degree=3` gives that exact
record, for viewers that read fixed-size records).

Frame: by default the export frame of the meshes (`export/transform.py`, `up_axis="y"`): +y up, the object's front
(azimuth 0) towards +z, same scale as the world; `up_axis="z"` keeps this repo's world axes. Files are written
atomically (`dreamdist3d.io.atomic_write_bytes`). `read_splat_ply` reads such a file back (any property order, only
float32 properties), e.g. one saved by LGM's `save_ply`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch

from dreamdist3d.export.transform import UP_ROTATIONS
from dreamdist3d.io import atomic_write_bytes
from dreamdist3d.reconstruct.gaussians import Gaussians

SH_C0 = 0.28209479177387814  # 1 / (2·sqrt(pi)), the degree-0 real spherical harmonic
LOGIT_EPS = 1e-6  # opacities are clamped to [eps, 1-eps] before the logit (LGM's inverse_sigmoid)
MIN_SCALE = 1e-8


def splat_properties(sh_degree: int = 0) -> List[str]:
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_splat_ply(path: Union[str, Path], gaussians: Gaussians, min_opacity: float = 0.005, up_axis: str = "y",
                    sh_degree: int = 0) -> Path:
    """Write one object's Gaussians (N, …), world frame, as a 3DGS .ply; Gaussians with opacity below `min_opacity`
    (0.005, LGM's `save_ply` pruning) are left out."""
    if gaussians.batch_shape:
        raise ValueError("write_splat_ply writes one object: pass gaussians[b] of a batch")
    if up_axis not in UP_ROTATIONS:
        raise ValueError(f"up_axis must be one of {', '.join(UP_ROTATIONS)}, got {up_axis!r}")
    if sh_degree < 0:
        raise ValueError(f"sh_degree must be >= 0, got {sh_degree}")
    g = gaussians.detach().to("cpu", torch.float32)
    g = g.select(g.opacities >= min_opacity).transform(torch.tensor(UP_ROTATIONS[up_axis], dtype=torch.float32))
    n = g.num
    names = splat_properties(sh_degree)
    cols = {
        **{k: g.means[:, i] for i, k in enumerate("xyz")},
        **{f"n{k}": torch.zeros(n) for k in "xyz"},
        **{f"f_dc_{i}": (g.colors[:, i] - 0.5) / SH_C0 for i in range(3)},
        "opacity": torch.logit(g.opacities.clamp(LOGIT_EPS, 1 - LOGIT_EPS)),
        **{f"scale_{i}": g.scales[:, i].clamp(min=MIN_SCALE).log() for i in range(3)},
        **{f"rot_{i}": g.rotations[:, i] for i in range(4)},
    }
    data = torch.stack([cols.get(k, torch.zeros(n)) for k in names], -1).numpy().astype("<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", "comment dreamdist3d 3D Gaussian splats",
                        f"element vertex {n}", *[f"property float {k}" for k in names], "end_header"]) + "\n"
    return atomic_write_bytes(path, header.encode("ascii") + data.tobytes())


def _parse_header(raw: bytes, path: Path) -> tuple:
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' / 'end_header')")
    lines = raw[:end].decode("ascii", "replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary little-endian PLY splat files are read")
    n, names, element = None, [], None
    for line in lines:
        parts = line.split()
        if parts[:1] == ["element"]:
            element = parts[1]
            if element == "vertex":
                n = int(parts[2])
            elif n is not None:
                raise ValueError(f"{path}: elements after 'vertex' are not supported")
        elif parts[:1] == ["property"] and element == "vertex":
            if parts[1] != "float":
                raise ValueError(f"{path}: vertex property {parts[-1]} is {parts[1]}, expected float")
            names.append(parts[2])
    if n is None:
        raise ValueError(f"{path}: no vertex element")
    return n, names, end + len(b"end_header\n")


def read_splat_ply(path: Union[str, Path], up_axis: str = "y") -> Gaussians:
    """Gaussians (world frame, activated) from a 3DGS .ply written in the `up_axis` frame (see the module doc)."""
    path = Path(path)
    raw = path.read_bytes()
    n, names, offset = _parse_header(raw, path)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", *[f"scale_{i}" for i in range(3)],
            *[f"rot_{i}" for i in range(4)]]
    missing = [k for k in need if k not in names]
    if missing:
        raise ValueError(f"{path} is not a Gaussian splat PLY: missing properties {missing}")
    size = n * len(names) * 4
    if len(raw) - offset < size:
        raise ValueError(f"{path} is truncated: {len(raw) - offset} bytes of vertex data, expected {size}")
    arr = np.frombuffer(raw, dtype="<f4", count=n * len(names), offset=offset).reshape(n, len(names))
    col: Dict[str, torch.Tensor] = {k: torch.from_numpy(arr[:, i].copy()) for i, k in enumerate(names)}

    def stack(keys: List[str]) -> torch.Tensor:
        return torch.stack([col[k] for k in keys], -1)

    g = Gaussians(
        means=stack(["x", "y", "z"]),
        opacities=torch.sigmoid(col["opacity"]),
        scales=stack([f"scale_{i}" for i in range(3)]).exp(),
        rotations=torch.nn.functional.normalize(stack([f"rot_{i}" for i in range(4)]), dim=-1),
        colors=stack([f"f_dc_{i}" for i in range(3)]) * SH_C0 + 0.5,
    )
    rot = torch.tensor(UP_ROTATIONS[up_axis], dtype=torch.float32)
    return g.transform(rot.T)


__all__ = ["SH_C0", "read_splat_ply", "splat_properties", "write_splat_ply"]
