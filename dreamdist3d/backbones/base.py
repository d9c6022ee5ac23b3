"""The `Backbone`: one object that learning, 2D sampling and 3D guidance all use.

It bundles the tokenizer, the frozen text encoder, a denoiser with the MVDream call signature
`unet(x, t, context, camera=None, num_frames=1)`, the image↔latent codec (identity in the pixel-space toy world),
the noise schedule and prediction type, and the native resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
from torch import nn

from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.text import ClipTokenizer, TextEncoder

# A denoiser: (x (N,C,h,w), t (N,), context (N,77,D), camera (N,16) | None, num_frames) -> (N,C,h,w)
Denoiser = Callable[..., torch.Tensor]


@dataclass(eq=False)
class Backbone:
    name: str  # "mvdream", "sd21", "toy", …
    tokenizer: ClipTokenizer
    text_encoder: TextEncoder
    unet: nn.Module  # MultiViewUNet, or an adapter around diffusers' UNet2DConditionModel
    schedule: NoiseSchedule
    resolution: int  # native image size in pixels (MVDream 256, SD 2.1 768, toy 32)
    vae: Optional[nn.Module] = None  # diffusers AutoencoderKL; None means pixel space (identity codec)
    scale_factor: float = 0.18215
    supports_camera: bool = False  # True for multi-view (MVDream-style) denoisers
    source: str = ""  # path the weights came from, for error messages and metadata
    extra: Dict[str, object] = field(default_factory=dict)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts) -> torch.Tensor:
        """Prompt strings -> (N, 77, D) conditioning, exactly as the backbone is conditioned on text."""
        ids = self.tokenizer(prompts).to(self.text_encoder.device)
        return self.text_encoder.encode_ids(ids)

    # ------------------------------------------------------------------ denoiser
    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        camera: Optional[torch.Tensor] = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        if camera is not None and not self.supports_camera:
            raise ValueError(f"backbone '{self.name}' has no camera conditioning; pass camera=None")
        return self.unet(x, t, context, camera=camera, num_frames=num_frames)

    # ------------------------------------------------------------------ images <-> latents
    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample

    @property
    def downsample(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return 3 if self.vae is None else int(self.vae.config.latent_channels)

    def encode_images(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None, sample: bool = True
    ) -> torch.Tensor:
        """images in [-1, 1] (B,3,H,W) -> scaled latents (B,C,h,w); a posterior sample unless sample=False."""
        if self.vae is None:
            return images
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z * self.scale_factor

    def posterior(self, images: torch.Tensor):
        """(mean, std) of the VAE posterior (unscaled), for caching; identity (images, 0) in pixel space."""
        if self.vae is None:
            return images, torch.zeros_like(images)
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.mean, dist.std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> images in [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents.to(self.vae.dtype) / self.scale_factor).sample

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> Dict[str, object]:
        return {"backbone": self.name, "text_encoder": self.text_encoder.fingerprint(), "source": self.source}

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Backbone":
        for m in (self.text_encoder, self.unet, self.vae):
            if m is not None:
                m.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device
