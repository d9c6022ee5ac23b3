"""The gallery's object: one text-to-3D run of a distribution with the prompt sample of a seed, in the fixed folder
`<out>/runs/seed<seed>/` (`run_settings`), guided by a backbone loaded once for all seeds (`load_guidance_backbone`).

`dreamdist3d gallery` runs `run_seed` one seed after another here, or hands `gallery_task(...)` to a runner
(`--ray`: `dreamdist3d.cluster`); both call the same `recipes.lift3d.run_3d` with the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from dreamdist3d.recipes.objects import Call, ObjectTask


def run_settings(distribution: str, out: Path, seed: int, overrides: Sequence[str] = ()) -> List[str]:
    """The config overrides of one run: fixed folder <out>/runs/seed<seed>/ (no timestamp)."""
    return [
        f"system.prompt_processor.distribution={distribution}", f"seed={seed}",
        f"exp_root_dir={out}", "name=runs", f"tag=seed{seed}", "use_timestamp=false",
        *overrides,
    ]


def load_guidance_backbone(config: str, settings: Sequence[str]):
    """The backbone the config's guidance names (`system.guidance.ckpt_path` or `pretrained_model_name_or_path`)."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.lift3d import load_config

    cfg = load_config(config, settings, make_dirs=False)
    g = dict(cfg.system.get("guidance") or {})
    key = "system.guidance.ckpt_path" if g.get("ckpt_path") else "system.guidance.pretrained_model_name_or_path"
    return load_backbone(g.get("ckpt_path") or g.get("pretrained_model_name_or_path"), config_key=key,
                         default_kind="mvdream")


def run_seed(backbone, out: Path, seed: int, *, config: str, distribution: str, overrides: Sequence[str] = (),
             device: str = "auto") -> Path:
    """Train one object (then its test turntable); returns its run folder."""
    from dreamdist3d.recipes.lift3d import run_3d

    settings = run_settings(distribution, out, seed, overrides)
    return run_3d(config, backbone=backbone, mode="train", overrides=settings, device=device).run_dir


def gallery_task(config: str, distribution: str, out: Path, first_seed: int, overrides: Sequence[str] = (),
                 device: str = "auto") -> ObjectTask:
    """`run_seed` of every seed as a runner's task; the backbone is loaded with the settings of `first_seed`."""
    return ObjectTask(
        run=Call(run_seed, {"config": config, "distribution": distribution, "overrides": list(overrides),
                            "device": device}, files=("config", "distribution")),
        backbone=Call(load_guidance_backbone,
                      {"config": config, "settings": run_settings(distribution, out, first_seed, overrides)},
                      files=("config",)),
        name="gallery",
    )


__all__ = ["gallery_task", "load_guidance_backbone", "run_seed", "run_settings"]
