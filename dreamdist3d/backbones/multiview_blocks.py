"""Building blocks of `MultiViewUNet` (multiview_unet.py): timestep sinusoids and embedding MLP, the float32 GroupNorm,
up/downsampling, the ResBlock, attention (`sdpa_attention`, CrossAttention, GEGLU feed-forward), the multi-view
transformer (BasicTransformerBlock3D, SpatialTransformer3D) and `UNetStage`, the container of one UNet stage.

Kept beside the model the way diffusers keeps `unet_2d_blocks.py` beside its UNets; the module a class lives in does not
appear in `state_dict()` keys. See multiview_unet.py for the batch layout `(b f)` and the differences from the official
MVDream code.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# (q (B,heads,Lq,d), k (B,heads,Lk,d), v (B,heads,Lk,d)) -> (B,heads,Lq,d), softmax(q·kᵀ/sqrt(d))·v
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------- attention
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ·d^-0.5)·v through PyTorch's fused kernel. Shapes (B,heads,L,d)."""
    return F.scaled_dot_product_attention(q, k, v)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps (int or float) -> (N, dim) float32 sinusoids, `[cos, sin]` (cos first), no shift.

    freqs_i = exp(-ln(max_period)·i/half), i < half = dim//2; an odd dim gets one zero column at the end.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2·half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) computed in float32 and cast back (the official `normalization`)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class TimestepEmbedding(nn.Sequential):
    """Linear(in, dim) → SiLU → Linear(dim, dim). Used for `time_embed` (sinusoids -> emb) and `camera_embed`."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


# ---------------------------------------------------------------------------------------------------- conv blocks
class Downsample(nn.Module):
    """×½: conv3x3 stride 2 pad 1 (`op`), or 2×2 average pooling when `use_conv=False`. (N,C,H,W) -> (N,C',H/2,W/2)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample without a conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """×2: nearest-neighbour, then conv3x3 (`conv`) when `use_conv`. (N,C,H,W) -> (N,C',2H,2W)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """GN → SiLU → conv3x3, + emb (SiLU → Linear), GN → SiLU → dropout → conv3x3, + skip (1×1 conv if C changes).

    forward(x (N,C,H,W), emb (N,E)) -> (N,C_out,H',W'); `up`/`down` resample inside (resblock_updown=True).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3,
                                                                                   padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout), nn.Conv2d(out_channels, out_channels, 3,
                                                                                   padding=1)
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)  # (N,C_out,H,W)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (N,C_out or 2·C_out,1,1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


# ---------------------------------------------------------------------------------------------------- transformer
class CrossAttention(nn.Module):
    """Multi-head attention of x (N,Lq,dim) to context (N,Lk,context_dim) (self-attention when context is None).

    q/k/v Linear without bias; `to_out` = Linear(heads·d_head, dim) with bias → Dropout. Scale d_head^-0.5.
    """

    def __init__(
        self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64,
        dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.attention_fn: AttentionFn = sdpa_attention

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        n, lq, _ = x.shape
        # (N,L,heads·d) -> (N,heads,L,d)
        q, k, v = (
            t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        out = self.attention_fn(q, k, v)  # (N,heads,Lq,d)
        return self.to_out(out.transpose(1, 2).reshape(n, lq, -1))


class GEGLU(nn.Module):
    """proj: dim -> 2·inner; split [x, gate]; x·GELU(gate) (exact GELU). (…,dim) -> (…,inner)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """net = [GEGLU(dim, 4·dim), Dropout, Linear(4·dim, dim)] (keys ff.net.0.proj, ff.net.2)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """x + attn1(LN x) across the views, x + attn2(LN x, context) per row, x + ff(LN x) per row.

    forward(x ((b f), L, dim), context ((b f), 77, D), num_frames=f) -> ((b f), L, dim). For attn1 the tokens of
    the f views of one object are put in one sequence: `(b f) L c -> b (f L) c` (view-major).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: Optional[int] = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)  # self-attention
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, num_frames: int = 1) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, num_frames, use_reentrant=False)
        return self._forward(x, context, num_frames)

    def _forward(self, x: torch.Tensor, context: Optional[torch.Tensor], num_frames: int) -> torch.Tensor:
        bf, length, c = x.shape
        x = x.reshape(bf // num_frames, num_frames * length, c)  # (b, f·L, c)
        x = self.attn1(self.norm1(x)) + x
        x = x.reshape(bf, length, c)  # ((b f), L, c)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm(32, eps 1e-6) → proj_in → `depth` BasicTransformerBlock3D → proj_out → + input.

    forward(x ((b f),C,H,W), context, num_frames) -> ((b f),C,H,W). With use_linear, proj_in/proj_out are Linear on
    tokens ((b f), H·W, C); else 1×1 convs on the feature map. `proj_out` is declared Linear(C, inner) as in the
    official code (arguments swapped; the same thing because inner == C).
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: Union[None, int, Sequence[int]] = None,
        use_linear: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner = n_heads * d_head
        if inner != in_channels:
            raise ValueError(
                f"SpatialTransformer3D: heads·d_head = {n_heads}·{d_head} = {inner} must equal the {in_channels} "
                "channels (the official proj_out only works then); check num_heads / num_head_channels"
            )
        context_dims = [context_dim] * depth if context_dim is None or isinstance(context_dim,
                                                                                  int) else list(context_dim)
        if len(context_dims) < depth:
            raise ValueError(f"context_dim {context_dim} has fewer than transformer_depth={depth} entries")
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        self.use_linear = use_linear
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, n_heads, d_head, dropout, context_dims[d],
                                    use_checkpoint) for d in range(depth)
        )
        self.proj_out = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(inner, in_channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, x: torch.Tensor, context: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None, num_frames: int = 1
    ) -> torch.Tensor:
        n, c, h, w = x.shape
        contexts = list(context) if isinstance(context, (list, tuple)) else [context] * len(self.transformer_blocks)
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # (N, H·W, C)
        if self.use_linear:
            x = self.proj_in(x)
        for block, ctx in zip(self.transformer_blocks, contexts):
            x = block(x, ctx, num_frames)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(n, -1, h, w)  # (N, C, H, W)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class UNetStage(nn.Sequential):
    """One entry of input_blocks / output_blocks / the middle block: layers applied in order, each given what it
    needs."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Any = None, num_frames: int = 1) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x
