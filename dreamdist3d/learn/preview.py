"""Validation previews during learning: a few samples of the current distribution, decoded with a short DDIM.

2D: n samples in one row. MVDream 4-view: one row per sample, its 4 views (`get_camera(4, 15°, 0°)`) side by side.
Classifier-free guidance with the empty prompt as MVDream's sampler does it (`[uncond, cond]` rows,
`uncond + s·(cond − uncond)`), DDIM η = 0 on the `leading` timesteps `range(0, T, T//S) + 1`: the one sampler,
`dreamdist3d.backbones.ddim.ddim_sample`, for any `Backbone` (latents or pixels alike). Camera backbones go through
`sample2d.mvdream_preview.sample_views` (its initial noise from `seed`, as the `preview` command draws it); the
others draw their initial noise from the same generator as the prompt samples, after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.ddim import ddim_sample


def image_grid(images: torch.Tensor, ncol: int, gutter: int = 2) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (rows·H, ncol·W, 3) with white gutters."""
    from dreamdist3d.images import tile_grid, to_uint8

    return tile_grid(list(to_uint8(images.float(), (-1.0, 1.0), channels_first=True)), cols=ncol, pad=gutter)


@torch.no_grad()
def write_preview(
    path: Path,
    backbone: Backbone,
    learner,
    n_samples: int = 4,
    steps: int = 20,
    guidance: float = 7.5,
    seed: int = 0,
    num_frames: int = 1,
    cameras: Optional[torch.Tensor] = None,
    covariance: str = "diag",
) -> Path:
    """Fit the current distribution, draw prompt samples 0…n_samples−1 of `seed` (comparable across steps) with the
    run's covariance mode, render (image noise from seed + 2**31), save PNG."""
    from dreamdist3d.distribution.gaussian import LATENT_SEED_OFFSET
    from dreamdist3d.images import save_png

    g = torch.Generator().manual_seed(seed + LATENT_SEED_OFFSET)
    cond = learner.fit().with_covariance(covariance).sample(n_samples, seed=seed)  # (n, 77, D)
    steps = max(1, min(int(steps), backbone.schedule.num_train_timesteps))
    uncond = backbone.encode_text([""])
    if num_frames > 1 and backbone.supports_camera:  # MVDream: the 4-view preview sampler of dreamdist3d.sample2d
        from dreamdist3d.sample2d.mvdream_preview import sample_views

        views = sample_views(backbone, cond.to(uncond.dtype), uncond, steps=steps, cfg=guidance,
                             seed=seed + LATENT_SEED_OFFSET,
                             num_frames=num_frames)  # (n, F, 3, H, W) in [0, 1]
        imgs = views.flatten(0, 1) * 2 - 1
    else:
        latents = ddim_sample(backbone, cond, uncond, steps=steps, cfg=guidance, camera=cameras, num_frames=num_frames,
                              generator=g, return_latents=True)  # (n, F, C, h, w)
        dtype = backbone.text_encoder.dtype
        imgs = backbone.decode_latents(latents.flatten(0, 1).to(backbone.device, dtype)).float().clamp(-1, 1)
    grid = image_grid(imgs, ncol=num_frames if num_frames > 1 else n_samples)
    return save_png(grid, path)


__all__ = ["image_grid", "write_preview"]
