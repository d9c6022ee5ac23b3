"""Validation previews during learning: a few samples of the current distribution, decoded with a short DDIM.

2D: n samples in one row. MVDream 4-view: one row per sample, its 4 views (`get_camera(4, 15°, 0°)`) side by side.
Classifier-free guidance with the empty prompt as MVDream's sampler does it (`[uncond, cond]` rows,
`uncond + s·(cond − uncond)`), DDIM η = 0 on the `leading` timesteps `range(0, T, T//S) + 1`.

MVDream backbones use `dreamdist3d.sample2d.mvdream_preview.sample_views`; other backbones a small DDIM of its
own here (no scheduler object, latents or pixels alike), so previews work for any `Backbone`, including pixel-space
toy ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone


def ddim_timesteps(num_train: int, steps: int) -> torch.Tensor:
    """Descending `leading` timesteps with offset 1 (MVDream / SD: 981, 961, … 1 for 50 steps of 1000)."""
    steps = max(1, min(steps, num_train))
    return (torch.arange(0, num_train, num_train // steps)[:steps] + 1).clamp(max=num_train - 1).flip(0)


@torch.no_grad()
def ddim_sample(
    backbone: Backbone,
    cond: torch.Tensor,
    steps: int = 20,
    guidance: float = 7.5,
    generator: Optional[torch.Generator] = None,
    num_frames: int = 1,
    cameras: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """cond (n, 77, D) conditioning -> images (n·F, 3, R, R) in [-1, 1]; rows (n, F) with F = num_frames.

    cameras (F, 16) for multi-view backbones (None: no camera input)."""
    dev = backbone.device
    dtype = backbone.text_encoder.dtype
    n = cond.shape[0]
    rows = n * num_frames
    size = backbone.latent_size
    x = torch.randn((rows, backbone.latent_channels, size, size), generator=generator, dtype=torch.float32).to(dev)
    c = cond.to(dev, dtype).repeat_interleave(num_frames, 0)  # (n·F, 77, D)
    u = backbone.encode_text([""]).to(dtype).expand_as(c)
    context = torch.cat([u, c])
    cam = None
    if cameras is not None:
        cam = cameras.to(dev, dtype).repeat(n, 1)  # (n·F, 16)
        cam = torch.cat([cam, cam])
    sched = backbone.schedule
    ac = sched.alphas_cumprod.to(dev)
    ts = ddim_timesteps(sched.num_train_timesteps, steps).to(dev)
    for i, t in enumerate(ts):
        tt = t.expand(2 * rows)
        out = backbone(torch.cat([x, x]).to(dtype), tt, context, camera=cam, num_frames=num_frames).float()
        out_u, out_c = out.chunk(2)
        out = out_u + guidance * (out_c - out_u)
        tb = t.expand(rows)
        x0 = sched.predict_x0(x, out, tb)
        eps = sched.predict_eps(x, out, tb)
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else ac[0]
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return backbone.decode_latents(x.to(dtype)).float().clamp(-1, 1)


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
) -> Path:
    """Fit the current distribution, draw `n_samples` prompts (fixed seed: comparable across steps), render, save PNG."""
    from dreamdist3d.images import save_png

    g = torch.Generator().manual_seed(seed)
    gauss = learner.fit()
    cond = gauss.sample(n_samples, generator=g)  # (n, 77, D)
    if num_frames > 1 and backbone.supports_camera:  # MVDream: the 4-view preview sampler of dreamdist3d.sample2d
        from dreamdist3d.sample2d.mvdream_preview import sample_views

        uncond = backbone.encode_text([""])
        views = sample_views(backbone, cond.to(uncond.dtype), uncond, steps=steps, cfg=guidance, seed=seed,
                             num_frames=num_frames)  # (n, F, 3, H, W) in [0, 1]
        imgs = views.flatten(0, 1) * 2 - 1
    else:
        imgs = ddim_sample(backbone, cond, steps, guidance, g, num_frames, cameras)
    grid = image_grid(imgs, ncol=num_frames if num_frames > 1 else n_samples)
    return save_png(grid, path)


__all__ = ["ddim_sample", "ddim_timesteps", "image_grid", "write_preview"]
