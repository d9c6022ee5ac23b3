"""LDM `AutoencoderKL` (the `first_stage_model.*` keys of an SD / MVDream single-file checkpoint) <-> diffusers.

The mapping is written out key by key (not diffusers' substring-based single-file helpers) because we need it in
both directions — checkpoint -> diffusers to load, diffusers -> checkpoint names to write tiny official-layout files
and to prove every key of the released file is consumed — and because loading must be strict: every checkpoint key
is used exactly once and every diffusers parameter is filled, or the error lists what is off.

Differences handled:
- block names (`down.i.block.j` <-> `down_blocks.i.resnets.j`, `mid.block_1` <-> `mid_block.resnets.0`, decoder
  `up.i` <-> `up_blocks.(n-1-i)`, `nin_shortcut` <-> `conv_shortcut`, `norm_out` <-> `conv_norm_out`);
- the mid-block attention: LDM has 1×1 Conv2d q/k/v/proj_out (C,C,1,1), diffusers Linear `to_q/to_k/to_v/to_out.0`
  (C,C): squeezed on load, unsqueezed on save.
Both sides use GroupNorm(32, eps=1e-6) everywhere in the VAE and one single-head attention in each mid block.
"""

from __future__ import annotations

import inspect
import re
from typing import Dict, Mapping, Optional, Set, Tuple

import torch
from diffusers import AutoencoderKL

LDM_VAE_PREFIX = "first_stage_model."
SD_SCALE_FACTOR = 0.18215

_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_key(diffusers_key: str, num_blocks: int) -> str:
    """diffusers AutoencoderKL parameter name -> LDM name (without the `first_stage_model.` prefix)."""
    k = diffusers_key
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", k)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}".replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", k)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", k)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}".replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$", k)
    if m:
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)$", k)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\."
                 r"(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
    if m:
        return f"{m[1]}.mid.attn_1.{_ATTN[m[2]]}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)$", k)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)$", k) or re.match(
        r"(post_)?quant_conv\.(weight|bias)$", k
    ):
        return k
    raise KeyError(f"no LDM name known for diffusers VAE parameter {diffusers_key!r}")


def _is_attn_linear(ldm_key: str) -> bool:
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def vae_config_from_ldm(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = LDM_VAE_PREFIX,
    sample_size: int = 256,
    scaling_factor: float = SD_SCALE_FACTOR,
) -> Dict[str, object]:
    """diffusers `AutoencoderKL` config read off the LDM key shapes (the ddconfig is not stored in the checkpoint)."""

    def shape(k: str) -> Tuple[int, ...]:
        if prefix + k not in state_dict:
            raise KeyError(f"not an LDM AutoencoderKL: missing {prefix + k}")
        return tuple(state_dict[prefix + k].shape)

    keys = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    if any(re.match(r"encoder\.down\.\d+\.attn\.", k) or re.match(r"decoder\.up\.\d+\.attn\.", k) for k in keys):
        raise ValueError(
            "this LDM VAE has attention inside its down/up blocks (attn_resolutions non-empty); diffusers' "
            "AutoencoderKL (DownEncoderBlock2D/UpDecoderBlock2D) cannot hold it. SD/MVDream VAEs have none."
        )
    down = sorted({int(m[1]) for k in keys if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if not down:
        raise KeyError(f"not an LDM AutoencoderKL: no {prefix}encoder.down.* keys")
    block_out = [shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in down]
    layers = len({int(m[1]) for k in keys if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    latent = shape("decoder.conv_in.weight")[1]
    groups = 32
    return {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "latent_channels": latent,
        "norm_num_groups": groups,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "use_quant_conv": prefix + "quant_conv.weight" in state_dict,
        "use_post_quant_conv": prefix + "post_quant_conv.weight" in state_dict,
        "mid_block_add_attention": True,
    }


# AutoencoderKL switches that newer diffusers added (0.2x), with the behaviour older ones (e.g. threestudio's pinned
# 0.19.3) always have: quant convs and the mid-block attention present.
_NEWER_VAE_SWITCHES = {"use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}


def _vae_kwargs(config: Mapping[str, object]) -> Dict[str, object]:
    """`config` for the installed diffusers: a switch it does not know is dropped when its value is what that
    version always does, and is an error otherwise (such a VAE cannot be built there)."""
    accepted = inspect.signature(AutoencoderKL.__init__).parameters
    out = {}
    for k, v in dict(config).items():
        if k in accepted:
            out[k] = v
        elif k in _NEWER_VAE_SWITCHES and v == _NEWER_VAE_SWITCHES[k]:
            continue
        else:
            import diffusers

            raise ValueError(f"this VAE needs AutoencoderKL({k}={v!r}), which diffusers {diffusers.__version__} lacks: "
                             "upgrade diffusers")
    return out


def build_vae(config: Mapping[str, object], meta: bool = False) -> AutoencoderKL:
    """An AutoencoderKL from a config dict (on the meta device when `meta`, to be filled with assign=True)."""
    kwargs = _vae_kwargs(config)
    if meta:
        with torch.device("meta"):
            return AutoencoderKL(**kwargs)
    return AutoencoderKL(**kwargs)


def convert_ldm_vae(
    state_dict: Mapping[str, torch.Tensor],
    prefix: str = LDM_VAE_PREFIX,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    sample_size: int = 256,
    scaling_factor: float = SD_SCALE_FACTOR,
) -> Tuple[AutoencoderKL, Set[str]]:
    """LDM VAE keys (under `prefix`) -> (diffusers AutoencoderKL in eval mode, the set of checkpoint keys used).

    Strict: raises KeyError listing unknown `prefix*` keys, missing keys, or shape mismatches. The module is built on
    the meta device and filled with assign=True (no second copy of the weights)."""
    config = vae_config_from_ldm(state_dict, prefix, sample_size, scaling_factor)
    vae = build_vae(config, meta=True)
    n = len(config["block_out_channels"])
    own = vae.state_dict()
    sd: Dict[str, torch.Tensor] = {}
    missing, bad_shape = [], []
    used: Set[str] = set()
    for name, ref in own.items():
        src = prefix + ldm_vae_key(name, n)
        if src not in state_dict:
            missing.append(src)
            continue
        t = state_dict[src]
        if _is_attn_linear(src) and t.ndim == 4:
            t = t[:, :, 0, 0]
        if tuple(t.shape) != tuple(ref.shape):
            bad_shape.append(f"{src} {tuple(t.shape)} (expected {tuple(ref.shape)})")
            used.add(src)  # reported as a shape error, not as unexpected
            continue
        used.add(src)
        sd[name] = t.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else t
    unknown = sorted(k for k in state_dict if k.startswith(prefix) and k not in used and k not in missing)
    if missing or unknown or bad_shape:
        raise KeyError(
            "LDM VAE weights do not fit the diffusers AutoencoderKL derived from them: "
            f"missing {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"unexpected {unknown[:10]}{' …' if len(unknown) > 10 else ''}; wrong shape {bad_shape[:10]}"
        )
    # contiguous copies only where a view was taken; other tensors are adopted as they are (assign=True)
    sd = {k: (v.contiguous() if not v.is_contiguous() else v) for k, v in sd.items()}
    vae.load_state_dict(sd, strict=True, assign=True)
    vae.requires_grad_(False)
    return vae.eval(), used


def vae_to_ldm_state_dict(vae: AutoencoderKL, prefix: str = LDM_VAE_PREFIX) -> Dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> LDM-layout state dict (`prefix` + official names, 1×1-conv attention weights)."""
    n = len(vae.config.block_out_channels)
    out: Dict[str, torch.Tensor] = {}
    for name, t in vae.state_dict().items():
        k = ldm_vae_key(name, n)
        if _is_attn_linear(k) and t.ndim == 2:
            t = t[:, :, None, None]
        out[prefix + k] = t
    return out


__all__ = [
    "LDM_VAE_PREFIX",
    "SD_SCALE_FACTOR",
    "build_vae",
    "convert_ldm_vae",
    "ldm_vae_key",
    "vae_config_from_ldm",
    "vae_to_ldm_state_dict",
]
