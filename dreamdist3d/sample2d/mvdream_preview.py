"""MVDream 4-view previews: DDIM with classifier-free guidance, as MVDream's own sampler, from any conditioning.

The core, `sample_views(backbone, context (n,77,D), ...)`, takes conditioning *embeddings*, so a text prompt
(`Backbone.encode_text`) and samples of a learned prompt distribution (`PromptGaussian.sample`) go through exactly
the same path.

Sampler (MVDream `t2i.py` + LDM `DDIMSampler`, η = 0):
- timesteps `range(0, 1000, 1000 // S) + 1`, descending (981, 961, …, 1 for S = 50): diffusers `DDIMScheduler` with
  `timestep_spacing="leading"`, `steps_offset=1`, `set_alpha_to_one=False`; its ᾱ table is replaced by the
  backbone's (MVDream's float64-computed buffers), so every step uses the official numbers;
- each sample is F = 4 views (rows `(b f)`), cameras `get_camera(4, elevation, azimuth_start)`;
- guidance batch `[uncond, cond]` (MVDream's sampler order; MVDream-threestudio uses the reverse), the camera
  passed to both halves, `num_frames=4`, output `uncond + cfg·(cond − uncond)`;
- initial noise from a CPU `torch.Generator(seed)` (identical on every device), decoded with the VAE,
  `clamp((x + 1) / 2, 0, 1)`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.schedule import NoiseSchedule

# A distribution's samples use their own stream, so they never share random numbers with the initial noise.
DISTRIBUTION_SEED_OFFSET = 1_000_003


def make_ddim_scheduler(schedule: NoiseSchedule, steps: int):
    """diffusers DDIMScheduler equal to MVDream's DDIM (leading spacing, offset 1, ᾱ_prev(first) = ᾱ_0, η = 0)."""
    from diffusers import DDIMScheduler

    if steps < 1 or steps > schedule.num_train_timesteps:
        raise ValueError(f"steps must be in 1..{schedule.num_train_timesteps}, got {steps}")
    cfg = dict(schedule.diffusers_config())
    cfg.update(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    sched = DDIMScheduler(**cfg)
    sched.alphas_cumprod = schedule.alphas_cumprod.clone().float()  # the backbone's exact ᾱ (MVDream: float64-made)
    sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    sched.set_timesteps(steps)
    return sched


def ddim_timesteps(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """(steps,) descending DDIM timesteps, e.g. 981, 961, …, 1 for 50 steps."""
    return make_ddim_scheduler(schedule, steps).timesteps.clone()


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
) -> torch.Tensor:
    """n multi-view samples for conditioning `context` (n,77,D) with negative/unconditional `uncond` (77,D)|(1,77,D).

    Returns images (n, F, 3, H, W) float32 in [0, 1] on CPU, or the final scaled latents (n, F, C, h, w) with
    `return_latents`. Samples are processed `max_batch` at a time (2·F·max_batch UNet rows); samples are independent,
    so `max_batch` changes only memory use (and float rounding)."""
    if not backbone.supports_camera:
        raise ValueError(f"backbone '{backbone.name}' has no camera conditioning; MVDream previews need an MVDream backbone")
    if context.ndim != 3:
        raise ValueError(f"context must be (n, 77, D), got {tuple(context.shape)}")
    n, F = context.shape[0], num_frames
    device = backbone.device
    uncond = uncond.reshape(1, *uncond.shape[-2:])
    sched = make_ddim_scheduler(backbone.schedule, steps)
    c, s = backbone.latent_channels, backbone.latent_size
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((n * F, c, s, s), generator=g, dtype=torch.float32)
    camera = get_camera(F, elevation=elevation, azimuth_start=azimuth_start).to(device)  # (F, 16)

    outs: List[torch.Tensor] = []
    timesteps = sched.timesteps
    for start in range(0, n, max_batch):
        b = min(max_batch, n - start)
        x = noise[start * F : (start + b) * F].to(device)
        cond = context[start : start + b].to(device).repeat_interleave(F, dim=0)  # (b·F, 77, D)
        ctx_in = torch.cat([uncond.to(device, cond.dtype).expand_as(cond), cond])  # [uncond, cond]
        cam_in = camera.repeat(2 * b, 1)
        iterator = timesteps
        if progress:
            from tqdm import tqdm

            iterator = tqdm(timesteps, desc=f"DDIM samples {start + 1}-{start + b}/{n}", leave=False)
        for t in iterator:
            t_in = torch.full((2 * b * F,), int(t), device=device, dtype=torch.long)
            out = backbone(torch.cat([x, x]), t_in, ctx_in, camera=cam_in, num_frames=F).float()
            e_uncond, e_cond = out.chunk(2)
            model_out = e_uncond + cfg * (e_cond - e_uncond)
            x = sched.step(model_out, int(t), x, eta=0.0).prev_sample
        if return_latents:
            outs.append(x.cpu())
        else:
            img = backbone.decode_latents(x).float()
            outs.append(((img + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    out = torch.cat(outs)
    return out.reshape(n, F, *out.shape[1:])


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
    prefix: Optional[str] = None
    suffix: Optional[str] = None
    negative: str = ""
    n: int = 1
    steps: int = 50
    cfg: float = 7.5
    elevation: float = 15.0
    azimuth_start: float = 0.0
    seed: int = 0
    num_frames: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    check_encoder: bool = True
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
) -> torch.Tensor:
    """(n, 77, D) samples of a learned prompt distribution, re-fitted with `prefix`/`suffix` (None: as learned),
    spread scaled by `scale` (0: the mean). Drawn on CPU from `seed + DISTRIBUTION_SEED_OFFSET`."""
    from dreamdist3d.distribution import PromptDistribution

    dist = PromptDistribution.load(path, class_index=class_index)
    learner = dist.learner(backbone.text_encoder, backbone.tokenizer, check_encoder=check_encoder, source=str(path))
    gauss = learner.fit(prefix=prefix, suffix=suffix).to("cpu", torch.float32)
    g = torch.Generator().manual_seed(int(seed) + DISTRIBUTION_SEED_OFFSET)
    return gauss.sample(n, scale=scale, generator=g)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def run_preview(req: PreviewRequest, out: Union[str, Path], backbone: Optional[Backbone] = None,
                progress: bool = False) -> Dict[str, Any]:
    """Load the backbone (unless given), build the conditioning, sample, write `out` (PNG grid) and
    `out.with_suffix('.json')` (every setting). Returns the sidecar dict."""
    from dreamdist3d.backbones.mvdream import load_mvdream

    if (req.prompt is None) == (req.distribution is None):
        raise ValueError("give exactly one of a prompt (--prompt) or a distribution file (--distribution)")
    if req.n < 1:
        raise ValueError(f"n must be ≥ 1, got {req.n}")
    if req.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {req.dtype!r}")
    if req.prompt is not None and (req.prefix is not None or req.suffix is not None):
        raise ValueError("--prefix/--suffix edit a learned distribution; with --prompt write them into the prompt")
    out = Path(out)
    if backbone is None:
        backbone = load_mvdream(req.mvdream, device=req.device, dtype=DTYPES[req.dtype], config_key="--mvdream")
    if req.prompt is not None:
        context = conditioning_from_prompt(backbone, req.prompt, req.n)
    else:
        context = conditioning_from_distribution(
            backbone, req.distribution, req.n, req.scale, req.prefix, req.suffix, req.seed, req.class_index,
            req.check_encoder,
        )
    uncond = backbone.encode_text([req.negative])
    images = sample_views(
        backbone, context.to(backbone.device, backbone.text_encoder.dtype), uncond, steps=req.steps, cfg=req.cfg,
        elevation=req.elevation, azimuth_start=req.azimuth_start, seed=req.seed, num_frames=req.num_frames,
        progress=progress,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images)
    grid.save(out)
    azimuths = np.arange(req.azimuth_start, req.azimuth_start + 360, 360 / req.num_frames).tolist()
    side = {
        "kind": "dreamdist3d mvdream preview",
        "settings": asdict(req),
        "image": out.name,
        "grid": {
            "rows": 2 if (req.n == 1 and req.num_frames == 4) else req.n,
            "cols": 2 if (req.n == 1 and req.num_frames == 4) else req.num_frames,
            "tile": backbone.resolution,
            "size": list(grid.size),
            "order": "row-major views of sample 0, then sample 1, …" ,
        },
        "view_azimuths_deg": azimuths,
        "ddim_timesteps": ddim_timesteps(backbone.schedule, req.steps).tolist(),
        "guidance_order": "[uncond, cond]",
        "distribution_seed": req.seed + DISTRIBUTION_SEED_OFFSET if req.distribution else None,
        "backbone": backbone.fingerprint(),
    }
    out.with_suffix(".json").write_text(json.dumps(side, indent=1))
    return side


__all__ = [
    "DISTRIBUTION_SEED_OFFSET",
    "PreviewRequest",
    "conditioning_from_distribution",
    "conditioning_from_prompt",
    "ddim_timesteps",
    "image_grid",
    "make_ddim_scheduler",
    "run_preview",
    "sample_views",
]
