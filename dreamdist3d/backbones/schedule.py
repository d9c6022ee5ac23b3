"""Diffusion noise schedules (DDPM training schedule of SD 2.1 / MVDream) and the quantities the losses need.

MVDream: 1000 steps, betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)² computed in float64, stored float32
(diffusers `scaled_linear`), eps prediction. SD 2.1 (768): the same betas, v prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def scaled_linear_betas(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """(n,) float64 betas: linspace of square roots, squared (LDM "linear" == diffusers "scaled_linear")."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


@dataclass
class NoiseSchedule:
    """A discrete DDPM schedule given by ᾱ_t. Tensors live on CPU in float32; indexing moves what is needed."""

    alphas_cumprod: torch.Tensor  # (T,) float32
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.alphas_cumprod = self.alphas_cumprod.to(torch.float32)

    @classmethod
    def scaled_linear(cls, prediction_type: str = "epsilon", n: int = 1000, style: str = "ldm") -> "NoiseSchedule":
        """style "ldm": float64 throughout, cast at the end (MVDream's buffers, bit-exact);
        style "diffusers": float32 betas and cumprod (diffusers' DDPMScheduler, used by the official trainer)."""
        betas = scaled_linear_betas(n)
        if style == "ldm":
            return cls(torch.cumprod(1.0 - betas, 0).to(torch.float32), prediction_type)
        if style == "diffusers":
            b32 = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float32) ** 2
            return cls(torch.cumprod(1.0 - b32, 0), prediction_type)
        raise ValueError(f"style must be 'ldm' or 'diffusers', got {style!r}")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _a(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcast to `like` (B, ...)."""
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return a.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q_sample: sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε."""
        a = self._a(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ)·ε − sqrt(1-ᾱ)·x0."""
        a = self._a(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of the model for this prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.velocity(x0, noise, t)
        return x0

    def predict_x0(self, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._a(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * model_out) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * model_out
        return model_out

    def predict_eps(self, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._a(t, x_t)
        if self.prediction_type == "epsilon":
            return model_out
        if self.prediction_type == "v_prediction":
            return (1 - a).sqrt() * x_t + a.sqrt() * model_out
        return (x_t - a.sqrt() * model_out) / (1 - a).sqrt()

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ/(1-ᾱ) from the float32 ᾱ (as the official min-SNR code computes it)."""
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return a / (1 - a)

    def diffusers_config(self) -> Dict[str, object]:
        """Keyword arguments for diffusers' DDPM/DDIM schedulers giving the same schedule (SD / MVDream style)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": self.prediction_type,
            "timestep_spacing": "leading",
        }
