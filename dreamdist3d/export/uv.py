"""UV unwrapping with xatlas (the same library threestudio's mesh exporter uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["BOUNDARY_PER_DIAGONAL", "UVMesh", "unwrap"]

# xatlas grows each chart until its cost stops it; on a marching-cubes mesh of a bumpy surface that growth is where
# nearly all of the unwrap's time goes (minutes at 128³), for charts it then cuts up again. Capping a chart's boundary
# at half the mesh's bounding-box diagonal (`ChartOptions.max_boundary_length`, scale-free this way) unwraps the same
# meshes faster (bumpy 128³ / 192³ surfaces 18× / 32×, a smooth 128³ one 10×, meshes of 6,000+ charts 1.5×) with
# fewer charts and as much of the texture covered or more (benchmarks/README-export.md, table 3).
BOUNDARY_PER_DIAGONAL = 0.5


@dataclass
class UVMesh:
    vmapping: np.ndarray  # (V',) index of the source (welded) vertex of each unwrapped vertex
    faces: np.ndarray  # (F, 3) int64 into the unwrapped vertices; same face order as the source mesh
    uvs: np.ndarray  # (V', 2) float32 in [0, 1], OBJ convention (v = 0 at the image's bottom row)


def _apply(options: Any, values: Optional[Dict[str, Any]], what: str) -> None:
    for key, value in (values or {}).items():
        if not hasattr(options, key):
            valid = ", ".join(n for n in dir(options) if not n.startswith("_"))
            raise ValueError(f"unknown xatlas {what} option '{key}'; valid: {valid}")
        setattr(options, key, value)


def unwrap(
    vertices: np.ndarray,
    faces: np.ndarray,
    texture_size: int = 1024,
    padding: int = 2,
    chart_options: Optional[Dict[str, Any]] = None,
    pack_options: Optional[Dict[str, Any]] = None,
) -> UVMesh:
    """Charts + packing into one `texture_size`² atlas; vertices are split along chart seams.

    `padding` is the gap in texels xatlas leaves between charts (the bake's dilation fills it).
    `chart_options` / `pack_options` set attributes of `xatlas.ChartOptions` / `xatlas.PackOptions` by name
    (threestudio's `xatlas_chart_options` / `xatlas_pack_options`); unknown names are an error. Unless they set
    `max_boundary_length` (0: xatlas's own unlimited growth), it is `BOUNDARY_PER_DIAGONAL` × the bounding-box
    diagonal of `vertices`.
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    co = xatlas.ChartOptions()
    po = xatlas.PackOptions()
    po.resolution = int(texture_size)
    po.padding = int(padding)
    po.bilinear = True
    v = np.asarray(vertices, dtype=np.float64)
    co.max_boundary_length = BOUNDARY_PER_DIAGONAL * float(np.linalg.norm(v.max(0) - v.min(0))) if len(v) else 0.0
    _apply(co, chart_options, "chart")
    _apply(po, pack_options, "pack")
    atlas.generate(co, po)
    if atlas.atlas_count != 1:
        raise ValueError(
            f"xatlas packed the charts into {atlas.atlas_count} atlases; expected 1 "
            "(do not set pack option resolution/texels_per_unit so that the charts cannot fit one texture)"
        )
    vmapping, indices, uvs = atlas[0]
    uvs = np.clip(np.asarray(uvs, dtype=np.float32), 0.0, 1.0)
    return UVMesh(np.asarray(vmapping, dtype=np.int64), np.asarray(indices, dtype=np.int64), uvs)
