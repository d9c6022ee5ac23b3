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
- `lowpass_weight` λ > 0 (ours, default 0: the paper's loss): each row's mse gains λ × the mean square of the error
  averaged over `lowpass_pool`² blocks of each view, so an error spread over a body (its colour) counts (1 + λ)
  times and pixel noise about 1 + λ/pool² (README, "Sets that vary in form").

Objectives (`objective`), all on ℓ_{b,r} = w(t_b)·mse_{b,r} of R samples per image that share its noise and timestep:
- `official`: mean_{b,r} ℓ — the paper. Its optimum is every sample at the one best prompt: nothing rewards spread.
- `wta` (relaxed winner-take-all): mean_b [(1−δ)·min_r ℓ_{b,r} + δ·mean_r ℓ_{b,r}], δ = 0.1: each image trains the
  samples that already explain it best, so different regions of the Gaussian can specialise on different images.
- `softmin`: mean_b −τ_b·log mean_r exp(−ℓ_{b,r}/τ_b), τ_b = τ·mean_r ℓ_{b,r} (detached; scale-free), τ = 0.1.
- `assign` (control): no sampling; prompt k is assigned to image k mod N (and image n to prompt n mod K when K < N);
  each row uses one of its image's prompts, mean_{b,r} ℓ (the "prompts assigned to images" control).
Covariance (`covariance`) is the law of the reparameterised samples: `diag` μ + ε⊙σ with ε (B, R, 77, D), or
`lowrank` μ + Σ_k a_k·(h_k − μ)/√(K−1) with a (B, R, K); `kernel` (a sampling law: a mixture around the K prompts)
learns as `lowrank`, its Gaussian part (with the default objective `assign` nothing is sampled while learning).

`mode="official"` arranges the computation as the official train.py/PromptLearner do: the K prompts are stacked per
batch item and run through the text encoder as B·K sequences, μ/σ/ortho per item, and the denoiser runs all B·R
rows. `mode="fast"` (ours) encodes the K prompts once (K sequences) and broadcasts μ, σ to the B items; under `assign`
it also runs each distinct (image, prompt) row once (`denoiser_rows`: samples of one image that drew the same prompt
are the same input) and encodes all 77 states only for the drawn prompts, the others up to their EOS for the
orthogonality term (`PromptLearner.encode_rows`). Every item's prompts are identical, so the loss is the same number
and the gradient equal up to float re-association (measured 2e-8 on |g|≈0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.distribution.gaussian import check_covariance, prompt_factor

LOSS_MODES = ("fast", "official")
OBJECTIVES = ("official", "wta", "softmin", "assign")


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


def prompt_conditioning(learner, eps: torch.Tensor, mode: str = "fast", covariance: str = "diag",
                        prompt_index: Optional[torch.Tensor] = None):
    """(context (B, R, 77, D), ortho scalar) from the learner's K prompts and the noise `eps`: (B, R, 77, D) for diag,
    (B, R, K) for lowrank. With `prompt_index` (objective `assign`; long, (B, R), or (U,) for the distinct rows of
    `denoiser_rows` in the fast mode) each row is its prompt h_k itself: (B, R, 77, D) or (U, 77, D)."""
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")
    check_covariance(covariance)
    b = eps.shape[0] if eps is not None else prompt_index.shape[0]
    if mode == "fast":
        if prompt_index is not None:  # the drawn prompts' states; every prompt's pooled state for ortho
            hidden, pooled = learner.encode_rows(prompt_index)
            return hidden, learner.orthogonal_loss(pooled)
        hidden, pooled = learner.encode()  # (K, 77, D), (K, D): the K prompts, once
        if covariance == "diag":
            mean, std = learner.moments(hidden)  # (77, D) each
            context = mean + eps.to(mean) * std  # (B, R, 77, D)
        else:
            context = hidden.mean(0) + torch.einsum("brk,kld->brld", eps.to(hidden), prompt_factor(hidden))
        return context, learner.orthogonal_loss(pooled)
    # official: ctx[cls_idx] stacked per item -> B·K sequences through the encoder, moments per item
    x, eos = learner.input_embeddings()  # (K, 77, D)
    k = x.shape[0]
    hidden = learner.text_encoder(x.repeat(b, 1, 1), add_position=True).view(b, k, *x.shape[1:])  # (B, K, 77, D)
    pooled = hidden[:, :, eos]  # (B, K, D)
    if prompt_index is not None:
        return hidden.gather(1, prompt_index[..., None, None].expand(-1, -1, *hidden.shape[2:])), \
            learner.orthogonal_loss(pooled)
    mean = hidden.mean(1)  # (B, 77, D)
    if covariance != "diag":  # lowrank, and kernel's Gaussian part
        factor = (hidden - mean[:, None]) / max(k - 1, 1) ** 0.5  # (B, K, 77, D); zeros for K=1
        return mean[:, None] + torch.einsum("brk,bkld->brld", eps.to(mean), factor), learner.orthogonal_loss(pooled)
    std = hidden.std(1) if k > 1 else torch.zeros_like(mean)
    context = mean[:, None] + eps.to(mean) * std[:, None]  # (B, R, 77, D)
    return context, learner.orthogonal_loss(pooled)


def assigned_prompts(image_index: torch.Tensor, choice: torch.Tensor, n_prompts: int, n_images: int) -> torch.Tensor:
    """Objective `assign`: (B,) image indices and (B, R) random non-negative ints → (B, R) prompt indices.
    Prompt k belongs to image k mod N; an image with no prompt of its own (K < N) uses prompt n mod K."""
    if n_prompts < n_images:
        return (image_index % n_prompts)[:, None].expand_as(choice).clone()
    own = (n_prompts - 1 - image_index) // n_images + 1  # how many prompts k ≡ n (mod N) exist, (B,)
    return image_index[:, None] + n_images * (choice % own[:, None])


def denoiser_rows(bsz: int, r: int, prompt_index: Optional[torch.Tensor], n_prompts: int,
                  device: Optional[torch.device] = None):
    """Which (image, conditioning) rows the denoiser runs: (rows_b (U,), rows_k (U,) or None, inverse (B·R,)).

    Without `prompt_index` every sample (b, r) is its own row (U = B·R, rows_k None). With it (objective `assign`)
    samples of one image that drew the same prompt share the noisy input, timestep and conditioning, so they are one
    row: U = the distinct (b, k) pairs, rows_k their prompts, and sample (b, r) reads row inverse[b·R + r]. The loss is
    the same number (a row counts as often as it was drawn); an image with 1–3 prompts of its own (K=32, 12–20 images)
    draws R=4 samples from them, so about half the rows were repeats."""
    if prompt_index is None:
        return torch.arange(bsz, device=device).repeat_interleave(r), None, torch.arange(bsz * r, device=device)
    keys = (torch.arange(bsz, device=prompt_index.device)[:, None] * n_prompts + prompt_index).reshape(-1)
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)  # sorted keys: still b-major
    return unique // n_prompts, unique % n_prompts, inverse


def reduce_objective(losses: torch.Tensor, objective: str, delta: float = 0.1, tau: float = 0.1) -> torch.Tensor:
    """losses ℓ (B, R) (weighted per-sample diffusion losses) → the scalar objective (see the module docstring)."""
    if objective in ("official", "assign"):
        return losses.mean()
    if objective == "wta":
        return ((1.0 - delta) * losses.min(dim=1).values + delta * losses.mean(dim=1)).mean()
    if objective == "softmin":
        t = (tau * losses.mean(dim=1, keepdim=True)).detach().clamp_min(1e-12)  # (B, 1)
        r = losses.shape[1]
        return (-t[:, 0] * (torch.logsumexp(-losses / t, dim=1) - math.log(r))).mean()
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


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
    covariance: str = "diag",
    objective: str = "official",
    prompt_index: Optional[torch.Tensor] = None,
    objective_delta: float = 0.1,
    objective_tau: float = 0.1,
    lowpass_weight: float = 0.0,
    lowpass_pool: int = 4,
) -> LossOutput:
    """One training loss.

    latents, noise: (B, C, h, w) in 2D or (B, F, C, h, w) multi-view (scaled latents); timesteps (B,) long;
    eps (B, R, 77, D) (diag) or (B, R, K) (lowrank); prompt_index (B, R) for objective `assign` (then eps is None);
    cameras (B, F, 16) for multi-view (None: no camera conditioning, F views still attend jointly);
    denoiser(x (N,C,h,w), t (N,), context (N,77,D), camera=(N,16)|None, num_frames=F) -> (N,C,h,w).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if (objective == "assign") != (prompt_index is not None):
        raise ValueError("objective 'assign' takes prompt_index (B, R) instead of eps; the others take eps")
    bsz, r = (eps if eps is not None else prompt_index).shape[:2]
    multiview = latents.ndim == 5
    views = latents.shape[1] if multiview else 1
    chw = latents.shape[-3:]
    if latents.shape[0] != bsz or timesteps.shape != (bsz,):
        raise ValueError(f"batch mismatch: latents {tuple(latents.shape)}, timesteps {tuple(timesteps.shape)}, rows "
                         f"({bsz}, {r})")

    rows_b, rows_k, inverse = denoiser_rows(bsz, r, prompt_index if mode == "fast" else None, learner.ctx.shape[0],
                                            latents.device)
    context, ortho = prompt_conditioning(learner, eps, mode, covariance, prompt_index if rows_k is None else rows_k)
    context = context.reshape(-1, *context.shape[-2:])  # (U, 77, D): one per denoiser row

    noisy = schedule.add_noise(latents, noise, timesteps)  # (B, [F,] C, h, w)
    target = schedule.target(latents, noise, timesteps).float()
    # rows (u, f), u in b-major order
    x_rows = noisy[rows_b].reshape(-1, *chw)
    t_rows = timesteps[rows_b].repeat_interleave(views)
    c_rows = context.unsqueeze(1).expand(-1, views, *context.shape[1:]).reshape(-1, *context.shape[1:])
    cam_rows = None if cameras is None else cameras[rows_b].reshape(-1, cameras.shape[-1])
    pred = denoiser(x_rows, t_rows, c_rows, camera=cam_rows, num_frames=views)
    pred = pred.reshape(len(rows_b), *latents.shape[1:]).float()  # (U, [F,] C, h, w)

    per_row = F.mse_loss(pred, target[rows_b], reduction="none")
    per_row = per_row.mean(dim=tuple(range(1, per_row.ndim)))  # (U,)
    if lowpass_weight > 0:  # the error's low frequencies (a body's colour, its layout) once more, × lowpass_weight
        residual = (pred - target[rows_b]).reshape(-1, *chw)  # (U·F, C, h, w)
        low = F.avg_pool2d(residual, lowpass_pool).pow(2)
        per_row = per_row + lowpass_weight * low.reshape(len(rows_b), -1).mean(dim=1)
    per_sample = per_row[inverse].view(bsz, r)  # (B, R): a row shared by n samples counts n times
    snr = official_snr(schedule.alphas_cumprod, timesteps.repeat_interleave(r))  # (B·R,), b-major as official
    weights = min_snr_weights(snr, snr_gamma).view(bsz, r)
    mse = reduce_objective(per_sample * weights, objective, objective_delta, objective_tau)
    total = mse + ortho_weight * ortho
    kept = pred.detach()[inverse].view(bsz, r, *pred.shape[1:]) if keep_pred else None
    return LossOutput(total, mse, ortho, per_sample.detach(), weights.detach(), kept)


__all__ = ["LOSS_MODES", "OBJECTIVES", "LossOutput", "assigned_prompts", "denoiser_rows", "distribution_loss",
           "min_snr_weights", "official_snr", "prompt_conditioning", "reduce_objective"]
