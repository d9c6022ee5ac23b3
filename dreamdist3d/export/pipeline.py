"""`export_field`: Field -> isosurface -> clean-up -> (decimate) -> UV unwrap -> texture bake -> OBJ/GLB/PLY + JSON.

Runs on CPU (no nvdiffrast, no cv2): PyMCubes, trimesh, xatlas and torch. The field may live on any device; only
its `density`/`albedo` calls run there.

Files written into `out_dir` (name = `ExportConfig.name`, default "model", as threestudio's `save_name`):

    model.obj, model.mtl, model_albedo.png   (format "obj"; map_Kd texture, or vertex colours if texture=False)
    model.glb                                (format "glb"; PBR baseColorTexture embedded, or vertex colours; a
                                              material with metallic 0, roughness 1, or unlit with `unlit`)
    model.ply                                (format "ply"; welded mesh, per-vertex RGBA albedo)
    model.export.json                        (always: transform world->export, threshold and how it was chosen,
                                              counts, timings)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from dreamdist3d.config import parse_structured
from dreamdist3d.export.bake import BakedTexture, bake_texture, vertex_colors
from dreamdist3d.export.field import Field, check_field
from dreamdist3d.export.isosurface import ExportError, Isosurface, extract_isosurface
from dreamdist3d.export.mesh_ops import CleanupInfo, clean_mesh, decimate, vertex_normals
from dreamdist3d.export.transform import ExportTransform
from dreamdist3d.export.uv import UVMesh, unwrap
from dreamdist3d.export.writers import write_glb, write_json, write_obj, write_ply

__all__ = ["ExportConfig", "ExportResult", "export_field", "parse_formats", "FORMATS"]

FORMATS = ("glb", "obj", "ply")
LARGE_FOR_XATLAS = 200_000  # faces above which the unwrap takes a minute or more on one core


@dataclass
class ExportConfig:
    name: str = "model"  # file stem (threestudio: exporter.save_name)
    isosurface_resolution: int = 128  # grid samples per axis (threestudio geometry.isosurface_resolution)
    isosurface_threshold: Any = 25.0  # density level (implicit-volume: 25.0) or "auto"
    auto_threshold: str = "otsu"  # replacement when the threshold gives an empty/exploded surface: otsu|threestudio|off
    max_wall_fraction: float = 0.5  # "exploded": more than this fraction of the bbox-wall samples inside
    isosurface_coarse_to_fine: bool = True  # second grid over the coarse surface's bounds (+10 %)
    remove_floaters: float = 0.01  # drop components below this fraction of faces (>= 1: a face count); 0 = keep
    keep_largest: bool = False  # keep only the largest connected component
    target_faces: int = 0  # decimate to about this many faces (needs fast-simplification); 0 = off
    texture: bool = True  # bake a UV texture; False = vertex colours in every format
    unlit: bool = False  # GLB: KHR_materials_unlit, viewers show the colours without light (else metallic 0, rough 1)
    texture_size: int = 1024  # threestudio exporter.texture_size
    texture_padding: int = 4  # seam dilation in texels (also the xatlas chart gap, capped at 4)
    xatlas_chart_options: Dict[str, Any] = field(default_factory=dict)
    xatlas_pack_options: Dict[str, Any] = field(default_factory=dict)
    up_axis: str = "y"  # "y": +y up, front towards +z (glTF); "z": keep threestudio's world axes
    normalize: bool = True  # centre the bounding box at the origin and scale its longest side to 1
    chunk: int = 262144  # points per field call


@dataclass
class ExportResult:
    out_dir: Path
    files: Dict[str, Path]  # "obj", "mtl", "png", "glb", "ply", "json"
    transform: ExportTransform
    isosurface: Isosurface
    cleanup: CleanupInfo
    vertices: np.ndarray  # (V, 3) welded mesh, export frame (what the PLY holds)
    faces: np.ndarray  # (F, 3)
    vertex_colors: np.ndarray  # (V, 4) uint8
    uv_mesh: Optional[UVMesh]  # unwrapped topology (what OBJ/GLB hold when textured)
    texture: Optional[BakedTexture]
    timings: Dict[str, float]
    summary: Dict[str, Any]


def parse_formats(formats: Union[str, Sequence[str]]) -> List[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for f in (x.strip().lower() for x in items):
        if not f:
            continue
        if f == "obj-mtl":
            f = "obj"
        if f not in FORMATS:
            raise ExportError(f"unknown export format '{f}' (--format); choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise ExportError(f"no export format given (--format); choose from {', '.join(FORMATS)}")
    return out


def export_field(
    field: Field,
    out_dir: Union[str, Path],
    formats: Union[str, Sequence[str]] = FORMATS,
    cfg: Optional[Union[ExportConfig, Dict[str, Any]]] = None,
    source: str = "",
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> ExportResult:
    """Export `field` as textured meshes into `out_dir`.

    `cfg` is an `ExportConfig` or a dict of its keys (strict: unknown keys are an error naming them); keyword
    `overrides` are merged on top, e.g. `export_field(f, "out", "glb", isosurface_resolution=64, texture_size=256)`.
    """
    check_field(field)
    fmts = parse_formats(formats)
    if isinstance(cfg, ExportConfig):
        cfg = asdict(cfg)
    c: ExportConfig = parse_structured(ExportConfig, {**(cfg or {}), **overrides}, where="export")
    if c.texture_size < 8:
        raise ExportError(f"texture_size must be >= 8, got {c.texture_size}")
    out_dir = Path(out_dir)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        t = time.perf_counter()
        timings[name] = round(t - t0, 4)
        t0 = t

    iso = extract_isosurface(
        field, c.isosurface_resolution, c.isosurface_threshold, c.auto_threshold, c.isosurface_coarse_to_fine,
        c.max_wall_fraction, c.chunk, log,
    )
    lap("isosurface")
    v_world, faces, info = clean_mesh(iso.vertices, iso.faces, c.remove_floaters, c.keep_largest)
    if info.components > info.components_kept:
        log(
            f"[export] removed {info.components - info.components_kept} of {info.components} connected components "
            f"({info.faces_removed} faces; remove_floaters={c.remove_floaters}, keep_largest={c.keep_largest})"
        )
    v_world, faces = decimate(v_world, faces, c.target_faces, log)
    lap("cleanup")
    if c.texture and c.target_faces <= 0 and len(faces) > LARGE_FOR_XATLAS and any(f in fmts for f in ("obj", "glb")):
        log(
            f"[export] note: {len(faces)} faces; xatlas UV unwrapping grows faster than linearly (about 2-5 s CPU "
            "at 120k faces, a minute or more at 500k). Set target_faces (--target-faces 150000, needs "
            "fast-simplification) for a faster export and a lighter file."
        )

    transform = ExportTransform.fit(v_world, c.up_axis, c.normalize)
    v_exp = transform.apply(v_world)
    normals = vertex_normals(v_exp, faces)
    vcol = vertex_colors(field, v_world, c.chunk)
    lap("vertex_colors")

    uvm: Optional[UVMesh] = None
    tex: Optional[BakedTexture] = None
    if c.texture and any(f in fmts for f in ("obj", "glb")):
        uvm = unwrap(
            v_exp, faces, c.texture_size, min(c.texture_padding, 4), c.xatlas_chart_options, c.xatlas_pack_options
        )
        lap("uv_unwrap")
        tex = bake_texture(field, v_world[uvm.vmapping], uvm.faces, uvm.uvs, c.texture_size, c.texture_padding, c.chunk)
        lap("bake")

    files: Dict[str, Path] = {}
    if "obj" in fmts:
        if uvm is not None and tex is not None:
            files.update(write_obj(out_dir / f"{c.name}.obj", v_exp[uvm.vmapping], uvm.faces,
                                   normals[uvm.vmapping], uvm.uvs, tex.image))
        else:
            files.update(write_obj(out_dir / f"{c.name}.obj", v_exp, faces, normals, vertex_colors=vcol))
    if "glb" in fmts:
        if uvm is not None and tex is not None:
            files["glb"] = write_glb(out_dir / f"{c.name}.glb", v_exp[uvm.vmapping], uvm.faces,
                                     normals[uvm.vmapping], uvm.uvs, tex.image, unlit=c.unlit)
        else:
            files["glb"] = write_glb(out_dir / f"{c.name}.glb", v_exp, faces, normals, vertex_colors=vcol,
                                     unlit=c.unlit)
    if "ply" in fmts:
        files["ply"] = write_ply(out_dir / f"{c.name}.ply", v_exp, faces, vcol, normals)
    lap("write")

    import trimesh

    watertight = bool(trimesh.Trimesh(v_world, faces, process=False).is_watertight)
    summary: Dict[str, Any] = {
        "format": "dreamdist3d-export",
        "version": 1,
        "source": source,
        "files": {k: p.name for k, p in files.items()},
        "transform": transform.to_dict(),
        "isosurface": {
            "method": "mc-cpu (PyMCubes)",
            "resolution": c.isosurface_resolution,
            "threshold": iso.threshold.value,
            "threshold_method": iso.threshold.method,
            "threshold_reason": iso.threshold.reason,
            "configured_threshold": c.isosurface_threshold,
            "coarse_to_fine": c.isosurface_coarse_to_fine,
            "bbox_world": iso.bbox.tolist(),
            "density_range": list(iso.density_range),
        },
        "mesh": {
            "vertices": int(len(v_exp)),
            "faces": int(len(faces)),
            "watertight": watertight,
            "components": info.components,
            "components_kept": info.components_kept,
            "faces_removed": info.faces_removed,
            "uv_vertices": int(len(uvm.vmapping)) if uvm is not None else None,
        },
        "texture": None
        if tex is None
        else {"size": c.texture_size, "coverage": round(tex.coverage, 4), "padding": c.texture_padding},
        "config": asdict(c),
        "timings_s": timings,
    }
    files["json"] = write_json(out_dir / f"{c.name}.export.json", summary)
    log(
        f"[export] {len(faces)} faces, {len(v_exp)} vertices, threshold {iso.threshold.value:.4g} "
        f"({iso.threshold.method}) -> " + ", ".join(str(p) for p in files.values())
    )
    return ExportResult(out_dir, files, transform, iso, info, v_exp, faces, vcol, uvm, tex, timings, summary)
