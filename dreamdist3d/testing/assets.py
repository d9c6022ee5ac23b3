"""Small assets for tests and CPU smoke runs of the 3D runner (no downloads, seconds to make).

- `write_tiny_assets(folder, seed)`: a tiny random MVDream-layout checkpoint (`tiny-mvdream.pt`, written by
  `dreamdist3d.testing.checkpoints`) and a prompt distribution learned "against" its text encoder
  (`tiny-dist.safetensors`: random context vectors with a wide spread, so two seeds give clearly different samples).
- `OracleDenoiser`: a denoiser with MVDream's call signature that knows the answer: every clean image is `target`
  (a (C,h,w) tensor), so ε̂(x_t, t) = (x_t − sqrt(ᾱ_t)·target)/sqrt(1 − ᾱ_t) and x̂0 = target. SDS against it is a
  regression of the renders onto `target`; tests use it to check that the whole loop optimises (falling loss).
- `disk_image(size, radius, color)`: a centred coloured disk on white in [-1, 1] (what a ball looks like from any
  camera of the relative-radius datamodule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from dreamdist3d.backbones.schedule import NoiseSchedule

CKPT_NAME = "tiny-mvdream.pt"
DIST_NAME = "tiny-dist.safetensors"


def write_tiny_assets(folder, seed: int = 0, n_prompts: int = 8, ctx_scale: float = 20.0,
                      prefix: str = "a photo of", suffix: str = "") -> Tuple[Path, Path]:
    """(checkpoint path, distribution path) in `folder`; reused when already there."""
    from dreamdist3d.backbones.mvdream import load_mvdream
    from dreamdist3d.distribution import PromptDistribution, PromptLearner
    from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt, dist = folder / CKPT_NAME, folder / DIST_NAME
    if not ckpt.is_file():
        write_tiny_mvdream_checkpoint(ckpt, seed=seed)
    if not dist.is_file():
        bb = load_mvdream(ckpt)
        learner = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=4, n_prompts=n_prompts, prefix=prefix,
                                suffix=suffix,
                                generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            learner.ctx.mul_(ctx_scale)
        PromptDistribution.from_learner(learner, backbone=f"tiny-mvdream seed {seed}",
                                        source="dreamdist3d.testing.assets").save(dist)
    return ckpt, dist


def disk_image(size: int, radius: float = 0.55, color: Sequence[float] = (0.9, 0.1, 0.1)) -> torch.Tensor:
    """(3, size, size) in [-1, 1]: a centred disk of `radius` (fraction of the half-width) on white."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = ((xx**2 + yy**2).sqrt() < radius).float()
    col = torch.tensor(list(color), dtype=torch.float32)[:, None, None]
    img = inside * col + (1 - inside) * torch.ones(3, 1, 1)
    return img * 2 - 1


class OracleDenoiser(nn.Module):
    """ε-prediction that is exact when every clean sample equals `target` (C, h, w)."""

    def __init__(self, target: torch.Tensor, schedule: Optional[NoiseSchedule] = None) -> None:
        super().__init__()
        self.register_buffer("target", target.float())
        self.register_buffer("alphas_cumprod", (schedule or NoiseSchedule.scaled_linear()).alphas_cumprod.clone())

    def forward(self, x, timesteps, context=None, camera=None, num_frames: int = 1):
        assert x.shape[0] % num_frames == 0, "batch must hold whole multi-view groups"
        a = self.alphas_cumprod[timesteps.long()].to(x).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target.to(x)) / (1 - a).sqrt()


def oracle_backbone(ckpt_path, target: torch.Tensor, resolution: int):
    """A pixel-space Backbone with the tiny checkpoint's text side and an `OracleDenoiser`."""
    from dreamdist3d.backbones.base import Backbone
    from dreamdist3d.backbones.mvdream import load_mvdream

    bb = load_mvdream(ckpt_path)
    return Backbone(
        name="oracle", tokenizer=bb.tokenizer, text_encoder=bb.text_encoder, unet=OracleDenoiser(target, bb.schedule),
        schedule=bb.schedule, resolution=resolution, vae=None, supports_camera=True, source=f"oracle on {ckpt_path}",
    )
