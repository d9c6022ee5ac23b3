"""`dreamdist3d export`: textured meshes (GLB, OBJ+MTL+PNG, PLY) from a 3D run, or from an analytic demo field.

    dreamdist3d export outputs/<name>/<tag>@<timestamp> --format glb,obj,ply
    dreamdist3d export outputs/<name>/<tag>@<timestamp>/ckpts/last.ckpt --resolution 256 --texture-size 2048
    dreamdist3d export --analytic two-part --out /tmp/demo
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from dreamdist3d.commands import finite_float
from dreamdist3d.export.field import ANALYTIC_FIELDS, Field, check_field, make_analytic_field
from dreamdist3d.export.isosurface import ExportError
from dreamdist3d.export.pipeline import FORMATS, export_field, parse_formats

NAME = "export"
HELP = "export a 3D run (or an analytic demo field) as textured meshes: GLB, OBJ+MTL+PNG, PLY"

DEFAULT_RESOLUTION = 128
DEFAULT_THRESHOLD = 25.0  # threestudio implicit-volume isosurface_threshold


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run folder outputs/<name>/<tag>@<timestamp>/ or a checkpoint inside it")
    p.add_argument("--analytic", choices=sorted(ANALYTIC_FIELDS), help="export an analytic demo field instead of a run")
    p.add_argument("--format", default=",".join(FORMATS), help="comma-separated formats: glb,obj,ply (default: all)")
    p.add_argument("--resolution", type=int, default=None,
                   help="isosurface grid resolution (default: the run's system.geometry.isosurface_resolution, else "
                        "128)")
    p.add_argument("--threshold", default=None,
                   help="density isosurface threshold or 'auto' (default: the run's "
                        "system.geometry.isosurface_threshold, else 25.0)")
    p.add_argument("--auto-threshold", default="otsu", choices=["otsu", "threestudio", "off"],
                   help="replacement threshold rule when the threshold gives an empty or exploded surface")
    p.add_argument("--texture-size", type=int, default=1024, help="texture width = height in texels (default 1024)")
    p.add_argument("--no-texture", action="store_true", help="vertex colours only (no UV unwrap / bake)")
    p.add_argument("--unlit", action="store_true",
                   help="GLB material KHR_materials_unlit: viewers show the colours as they are, without light "
                        "(default: a lit material, metallic 0, roughness 1)")
    p.add_argument("--target-faces", type=int, default=0,
                   help="decimate to about this many faces (needs fast-simplification; 0 = off)")
    p.add_argument("--remove-floaters", type=finite_float, default=0.01,
                   help="drop connected components below this fraction of all faces (>= 1: a face count)")
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest connected component")
    p.add_argument("--up", default="y", choices=["y", "z"], help="up axis of the exported files (default y, glTF)")
    p.add_argument("--no-normalize", action="store_true", help="keep world units (no unit-box scaling/centring)")
    p.add_argument("--name", default="model", help="file stem (default: model)")
    p.add_argument("--ckpt", default=None, help="checkpoint inside the run folder (default ckpts/last.ckpt)")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run>/save/export, or outputs/analytic-<name>/export)")
    p.add_argument("--device", default="cpu", help="device for analytic fields (runs choose their own)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def resolve_run(path: str | Path, ckpt: Optional[str | Path] = None) -> Tuple[Path, Path]:
    """(run_dir, checkpoint) from a run folder or a checkpoint path; clear errors naming the missing file. A
    feed-forward run (`gallery --lift lgm`: no training, no ckpts/) has its Gaussians, `export/gaussians.ply`, as
    its checkpoint."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (expected a run folder outputs/<name>/<tag>@<timestamp>/ "
                                "or a checkpoint inside its ckpts/)")
    if p.is_file():
        ckpt = ckpt or p
        run_dir = p.parent.parent if p.parent.name == "ckpts" else p.parent
    else:
        run_dir = p
    parsed = run_dir / "configs" / "parsed.yaml"
    if not parsed.is_file():
        raise FileNotFoundError(f"{run_dir} is not a 3D run folder: {parsed} is missing "
                                "(a run folder outputs/<name>/<tag>@<timestamp>/ holds configs/parsed.yaml and ckpts/)")
    if not ckpt:  # ckpts/last.ckpt, else the highest-step checkpoint, else a feed-forward run's Gaussians
        from dreamdist3d.recipes.reconstruct import GAUSSIANS_PLY
        from dreamdist3d.runs import latest_checkpoint

        gaussians = run_dir / "export" / GAUSSIANS_PLY
        ckpt = (latest_checkpoint(run_dir, "*.ckpt", last="last.ckpt")
                or (gaussians if gaussians.is_file() else run_dir / "ckpts" / "last.ckpt"))
    ck = Path(ckpt)
    if not ck.is_absolute() and not ck.exists() and (run_dir / ck).exists():
        ck = run_dir / ck
    if not ck.is_file():
        raise FileNotFoundError(f"checkpoint {ck} is missing (pass --ckpt, or train the run until ckpts/last.ckpt "
                                "exists)")
    return run_dir, ck


def load_field_from_run(run_dir: str | Path, ckpt: Optional[str | Path] = None) -> Field:
    """The hook to the 3D runner: `dreamdist3d.lift3d.system.load_run_field(run_dir, ckpt=None) -> Field`."""
    run_dir, ck = resolve_run(run_dir, ckpt)
    if ck.suffix == ".ply":  # a feed-forward run's Gaussians: meshed where their opacity reaches the surface level
        from dreamdist3d.reconstruct.field import GaussianField
        from dreamdist3d.reconstruct.ply import read_splat_ply

        return GaussianField(read_splat_ply(ck))
    try:
        from dreamdist3d.lift3d.system import load_run_field
    except ImportError as e:
        missing_module = getattr(e, "name", None) in ("dreamdist3d.lift3d.system", "dreamdist3d.lift3d")
        if missing_module or "load_run_field" in str(e):
            raise ExportError(
                "exporting a run needs dreamdist3d.lift3d.system.load_run_field(run_dir, ckpt=None) -> Field "
                f"from the 3D runner, which is not available in this checkout ({e}). "
                "Use --analytic sphere|box|two-part for a demo."
            ) from None
        raise
    field = load_run_field(run_dir, ckpt=ck)
    check_field(field)
    return field


def run_geometry_defaults(run_dir: Path) -> Dict[str, Any]:
    """isosurface_resolution / isosurface_threshold from the run's configs/parsed.yaml, where set."""
    out: Dict[str, Any] = {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run_dir / "configs" / "parsed.yaml")
        for key in ("isosurface_resolution", "isosurface_threshold"):
            try:
                v = OmegaConf.select(cfg, f"system.geometry.{key}", default=None)
            except Exception:  # interpolations that need threestudio's resolvers
                v = None
            if v is not None:
                out[key] = v
    except Exception:
        pass
    return out


def _threshold(text: Optional[str]) -> Optional[float | str]:
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ExportError(f"--threshold must be a number or 'auto', got '{text}'") from None


def run(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    defaults: Dict[str, Any] = {}
    if args.analytic:
        if args.run:
            raise ExportError("give either a run folder or --analytic, not both")
        field = make_analytic_field(args.analytic, device=args.device)
        source = f"analytic:{args.analytic}"
        out = Path(args.out) if args.out else Path("outputs") / f"analytic-{args.analytic}" / "export"
    elif args.run:
        run_dir, ck = resolve_run(args.run, args.ckpt)
        defaults = run_geometry_defaults(run_dir)
        field = load_field_from_run(run_dir, ck)
        if ck.suffix == ".ply":  # the Gaussians' own surface level, whatever the config's field used
            defaults["isosurface_threshold"] = field.level
        source = f"{run_dir} ({ck.name})"
        out = Path(args.out) if args.out else run_dir / "save" / "export"
    else:
        raise ExportError("nothing to export: give a run folder (outputs/<name>/<tag>@<timestamp>) or --analytic NAME")

    threshold = _threshold(args.threshold)
    if threshold is None:
        threshold = defaults.get("isosurface_threshold", DEFAULT_THRESHOLD)
    resolution = args.resolution or int(defaults.get("isosurface_resolution", DEFAULT_RESOLUTION))
    result = export_field(
        field,
        out,
        formats,
        source=source,
        name=args.name,
        isosurface_resolution=resolution,
        isosurface_threshold=threshold,
        auto_threshold=args.auto_threshold,
        texture=not args.no_texture,
        unlit=args.unlit,
        texture_size=args.texture_size,
        target_faces=args.target_faces,
        remove_floaters=args.remove_floaters,
        keep_largest=args.keep_largest,
        up_axis=args.up,
        normalize=not args.no_normalize,
    )
    for kind, path in result.files.items():
        print(f"{kind}: {path}")
    return 0
