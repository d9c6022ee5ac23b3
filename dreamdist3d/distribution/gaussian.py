"""`PromptGaussian`: the Gaussian over encoded prompts (77×D encoder states) that a distribution fits.

Three sampling laws (`covariance`), one each:
- `diag` (the paper): per token and channel, x = μ + γ·ε⊙σ with ε ~ N(0, I) of shape (77, D).
- `lowrank`: the full covariance of the K encoded prompts h_k, x = μ + γ·Σ_k a_k·F_k with a ~ N(0, I_K) and
  factor F_k = (h_k − μ)/√(K−1). Its diagonal is exactly σ² (σ the unbiased std over K), but it keeps what the
  diagonal erases: variation shared across the 77 positions and D channels (a colour carried by every state of the
  prompt moves together). K=1 gives F = 0, so every mode gives μ.
- `kernel`: a mixture of K Gaussians, one around each (shrunk) prompt: pick k uniformly, then
  x = μ + γ·(√(1−b²)·√(K−1)·F_k + b·Σ_j a_j·F_j) with bandwidth b = `KERNEL_BANDWIDTH`. A single Gaussian also puts
  mass between the prompts; where a set's looks are far apart (orange, teal, purple) what lies between (green,
  blue) is not in the set, and the kernel law keeps most samples near a learned prompt. b = 1 is `lowrank` exactly
  (same draws: the pick comes after the K coefficients), b = 0 draws the K prompts themselves; its covariance is
  (b² + (1−b²)(K−1)/K)·Σ.

Mixing follows the official `generate.py` rule for distributions i with weights wᵢ (summing to 1) and scales γᵢ:
mean = Σ wᵢ μᵢ, std = sqrt(Σ (wᵢ γᵢ σᵢ)²), i.e. the law of the weighted sum of independent Gaussians (not a mixture
model). In `lowrank` and `kernel` modes the factors are concatenated, each scaled by wᵢγᵢ (same law: a sum of
independent parts); `groups` remembers each file's rows, so `kernel` picks one prompt per file.

The one seed rule (`noise`): sample i of a draw with seed s uses its own CPU generator seeded with s + i, so sample i
does not depend on how many are drawn, and "seed s" names the same prompt in 2D, previews and 3D.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from dreamdist3d.distribution.errors import DistributionFileError
from dreamdist3d.io import atomic_save_safetensors

GAUSSIAN_FORMAT = "dreamdist3d.prompt-gaussian"
COVARIANCES = ("diag", "lowrank", "kernel")
# Bandwidth b of the `kernel` law, chosen on the three tuning sets of the toy world (README, "The toy world"): the
# largest b whose mean in-distribution rate and colour TV distance both beat b = 1 (the low-rank Gaussian) without
# losing coverage.
KERNEL_BANDWIDTH = 0.3
# Image noise (SD 2.1 latents, MVDream previews) of seed s is drawn with seed s + LATENT_SEED_OFFSET, so it never
# repeats the numbers of prompt sample s.
LATENT_SEED_OFFSET = 2**31


def check_scale(scale: float, what: str = "scale γ") -> float:
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0 (0 gives the mean, 1 the learned spread), got {scale}")
    return scale


def check_covariance(mode: str, what: str = "covariance") -> str:
    if mode not in COVARIANCES:
        raise ValueError(f"{what} must be one of {COVARIANCES} (diag: the paper's per-token σ; lowrank: the K prompts' "
                         f"full covariance; kernel: a mixture around the K prompts), got {mode!r}")
    return mode


def prompt_factor(hidden: torch.Tensor) -> torch.Tensor:
    """(K, 77, D) encoded prompts → factor (K, 77, D) = (h_k − μ)/√(K−1); zeros for K=1. Differentiable."""
    k = hidden.shape[0]
    if k < 2:
        return torch.zeros_like(hidden)
    return (hidden - hidden.mean(0)) / math.sqrt(k - 1)


@dataclass
class PromptGaussian:
    mean: torch.Tensor  # (77, D)
    std: torch.Tensor  # (77, D)
    factor: Optional[torch.Tensor] = None  # (R, 77, D); Σ_r factor_r² == std² when built by `fit`
    covariance: str = "diag"
    groups: Optional[Tuple[int, ...]] = None  # rows of `factor` per mixed file (kernel picks one per group); None: one

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 2:
            raise ValueError(f"mean and std must both be (77, D); got {tuple(self.mean.shape)} and "
                             f"{tuple(self.std.shape)}")
        check_covariance(self.covariance)
        if self.factor is not None and tuple(self.factor.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"factor must be (R, {', '.join(map(str, self.mean.shape))}); got "
                             f"{tuple(self.factor.shape)}")
        if self.covariance != "diag" and self.factor is None:
            raise ValueError(f"covariance={self.covariance!r} needs the factor of the K encoded prompts (fit the "
                             "distribution again)")
        if self.groups is not None:
            self.groups = tuple(int(g) for g in self.groups)
            if self.factor is None or sum(self.groups) != self.factor.shape[0] or min(self.groups) < 1:
                raise ValueError(f"groups {self.groups} must split the factor's rows "
                                 f"({None if self.factor is None else self.factor.shape[0]})")

    @classmethod
    def from_points(cls, hidden: torch.Tensor, covariance: str = "diag") -> "PromptGaussian":
        """The Gaussian of K encoded prompts (K, 77, D): their mean, unbiased std (0 for K=1) and low-rank factor."""
        mean = hidden.mean(0)
        std = hidden.std(0) if hidden.shape[0] > 1 else torch.zeros_like(mean)
        return cls(mean, std, prompt_factor(hidden), covariance)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    @property
    def noise_shape(self) -> Tuple[int, ...]:
        """Shape of one draw's standard normal: (77, D) for diag, (R,) for lowrank, (R + G,) for kernel (the R
        coefficients, then one normal per group that picks its prompt)."""
        if self.covariance == "diag":
            return tuple(self.mean.shape)
        rows = int(self.factor.shape[0])
        return (rows,) if self.covariance == "lowrank" else (rows + len(self.row_groups),)

    @property
    def row_groups(self) -> Tuple[int, ...]:
        return self.groups if self.groups is not None else (int(self.factor.shape[0]),)

    def noise(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """(n, *noise_shape) float32 on CPU: row i from `torch.Generator('cpu').manual_seed(seed + start + i)`.
        For kernel the R coefficients are drawn first and the G picks after them, so they equal lowrank's draws."""
        parts = [self.noise_shape] if self.covariance != "kernel" else [(int(self.factor.shape[0]),),
                                                                         (len(self.row_groups),)]
        rows = []
        for i in range(n):
            gen = torch.Generator("cpu").manual_seed(int(seed) + start + i)
            rows.append(torch.cat([torch.randn(shape, generator=gen, dtype=torch.float32) for shape in parts]))
        return torch.stack(rows)

    def sample(
        self,
        n: int,
        scale: float = 1.0,
        generator: Optional[torch.Generator] = None,
        eps: Optional[torch.Tensor] = None,
        seed: Optional[int] = None,
    ) -> torch.Tensor:
        """n samples (n, 77, D). Noise: `eps` (n, *noise_shape) if given, else the seed rule with `seed`, else one
        draw of (n, *noise_shape) from `generator`."""
        scale = check_scale(scale)
        if eps is None:
            if seed is not None:
                eps = self.noise(n, seed)
            else:
                eps = torch.randn((n, *self.noise_shape), generator=generator, dtype=torch.float32,
                                  device=generator.device if generator is not None else "cpu")
        eps = eps.to(self.mean.device, self.mean.dtype).reshape(-1, *self.noise_shape)
        if self.covariance == "diag":
            return self.mean + eps * (scale * self.std)
        factor = self.factor.to(self.mean)
        rows = factor.shape[0]
        if self.covariance == "lowrank":
            return self.mean + scale * torch.einsum("nr,rld->nld", eps, factor)
        return self.mean + scale * self._kernel_deviation(eps[:, :rows], eps[:, rows:], factor)

    def _kernel_deviation(self, coeffs: torch.Tensor, picks: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """coeffs (n, R), picks (n, G) standard normals → (n, 77, D): √(1−b²)·(h_k − μ) per group + b·Σ a_j F_j.
        The pick of group g is ⌊Φ(u_g)·K_g⌋, i.e. uniform over its K_g prompts."""
        b = KERNEL_BANDWIDTH
        out = b * torch.einsum("nr,rld->nld", coeffs, factor)
        start = 0
        for g, size in enumerate(self.row_groups):
            if size > 1:
                u = torch.special.ndtr(picks[:, g].double())  # (n,) uniform in (0, 1)
                k = (u * size).floor().long().clamp_(0, size - 1) + start
                out = out + math.sqrt(1.0 - b * b) * math.sqrt(size - 1) * factor[k]
            start += size
        return out

    def scaled(self, scale: float) -> "PromptGaussian":
        s = check_scale(scale)
        return PromptGaussian(self.mean, self.std * s, None if self.factor is None else self.factor * s,
                              self.covariance, self.groups)

    def with_covariance(self, mode: str) -> "PromptGaussian":
        return PromptGaussian(self.mean, self.std, self.factor, check_covariance(mode), self.groups)

    def to(self, device=None, dtype=None) -> "PromptGaussian":
        f = None if self.factor is None else self.factor.to(device=device, dtype=dtype)
        return PromptGaussian(self.mean.to(device=device, dtype=dtype), self.std.to(device=device, dtype=dtype), f,
                              self.covariance, self.groups)

    @staticmethod
    def mix(items: Sequence[Tuple["PromptGaussian", float, float]], tol: float = 1e-6) -> "PromptGaussian":
        """Weighted sum of independent Gaussians: items are (gaussian, weight w, scale γ); weights must sum to 1.
        All items must share one covariance mode; factors are concatenated, each scaled by w·γ (one group per
        file)."""
        if not items:
            raise ValueError("mix needs at least one (distribution, weight, scale) item")
        weights = [float(w) for _, w, _ in items]
        if not all(math.isfinite(w) for w in weights) or not abs(sum(weights) - 1.0) <= tol:
            raise ValueError(f"mix weights must sum to 1, got {weights} (sum {sum(weights):.6g}); e.g. --weight 0.5 "
                             "0.5")
        shapes = {tuple(g.mean.shape) for g, _, _ in items}
        if len(shapes) != 1:
            raise ValueError(f"cannot mix distributions over different encoders/shapes: {sorted(shapes)}")
        modes = {g.covariance for g, _, _ in items}
        if len(modes) != 1:
            raise ValueError(f"cannot mix covariance modes {sorted(modes)}; choose one (--covariance)")
        scales = [check_scale(s) for _, _, s in items]
        mean = sum(w * g.mean for (g, _, _), w in zip(items, weights))
        var = sum((w * s * g.std) ** 2 for (g, _, _), w, s in zip(items, weights, scales))
        factor, groups = None, None
        if all(g.factor is not None for g, _, _ in items):
            factor = torch.cat([w * s * g.factor for (g, _, _), w, s in zip(items, weights, scales)])
            groups = tuple(n for g, _, _ in items for n in g.row_groups)
        return PromptGaussian(mean, var.sqrt(), factor, modes.pop(), groups)

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, Path], metadata: Optional[dict] = None) -> None:
        meta = {"format": GAUSSIAN_FORMAT, "covariance": self.covariance, **(metadata or {})}
        if self.groups is not None:
            meta["groups"] = list(self.groups)
        tensors = {"mean": self.mean.detach().cpu().contiguous(), "std": self.std.detach().cpu().contiguous()}
        if self.factor is not None:
            tensors["factor"] = self.factor.detach().cpu().contiguous()
        atomic_save_safetensors(tensors, path, {"dreamdist3d": json.dumps(meta)})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PromptGaussian":
        from dreamdist3d.io import read_safetensors

        tensors, meta = read_safetensors(path)
        info = json.loads(meta.get("dreamdist3d", "{}"))
        if info.get("format") != GAUSSIAN_FORMAT or not {"mean", "std"} <= set(tensors) <= {"mean", "std", "factor"}:
            raise DistributionFileError(f"{path} is not a saved PromptGaussian (expected tensors mean, std[, factor])")
        return cls(tensors["mean"], tensors["std"], tensors.get("factor"), info.get("covariance", "diag"),
                   info.get("groups"))
