"""Stable Diffusion 2.1 `Backbone` from a local diffusers model folder (never the hub: local_files_only).

The folder must hold `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` (what
`StableDiffusionPipeline.save_pretrained` writes, e.g. stabilityai/stable-diffusion-2-1 downloaded beforehand).
The prediction type comes from `scheduler/scheduler_config.json` (v_prediction for the 768 model, epsilon for
-base); the resolution is unet `sample_size` × the VAE's downsampling (96·8 = 768, 64·8 = 512).

diffusers' `UNet2DConditionModel` is wrapped in `DiffusersUNetAdapter` so it has the MVDream call signature
`unet(x, t, context, camera=None, num_frames=1)`; it has no camera input, and every row is denoised independently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.hf_loading import quiet_hf_loading
from dreamdist3d.text import ClipTokenizer, TextEncoder

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class DiffusersUNetAdapter(nn.Module):
    """`UNet2DConditionModel` with the MVDream call signature; `camera` must be None (SD 2.1 has no camera input)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        camera: Optional[torch.Tensor] = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        """x (N,4,h,w), timesteps (N,) or scalar, context (N,77,D) -> model output (N,4,h,w) in x's dtype."""
        if camera is not None:
            raise ValueError("Stable Diffusion 2.1 has no camera conditioning: pass camera=None")
        if x.shape[0] % max(1, num_frames):
            raise ValueError(f"batch {x.shape[0]} must be divisible by num_frames={num_frames}")
        dtype = self.unet.dtype
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample
        return out.to(x.dtype)


def _check_folder(folder: Path, config_key: str) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Stable Diffusion 2.1 model folder not found: {folder} (set by {config_key}). Expected a local diffusers "
            f"folder with subfolders {', '.join(s + '/' for s in SUBFOLDERS)} (e.g. stabilityai/stable-diffusion-2-1 "
            "saved with save_pretrained); nothing is downloaded."
        )
    missing = [s + "/" for s in SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{folder} (set by {config_key}) is not a complete diffusers Stable Diffusion 2.1 folder: missing "
            f"{', '.join(missing)}; expected {', '.join(s + '/' for s in SUBFOLDERS)}"
        )
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{folder / 'scheduler' / 'scheduler_config.json'} not found (set by {config_key})")


def schedule_from_scheduler_config(path: Union[str, Path]) -> NoiseSchedule:
    """NoiseSchedule (diffusers float32 style) from a diffusers scheduler_config.json; only SD's scaled_linear betas."""
    cfg = json.loads(Path(path).read_text())
    kind = cfg.get("beta_schedule", "linear")
    start, end, n = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02), cfg.get("num_train_timesteps", 1000)
    if kind != "scaled_linear" or abs(start - 0.00085) > 1e-9 or abs(end - 0.012) > 1e-9:
        raise ValueError(
            f"{path}: unsupported noise schedule {kind} ({start}..{end}); only Stable Diffusion's scaled_linear "
            "0.00085..0.012 is supported"
        )
    if cfg.get("trained_betas") is not None:
        raise ValueError(f"{path}: trained_betas are not supported")
    return NoiseSchedule.scaled_linear(cfg.get("prediction_type", "epsilon"), n=int(n), style="diffusers")


def load_sd21(
    folder: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    config_key: str = "backbone.pretrained_model_name_or_path",
) -> Backbone:
    """SD 2.1 `Backbone` from a local diffusers folder (tokenizer, TextEncoder, adapted UNet, AutoencoderKL)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    _check_folder(folder, config_key)
    schedule = schedule_from_scheduler_config(folder / "scheduler" / "scheduler_config.json")
    tokenizer = ClipTokenizer.from_folder(folder / "tokenizer")
    text_encoder = TextEncoder.from_diffusers(folder, device=device, dtype=dtype)
    with quiet_hf_loading():
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True,
                                                    torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype)
    unet.to(device).eval().requires_grad_(False)
    vae.to(device).eval().requires_grad_(False)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return Backbone(
        name="sd21",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=DiffusersUNetAdapter(unet),
        schedule=schedule,
        resolution=int(unet.config.sample_size) * down,
        vae=vae,
        scale_factor=float(vae.config.scaling_factor),
        supports_camera=False,
        source=str(folder),
        extra={"prediction_type": schedule.prediction_type},
    )


__all__ = ["DiffusersUNetAdapter", "SUBFOLDERS", "load_sd21", "schedule_from_scheduler_config"]
