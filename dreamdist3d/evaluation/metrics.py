"""Distribution metrics on feature arrays: pure functions, numpy float64, no models.

Every function takes array-likes of shape (N, D) (numpy arrays or CPU torch tensors) and returns Python floats
(or numpy arrays where said). Conventions:

- `frechet_distance`: ||μ₁−μ₂||² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), unbiased covariances (ddof 1), the matrix square
  roots from symmetric eigendecompositions (both products are symmetric PSD, so no general `sqrtm` is needed and
  rank-deficient covariances, i.e. fewer images than feature dimensions, are fine).
- `kernel_distance`: KID (Bińkowski et al. 2018): the unbiased MMD² estimator with the cubic polynomial kernel
  k(x, y) = (x·y/D + 1)³, averaged over random subsets (mean and std over subsets, as torch-fidelity/clean-fid).
- `prdc`: precision, recall, density, coverage (Naeem et al. 2020) with k-NN balls of Euclidean radius = distance to
  the k-th nearest *other* point of the same set. Balls are closed (distance <= radius); the authors' reference code
  uses open balls (<), which differs only on exact ties (duplicated features, which the toy world's discrete
  attribute features do have).
- `diversity`: mean pairwise 1 − cos over distinct pairs; `mean_cosine`: mean cosine over all (a, b) pairs
  (CLIP-I / DINO-I / CLIP-T, the DreamBooth protocol); `nearest`: per row of a, the index and cosine of the nearest
  row of b.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np


def as_array(x) -> np.ndarray:
    """(N, D) float64 numpy array of an array-like (a torch tensor is detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a (N, D) feature array, got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------------------------------- Fréchet
def psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (negative rounding-error
    eigenvalues clipped to 0)."""
    m = (m + m.T) / 2
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((Σ₁ Σ₂)^½) for PSD Σ₁, Σ₂: the eigenvalues of Σ₁Σ₂ equal those of the symmetric PSD Σ₁^½ Σ₂ Σ₁^½."""
    r = psd_sqrt(s1)
    w = np.linalg.eigvalsh((r @ s2 @ r + (r @ s2 @ r).T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_from_moments(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    d = float(((mu1 - mu2) ** 2).sum()) + float(np.trace(s1) + np.trace(s2)) - 2 * trace_sqrt_product(s1, s2)
    return max(d, 0.0)


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a and b (each needs at least 2 rows)."""
    a, b = as_array(a), as_array(b)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance needs at least 2 features per set, got {a.shape[0]} and {b.shape[0]}")
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ----------------------------------------------------------------------------------------------------- KID
def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    return (a @ b.T / a.shape[1] + coef0) ** degree


def mmd2_unbiased(a, b, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD² estimate between the rows of a (m, D) and b (n, D) with the polynomial kernel: within-set
    means exclude the diagonal (m, n >= 2)."""
    a, b = as_array(a), as_array(b)
    m, n = a.shape[0], b.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 features per set, got {m} and {n}")
    kaa = polynomial_kernel(a, a, degree, coef0)
    kbb = polynomial_kernel(b, b, degree, coef0)
    kab = polynomial_kernel(a, b, degree, coef0)
    saa = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    sbb = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(saa + sbb - 2 * kab.mean())


def kernel_distance(a, b, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """KID: (mean, std) of `mmd2_unbiased` over `n_subsets` random subsets of min(subset_size, len(a), len(b)) rows
    of each set, drawn without replacement with a fixed seed. When the subset is the whole of both sets every subset
    is the same and the std is 0."""
    a, b = as_array(a), as_array(b)
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError(f"kernel_distance needs at least 2 features per set, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = np.array([mmd2_unbiased(a[rng.choice(a.shape[0], size, replace=False)],
                                   b[rng.choice(b.shape[0], size, replace=False)]) for _ in range(n_subsets)])
    return float(vals.mean()), float(vals.std())


# ----------------------------------------------------------------------------------------------------- PRDC
def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk_elems: int = 1 << 24) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), float64, from the differences themselves (not |a|²+|b|²−2a·b), so
    equal features are at distance exactly 0 and ties on ball boundaries are decided exactly. Chunked over rows of
    a to bound memory."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.empty((a.shape[0], b.shape[0]))
    step = max(1, chunk_elems // max(1, b.shape[0] * a.shape[1]))
    for i in range(0, a.shape[0], step):
        diff = a[i:i + step, None, :] - b[None, :, :]
        out[i:i + step] = np.sqrt((diff * diff).sum(-1))
    return out


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (the row itself, at 0, is not counted)."""
    d = pairwise_distances(x, x)
    return np.sort(d, axis=1)[:, k]


def prdc(real, fake, k: int = 5) -> Dict[str, float]:
    """Naeem et al. (2020) precision, recall, density and coverage of `fake` (M, D) against `real` (N, D).

    precision: fraction of fakes inside some real k-NN ball; recall: fraction of reals inside some fake k-NN ball;
    density: (1/kM) Σ_fakes #(real balls containing the fake); coverage: fraction of reals whose ball holds a fake.
    Needs N > k; with M == 0 every value is 0; with M <= k recall is nan (fake balls undefined)."""
    real, fake = as_array(real), as_array(fake)
    n, m = real.shape[0], fake.shape[0]
    if n <= k:
        raise ValueError(f"prdc needs more than k={k} real features, got {n}")
    if m == 0:
        return {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    r_real = knn_radii(real, k)
    d_rf = pairwise_distances(real, fake)  # (N, M)
    inside = d_rf <= r_real[:, None]  # real ball i contains fake j
    precision = float(inside.any(0).mean())
    density = float(inside.sum(0).mean() / k)
    coverage = float((d_rf.min(1) <= r_real).mean())
    recall = float((d_rf <= knn_radii(fake, k)[None, :]).any(1).mean()) if m > k else float("nan")
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


# ----------------------------------------------------------------------------------------------------- cosine
def normalize(x) -> np.ndarray:
    a = as_array(x)
    return a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)


def mean_cosine(a, b) -> float:
    """Mean cosine similarity over all pairs (row of a, row of b): CLIP-I, DINO-I, CLIP-T (b = one text row)."""
    return float((normalize(a) @ normalize(b).T).mean())


def diversity(x) -> float:
    """Mean pairwise 1 − cos over distinct pairs of rows; nan with fewer than 2 rows."""
    a = normalize(x)
    m = a.shape[0]
    if m < 2:
        return float("nan")
    c = a @ a.T
    return float(1.0 - (c.sum() - np.trace(c)) / (m * (m - 1)))


def mean_pairwise_l2(x) -> float:
    """Mean Euclidean distance over distinct pairs of rows; nan with fewer than 2 rows."""
    a = as_array(x)
    m = a.shape[0]
    if m < 2:
        return float("nan")
    return float(pairwise_distances(a, a).sum() / (m * (m - 1)))


def nearest(a, b) -> Tuple[np.ndarray, np.ndarray]:
    """For each row of a: (index of the most cosine-similar row of b, that cosine)."""
    c = normalize(a) @ normalize(b).T
    idx = c.argmax(1)
    return idx, c[np.arange(c.shape[0]), idx]


def finite_or_none(x: float):
    """JSON-friendly: a float, or None for nan/inf."""
    return None if x is None or not math.isfinite(x) else float(x)


__all__ = ["as_array", "psd_sqrt", "trace_sqrt_product", "frechet_from_moments", "frechet_distance",
           "polynomial_kernel", "mmd2_unbiased", "kernel_distance", "pairwise_distances", "knn_radii", "prdc",
           "normalize", "mean_cosine",
           "diversity", "mean_pairwise_l2", "nearest", "finite_or_none"]
