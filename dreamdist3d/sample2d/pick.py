"""Which samples to lift to 3D: the N most different of M previews.

Every 3D run draws one prompt sample (sample 0 of its seed, which is sample i of seed s for seed s+i), so N runs
with seeds 0..N−1 are N independent draws — and N independent draws of a set with a majority colour mostly repeat
it (four draws of the warm toy set's own 12 references show three of its colours only half the time). Previewing
M > N sample seeds in 2D is cheap next to a 3D run; lifting the N previews that differ most gives N objects spread
over the distribution instead of N draws of its mode. Nothing about the law changes: every lifted object is still
one sample of it, reproduced by its seed.

"Differ" is measured on what a viewer sees first, the object's colours: a joint RGB histogram (`bins`³ cells) of the
preview's foreground pixels — those far from the background colour, read off the image border — averaged over
views, compared by L1 distance. The N are chosen greedily: the medoid (the most typical preview) first, then each
time the preview farthest from all chosen (max-min). Chosen on the toy world's tuning sets over k-medoids and
whole-image histograms (README, "The toy world").
"""

from __future__ import annotations

from typing import List

import torch

BINS = 4  # per channel: 64 colour cells
FOREGROUND = 0.15  # a pixel is foreground when some channel differs from the background colour by more


def background_colour(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) in [0,1] -> (n, 3): the per-channel median of the border pixels."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    return border.median(dim=-1).values


def foreground_mask(images: torch.Tensor, threshold: float = FOREGROUND) -> torch.Tensor:
    """(n, 3, H, W) in [0,1] -> (n, H, W) bool: pixels some channel of which is farther than `threshold` from the
    image's background colour (`background_colour`)."""
    return (images - background_colour(images)[..., None, None]).abs().amax(dim=1) > threshold


def colour_histograms(images: torch.Tensor, bins: int = BINS, threshold: float = FOREGROUND) -> torch.Tensor:
    """(n, F, 3, H, W) or (n, 3, H, W) in [0,1] -> (n, bins³) float64: each sample's foreground colour histogram,
    normalised per view and averaged over views (a view with no foreground counts as an empty histogram)."""
    if images.dim() == 4:
        images = images[:, None]
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"expected images (n, F, 3, H, W) or (n, 3, H, W), got {tuple(images.shape)}")
    n, F = images.shape[:2]
    x = images.reshape(n * F, 3, *images.shape[-2:]).float().nan_to_num(0.0).clamp(0, 1)  # (nF, 3, H, W)
    fg = foreground_mask(x, threshold)  # (nF, H, W)
    q = (x * bins).long().clamp_max(bins - 1)  # (nF, 3, H, W)
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (nF, H, W)
    hist = torch.zeros(n * F, bins ** 3, dtype=torch.float64)
    hist.scatter_add_(1, cell.flatten(1), fg.flatten(1).double())
    hist = hist / hist.sum(1, keepdim=True).clamp_min(1.0)
    return hist.reshape(n, F, -1).mean(1)


def most_different(features: torch.Tensor, k: int) -> List[int]:
    """Indices of `k` rows of `features` (M, C) spread out under L1 distance: the medoid, then greedy max-min
    (ties go to the lower index). k ≥ M returns all rows in order."""
    m = features.shape[0]
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    if k >= m:
        return list(range(m))
    d = torch.cdist(features.double(), features.double(), p=1)  # (M, M)
    chosen = [int(d.sum(1).argmin())]
    while len(chosen) < k:
        nearest = d[:, chosen].min(1).values
        nearest[chosen] = -1.0
        chosen.append(int(nearest.argmax()))
    return chosen


def pick_previews(images: torch.Tensor, k: int) -> List[int]:
    """The `k` most different of the previews `images` (M, F, 3, H, W) or (M, 3, H, W), by foreground colour."""
    return most_different(colour_histograms(images), k)


def pick_seeds(images: torch.Tensor, k: int, first_seed: int) -> List[int]:
    """The sample seeds, in ascending order, of the `k` most different previews, where preview i shows prompt sample
    i of `first_seed` — the sample a run with seed `first_seed + i` draws (the distribution seed rule)."""
    return sorted(first_seed + i for i in pick_previews(images, k))


__all__ = ["BINS", "FOREGROUND", "background_colour", "colour_histograms", "foreground_mask", "most_different",
           "pick_previews", "pick_seeds"]
