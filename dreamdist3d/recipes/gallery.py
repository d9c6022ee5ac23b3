"""The gallery's object: one 3D object of a distribution with the prompt sample of a seed, in the fixed folder
`<out>/runs/seed<seed>/` (`run_settings`), made with a backbone loaded once for all seeds
(`recipes.lift3d.load_guidance_backbone`).

How a seed becomes an object (`lift`): `sds` = a text-to-3D run of the config (`recipes.lift3d.run_3d`; anchored if
the config says so); `lgm` = the feed-forward reconstruction of its 4-view sample (`recipes.reconstruct.lift_lgm`);
`lgm+sds` = a run anchored to that reconstruction's renders (`system.anchor.source=lgm`), then SDS.

`dreamdist3d gallery` runs `run_seed` one seed after another here, or hands `gallery_task(...)` to a runner
(`--ray`: `dreamdist3d.cluster`); both make the same object with the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from dreamdist3d.recipes.lift3d import load_guidance_backbone
from dreamdist3d.recipes.objects import Call, ObjectTask

LIFTS = ("sds", "lgm", "lgm+sds")


def lift_settings(lift: str = "sds", lgm: Optional[str] = None, mvdream: Optional[str] = None) -> List[str]:
    """The config overrides that say how the objects are made: the anchor source of `lgm+sds`, the reconstructor
    (`system.anchor.reconstructor`) and the MVDream checkpoint (`system.guidance.pretrained_model_name_or_path`)."""
    if lift not in LIFTS:
        raise ValueError(f"lift must be one of {', '.join(LIFTS)}, not {lift!r}")
    return [*(["system.anchor.source=lgm"] if lift == "lgm+sds" else []),
            *([f"system.anchor.reconstructor={lgm}"] if lgm else []),
            *([f"system.guidance.pretrained_model_name_or_path={mvdream}"] if mvdream else [])]


def run_settings(distribution: str, out: Path, seed: int, overrides: Sequence[str] = ()) -> List[str]:
    """The config overrides of one object: fixed folder <out>/runs/seed<seed>/ (no timestamp)."""
    return [
        f"system.prompt_processor.distribution={distribution}", f"seed={seed}",
        f"exp_root_dir={out}", "name=runs", f"tag=seed{seed}", "use_timestamp=false",
        *overrides,
    ]


def last_step(config: str, distribution: str, out: Path, overrides: Sequence[str] = (), lift: str = "sds") -> int:
    """The step of a finished object's turntable (`lift3d.gallery.find_turntable(run, min_step=…)`): the config's
    `trainer.max_steps` for a run, 0 for a reconstruction. Reading the config here also reports its errors before any
    object is made."""
    from dreamdist3d.config import parse_structured
    from dreamdist3d.lift3d.trainer import TrainerConfig
    from dreamdist3d.recipes.lift3d import load_config

    cfg = load_config(config, run_settings(distribution, out, 0, overrides), make_dirs=False)
    return 0 if lift == "lgm" else parse_structured(TrainerConfig, cfg.trainer, where="trainer").max_steps


def run_seed(backbone, out: Path, seed: int, *, config: str, distribution: str, overrides: Sequence[str] = (),
             lift: str = "sds", device: str = "auto", export: bool = True) -> Path:
    """Make one object (a run ends with its test turntable; a reconstruction writes one) and, with `export`, its
    meshes (a run: `launch.py --export`'s, with the config's `system.exporter`, into `save/it<step>-export/`);
    returns its folder. `overrides` include `lift_settings(lift, ...)`. A run that was stopped (Ctrl-C, SIGTERM, a
    lost machine) left its `ckpts/last.ckpt`: it continues from there, with its prompt sample (`resume=`), instead of
    starting again."""
    settings = run_settings(distribution, out, seed, overrides)
    if lift == "lgm":
        from dreamdist3d.recipes.reconstruct import lift_lgm

        kw = {} if export else {"formats": ""}
        return lift_lgm(config, backbone, overrides=settings, device=device, **kw).run_dir
    from dreamdist3d.lift3d.gallery import run_checkpoint
    from dreamdist3d.recipes.lift3d import run_3d

    ckpt = run_checkpoint(Path(out), seed)
    resume = str(ckpt) if ckpt.is_file() else None
    if resume:
        print(f"[gallery] seed {seed}: continuing its stopped run from {ckpt}", flush=True)
    run = run_3d(config, backbone=backbone, mode="train", overrides=settings, device=device, resume=resume).run_dir
    if export:
        run_3d(config, backbone=backbone, mode="export", overrides=settings, device=device, resume=str(ckpt))
    return run


def gallery_task(config: str, distribution: str, out: Path, first_seed: int, overrides: Sequence[str] = (),
                 lift: str = "sds", device: str = "auto", export: bool = True) -> ObjectTask:
    """`run_seed` of every seed as a runner's task; the backbone is loaded with the settings of `first_seed`."""
    return ObjectTask(
        run=Call(run_seed, {"config": config, "distribution": distribution, "overrides": list(overrides),
                            "lift": lift, "device": device, "export": export}, files=("config", "distribution")),
        backbone=Call(load_guidance_backbone,
                      {"cfg": config, "overrides": run_settings(distribution, out, first_seed, overrides),
                       "device": device},
                      files=("cfg",)),
        name="gallery",
    )


__all__ = ["LIFTS", "gallery_task", "last_step", "lift_settings", "run_seed", "run_settings"]
