"""The feed-forward lift (`--lift lgm`): `lift_lgm(cfg, backbone=None, overrides=...)` turns one seed's 4-view sample
into 3D Gaussians (`lift3d.reconstruction.reconstruct_sample`) and writes them as a 3D run would be written, so the
gallery, `dreamdist3d serve` and the evaluators read it unchanged; no training step runs.

It reads a 3D experiment config (configs/dreamdist-mvdream.yaml, configs/toy/toy-3d.yaml) with its overrides:
`system.prompt_processor` (the distribution and the run's ONE prompt sample, drawn with the run's seed),
`system.guidance` (the backbone that draws the 4-view sample, unless one is passed in), `system.anchor` (the preview
sampler, where the views sit in the scene, `reconstructor` and `reconstructor_rotation`), `data` (the test orbit:
`n_test_views`, `eval_*`) and `system.exporter` / `system.geometry.isosurface_resolution` (meshes).

The run folder `<exp_root_dir>/<name>/<tag>` (the config's rule, as `run_3d`):

    prompt_sample.safetensors                  the prompt sample (as a 3D run's: the same seed rule)
    anchor/views.safetensors, anchor/anchor.png   the 4-view sample: `preview`'s images of the seed
    export/gaussians.ply                       the Gaussians, 3D Gaussian Splatting layout (splat viewers)
    export/model.{glb,obj,ply}                 meshes: `reconstruct.GaussianField` through `export_field`
    save/it0-test.mp4, it0-test/, it0-test-grid.png   the turntable: the Gaussians at the test orbit
    configs/parsed.yaml, reconstruct.json      the config; the reconstructor, the scene scale and seconds per stage

The turntable is written last, so a folder with a turntable is a finished object (`gallery` skips it; the prompt
sample and the 4-view sample of an interrupted one are reused).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Union

import torch

from dreamdist3d.config import ConfigError, parse_structured
from dreamdist3d.export import export_field
from dreamdist3d.io import atomic_write_text
from dreamdist3d.lift3d.anchor import AnchorConfig, check_refine_config, prepare_views
from dreamdist3d.lift3d.reconstruction import reconstruct_sample, refine_sample
from dreamdist3d.lift3d.saving import write_turntable
from dreamdist3d.lift3d.system import SystemConfig, find_component
from dreamdist3d.recipes.lift3d import config_to_yaml, exporter_options, load_config, load_guidance_backbone
from dreamdist3d.reconstruct import GaussianField, load_reconstructor, render_gaussians, scene_scale, write_splat_ply
from dreamdist3d.runs import pick_device, seed_everything

GAUSSIANS_PLY = "gaussians.ply"
RECORD = "reconstruct.json"
BACKGROUND = (1.0, 1.0, 1.0)  # LGM's objects sit on white


@dataclass
class LiftResult:
    """A reconstructed object's folder, its files ("gaussians", "video", "grid", "frames", mesh formats) and the
    seconds of each stage ("prompt", "views", "reconstruct", "refine", "meshes", "turntable", "total")."""

    run_dir: Path
    files: Dict[str, Path] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def lift_lgm(cfg: Union[str, Path, Mapping[str, Any]], backbone=None, *, overrides: Sequence[str] = (),
             device: str = "auto", formats: str = "glb,obj,ply") -> LiftResult:
    """One seed's feed-forward object (see the module docstring); `formats` "" writes no meshes."""
    t0 = time.perf_counter()
    seconds: Dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    ecfg = load_config(cfg, overrides)
    trial = Path(ecfg.trial_dir)
    sys_cfg = parse_structured(SystemConfig, ecfg.system, where="system")
    anchor = parse_structured(AnchorConfig, sys_cfg.anchor, where="system.anchor")
    if not anchor.reconstructor:
        raise ConfigError("system.anchor.reconstructor is not set: name an LGM checkpoint "
                          "(--lgm model_fp16_fixrot.safetensors), or 'toy' in the toy world")
    check_refine_config(anchor)
    dev = pick_device(device, key="device")
    model = load_reconstructor(anchor.reconstructor, anchor.reconstructor_rotation, dev,
                               config_key="system.anchor.reconstructor")  # kept: reconstruct_sample reuses it
    seed_everything(ecfg.seed)
    backbone = backbone if backbone is not None else load_guidance_backbone(cfg, overrides, device=dev)
    (trial / "configs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(trial / "configs" / "parsed.yaml", config_to_yaml(ecfg))

    t = time.perf_counter()
    prompt = find_component(sys_cfg.prompt_processor_type, "system.prompt_processor_type")(
        sys_cfg.prompt_processor, backbone=backbone, device=dev, seed=ecfg.seed, save_dir=str(trial),
        where="system.prompt_processor")
    sample = prompt.sample
    t = lap("prompt", t)
    views = prepare_views(anchor, backbone, sample.text_embeddings, int(sample.meta["seed"]), trial / "anchor")
    t = lap("views", t)
    gaussians = reconstruct_sample(anchor, views, dev)
    t = lap("reconstruct", t)
    gaussians = refine_sample(anchor, views, gaussians)  # system.anchor.refine_steps (0: unchanged)
    files: Dict[str, Path] = {"gaussians": write_splat_ply(trial / "export" / GAUSSIANS_PLY, gaussians)}
    t = lap("refine", t)
    if formats:  # the exporter's settings, the geometry's grid size; the level is the Gaussian field's own
        options = exporter_options(dict(sys_cfg.exporter or {}), dict(sys_cfg.geometry or {}))
        for key in ("formats", "isosurface_threshold"):
            options.pop(key, None)
        gaussian_field = GaussianField(gaussians)
        res = export_field(gaussian_field, trial / "export", formats=formats, cfg=options,
                           isosurface_threshold=gaussian_field.level, source=f"{anchor.reconstructor} (feed-forward)")
        files.update(res.files)
    t = lap("meshes", t)
    dm = find_component(ecfg.data_type, "data_type")(ecfg.data, where="data")
    batches = list(dm.test_batches())
    c2w = torch.cat([b["c2w"] for b in batches]).to(dev)  # (V, 4, 4)
    fovy = torch.cat([b["fovy"] for b in batches])
    h, w = int(batches[0]["height"]), int(batches[0]["width"])
    out = render_gaussians(gaussians, c2w, fovy, h, w, background=BACKGROUND)
    renders = ((int(b["index"][0]), {"comp_rgb": out.rgb[i : i + 1], "opacity": out.alpha[i : i + 1]})
               for i, b in enumerate(batches))
    files.update(write_turntable(trial / "save", 0, renders, empty_hint=(
        f"the reconstruction of seed {ecfg.seed}: every Gaussian is transparent or outside the view; check "
        "system.anchor.reconstructor and its rotation normalisation (system.anchor.reconstructor_rotation)")))
    lap("turntable", t)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    mc = model.config
    record = {"seed": ecfg.seed, "reconstructor": anchor.reconstructor, "lgm_config": mc.to_dict(),
              "scene_scale": scene_scale(anchor.camera_distance, anchor.fovy_deg, mc.cam_radius, mc.fovy),
              "gaussians": gaussians.num, "anchor": asdict(anchor),
              "seconds": seconds, "files": {k: str(v) for k, v in files.items()}}
    atomic_write_text(trial / RECORD, json.dumps(record, indent=1) + "\n")
    return LiftResult(trial, files, seconds)


__all__ = ["GAUSSIANS_PLY", "LiftResult", "RECORD", "lift_lgm"]
