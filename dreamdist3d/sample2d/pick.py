"""Which samples to lift to 3D: the N most different of M previews.

Every 3D run draws one prompt sample (sample 0 of its seed, which is sample i of seed s for seed s+i), so N runs
with seeds 0..N−1 are N independent draws — and N independent draws of a set with a majority colour mostly repeat
it (four draws of the warm toy set's own 12 references show three of its colours only half the time). Previewing
M > N sample seeds in 2D is cheap next to a 3D run; lifting the N previews that differ most gives N objects spread
over the distribution instead of N draws of its mode. Nothing about the law changes: every lifted object is still
one sample of it, reproduced by its seed.

"Differ" is measured on features of each preview (`features`, the `--features` option of `preview --pick`):
- `colour` (the default): what a viewer sees first, the object's colours: a joint RGB histogram (`bins`³ cells) of
  the preview's foreground pixels — those far from the background colour, read off the image border — averaged over
  views. Chosen on the toy world's tuning sets over k-medoids and whole-image histograms (README, "The toy world");
  it cannot tell two same-coloured shapes apart;
- `form`: the object's silhouette: each view's foreground mask area-pooled to a `grid`×`grid` occupancy map,
  normalised to sum 1 (where the object is and how it spreads: body shape, size, aspect, a part beside the body),
  averaged over views;
- `colour+form`: both, side by side (each sums to 1, so each adds at most 2 to a distance);
- `<encoder>=DIR` (`dinov2=DIR`, `clip=DIR`, `dino=DIR`): an image encoder from a local transformers folder (as
  `dreamdist3d eval` loads them): each view's embedding, unit-normalised, averaged over views; Euclidean distance.
Histograms are compared by L1 distance. The N are chosen greedily: the medoid (the most typical preview) first, then
each time the preview farthest from all chosen (max-min).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

BINS = 4  # per channel: 64 colour cells
GRID = 8  # silhouette occupancy cells per side
FOREGROUND = 0.15  # a pixel is foreground when some channel differs from the background colour by more
FEATURES = ("colour", "form", "colour+form")  # besides "<encoder>=DIR"


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
    views = _as_views(images)
    n, f = views.shape[:2]
    x = views.flatten(0, 1)  # (nF, 3, H, W)
    fg = foreground_mask(x, threshold)  # (nF, H, W)
    q = (x * bins).long().clamp_max(bins - 1)  # (nF, 3, H, W)
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (nF, H, W)
    hist = torch.zeros(n * f, bins ** 3, dtype=torch.float64)
    hist.scatter_add_(1, cell.flatten(1), fg.flatten(1).double())
    hist = hist / hist.sum(1, keepdim=True).clamp_min(1.0)
    return hist.reshape(n, f, -1).mean(1)


def _as_views(images: torch.Tensor) -> torch.Tensor:
    """(n, F, 3, H, W) float in [0,1], NaN as black; (n, 3, H, W) is one view each."""
    if images.dim() == 4:
        images = images[:, None]
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"expected images (n, F, 3, H, W) or (n, 3, H, W), got {tuple(images.shape)}")
    return images.float().nan_to_num(0.0).clamp(0, 1)


def silhouette_histograms(images: torch.Tensor, grid: int = GRID, threshold: float = FOREGROUND) -> torch.Tensor:
    """(n, F, 3, H, W) or (n, 3, H, W) in [0,1] -> (n, grid²) float64: each view's foreground mask area-pooled to
    grid×grid cells and normalised to sum 1, averaged over views (a view with no foreground counts as empty)."""
    x = _as_views(images)
    n, f = x.shape[:2]
    fg = foreground_mask(x.flatten(0, 1), threshold).double()[:, None]  # (nF, 1, H, W)
    occ = F.adaptive_avg_pool2d(fg, grid).flatten(1)  # (nF, grid²)
    occ = occ / occ.sum(1, keepdim=True).clamp_min(1e-12)
    return occ.reshape(n, f, -1).mean(1)


def most_different(features: torch.Tensor, k: int, p: float = 1.0) -> List[int]:
    """Indices of `k` rows of `features` (M, C) spread out under the L`p` distance: the medoid, then greedy max-min
    (ties go to the lower index). k ≥ M returns all rows in order."""
    m = features.shape[0]
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    if k >= m:
        return list(range(m))
    d = torch.cdist(features.double(), features.double(), p=p)  # (M, M)
    chosen = [int(d.sum(1).argmin())]
    while len(chosen) < k:
        nearest = d[:, chosen].min(1).values
        nearest[chosen] = -1.0
        chosen.append(int(nearest.argmax()))
    return chosen


def parse_features(spec: str, flag: str = "--features") -> Tuple[str, Optional[str]]:
    """`colour` | `form` | `colour+form` -> (spec, None); `<encoder>=DIR` -> (encoder, DIR). Errors name `flag`."""
    from dreamdist3d.evaluation.features import ENCODERS

    if spec in FEATURES:
        return spec, None
    kind, sep, folder = spec.partition("=")
    if sep and kind in ENCODERS and folder:
        return kind, folder
    raise ValueError(f"{flag} {spec!r}: expected one of {', '.join(FEATURES)}, or an image encoder from a local "
                     f"transformers folder as {' | '.join(k + '=DIR' for k in ENCODERS)}")


def embedding_features(images: torch.Tensor, encoder) -> torch.Tensor:
    """(n, F, 3, H, W) or (n, 3, H, W) in [0,1] -> (n, D) float64: each view embedded by `encoder`
    (`evaluation.features.Encoder`), unit-normalised, averaged over views."""
    from dreamdist3d.images import to_pil, to_uint8

    x = _as_views(images)
    n, f = x.shape[:2]
    pixels = to_uint8(x.flatten(0, 1), channels_first=True)  # (nF, H, W, 3)
    emb = torch.from_numpy(encoder.embed_images([to_pil(p) for p in pixels])).double()  # (nF, D)
    return F.normalize(emb, dim=-1).reshape(n, f, -1).mean(1)


def preview_features(images: torch.Tensor, features: str = "colour", encoder=None) -> Tuple[torch.Tensor, float]:
    """(features (M, C), the p of their L`p` distance) of previews `images` by `features` (module docstring); an
    `<encoder>=DIR` spec needs the loaded `encoder`."""
    kind, folder = parse_features(features)
    if folder is not None:
        if encoder is None:
            raise ValueError(f"--features {features}: the encoder is not loaded (evaluation.features.load_encoder)")
        return embedding_features(images, encoder), 2.0
    parts = []
    if "colour" in kind:
        parts.append(colour_histograms(images))
    if "form" in kind:
        parts.append(silhouette_histograms(images))
    return torch.cat(parts, 1), 1.0


def pick_previews(images: torch.Tensor, k: int, features: str = "colour", encoder=None) -> List[int]:
    """The `k` most different of the previews `images` (M, F, 3, H, W) or (M, 3, H, W), by `features`."""
    feats, p = preview_features(images, features, encoder)
    return most_different(feats, k, p)


def pick_seeds(images: torch.Tensor, k: int, first_seed: int, features: str = "colour", encoder=None) -> List[int]:
    """The sample seeds, in ascending order, of the `k` most different previews, where preview i shows prompt sample
    i of `first_seed` — the sample a run with seed `first_seed + i` draws (the distribution seed rule)."""
    return sorted(first_seed + i for i in pick_previews(images, k, features, encoder))


__all__ = ["BINS", "FEATURES", "FOREGROUND", "GRID", "background_colour", "colour_histograms", "embedding_features",
           "foreground_mask", "most_different", "parse_features", "pick_previews", "pick_seeds", "preview_features",
           "silhouette_histograms"]
