"""Building blocks of LGM's asymmetric U-Net (`LGMUNet`), written for this package.

Same modules, attribute names and numbers as the official `core/unet.py` of 3DTopia/LGM, so its `state_dict()` keys
(`unet.*` in a released checkpoint) load as they are:

- `ResnetBlock`: GN → SiLU → conv3×3 → GN → SiLU → conv3×3, plus the input (1×1 `shortcut` conv when the width
  changes), all times `skip_scale` (√½ in LGM). GroupNorm: 32 groups, eps 1e-5.
- `MVAttention`: GN, then self-attention over the tokens of ALL views of one object together (the only place views
  meet), residual, times `skip_scale`. Packed `attn.qkv` (no bias) and `attn.proj` (bias); 16 heads in LGM.
- `DownBlock` (`nets`, `attns`, `downsample` = conv3×3 stride 2), `MidBlock`, `UpBlock` (`nets`, `attns`, `upsample`
  = nearest ×2 then conv3×3), and the `LGMUNet` that chains them with LGM's skip bookkeeping.

Differences from the official code, none of which changes the numbers in float32 beyond rounding:
- attention runs through `scaled_dot_product_attention` (`set_attention_fn` swaps the kernel) instead of xformers'
  `memory_efficient_attention` or the materialised q·kᵀ;
- the number of views is an argument of `forward` (the official MVAttention hard-codes 4);
- a level without attention has an empty `attns` list (the official list holds `None`s, which have no keys either).
Batch layout: rows are (b v), row = b·V + v, the V views of one object next to each other.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.backbones.multiview_blocks import AttentionFn, sdpa_attention

SKIP_SCALE = math.sqrt(0.5)  # LGM's UNet default
ATTENTION_HEADS = 16  # LGM's DownBlock/MidBlock/UpBlock default (the UNet never changes it)
LAYERS_PER_BLOCK = 2  # LGM's UNet default (LGM never changes it); up blocks have one more


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-5, affine=True)


class ResnetBlock(nn.Module):
    """forward(x (N,C_in,H,W)) -> (N,C_out,H,W)."""

    def __init__(self, in_channels: int, out_channels: int, skip_scale: float = SKIP_SCALE) -> None:
        super().__init__()
        self.skip_scale = skip_scale
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * self.skip_scale


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with a packed qkv projection: (B,L,C) -> (B,L,C). Keys `qkv`, `proj`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.attention_fn: AttentionFn = sdpa_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B,h,L,d)
        out = self.attention_fn(q, k, v)  # (B,h,L,d)
        return self.proj(out.transpose(1, 2).reshape(b, length, c))


class MVAttention(nn.Module):
    """forward(x ((b v),C,H,W), num_views=v) -> same shape; attention over the v·H·W tokens of one object."""

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, skip_scale: float = SKIP_SCALE) -> None:
        super().__init__()
        self.skip_scale = skip_scale
        self.norm = group_norm(dim)
        self.attn = PackedSelfAttention(dim, heads)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        bv, c, h, w = x.shape
        b = bv // num_views
        t = self.norm(x).reshape(b, num_views, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, c)  # (b, v·h·w, c)
        t = self.attn(t)
        t = t.reshape(b, num_views, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        return (t + x) * self.skip_scale


def _attentions(attention: bool, channels: int, n: int) -> nn.ModuleList:
    return nn.ModuleList([MVAttention(channels) for _ in range(n)] if attention else [])


class DownBlock(nn.Module):
    """`layers` × [ResnetBlock (+ MVAttention)], then (not at the last level) a stride-2 conv.

    forward(x, num_views) -> (x, skips): every layer's output and the downsampled one are skips."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, downsample: bool,
                 layers: int = LAYERS_PER_BLOCK) -> None:
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels)
                                   for i in range(layers)])
        self.attns = _attentions(attention, out_channels, layers)
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor, num_views: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns:
                x = self.attns[i](x, num_views)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResnetBlock, then (MVAttention →) ResnetBlock."""

    def __init__(self, channels: int, attention: bool) -> None:
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels), ResnetBlock(channels, channels)])
        self.attns = _attentions(attention, channels, 1)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        x = self.nets[0](x)
        if self.attns:
            x = self.attns[0](x, num_views)
        return self.nets[1](x)


class UpBlock(nn.Module):
    """`layers` × [concat a skip → ResnetBlock (+ MVAttention)], then (not at the last level) nearest ×2 + conv3×3.

    The skips are taken from the end of the list; the last layer's skip has `skip_channels` channels, the others
    `out_channels` (LGM's rule)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, attention: bool, upsample: bool,
                 layers: int = LAYERS_PER_BLOCK + 1) -> None:
        super().__init__()
        self.nets = nn.ModuleList([
            ResnetBlock((in_channels if i == 0 else out_channels) + (skip_channels if i == layers - 1 else
                                                                     out_channels), out_channels)
            for i in range(layers)
        ])
        self.attns = _attentions(attention, out_channels, layers)
        self.upsample = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor], num_views: int) -> torch.Tensor:
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, skips.pop()], dim=1))
            if self.attns:
                x = self.attns[i](x, num_views)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


def skip_channels(down_channels: Sequence[int], level: int) -> int:
    """Channels LGM assumes for the last skip of up level `level` (`down_channels[max(-2 - i, -len)]`)."""
    return down_channels[max(-2 - level, -len(down_channels))]


def check_unet_layout(down_channels: Sequence[int], down_attention: Sequence[bool], up_channels: Sequence[int],
                      up_attention: Sequence[bool]) -> None:
    """Raise ValueError (naming the option) unless the official U-Net can run this layout: widths divisible by
    GroupNorm's 32 groups and the 16 heads, one attention flag per level, the middle width = up_channels[0], and the
    skip widths LGM assumes equal to the ones the down path produces."""
    if not down_channels or not up_channels:
        raise ValueError("down_channels and up_channels need at least one level each")
    if len(down_attention) != len(down_channels) or len(up_attention) != len(up_channels):
        raise ValueError(f"one attention flag per level: down_attention {list(down_attention)} for down_channels "
                         f"{list(down_channels)}, up_attention {list(up_attention)} for up_channels "
                         f"{list(up_channels)}")
    bad = [c for c in [*down_channels, *up_channels] if c % 32 or c % ATTENTION_HEADS]
    if bad:
        raise ValueError(f"channel widths {bad} are not multiples of 32 (GroupNorm groups and 16 attention heads)")
    if up_channels[0] != down_channels[-1]:
        raise ValueError(f"up_channels[0]={up_channels[0]} must equal down_channels[-1]={down_channels[-1]} (the "
                         "first up block takes the middle block's output)")
    stack = [down_channels[0]]  # channels of the skips, as the down path pushes them
    for i, c in enumerate(down_channels):
        stack += [c] * (LAYERS_PER_BLOCK + (i != len(down_channels) - 1))
    n_up = LAYERS_PER_BLOCK + 1
    if len(stack) < n_up * len(up_channels):
        raise ValueError(f"up_channels' {len(up_channels)} levels need {n_up * len(up_channels)} skips, the "
                         f"{len(down_channels)} levels of down_channels make {len(stack)}")
    for i, c in enumerate(up_channels):
        want = [c] * (n_up - 1) + [skip_channels(down_channels, i)]  # what UpBlock i's layers expect, in order
        got = [stack.pop() for _ in range(n_up)]
        if got != want:
            raise ValueError(f"up level {i}: skips of {got} channels arrive, LGM's layout expects {want}; change "
                             "up_channels / down_channels")


class LGMUNet(nn.Module):
    """LGM's U-Net: forward(x ((b v),in,H,W), num_views) -> ((b v),out,H',W'), H' = H·2^(len(up)-1)/2^(len(down)-1).

    Keys: conv_in, down_blocks.*, mid_block.*, up_blocks.*, norm_out, conv_out (the official `core.unet.UNet`)."""

    def __init__(self, in_channels: int, out_channels: int, down_channels: Sequence[int],
                 down_attention: Sequence[bool], mid_attention: bool, up_channels: Sequence[int],
                 up_attention: Sequence[bool]) -> None:
        super().__init__()
        check_unet_layout(down_channels, down_attention, up_channels, up_attention)
        self.conv_in = nn.Conv2d(in_channels, down_channels[0], 3, padding=1)
        last = len(down_channels) - 1
        self.down_blocks = nn.ModuleList([
            DownBlock(down_channels[max(i - 1, 0)], c, bool(down_attention[i]), downsample=i != last)
            for i, c in enumerate(down_channels)
        ])
        self.mid_block = MidBlock(down_channels[-1], bool(mid_attention))
        last = len(up_channels) - 1
        self.up_blocks = nn.ModuleList([
            UpBlock(up_channels[max(i - 1, 0)], skip_channels(down_channels, i), c, bool(up_attention[i]),
                    upsample=i != last)
            for i, c in enumerate(up_channels)
        ])
        self.norm_out = group_norm(up_channels[-1])
        self.conv_out = nn.Conv2d(up_channels[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, num_views)
            skips += s
        x = self.mid_block(x, num_views)
        for block in self.up_blocks:
            n = len(block.nets)
            mine, skips = skips[-n:], skips[:-n]
            x = block(x, mine, num_views)
        return self.conv_out(F.silu(self.norm_out(x)))


__all__ = ["ATTENTION_HEADS", "DownBlock", "LGMUNet", "MVAttention", "MidBlock", "PackedSelfAttention",
           "ResnetBlock", "UpBlock", "check_unet_layout", "skip_channels"]
