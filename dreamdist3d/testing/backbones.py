"""A tiny random pixel-space `Backbone` for tests and smoke runs of the learning recipe (no files, no downloads).

    dreamdist3d learn --images DIR --backbone dreamdist3d.testing.backbones:tiny_pixel_backbone --steps 50 ...

Text encoder: 2 CLIP layers of width 32 over the real CLIP BPE tokenizer; denoiser: a 2-level diffusers
`UNet2DConditionModel` (cross-attention to the 77 text states) on 3-channel 16×16 images (vae=None: pixel space),
behind the MVDream call signature; ε-prediction on the SD/MVDream schedule. Seeded, so every call builds the same
network.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.text import ClipTokenizer, TextEncoder


def tiny_text_encoder(seed: int = 0, width: int = 32, layers: int = 2) -> TextEncoder:
    from transformers import CLIPTextConfig

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG: leave it untouched
        torch.manual_seed(seed)
        enc = TextEncoder.from_config(CLIPTextConfig(
            vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_attention_heads=4,
            num_hidden_layers=layers, max_position_embeddings=77, hidden_act="gelu", projection_dim=width,
            layer_norm_eps=1e-5,
        ))
    with torch.no_grad():  # seeded explicitly: independent of transformers' init scheme
        for name, p in enc.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if "embedding" in name else p.shape[-1] ** -0.5))
    return enc


class ToyDenoiser(nn.Module):
    """A minimal text-conditioned denoiser with the MVDream call signature (fast: for recipe tests).

    conv_in → + timestep MLP → + cross-attention of every pixel to the 77 text states → SiLU conv → conv_out.
    `camera` (N, 16), when given, is added to the timestep embedding through a linear layer, like MVDream's."""

    def __init__(self, channels: int = 3, context_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.camera = nn.Linear(16, width)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(context_dim, 2 * width, bias=False)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():  # variance-preserving random weights: outputs O(1) and strongly text-dependent
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim >= 2 else 1
                p.copy_(torch.randn_like(p) * (1.5 / math.sqrt(fan_in) if p.ndim >= 2 else 0.1))

    def forward(self, x, timesteps, context, camera=None, num_frames: int = 1):
        n, _, h, w = x.shape
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
        args = timesteps.float()[:, None] * freqs[None]
        emb = self.time(torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype))  # (N, W)
        if camera is not None:
            emb = emb + self.camera(camera.to(x.dtype))
        hid = self.conv_in(x) + emb[:, :, None, None]
        tokens = hid.flatten(2).transpose(1, 2)  # (N, hw, W)
        k, v = self.kv(context.to(x.dtype)).chunk(2, dim=-1)  # (N, 77, W) each
        att = F.scaled_dot_product_attention(self.q(tokens)[:, None], k[:, None], v[:, None])[:, 0]
        hid = hid + att.transpose(1, 2).reshape(n, self.width, h, w)
        return self.conv_out(F.silu(self.mid(F.silu(hid))))


def tiny_toy_backbone(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                      resolution: int = 8, seed: int = 0, prediction_type: str = "epsilon",
                      supports_camera: bool = False) -> Backbone:
    """Pixel-space Backbone with a `ToyDenoiser` (milliseconds per step): for recipe tests."""
    enc = tiny_text_encoder(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        den = ToyDenoiser(3, enc.hidden_size)
    bb = Backbone(name="tiny-toy", tokenizer=ClipTokenizer.default(), text_encoder=enc, unet=den,
                  schedule=NoiseSchedule.scaled_linear(prediction_type), resolution=resolution, vae=None,
                  supports_camera=supports_camera, source=f"dreamdist3d.testing.backbones toy seed {seed}")
    return bb.to(device=device, dtype=dtype)


def tiny_pixel_backbone(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                        resolution: int = 16, seed: int = 0, prediction_type: str = "epsilon") -> Backbone:
    from diffusers import UNet2DConditionModel

    from dreamdist3d.backbones.sd21 import DiffusersUNetAdapter

    enc = tiny_text_encoder(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",
                                                                                      "CrossAttnUpBlock2D"),
            cross_attention_dim=enc.hidden_size, attention_head_dim=8, norm_num_groups=8,
        )
    bb = Backbone(name="tiny-pixel", tokenizer=ClipTokenizer.default(), text_encoder=enc,
                  unet=DiffusersUNetAdapter(unet), schedule=NoiseSchedule.scaled_linear(prediction_type),
                  resolution=resolution, vae=None, supports_camera=False,
                  source=f"dreamdist3d.testing.backbones seed {seed}")
    return bb.to(device=device, dtype=dtype)


__all__ = ["ToyDenoiser", "tiny_pixel_backbone", "tiny_text_encoder", "tiny_toy_backbone"]
