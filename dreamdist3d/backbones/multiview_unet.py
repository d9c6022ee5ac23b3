"""MVDream's multi-view UNet (`MultiViewUNetModel`), written for this package.

Same constructor arguments as the official `mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel`, same
`state_dict()` keys (the official `model.diffusion_model.*` keys without that prefix, so the released
`sd-v2.1-base-4view.pt` loads with `strict=True`), same numbers (checked against `mvdream-unet-tiny-a`).

Batch layout: rows are `(b f)` (row = b·F + f): the F = `num_frames` views of one object are next to each other.
Only the self-attention (`attn1`) of each transformer block spans the views of one object; everything else —
convolutions, cross-attention to the text, feed-forward — runs per row. `num_frames=1` and `camera=None` is plain
SD-2.1 behaviour.

Differences from the official code, none of which changes the numbers in float32:
- attention goes through `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on
  CUDA) instead of an einsum that materialises the (L×L) weights; `set_attention_fn` swaps it (benchmarks do);
- gradient checkpointing uses `torch.utils.checkpoint` (non-reentrant) per ResBlock / transformer block, and only when
  gradients are being recorded;
- the model computes in the dtype of its weights (`model.to(torch.bfloat16)` works without autocast); GroupNorms of
  the ResBlocks and of the output run in float32, as the official `GroupNorm32` does; the output is returned in the
  dtype of `x`;
- a plain tensor `context` with `transformer_depth > 1` and an int `context_dim` are accepted (the official code
  needs `context_dim=[D]*depth` and a list of contexts); a list of `depth` contexts is accepted as well.

Not implemented (a clear NotImplementedError is raised): `use_spatial_transformer=False` (the old `AttentionBlock`),
`num_classes`/`adm_in_channels`, `n_embed`, `dims != 2`, `use_fp16`/`use_bf16` (use `model.to(dtype)` or autocast),
`disable_self_attentions` / `disable_middle_self_attn` (the official 3-D block breaks with them when F > 1).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from dreamdist3d.backbones.multiview_blocks import (
    GEGLU,
    AttentionFn,
    BasicTransformerBlock3D,
    CrossAttention,
    Downsample,
    FeedForward,
    GroupNorm32,
    ResBlock,
    SpatialTransformer3D,
    TimestepEmbedding,
    UNetStage,
    Upsample,
    sdpa_attention,
    timestep_embedding,
)

# The blocks are re-exported: they were defined here before the split into multiview_blocks.py.
__all__ = [
    "MVDREAM_SD21_CONFIG", "AttentionFn", "BasicTransformerBlock3D", "CrossAttention", "Downsample", "FeedForward",
    "GEGLU", "GroupNorm32", "MultiViewUNet", "ResBlock", "SpatialTransformer3D", "TimestepEmbedding", "UNetStage",
    "Upsample", "sdpa_attention", "timestep_embedding",
]

# Constructor kwargs of the released sd-v2.1-base-4view UNet (MVDream configs/sd-v2-base.yaml, unet_config.params).
# Its state_dict matches the 690 `model.diffusion_model.*` entries of ../shared/reference/mvdream-sd21-4view-keys.json.
MVDREAM_SD21_CONFIG: Dict[str, Any] = dict(
    image_size=32,  # unused by the network
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
    use_checkpoint=False,  # the yaml says False; checkpointing does not change keys or numbers
    legacy=False,
    camera_dim=16,
)


# ---------------------------------------------------------------------------------------------------- the UNet
class MultiViewUNet(nn.Module):
    """MVDream's `MultiViewUNetModel`: `forward(x ((b f),C,H,W), timesteps ((b f),), context ((b f),77,D),
    camera ((b f),camera_dim) | None, num_frames=f) -> ((b f),out_channels,H,W)` (ε prediction for MVDream).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: Union[int, Sequence[int]],
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[Union[int, str]] = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        use_bf16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: Union[None, int, Sequence[int]] = None,
        n_embed: Optional[int] = None,
        legacy: bool = True,
        disable_self_attentions: Optional[Sequence[bool]] = None,
        num_attention_blocks: Optional[Sequence[int]] = None,
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,
        adm_in_channels: Optional[int] = None,
        camera_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        channel_mult = list(channel_mult)
        attention_resolutions = list(attention_resolutions)
        if context_dim is not None and not isinstance(context_dim, int):
            context_dim = [int(c) for c in context_dim]  # omegaconf ListConfig / tuple
        self.config = dict(
            image_size=image_size, in_channels=in_channels, model_channels=model_channels, out_channels=out_channels,
            num_res_blocks=num_res_blocks if isinstance(num_res_blocks, int) else list(num_res_blocks),
            attention_resolutions=attention_resolutions, dropout=dropout, channel_mult=channel_mult,
            conv_resample=conv_resample, dims=dims, use_checkpoint=use_checkpoint, num_heads=num_heads,
            num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
            use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order, use_spatial_transformer=use_spatial_transformer,
            transformer_depth=transformer_depth, context_dim=context_dim, legacy=legacy,
            num_attention_blocks=None if num_attention_blocks is None else list(num_attention_blocks),
            use_linear_in_transformer=use_linear_in_transformer, camera_dim=camera_dim,
        )

        disabled_self_attn = bool(disable_self_attentions and any(disable_self_attentions)) or disable_middle_self_attn
        unsupported = {
            "use_spatial_transformer=False (the old AttentionBlock UNet)": not use_spatial_transformer,
            "num_classes / adm_in_channels (class-conditional label_emb)": (num_classes, adm_in_channels) != (None,
                                                                                                              None),
            "n_embed (codebook id predictor)": n_embed is not None,
            f"dims={dims} (only 2-D)": dims != 2,
            "use_fp16 / use_bf16 (use model.to(dtype) or torch.autocast instead)": use_fp16 or use_bf16,
            "disable_self_attentions / disable_middle_self_attn": disabled_self_attn,
        }
        for what, hit in unsupported.items():
            if hit:
                raise NotImplementedError(f"MultiViewUNet does not implement {what}")
        if context_dim is None:
            raise ValueError("MultiViewUNet needs context_dim (the text-encoder width, 1024 for MVDream SD 2.1)")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels (MVDream: num_head_channels=64)")
        nrb = [num_res_blocks] * len(channel_mult) if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(nrb) != len(channel_mult):
            raise ValueError(
                f"num_res_blocks {num_res_blocks} must be an int or have len(channel_mult)={len(channel_mult)} entries"
            )
        if num_attention_blocks is not None and (
            len(num_attention_blocks) != len(nrb) or any(a > r for a, r in zip(num_attention_blocks, nrb))
        ):
            raise ValueError(f"num_attention_blocks {num_attention_blocks} must have one entry ≤ num_res_blocks per "
                             "level")

        self.model_channels = model_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_res_blocks = nrb
        self.camera_dim = camera_dim
        emb_dim = model_channels * 4

        def heads_for(ch: int) -> tuple:
            """(n_heads, d_head) at width ch, as the official constructor derives them."""
            if num_head_channels == -1:
                n, d = num_heads, ch // num_heads
            else:
                n, d = ch // num_head_channels, num_head_channels
            if legacy:
                d = ch // n
            return n, d

        def res(ch_in: int, ch_out: Optional[int] = None, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint, **kw)

        def transformer(ch: int) -> SpatialTransformer3D:
            n, d = heads_for(ch)
            return SpatialTransformer3D(
                ch, n, d, transformer_depth, dropout, context_dim, use_linear_in_transformer, use_checkpoint
            )

        def wants_attention(ds: int, level: int, index: int) -> bool:
            return ds in attention_resolutions and (num_attention_blocks is None or index < num_attention_blocks[level])

        self.time_embed = TimestepEmbedding(model_channels, emb_dim)
        if camera_dim is not None:
            self.camera_embed = TimestepEmbedding(camera_dim, emb_dim)

        # encoder: conv_in, then per level nrb × [ResBlock (+ transformer)], then a Downsample (not after the last)
        self.input_blocks = nn.ModuleList([UNetStage(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for nr in range(nrb[level]):
                layers: List[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if wants_attention(ds, level, nr):
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetStage(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(UNetStage(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = UNetStage(res(ch), transformer(ch), res(ch))

        # decoder: per level (nrb+1) × [ResBlock on concat(h, skip) (+ transformer)], Upsample after the last (not level
        # 0)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(nrb[level] + 1):
                layers = [res(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if wants_attention(ds, level, i):
                    layers.append(transformer(ch))
                if level and i == nrb[level]:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(UNetStage(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MultiViewUNet":
        """Build from constructor kwargs, or from an official `unet_config` block ({target, params})."""
        if hasattr(config, "items") and "params" in config and "target" in config:
            config = config["params"]
        def plain(v: Any) -> Any:  # omegaconf ListConfig / tuple -> list
            return list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v

        kwargs = {k: plain(v) for k, v in dict(config).items()}
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"MultiViewUNet.from_config: unknown key(s) {unknown}; expected MultiViewUNetModel arguments "
                f"{sorted(known)}"
            )
        return cls(**kwargs)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "MultiViewUNet":
        """Recompute each ResBlock / transformer block in backward (torch.utils.checkpoint, non-reentrant)."""
        for m in self.modules():
            if isinstance(m, (ResBlock, BasicTransformerBlock3D)):
                m.use_checkpoint = enabled
        return self

    def set_attention_fn(self, fn: AttentionFn = sdpa_attention) -> "MultiViewUNet":
        """Replace the attention kernel of every CrossAttention (q,k,v (B,heads,L,d) -> (B,heads,Lq,d))."""
        for m in self.modules():
            if isinstance(m, CrossAttention):
                m.attention_fn = fn
        return self

    # ------------------------------------------------------------------ forward
    def condition_embedding(self, context) -> Optional[torch.Tensor]:
        """(N, 4·mc) added to the timestep embedding before the camera's; None here (MVDream has none). A subclass
        conditioning its ResBlocks on the text too (the toy UNet's pooled text) returns it."""
        return None

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: Union[torch.Tensor, Sequence[torch.Tensor]],
        camera: Optional[torch.Tensor] = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        n = x.shape[0]
        if n % num_frames:
            raise ValueError(f"batch {n} must be divisible by num_frames={num_frames} (rows are (b f), views "
                             "contiguous)")
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(n)

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))  # (N, 4·mc)
        extra = self.condition_embedding(context)
        if extra is not None:
            emb = emb + extra
        if camera is not None:
            if self.camera_dim is None:
                raise ValueError("this UNet has no camera_embed (camera_dim=None); pass camera=None")
            if camera.shape[0] != n:
                raise ValueError(f"camera has {camera.shape[0]} rows, x has {n}; give one camera per row")
            emb = emb + self.camera_embed(camera.to(dtype))

        if isinstance(context, (list, tuple)):
            context = [c.to(dtype) for c in context]
        elif context is not None:
            context = context.to(dtype)

        h = x.to(dtype)
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h).to(x.dtype)
