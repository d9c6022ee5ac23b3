"""`PromptGaussian`: the diagonal Gaussian over encoded prompts (77×D encoder states) that a distribution fits.

Sampling with scale γ: `mean + γ·ε·std`. Mixing follows the official `generate.py` rule for distributions i with
weights wᵢ (summing to 1) and scales γᵢ: mean = Σ wᵢ μᵢ, std = sqrt(Σ (wᵢ γᵢ σᵢ)²), i.e. the law of the weighted
sum of independent Gaussians (not a mixture model, not a mix of samples).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from dreamdist3d.distribution.errors import DistributionFileError
from dreamdist3d.io import atomic_save_safetensors

GAUSSIAN_FORMAT = "dreamdist3d.prompt-gaussian"


def check_scale(scale: float, what: str = "scale γ") -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0 (0 gives the mean, 1 the learned spread), got {scale}")
    return scale


@dataclass
class PromptGaussian:
    mean: torch.Tensor  # (77, D)
    std: torch.Tensor  # (77, D)

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 2:
            raise ValueError(f"mean and std must both be (77, D); got {tuple(self.mean.shape)} and {tuple(self.std.shape)}")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def sample(
        self,
        n: int,
        scale: float = 1.0,
        generator: Optional[torch.Generator] = None,
        eps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """n samples (n, 77, D) = mean + γ·ε·std; ε ~ N(0, 1) from `generator` (on the mean's device) or given."""
        scale = check_scale(scale)
        if eps is None:
            eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float32,
                              device=generator.device if generator is not None else "cpu")
        eps = eps.to(self.mean.device, self.mean.dtype).reshape(-1, *self.mean.shape)
        return self.mean + eps * (scale * self.std)

    def scaled(self, scale: float) -> "PromptGaussian":
        return PromptGaussian(self.mean, self.std * check_scale(scale))

    def to(self, device=None, dtype=None) -> "PromptGaussian":
        return PromptGaussian(self.mean.to(device=device, dtype=dtype), self.std.to(device=device, dtype=dtype))

    @staticmethod
    def mix(items: Sequence[Tuple["PromptGaussian", float, float]], tol: float = 1e-6) -> "PromptGaussian":
        """Weighted sum of independent Gaussians: items are (gaussian, weight w, scale γ); weights must sum to 1."""
        if not items:
            raise ValueError("mix needs at least one (distribution, weight, scale) item")
        weights = [float(w) for _, w, _ in items]
        if abs(sum(weights) - 1.0) > tol:
            raise ValueError(f"mix weights must sum to 1, got {weights} (sum {sum(weights):.6g}); e.g. --weight 0.5 0.5")
        shapes = {tuple(g.mean.shape) for g, _, _ in items}
        if len(shapes) != 1:
            raise ValueError(f"cannot mix distributions over different encoders/shapes: {sorted(shapes)}")
        mean = sum(w * g.mean for (g, _, _), w in zip(items, weights))
        var = sum((w * check_scale(s) * g.std) ** 2 for (g, _, s), w in zip(items, weights))
        return PromptGaussian(mean, var.sqrt())

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, Path], metadata: Optional[dict] = None) -> None:
        meta = {"format": GAUSSIAN_FORMAT, **(metadata or {})}
        atomic_save_safetensors(
            {"mean": self.mean.detach().cpu().contiguous(), "std": self.std.detach().cpu().contiguous()},
            path,
            {"dreamdist3d": json.dumps(meta)},
        )

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PromptGaussian":
        from dreamdist3d.io import read_safetensors

        tensors, meta = read_safetensors(path)
        info = json.loads(meta.get("dreamdist3d", "{}"))
        if info.get("format") != GAUSSIAN_FORMAT or set(tensors) != {"mean", "std"}:
            raise DistributionFileError(f"{path} is not a saved PromptGaussian (expected tensors mean, std)")
        return cls(tensors["mean"], tensors["std"])
