"""Tiny random backbones written to disk in the real formats, for tests and offline demos (no weights downloaded).

- `write_tiny_mvdream_checkpoint(path)`: a fake MVDream single-file checkpoint in the OFFICIAL flat key layout
  (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.model.*` incl. the skipped last text block,
  `text_projection`, `logit_scale`, and the 12 schedule buffers), as `torch.save` (.pt/.ckpt) or .safetensors.
  Heads cannot be read off key shapes, so the tiny constructor config goes into a JSON sidecar `<stem>.json`
  (.pt) or the safetensors header (`dreamdist3d_config`); `load_mvdream` reads it.
- `tiny_sd21_folder(path)`: a tiny random diffusers Stable Diffusion 2.1-style folder (unet/, vae/, text_encoder/,
  tokenizer/ with the real CLIP BPE vocab.json + merges.txt, scheduler/, model_index.json), loadable by
  `load_sd21` and by `StableDiffusionPipeline.from_pretrained(path)`.

Weights are seeded random values, including the layers the official code zero-initialises, so outputs are not
trivially zero: norms weight 1+0.1r / bias 0.1r, embeddings 0.5r (token tables 0.02r), matrices r·1.5/sqrt(fan_in),
other vectors 0.1r.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

from dreamdist3d.backbones.mvdream import (
    CONFIG_FORMAT,
    SCHEDULE_KEYS,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ldm_schedule_buffers,
    openclip_text_shapes,
    sidecar_path,
)
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.backbones.vae import build_vae, vae_to_ldm_state_dict

PathLike = Union[str, Path]


def tiny_unet_config(model_channels: int = 32, context_dim: int = 32) -> Dict[str, Any]:
    """MultiViewUNet kwargs of the tiny test UNet (2 levels, attention at both, 16-channel heads)."""
    return dict(
        image_size=16,
        in_channels=4,
        out_channels=4,
        model_channels=model_channels,
        attention_resolutions=[2, 1],
        num_res_blocks=1,
        channel_mult=[1, 2],
        num_head_channels=16,
        use_spatial_transformer=True,
        use_linear_in_transformer=True,
        transformer_depth=1,
        context_dim=context_dim,
        use_checkpoint=False,
        legacy=False,
        camera_dim=16,
    )


def tiny_vae_config(sample_size: int = 32) -> Dict[str, Any]:
    """diffusers AutoencoderKL config of the tiny VAE (2 levels: 2× downsampling, 4 latent channels)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
    }


def _randomize_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Overwrite every parameter with seeded random values (the rule of the reference fixtures)."""
    norms = (nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            for name, p in mod.named_parameters(recurse=False):
                r = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                if isinstance(mod, norms):
                    v = 1 + 0.1 * r if name == "weight" else 0.1 * r
                elif isinstance(mod, nn.Embedding):
                    v = 0.02 * r if p.shape[0] > 1000 else 0.5 * r
                elif p.ndim >= 2:
                    v = r * 1.5 / math.sqrt(p[0].numel())
                else:
                    v = 0.1 * r
                p.copy_(v.to(p.dtype))
    return module


def _random_openclip_text(width: int, layers: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    out = {}
    for key, shape in openclip_text_shapes(width, layers).items():
        name = key[len(TEXT_PREFIX) :]
        r = torch.randn(shape, generator=generator)
        if name == "logit_scale":
            v = torch.tensor(math.log(1 / 0.07))
        elif name == "token_embedding.weight":
            v = 0.02 * r
        elif name == "positional_embedding":
            v = 0.01 * r
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight")):
            v = 1 + 0.1 * r
        elif len(shape) >= 2:
            v = r / math.sqrt(shape[-1])
        else:
            v = 0.05 * r
        out[key] = v.contiguous()
    return out


def tiny_mvdream_state_dict(
    seed: int = 0,
    model_channels: int = 32,
    text_width: int = 32,
    text_layers: int = 3,
    resolution: int = 32,
) -> tuple:
    """(flat official-layout state dict, config dict for the sidecar) of a tiny random MVDream model."""
    from dreamdist3d.backbones.multiview_unet import MultiViewUNet

    g = torch.Generator().manual_seed(seed)
    unet_cfg = tiny_unet_config(model_channels, text_width)
    unet = _randomize_(MultiViewUNet(**unet_cfg), g)
    vae_cfg = tiny_vae_config(resolution)
    vae = _randomize_(build_vae(vae_cfg), g)
    sd: Dict[str, torch.Tensor] = {}
    sd.update({UNET_PREFIX + k: v.contiguous() for k, v in unet.state_dict().items()})
    sd.update({k: v.contiguous() for k, v in vae_to_ldm_state_dict(vae, VAE_PREFIX).items()})
    sd.update(_random_openclip_text(text_width, text_layers, g))
    sd.update(ldm_schedule_buffers())
    config = {
        "format": CONFIG_FORMAT,
        "unet": unet_cfg,
        "text_heads": max(1, text_width // 8),
        "resolution": resolution,
        "vae_sample_size": resolution,
        "seed": seed,
        "note": "tiny random MVDream-layout checkpoint written by dreamdist3d.testing.checkpoints (not a real model)",
    }
    return sd, config


def write_tiny_mvdream_checkpoint(
    path: PathLike,
    seed: int = 0,
    model_channels: int = 32,
    text_width: int = 32,
    text_layers: int = 3,
    resolution: int = 32,
    dtype: torch.dtype = torch.float32,
) -> Dict[str, Any]:
    """Write a tiny random MVDream checkpoint (official flat layout) to `path` (.pt/.ckpt or .safetensors) and
    its config (sidecar `<stem>.json` for .pt, header metadata for .safetensors). Returns the config.

    The text tower has `text_layers` blocks; the loader uses the first `text_layers-1` ("penultimate")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd, config = tiny_mvdream_state_dict(seed, model_channels, text_width, text_layers, resolution)
    sd = {k: (v.to(dtype) if v.is_floating_point() and k not in SCHEDULE_KEYS else v) for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"dreamdist3d_config": json.dumps(config)})
    else:
        torch.save(sd, str(path))
        sidecar_path(path).write_text(json.dumps(config, indent=1))
    return config


# ---------------------------------------------------------------------------------------------- SD 2.1 folder
def _write_tokenizer(folder: Path) -> None:
    from dreamdist3d.text import ClipTokenizer

    tok = ClipTokenizer.default()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tok.encoder, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tok.ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n", encoding="utf-8"
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",  # SD 2.x: id 0, as OpenCLIP pads
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
             "clean_up_tokenization_spaces": True},
            indent=1,
        )
    )


def tiny_sd21_folder(
    path: PathLike,
    seed: int = 0,
    prediction_type: str = "v_prediction",
    sample_size: int = 8,
    text_width: int = 32,
    text_layers: int = 2,
) -> Path:
    """Write a tiny random diffusers SD 2.1-style model folder at `path` and return it.

    unet sample_size `sample_size` latents, VAE with 2× downsampling (so images are 2·sample_size px), text encoder
    `text_layers` CLIP layers of width `text_width`, DDIM scheduler with `prediction_type` (SD 2.1 768: v_prediction,
    SD 2.1 base: epsilon)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)

    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=text_width,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=32,
    )
    _randomize_(unet, g).save_pretrained(str(path / "unet"))
    vae = _randomize_(build_vae(tiny_vae_config(sample_size * 2)), g)
    vae.save_pretrained(str(path / "vae"))

    text_cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_attention_heads=4,
        num_hidden_layers=text_layers,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=text_width,
        layer_norm_eps=1e-5,
    )
    clip = _randomize_(CLIPTextModel(text_cfg), g)
    clip.save_pretrained(str(path / "text_encoder"))
    _write_tokenizer(path / "tokenizer")

    sched = dict(NoiseSchedule.scaled_linear(prediction_type, style="diffusers").diffusers_config())
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", "_diffusers_version": _diffusers_version(), **sched}, indent=1)
    )
    (path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": _diffusers_version(),
                "feature_extractor": [None, None],
                "image_encoder": [None, None],
                "requires_safety_checker": False,
                "safety_checker": [None, None],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
            indent=1,
        )
    )
    return path


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


__all__ = [
    "tiny_mvdream_state_dict",
    "tiny_sd21_folder",
    "tiny_unet_config",
    "tiny_vae_config",
    "write_tiny_mvdream_checkpoint",
]
