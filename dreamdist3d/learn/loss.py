"""The DreamDistribution training loss, in two arrangements that give the same number.

    loss = mean_{b,r} [ w(t_b) · mean_{f,c,h,w} (ε̂_θ(x_t^b, t_b, c_{b,r}) − target_b)² ]  +  λ_ortho · L_ortho

- c_{b,r} = μ + ε_{b,r}·σ: μ, σ (unbiased) over the K prompts' encoder states (77×D each); ε (B, R, 77, D).
- target = ε₀ (epsilon), v = sqrt(ᾱ)ε₀ − sqrt(1−ᾱ)x₀ (v_prediction) or x₀ (sample).
- w = min(SNR, γ)/SNR with SNR = (sqrt(ᾱ)/sqrt(1−ᾱ))² from the float32 ᾱ — **no "+1" for v-prediction**: the official
  trainer uses this form for both prediction types (diffusers' later scripts divide by SNR+1 for v; the official
  DreamDistribution code does not). γ ≤ 0 (or None) means unweighted.
- UNet rows are b-major (row = (b·R + r)·F + f); a multi-view item has F views sharing t and c_{b,r}, with its own
  cameras; F = 1 in 2D.
- L_ortho = mean over off-diagonal pairs of squared cosine similarity of the pooled (EOS) states.

`mode="official"` arranges the computation as the official train.py/PromptLearner do: the K prompts are stacked per
batch item and run through the text encoder as B·K sequences, μ/σ/ortho per item. `mode="fast"` (ours) encodes the K
prompts once (K sequences) and broadcasts μ, σ to the B items. Every item's prompts are identical, so the loss is the
same number and the gradient equal up to float re-association (measured 2e-8 on |g|≈0.05).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from dreamdist3d.backbones.schedule import NoiseSchedule

LOSS_MODES = ("fast", "official")


def official_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) exactly as the official `compute_snr`: (sqrt(ᾱ_t) / sqrt(1−ᾱ_t))², float32. (N,) -> (N,)."""
    ac = alphas_cumprod.to(timesteps.device)
    alpha = (ac**0.5)[timesteps].float()
    sigma = ((1.0 - ac) ** 0.5)[timesteps].float()
    return (alpha / sigma) ** 2


def min_snr_weights(snr: torch.Tensor, gamma: Optional[float]) -> torch.Tensor:
    """min(SNR, γ)/SNR (no +1, for every prediction type); ones when γ is None or ≤ 0."""
    if gamma is None or gamma <= 0:
        return torch.ones_like(snr)
    return torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar, differentiable
    mse: torch.Tensor  # scalar: weighted diffusion term
    ortho: torch.Tensor  # scalar: orthogonality term before its weight
    per_sample_mse: torch.Tensor  # (B, R) unweighted, detached
    weights: torch.Tensor  # (B, R) min-SNR weights
    model_pred: Optional[torch.Tensor] = None  # (B, R, [F,] C, h, w) detached, when asked for


def prompt_conditioning(learner, eps: torch.Tensor, mode: str = "fast"):
    """(context (B, R, 77, D), ortho scalar) from the learner's K prompts and ε (B, R, 77, D)."""
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")
    b = eps.shape[0]
    if mode == "fast":
        hidden, pooled = learner.encode()  # (K, 77, D), (K, D): the K prompts, once
        mean, std = learner.moments(hidden)  # (77, D) each
        context = mean + eps.to(mean) * std  # (B, R, 77, D)
        return context, learner.orthogonal_loss(pooled)
    # official: ctx[cls_idx] stacked per item -> B·K sequences through the encoder, moments per item
    x, eos = learner.input_embeddings()  # (K, 77, D)
    k = x.shape[0]
    hidden = learner.text_encoder(x.repeat(b, 1, 1), add_position=True).view(b, k, *x.shape[1:])  # (B, K, 77, D)
    pooled = hidden[:, :, eos]  # (B, K, D)
    mean = hidden.mean(1)  # (B, 77, D)
    std = hidden.std(1) if k > 1 else torch.zeros_like(mean)
    context = mean[:, None] + eps.to(mean) * std[:, None]  # (B, R, 77, D)
    return context, learner.orthogonal_loss(pooled)


def distribution_loss(
    learner,
    denoiser: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    eps: torch.Tensor,
    snr_gamma: Optional[float] = 5.0,
    ortho_weight: float = 1e-3,
    cameras: Optional[torch.Tensor] = None,
    mode: str = "fast",
    keep_pred: bool = False,
) -> LossOutput:
    """One training loss.

    latents, noise: (B, C, h, w) in 2D or (B, F, C, h, w) multi-view (scaled latents); timesteps (B,) long;
    eps (B, R, 77, D); cameras (B, F, 16) for multi-view (None: no camera conditioning, F views still attend jointly);
    denoiser(x (N,C,h,w), t (N,), context (N,77,D), camera=(N,16)|None, num_frames=F) -> (N,C,h,w).
    """
    bsz, r = eps.shape[:2]
    multiview = latents.ndim == 5
    views = latents.shape[1] if multiview else 1
    chw = latents.shape[-3:]
    if latents.shape[0] != bsz or timesteps.shape != (bsz,):
        raise ValueError(f"batch mismatch: latents {tuple(latents.shape)}, timesteps {tuple(timesteps.shape)}, eps {tuple(eps.shape)}")

    context, ortho = prompt_conditioning(learner, eps, mode)  # (B, R, 77, D), scalar

    noisy = schedule.add_noise(latents, noise, timesteps)  # (B, [F,] C, h, w)
    target = schedule.target(latents, noise, timesteps).float()
    # b-major rows: (b, r, f)
    x_rows = noisy.unsqueeze(1).expand(bsz, r, *noisy.shape[1:]).reshape(-1, *chw)
    t_rows = timesteps[:, None, None].expand(bsz, r, views).reshape(-1)
    c_rows = context.unsqueeze(2).expand(bsz, r, views, *context.shape[2:]).reshape(-1, *context.shape[2:])
    cam_rows = None
    if cameras is not None:
        cam_rows = cameras.unsqueeze(1).expand(bsz, r, *cameras.shape[1:]).reshape(-1, cameras.shape[-1])
    pred = denoiser(x_rows, t_rows, c_rows, camera=cam_rows, num_frames=views)
    pred = pred.reshape(bsz, r, *latents.shape[1:]).float()  # (B, R, [F,] C, h, w)

    per_sample = F.mse_loss(pred, target.unsqueeze(1).expand_as(pred), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(2, per_sample.ndim)))  # (B, R)
    snr = official_snr(schedule.alphas_cumprod, timesteps.repeat_interleave(r))  # (B·R,), b-major as official
    weights = min_snr_weights(snr, snr_gamma).view(bsz, r)
    mse = (per_sample * weights).mean()
    total = mse + ortho_weight * ortho
    return LossOutput(total, mse, ortho, per_sample.detach(), weights.detach(), pred.detach() if keep_pred else None)


__all__ = ["LOSS_MODES", "LossOutput", "distribution_loss", "min_snr_weights", "official_snr", "prompt_conditioning"]
