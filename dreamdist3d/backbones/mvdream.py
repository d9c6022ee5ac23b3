"""Load MVDream's released single-file checkpoint (`sd-v2.1-base-4view.pt`) into a `Backbone`.

The file is the official `LatentDiffusionInterface.state_dict()` (`mvdream.model_zoo.build_model` loads it with
`model.load_state_dict(torch.load(ckpt))`, strict), i.e. a flat dict of exactly these groups:

| prefix | becomes |
|---|---|
| `model.diffusion_model.*` (690) | `MultiViewUNet` (official key names, loaded as they are) |
| `first_stage_model.*` (248) | diffusers `AutoencoderKL` (converted by `vae.convert_ldm_vae`) |
| `cond_stage_model.model.*` (294) | `TextEncoder` (OpenCLIP ViT-H text tower, "penultimate" = 23 blocks + ln_final) |
| 12 schedule buffers | checked against `NoiseSchedule.scaled_linear("epsilon", style="ldm")` |

Loading is strict: every key of the file is consumed and every parameter is filled, or one `CheckpointError`
lists all unknown / missing / mis-shaped keys. Modules are built on the meta device and filled with `assign=True`;
the `.pt` is opened with `torch.load(weights_only=True, mmap=True)` so the weights are not held twice.

Configs: the released file needs none (the UNet config is read off the key shapes, heads = 64 channels, as
`configs/sd-v2-base.yaml`; text heads = width // 64). Tiny test files (see `testing/checkpoints.py`) carry a config in a
JSON sidecar `<file stem>.json` (and, for .safetensors, in the header metadata) with `format = "dreamdist3d-mvdream"`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.schedule import NoiseSchedule, scaled_linear_betas
from dreamdist3d.backbones.vae import LDM_VAE_PREFIX, SD_SCALE_FACTOR, build_vae, convert_ldm_vae, vae_to_ldm_state_dict
from dreamdist3d.io import load_error_reason
from dreamdist3d.text import ClipTokenizer, TextEncoder

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = LDM_VAE_PREFIX
TEXT_PREFIX = "cond_stage_model.model."
SD15_TEXT_PREFIX = "cond_stage_model.transformer."  # ldm FrozenCLIPEmbedder: MVDream's sd-v1.5-4view.pt
CHECKPOINT_NAME = "sd-v2.1-base-4view.pt"
CHECKPOINT_SOURCE = "the MVDream release (huggingface.co/MVDream/MVDream, file sd-v2.1-base-4view.pt)"
CONFIG_FORMAT = "dreamdist3d-mvdream"
RESOLUTION = 256  # MVDream SD 2.1 base 4-view: 256 px images, 32×32 latents
NUM_FRAMES = 4
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
# Recomputed by the official code, harmless if a re-save carries it.
INERT_KEYS = ("cond_stage_model.model.attn_mask",)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys do not fit the MVDream model."""


# ---------------------------------------------------------------------------------------------- schedule buffers
def ldm_schedule_buffers(n: int = 1000) -> Dict[str, torch.Tensor]:
    """The 12 float32 buffers `LatentDiffusionInterface.register_schedule` stores (float64 math, as the official).

    `alphas_cumprod` equals `NoiseSchedule.scaled_linear("epsilon", style="ldm").alphas_cumprod` bit for bit."""
    b = scaled_linear_betas(n).numpy()
    a = 1.0 - b
    ac = np.cumprod(a, axis=0)
    acp = np.append(1.0, ac[:-1])
    pv = b * (1.0 - acp) / (1.0 - ac)
    out = {
        "betas": b,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": acp,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": b * np.sqrt(acp) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - acp) * np.sqrt(a) / (1.0 - ac),
    }
    return {k: torch.tensor(out[k], dtype=torch.float32) for k in SCHEDULE_KEYS}


def check_schedule(state_dict: Mapping[str, torch.Tensor], where: str = "") -> List[str]:
    """Problems with the 12 schedule buffers (missing, wrong shape, values not MVDream's), as messages."""
    ref = ldm_schedule_buffers()
    problems = []
    missing = [k for k in SCHEDULE_KEYS if k not in state_dict]
    if missing:
        problems.append(f"missing schedule buffers {missing}")
    for k in SCHEDULE_KEYS:
        if k not in state_dict:
            continue
        t = state_dict[k]
        if tuple(t.shape) != tuple(ref[k].shape):
            problems.append(f"schedule buffer {k} has shape {tuple(t.shape)}, expected {tuple(ref[k].shape)}")
        elif t.device.type != "meta":
            # loose enough for an fp16 re-save, far tighter than any other beta schedule
            if not torch.allclose(t.detach().to("cpu", torch.float64), ref[k].double(), rtol=2e-3, atol=1e-6):
                problems.append(
                    f"schedule buffer {k} differs from MVDream's (scaled-linear betas 0.00085..0.012, 1000 steps)"
                )
    return problems


# ---------------------------------------------------------------------------------------------- configs from keys
def _sub(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def infer_unet_config(unet_sd: Mapping[str, torch.Tensor], num_head_channels: int = 64) -> Dict[str, Any]:
    """`MultiViewUNet` kwargs read off the (prefix-less) UNet key shapes.

    Heads cannot be seen in shapes: `num_head_channels` (64 in MVDream's sd-v2-base.yaml) is given. Assumes
    conv Downsample/Upsample (conv_resample=True, resblock_updown=False) and one attention layout per level; the strict
    load that follows catches anything else."""

    def shape(k: str) -> Tuple[int, ...]:
        if k not in unet_sd:
            raise CheckpointError(f"not an MVDream UNet: missing {UNET_PREFIX}{k}")
        return tuple(unet_sd[k].shape)

    mc, cin = shape("input_blocks.0.0.weight")[:2]
    stages = sorted({int(m[1]) for k in unet_sd if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    channel_mult: List[int] = []
    nrb: List[int] = []
    attn_ds = set()
    ds, count, cur = 1, 0, mc
    depth, linear, scale_shift = 1, True, False
    for i in stages[1:]:
        p = f"input_blocks.{i}."
        if p + "0.op.weight" in unet_sd:  # Downsample: end of a level
            channel_mult.append(cur // mc)
            nrb.append(count)
            count, ds = 0, ds * 2
            continue
        cur = shape(p + "0.in_layers.2.weight")[0]
        scale_shift = shape(p + "0.emb_layers.1.weight")[0] == 2 * cur
        count += 1
        if p + "1.proj_in.weight" in unet_sd:
            attn_ds.add(ds)
            linear = len(shape(p + "1.proj_in.weight")) == 2
            block = re.compile(rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
            depth = 1 + max(int(m[1]) for k in unet_sd if (m := block.match(k)))
    channel_mult.append(cur // mc)
    nrb.append(count)
    ctx_keys = [k for k in unet_sd if k.endswith("attn2.to_k.weight")]
    if not ctx_keys:
        raise CheckpointError("not an MVDream UNet: no cross-attention (attn2.to_k) weights")
    cfg: Dict[str, Any] = dict(
        image_size=32,
        in_channels=int(cin),
        out_channels=int(shape("out.2.weight")[0]),
        model_channels=int(mc),
        attention_resolutions=sorted(attn_ds, reverse=True),
        num_res_blocks=nrb[0] if len(set(nrb)) == 1 else nrb,
        channel_mult=channel_mult,
        num_head_channels=int(num_head_channels),
        use_spatial_transformer=True,
        use_linear_in_transformer=bool(linear),
        transformer_depth=int(depth),
        context_dim=int(shape(ctx_keys[0])[1]),
        use_checkpoint=False,
        legacy=False,
        camera_dim=int(shape("camera_embed.0.weight")[1]) if "camera_embed.0.weight" in unet_sd else None,
    )
    if scale_shift:
        cfg["use_scale_shift_norm"] = True
    return cfg


def openclip_text_shapes(
    width: int, layers: int, vocab: int = 49408, context_length: int = 77, mlp_ratio: int = 4, prefix: str = TEXT_PREFIX
) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of an OpenCLIP text tower as stored under `cond_stage_model.model.` (visual deleted)."""
    out: Dict[str, Tuple[int, ...]] = {
        "positional_embedding": (context_length, width),
        "text_projection": (width, width),
        "logit_scale": (),
        "token_embedding.weight": (vocab, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
    }
    hidden = mlp_ratio * width
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        out.update(
            {
                p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                p + "ln_2.weight": (width,), p + "ln_2.bias": (width,),
                p + "mlp.c_fc.weight": (hidden, width), p + "mlp.c_fc.bias": (hidden,),
                p + "mlp.c_proj.weight": (width, hidden), p + "mlp.c_proj.bias": (width,),
            }
        )
    return {prefix + k: v for k, v in out.items()}


def mvdream_state_dict_shapes(
    unet_config: Optional[Mapping[str, Any]] = None,
    vae_config: Optional[Mapping[str, Any]] = None,
    text_width: int = 1024,
    text_layers: int = 24,
) -> Dict[str, Tuple[int, ...]]:
    """Every key -> shape of an official MVDream checkpoint built from our modules' layouts (meta device, no memory).

    Defaults give the released sd-v2.1-base-4view (1244 keys)."""
    from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG, MultiViewUNet

    with torch.device("meta"):
        unet = MultiViewUNet(**dict(unet_config or MVDREAM_SD21_CONFIG))
    shapes = {UNET_PREFIX + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    vae = build_vae(vae_config or SD21_VAE_CONFIG, meta=True)
    shapes.update({k: tuple(v.shape) for k, v in vae_to_ldm_state_dict(vae, VAE_PREFIX).items()})
    shapes.update(openclip_text_shapes(text_width, text_layers))
    shapes.update({k: (1000,) for k in SCHEDULE_KEYS})
    return shapes


# The SD 2.x VAE (ddconfig ch=128, ch_mult [1,2,4,4], 2 res blocks, z 4) as a diffusers AutoencoderKL config.
SD21_VAE_CONFIG: Dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": SD_SCALE_FACTOR,
}


# ---------------------------------------------------------------------------------------------- reading files
def sidecar_path(path: Union[str, Path]) -> Path:
    return Path(path).with_suffix(".json")


def _missing_message(path: Path, config_key: str) -> str:
    return (
        f"MVDream checkpoint not found: {path} (set by {config_key}). Expected the single file {CHECKPOINT_NAME} "
        f"from {CHECKPOINT_SOURCE}, or a .safetensors re-save of it; nothing is downloaded."
    )


def read_checkpoint(
    path: Union[str, Path], config_key: str = "backbone.checkpoint"
) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """(flat state dict on CPU, our config dict or None) from a .pt/.ckpt (torch.save) or .safetensors file."""
    path = Path(path)
    if path.is_dir():
        diffusers = (path / "model_index.json").is_file() or (path / "unet").is_dir()
        what = ("a diffusers (Stable Diffusion 2.1) model folder, not the MVDream checkpoint" if diffusers
                else "a folder, not the MVDream checkpoint file")
        raise CheckpointError(f"{config_key}: {path} is {what}; give the single file {CHECKPOINT_NAME} from "
                              f"{CHECKPOINT_SOURCE} (or a .safetensors re-save of it)")
    if not path.is_file():
        raise FileNotFoundError(_missing_message(path, config_key))
    config: Optional[Dict[str, Any]] = None
    hint = "the file may be truncated or corrupt (an interrupted download?); download it again"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"cannot read MVDream checkpoint {path}: {e}; {hint}") from e
        if "dreamdist3d_config" in meta:
            config = json.loads(meta["dreamdist3d_config"])
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise CheckpointError(
                    f"cannot read MVDream checkpoint {path}: {load_error_reason(e, path)}; {hint}") from e
            try:  # legacy (non-zip) torch.save format cannot be memory-mapped
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as e2:
                raise CheckpointError(
                    f"cannot read MVDream checkpoint {path}: {load_error_reason(e2, path)}; {hint}") from e2
        except Exception as e:
            raise CheckpointError(f"cannot read MVDream checkpoint {path}: {load_error_reason(e, path)}; {hint}") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # a Lightning-style wrapper around the same keys
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path} does not hold a flat dict of tensors (the official MVDream state_dict)")
        sd = obj
    side = sidecar_path(path)
    if config is None and side.is_file():
        try:
            js = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"config sidecar {side} of {path} is not valid JSON: {e}") from e
        if isinstance(js, dict) and js.get("format") == CONFIG_FORMAT:
            config = js
    return sd, config


# ---------------------------------------------------------------------------------------------- building
def _cast(t: torch.Tensor, device, dtype) -> torch.Tensor:
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def _fmt(keys: List[str], n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


def mvdream_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    config: Optional[Mapping[str, Any]] = None,
    source: str = "<state dict>",
) -> Backbone:
    """A strict MVDream `Backbone` from the official flat key layout (see the module docstring).

    `config` (optional): {"unet": MultiViewUNet kwargs, "text_heads": int, "resolution": int,
    "vae_sample_size": int}; anything absent is inferred (released-model defaults)."""
    from dreamdist3d.backbones.multiview_unet import MultiViewUNet

    config = dict(config or {})
    device = torch.device(device)
    if not any(k.startswith(UNET_PREFIX) for k in state_dict):
        raise CheckpointError(
            f"{source} is not an MVDream 4-view checkpoint: it has no '{UNET_PREFIX}*' keys (expected the official "
            f"LatentDiffusionInterface state_dict, {CHECKPOINT_NAME})"
        )
    if UNET_PREFIX + "camera_embed.0.weight" not in state_dict:
        raise CheckpointError(
            f"{source} is not an MVDream 4-view checkpoint: no '{UNET_PREFIX}camera_embed.*' keys. A plain Stable "
            f"Diffusion 2.1 checkpoint has the same layout without the camera embedding; use {CHECKPOINT_NAME} from "
            f"{CHECKPOINT_SOURCE} (for SD 2.1 itself use a diffusers folder with the sd21 backbone)"
        )
    has_text = any(k.startswith(TEXT_PREFIX) for k in state_dict)
    if not has_text and any(k.startswith(SD15_TEXT_PREFIX) for k in state_dict):
        raise CheckpointError(
            f"{source} is MVDream's Stable Diffusion 1.5 checkpoint (sd-v1.5-4view.pt: '{SD15_TEXT_PREFIX}*' keys, "
            f"OpenAI's CLIP ViT-L text encoder). dreamdist3d learns and samples against SD 2.1's OpenCLIP ViT-H text "
            f"encoder, so one distribution drives MVDream and SD 2.1: use {CHECKPOINT_NAME} from {CHECKPOINT_SOURCE}"
        )
    problems: List[str] = []
    groups = (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)
    unknown = [
        k for k in state_dict if not k.startswith(groups) and k not in SCHEDULE_KEYS and k not in INERT_KEYS
    ]
    if unknown:
        problems.append(f"unexpected keys {_fmt(unknown)}")
    problems += check_schedule(state_dict)

    # UNet: official key names, loaded as they are
    unet_sd = _sub(state_dict, UNET_PREFIX)
    try:
        unet_cfg = dict(config["unet"]) if "unet" in config else infer_unet_config(unet_sd)
        with torch.device("meta"):
            unet = MultiViewUNet(**unet_cfg)
    except (CheckpointError, ValueError, TypeError, NotImplementedError) as e:
        hint = "" if "unet" in config else (
            f" (attention heads are not stored in the weights: the released model uses 64-channel heads; a custom or "
            f"tiny checkpoint needs its config sidecar {Path(source).with_suffix('.json').name} with format "
            f"'{CONFIG_FORMAT}')"
        )
        raise CheckpointError(f"{source}: cannot build the MVDream UNet from its keys: {e}{hint}") from e
    own = unet.state_dict()
    u_missing = [UNET_PREFIX + k for k in own if k not in unet_sd]
    u_unexpected = [UNET_PREFIX + k for k in unet_sd if k not in own]
    u_shape = [
        f"{UNET_PREFIX}{k} {tuple(unet_sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in unet_sd and tuple(unet_sd[k].shape) != tuple(v.shape)
    ]
    if u_missing:
        problems.append(f"missing UNet keys {_fmt(u_missing)}")
    if u_unexpected:
        problems.append(f"unexpected UNet keys {_fmt(u_unexpected)}")
    if u_shape:
        problems.append(f"UNet keys with the wrong shape {_fmt(u_shape, 6)}")

    # VAE and text encoder (each raises KeyError listing its own problems)
    vae = text_encoder = None
    try:
        vae_sd = {k: _cast(v, device, dtype) for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
        vae, _ = convert_ldm_vae(
            vae_sd, VAE_PREFIX, sample_size=int(config.get("vae_sample_size", RESOLUTION))
        )
        del vae_sd
    except (KeyError, ValueError) as e:
        problems.append(f"VAE: {e.args[0] if e.args else e}")
    try:
        text_sd = {k: _cast(v, device, dtype) for k,
                   v in state_dict.items() if k.startswith(TEXT_PREFIX) and k not in INERT_KEYS}
        if TEXT_PREFIX + "token_embedding.weight" not in text_sd:
            raise KeyError(f"missing {TEXT_PREFIX}token_embedding.weight (no OpenCLIP text tower)")
        width = int(text_sd[TEXT_PREFIX + "token_embedding.weight"].shape[1])
        text_encoder, _ = TextEncoder.from_openclip_state_dict(
            text_sd, prefix=TEXT_PREFIX, heads=int(config.get("text_heads", max(1, width // 64))), layer="penultimate"
        )
        del text_sd
    except (KeyError, ValueError) as e:
        problems.append(f"text encoder: {e.args[0] if e.args else e}")

    if problems:
        raise CheckpointError(f"{source} does not fit the MVDream model (strict load):\n  - " + "\n  - ".join(problems))

    unet.load_state_dict({k: _cast(v, device, dtype) for k, v in unet_sd.items()}, strict=True, assign=True)
    unet.eval().requires_grad_(False)
    text_encoder.to(device=device)
    return Backbone(
        name="mvdream",
        tokenizer=ClipTokenizer.default(),
        text_encoder=text_encoder,
        unet=unet,
        schedule=NoiseSchedule.scaled_linear("epsilon", style="ldm"),
        resolution=int(config.get("resolution", RESOLUTION)),
        vae=vae,
        scale_factor=SD_SCALE_FACTOR,
        supports_camera=True,
        source=source,
        extra={"unet_config": unet_cfg, "num_frames": int(config.get("num_frames", NUM_FRAMES))},
    )


def load_mvdream(
    path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    config_key: str = "backbone.checkpoint",
) -> Backbone:
    """MVDream `Backbone` (eps prediction, 256 px / 32² latents, camera conditioning) from `sd-v2.1-base-4view.pt`
    or a .safetensors re-save. `config_key` names the setting the path came from, for error messages
    (e.g. "backbone.checkpoint" or "--mvdream")."""
    sd, config = read_checkpoint(path, config_key)
    return mvdream_from_state_dict(sd, device=device, dtype=dtype, config=config, source=str(path))


__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "SCHEDULE_KEYS",
    "SD21_VAE_CONFIG",
    "check_schedule",
    "infer_unet_config",
    "ldm_schedule_buffers",
    "load_mvdream",
    "mvdream_from_state_dict",
    "mvdream_state_dict_shapes",
    "openclip_text_shapes",
    "read_checkpoint",
    "sidecar_path",
]
