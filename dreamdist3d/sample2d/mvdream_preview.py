"""MVDream 4-view previews: DDIM with classifier-free guidance, as MVDream's own sampler, from any conditioning.

The core, `sample_views(backbone, context (n,77,D), ...)`, takes conditioning *embeddings*, so a text prompt
(`Backbone.encode_text`) and samples of a learned prompt distribution (`PromptGaussian.sample`) go through exactly
the same path.

Sampler: the one DDIM of `dreamdist3d.backbones.ddim` (MVDream `t2i.py` + LDM `DDIMSampler`, η = 0: timesteps
`range(0, 1000, 1000 // S) + 1` descending, the backbone's float64-made ᾱ, guidance batch `[uncond, cond]`
(MVDream's sampler order; MVDream-threestudio uses the reverse)), with F = 4 views per sample (rows `(b f)`),
cameras `get_camera(4, elevation, azimuth_start)` passed to both halves, decoded with the VAE,
`clamp((x + 1) / 2, 0, 1)`.

The 4-view sample of prompt-sample seed s (`preview_views`) is ONE thing everywhere: `dreamdist3d preview` shows it,
the toy demo's previews show it, and an anchored 3D run with seed s fits its field to it
(`dreamdist3d.lift3d.anchor`). Its prompt sample is sample 0 of seed s (the distribution seed rule), its initial
noise comes from a CPU generator seeded s + 2**31 (`image_seed`, the latent rule of SD 2.1 sampling; never the
numbers of prompt sample s), per sample, so preview i of `--seed 0 --n 16` is the 4-view sample of seed i whatever
else is sampled with it; its settings are a `PreviewSampler` whose defaults depend on the backbone
(`preview_sampler_for`: MVDream 50 steps, CFG 7.5; the toy world's sampler 25 steps, CFG 2, x0 clipped).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.ddim import ddim_sample, ddim_timesteps
from dreamdist3d.distribution.gaussian import LATENT_SEED_OFFSET
from dreamdist3d.sample2d.pick import parse_features, pick_seeds


@torch.no_grad()
def sample_views(
    backbone: Backbone,
    context: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = 50,
    cfg: float = 7.5,
    elevation: float = 15.0,
    azimuth_start: float = 0.0,
    seed: int = 0,
    num_frames: int = 4,
    max_batch: int = 4,
    return_latents: bool = False,
    progress: bool = False,
    noise_seeds: Optional[Sequence[int]] = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """n multi-view samples for conditioning `context` (n,77,D) with negative/unconditional `uncond` (77,D)|(1,77,D).

    Returns images (n, F, 3, H, W) float32 in [0, 1] on CPU, or the final scaled latents (n, F, C, h, w) with
    `return_latents`. Samples are processed `max_batch` at a time (2·F·max_batch UNet rows); samples are independent,
    so `max_batch` changes only memory use (and float rounding). Noise: `noise_seeds` (one generator per sample) or
    one generator seeded `seed` (`backbones.ddim.ddim_sample`)."""
    if not backbone.supports_camera:
        raise ValueError(f"backbone '{backbone.name}' has no camera conditioning; MVDream previews need an MVDream "
                         "backbone")
    camera = get_camera(num_frames, elevation=elevation, azimuth_start=azimuth_start)  # (F, 16)
    return ddim_sample(backbone, context, uncond, steps=steps, cfg=cfg, camera=camera, num_frames=num_frames,
                       seed=seed, noise_seeds=noise_seeds, clip_x0=clip_x0, max_batch=max_batch,
                       return_latents=return_latents, progress=progress)


@dataclass(frozen=True)
class PreviewSampler:
    """How the 4-view sample of a prompt sample is drawn (what `preview`, the toy demo and anchored 3D runs share)."""

    steps: int = 50  # DDIM steps
    guidance_scale: float = 7.5  # classifier-free guidance
    elevation: float = 15.0  # degrees, every view
    azimuth_start: float = 0.0  # MVDream azimuth of view 0 (degrees); views step 360/num_frames
    num_frames: int = 4
    negative_prompt: str = ""  # the unconditional prompt
    clip_x0: bool = False  # clamp the predicted x0 to [-1, 1] each step (pixel-space diffusion)

    def azimuths(self) -> List[float]:
        """MVDream azimuths (degrees) of the views, `get_camera`'s np.arange rule."""
        return np.arange(self.azimuth_start, self.azimuth_start + 360, 360 / self.num_frames).tolist()


def preview_sampler_for(backbone: Backbone, **settings: Any) -> PreviewSampler:
    """The backbone's preview settings (MVDream: 50 steps, CFG 7.5; the toy backbone: its own sampler, 25 steps,
    CFG 2, x0 clipped), with `settings` that are not None put over them (unknown names are an error)."""
    names = {f.name for f in fields(PreviewSampler)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"unknown preview setting(s) {unknown}; known: {sorted(names)}")
    base = PreviewSampler()
    if backbone.name == "toy":
        from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS

        base = PreviewSampler(steps=DEFAULT_SAMPLE_STEPS, guidance_scale=DEFAULT_GUIDANCE, clip_x0=True)
    sampler = replace(base, **{k: v for k, v in settings.items() if v is not None})
    for key in ("guidance_scale", "elevation", "azimuth_start"):  # NaN/Inf would give black images silently
        if not math.isfinite(float(getattr(sampler, key))):
            raise ValueError(f"preview setting {key} must be a finite number, got {getattr(sampler, key)}")
    return sampler


def image_seed(seed: int) -> int:
    """The seed of the initial image noise of prompt-sample seed `seed` (never the prompt sample's own numbers)."""
    return int(seed) + LATENT_SEED_OFFSET


@torch.no_grad()
def preview_views(backbone: Backbone, context: torch.Tensor, seeds: Sequence[int], sampler: PreviewSampler,
                  max_batch: int = 4, progress: bool = False) -> torch.Tensor:
    """The 4-view samples (n, F, 3, H, W) in [0, 1] (CPU, float32) of the prompt samples `context` (n, 77, D) whose
    seeds are `seeds`: sample j's image noise from `image_seed(seeds[j])`, cameras and sampler from `sampler`."""
    if context.shape[0] != len(seeds):
        raise ValueError(f"{len(seeds)} seeds for {context.shape[0]} prompt samples")
    uncond = backbone.encode_text([sampler.negative_prompt])
    return sample_views(
        backbone, context.to(backbone.device, backbone.text_encoder.dtype), uncond, steps=sampler.steps,
        cfg=sampler.guidance_scale, elevation=sampler.elevation, azimuth_start=sampler.azimuth_start,
        num_frames=sampler.num_frames, max_batch=max_batch, progress=progress,
        noise_seeds=[image_seed(s) for s in seeds], clip_x0=sampler.clip_x0,
    )


def image_grid(images: torch.Tensor):
    """(n, F, 3, H, W) in [0,1] -> PIL image: one row per sample, F columns; a single 4-view sample as 2×2."""
    from dreamdist3d.images import tile_grid, to_pil, to_uint8

    n, F = images.shape[:2]
    tiles = list(to_uint8(images, channels_first=True).reshape(n * F, *images.shape[-2:], 3))
    return to_pil(tile_grid(tiles, cols=2 if (n == 1 and F == 4) else F, fill=0))


@dataclass
class PreviewRequest:
    """Everything a preview depends on (written to the JSON sidecar)."""

    mvdream: str
    prompt: Optional[str] = None
    distribution: Optional[str] = None
    class_index: int = 0
    scale: float = 1.0
    covariance: Optional[str] = None  # diag | lowrank | kernel; None: what the file records
    prefix: Optional[str] = None
    suffix: Optional[str] = None
    negative: str = ""
    n: int = 1
    steps: Optional[int] = None  # None: the backbone's preview default (`preview_sampler_for`)
    cfg: Optional[float] = None  # None: the backbone's preview default
    elevation: float = 15.0
    azimuth_start: float = 0.0
    seed: int = 0
    num_frames: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    check_encoder: bool = True
    pick: int = 0  # > 0 (distribution only): record the sample seeds of the `pick` most different samples
    # how `pick` compares samples (`sample2d.pick`: colour | form | colour+form | <encoder>=DIR); None: colour
    pick_features: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def conditioning_from_prompt(backbone: Backbone, prompt: str, n: int) -> torch.Tensor:
    """(n, 77, D): the prompt's encoding repeated n times."""
    return backbone.encode_text([prompt]).expand(n, -1, -1).clone()


def conditioning_from_distribution(
    backbone: Backbone,
    path: Union[str, Path],
    n: int,
    scale: float = 1.0,
    prefix: Optional[str] = None,
    suffix: Optional[str] = None,
    seed: int = 0,
    class_index: int = 0,
    check_encoder: bool = True,
    covariance: Optional[str] = None,
) -> torch.Tensor:
    """(n, 77, D) samples 0…n−1 of `seed` (the distribution seed rule, as 2D and 3D) of a learned prompt
    distribution, re-fitted with `prefix`/`suffix` (None: as learned), spread scaled by `scale` (0: the mean)."""
    from dreamdist3d.distribution import DistributionSpec, fit

    spec = DistributionSpec.from_lists([path], scales=[scale], class_indices=[class_index], prefix=prefix,
                                       suffix=suffix,
                                       covariance=covariance, key="--distribution")
    mixture = fit(spec, backbone.text_encoder, backbone.tokenizer, check_encoder=check_encoder)
    return mixture.sample(n, seed).to("cpu", torch.float32)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run_preview(req: PreviewRequest, out: Union[str, Path], backbone: Optional[Backbone] = None,
                progress: bool = False) -> Dict[str, Any]:
    """Load the backbone (unless given), build the conditioning, sample, write `out` (PNG grid) and
    `out.with_suffix('.json')` (every setting). Returns the sidecar dict."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.images import save_png
    from dreamdist3d.io import atomic_write_text

    if (req.prompt is None) == (req.distribution is None):
        raise ValueError("give exactly one of a prompt (--prompt) or a distribution file (--distribution)")
    if req.n < 1:
        raise ValueError(f"n must be ≥ 1, got {req.n}")
    for key in ("scale", "cfg", "elevation", "azimuth_start"):  # NaN/Inf would give black images silently
        if getattr(req, key) is not None and not math.isfinite(float(getattr(req, key))):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {getattr(req, key)}")
    if req.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {req.dtype!r}")
    if req.pick and (req.distribution is None or not 1 <= req.pick <= req.n):
        raise ValueError(f"--pick {req.pick}: picks seeds among the samples of a distribution, so it needs "
                         f"--distribution and 1 ≤ --pick ≤ --n (--n {req.n})")
    if req.prompt is not None and (req.prefix is not None or req.suffix is not None):
        raise ValueError("--prefix/--suffix edit a learned distribution; with --prompt write them into the prompt")
    if req.pick_features is not None and not req.pick:
        raise ValueError(f"--features {req.pick_features} says how --pick compares the samples: give --pick N too")
    features = req.pick_features or "colour"
    encoder = None
    kind, folder = parse_features(features)
    if folder is not None:  # before anything is sampled: a wrong folder fails in seconds
        from dreamdist3d.evaluation.features import load_encoder

        encoder = load_encoder(kind, folder, req.device, where=f"--features {features}")
    out = Path(out)
    if backbone is None:
        backbone = load_backbone(req.mvdream, device=req.device, dtype=DTYPES[req.dtype], config_key="--mvdream",
                                 default_kind="mvdream")
    if req.prompt is not None:
        context = conditioning_from_prompt(backbone, req.prompt, req.n)
    else:
        context = conditioning_from_distribution(
            backbone, req.distribution, req.n, req.scale, req.prefix, req.suffix, req.seed, req.class_index,
            req.check_encoder, req.covariance,
        )
    sampler = preview_sampler_for(backbone, steps=req.steps, guidance_scale=req.cfg, elevation=req.elevation,
                                  azimuth_start=req.azimuth_start, num_frames=req.num_frames,
                                  negative_prompt=req.negative)
    seeds = [req.seed + i for i in range(req.n)]
    images = views_kept_on_interrupt(backbone, context, seeds, sampler, partial_folder(out),
                                     {"settings": {k: v for k, v in asdict(req).items()
                                                   if k not in ("pick", "pick_features")},
                                      "sampler": asdict(sampler),
                                      "backbone": backbone.fingerprint()}, progress)
    grid = image_grid(images)
    save_png(grid, out)  # atomic, and a PNG whatever the file is called
    side = {
        "kind": "dreamdist3d mvdream preview",
        "settings": asdict(req),
        "sampler": asdict(sampler),
        "image": out.name,
        "grid": {
            "rows": 2 if (req.n == 1 and req.num_frames == 4) else req.n,
            "cols": 2 if (req.n == 1 and req.num_frames == 4) else req.num_frames,
            "tile": backbone.resolution,
            "size": list(grid.size),
            "order": "row-major views of sample 0, then sample 1, …" ,
        },
        "view_azimuths_deg": sampler.azimuths(),
        "ddim_timesteps": ddim_timesteps(backbone.schedule.num_train_timesteps, sampler.steps).tolist(),
        "guidance_order": "[uncond, cond]",
        "prompt_sample_seeds": seeds if req.distribution else None,
        "picked_seeds": pick_seeds(images, req.pick, req.seed, features, encoder) if req.pick else None,
        "pick_features": features if req.pick else None,
        "image_seeds": [image_seed(s) for s in seeds],
        "backbone": backbone.fingerprint(),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(side, indent=1))
    shutil.rmtree(partial_folder(out), ignore_errors=True)
    return side


PREVIEW_BATCH = 4  # samples per sampler call (`preview_views`' max_batch): one batch, one file of kept samples


def partial_folder(out: Path) -> Path:
    """Where the samples of a preview to `out` are kept until its grid is written (a Ctrl-C keeps them)."""
    return out.with_name(out.name + ".partial")


def views_kept_on_interrupt(backbone: Backbone, context: torch.Tensor, seeds: Sequence[int],
                            sampler: PreviewSampler, folder: Path, key: Dict[str, Any],
                            progress: bool = False) -> torch.Tensor:
    """`preview_views` one batch of `PREVIEW_BATCH` samples at a time, each batch kept in `folder`
    (`io.kept_batches`): the same command after a Ctrl-C reads the finished ones back and goes on, with the images
    an uninterrupted run draws (each sample's noise follows its seed; the batches are the same)."""
    from tqdm.auto import tqdm

    from dreamdist3d.io import kept_batches

    def batch(i: int) -> Dict[str, torch.Tensor]:
        chunk = list(seeds[i * PREVIEW_BATCH:(i + 1) * PREVIEW_BATCH])
        return {"images": preview_views(backbone, context[i * PREVIEW_BATCH:i * PREVIEW_BATCH + len(chunk)], chunk,
                                        sampler, max_batch=PREVIEW_BATCH, progress=progress)}  # DDIM bars under ours

    with tqdm(total=len(seeds), desc="preview", unit="sample",
              disable=not progress or len(seeds) <= PREVIEW_BATCH) as bar:  # closed on a Ctrl-C too
        batches = kept_batches(folder, key, math.ceil(len(seeds) / PREVIEW_BATCH), batch,
                               lambda b: bar.update(len(b["images"])))
    return torch.cat([b["images"] for b in batches])


__all__ = [
    "PreviewRequest",
    "PreviewSampler",
    "image_seed",
    "preview_sampler_for",
    "preview_views",
    "conditioning_from_distribution",
    "conditioning_from_prompt",
    "image_grid",
    "partial_folder",
    "run_preview",
    "sample_views",
]
