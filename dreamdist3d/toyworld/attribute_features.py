"""Features of toy images and object specs, the analytic half of the attribute reader (attributes.py):

- `analyse`: one (3,32,32) image -> foreground checks, the body's and the part's hues (peaks of a chroma-weighted
  circular hue histogram), the part's position, and the body's silhouette and extent features that the reader's
  shape MLP and size/aspect regressions take (see attributes.py for the whole method and the reject reasons);
- `attribute_feature` / `spec_feature` and `FEATURE_NAMES`: the attribute feature vector of a reading or of an exact
  ObjectSpec, compared by the coverage/density metrics.

Re-exported by attributes.py, where these names lived before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from dreamdist3d.toyworld.objects import SHAPES, SIZE_MAX, SIZE_MIN, hue_distance

READ_RESOLUTION = 32
FG_THRESHOLD = 0.3
MIN_CHROMA = 0.10
CROP = 12
HIST_BINS = 72  # 5 degrees per bin
PEAK_WINDOW = 8.0  # degrees around a hue peak used to refine it (rendered hues are exact; jitter is +-7)
PART_SEPARATION = 12.0  # a second hue peak must be this far from the body's (neighbouring palette hues: >= 14)
ASSIGN_WINDOW = 30.0  # a foreground pixel further than this from both peaks is "other colour"
MIN_PART_FRACTION = 0.03
MIN_FG_FRACTION = 0.008
MAX_OTHER_FRACTION = 0.15
MAX_GREY_FRACTION = 0.35
MAX_SOFTNESS = 0.6  # faint-foreground pixels per foreground pixel: renders <= 0.22, Gaussian blobs >= 1.5
FEATURE_NAMES = ("hue_cos", "hue_sin", "size", "aspect", *[f"p_{s}" for s in SHAPES], "has_part", "part_cos",
                 "part_sin")


# --------------------------------------------------------------------------------------------- attribute features
def attribute_feature(
    hue: float,
    size: float,
    aspect: float,
    shape_probs: Sequence[float],
    part_hue: Optional[float] = None,
) -> torch.Tensor:
    """(len(FEATURE_NAMES),) attribute feature: hue on the unit circle, size and aspect scaled to ~unit range,
    shape probabilities (one-hot for labels), part flag and part hue on a circle of radius 0.5."""
    h = math.radians(hue)
    size_n = (size - SIZE_MIN) / (SIZE_MAX - SIZE_MIN)
    aspect_n = (aspect - 0.6) / 0.9
    if part_hue is None:
        part = [0.0, 0.0, 0.0]
    else:
        ph = math.radians(part_hue)
        part = [1.0, 0.5 * math.cos(ph), 0.5 * math.sin(ph)]
    return torch.tensor([math.cos(h), math.sin(h), size_n, aspect_n, *shape_probs, *part], dtype=torch.float32)


def spec_feature(spec) -> torch.Tensor:
    """Attribute feature of an exact ObjectSpec (one-hot shape), comparable with `Reading.feature`."""
    probs = [1.0 if s == spec.shape else 0.0 for s in SHAPES]
    return attribute_feature(spec.hue, spec.size, spec.aspect, probs, spec.part.hue if spec.part else None)


# ----------------------------------------------------------------------------------------------------- image ops
def rgb_to_hsv(img: torch.Tensor):
    """img (N,3,H,W) in [0,1] -> hue degrees [0,360), chroma, value, min channel; each (N,H,W)."""
    r, g, b = img.unbind(1)
    mx, _ = img.max(1)
    mn, _ = img.min(1)
    c = mx - mn
    safe = c.clamp(min=1e-8)
    h = torch.where(
        mx == r, ((g - b) / safe) % 6.0, torch.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = (h * 60.0) % 360.0
    return h, c, mx, mn


def _circ_mean(h_deg: torch.Tensor, w: torch.Tensor) -> float:
    a = torch.deg2rad(h_deg)
    return float(torch.rad2deg(torch.atan2((w * a.sin()).sum(), (w * a.cos()).sum())) % 360.0)


def _hue_peak(h: torch.Tensor, w: torch.Tensor) -> Tuple[float, float]:
    """Peak of a circular, chroma-weighted hue histogram, refined by local circular means. -> (hue, weight)."""
    bins = (h / (360.0 / HIST_BINS)).long().clamp(0, HIST_BINS - 1)
    hist = torch.zeros(HIST_BINS, dtype=w.dtype).index_add_(0, bins, w)
    sm = hist + 0.6 * (hist.roll(1) + hist.roll(-1)) + 0.3 * (hist.roll(2) + hist.roll(-2))
    k = int(sm.argmax())
    centre = (k + 0.5) * 360.0 / HIST_BINS
    for _ in range(3):
        d = ((h - centre + 180.0) % 360.0 - 180.0).abs()
        sel = d <= PEAK_WINDOW
        if not bool(sel.any()):
            break
        centre = _circ_mean(h[sel], w[sel])
    d = ((h - centre + 180.0) % 360.0 - 180.0).abs()
    return centre, float(w[d <= PEAK_WINDOW].sum())


def _crop(maps: torch.Tensor, box: Tuple[int, int, int, int], size: int = CROP) -> torch.Tensor:
    """maps (C,H,W), box (y0,y1,x0,x1) inclusive-exclusive -> (C,size,size) by area resampling of the box."""
    y0, y1, x0, x1 = box
    sub = maps[:, y0:y1, x0:x1][None]
    return F.interpolate(sub, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _components(mask: torch.Tensor) -> int:
    """Number of 4-connected components of a boolean (H,W) mask."""
    from scipy import ndimage

    return int(ndimage.label(mask.numpy().astype(bool))[1])


@dataclass
class _Analysis:
    """Analytic part of a reading for one image (before the learned shape/size step)."""

    reason: Optional[str]
    fg_fraction: float
    hue: Optional[float] = None
    part_hue: Optional[float] = None
    part_position: Optional[str] = None
    silhouette: Optional[torch.Tensor] = None  # (D_sil,) features of the body's pixels
    extent: Optional[torch.Tensor] = None  # (4,) body bbox height, width (px at 32), sqrt(area), fill


def analyse(image: torch.Tensor) -> _Analysis:
    """Colour analysis + body silhouette features of one (3,32,32) image in [0,1]."""
    img = image.clamp(0.0, 1.0).float()
    H, W = img.shape[-2:]
    h, c, v, mn = rgb_to_hsv(img[None])
    h, c, v, mn = h[0], c[0], v[0], mn[0]
    fg_strength = 1.0 - mn
    fg = fg_strength > FG_THRESHOLD
    n_fg = int(fg.sum())
    frac = n_fg / float(H * W)
    if frac < MIN_FG_FRACTION:
        return _Analysis("empty: no foreground", frac)
    softness = int(((fg_strength > 0.04) & ~fg).sum()) / n_fg
    if softness > MAX_SOFTNESS:
        return _Analysis(f"soft edges: a blob, not a rendered object (softness {softness:.2f})", frac)
    sat = c / v.clamp(min=1e-6)
    coloured = fg & (sat > 0.25) & (c > MIN_CHROMA)
    grey_frac = 1.0 - int(coloured.sum()) / n_fg
    if grey_frac > MAX_GREY_FRACTION:
        return _Analysis(f"grey: {grey_frac:.0%} of the foreground is unsaturated", frac)
    hs, ws = h[coloured], c[coloured]
    total = float(ws.sum())
    hue, _ = _hue_peak(hs, ws)
    d_body = ((h - hue + 180.0) % 360.0 - 180.0).abs()
    rest = coloured & (d_body > PART_SEPARATION)
    part_hue = None
    if float(c[rest].sum()) > MIN_PART_FRACTION * total and int(rest.sum()) >= 3:
        ph, pw = _hue_peak(h[rest], c[rest])
        if pw > MIN_PART_FRACTION * total and hue_distance(ph, hue) > PART_SEPARATION:
            part_hue = ph
    d_part = ((h - part_hue + 180.0) % 360.0 - 180.0).abs() if part_hue is not None else torch.full_like(h, 999.0)
    body = coloured & (d_body <= ASSIGN_WINDOW) & (d_body <= d_part)
    part = coloured & (d_part < d_body) & (d_part <= ASSIGN_WINDOW)
    other = coloured & ~body & ~part
    other_frac = float(c[other].sum()) / max(total, 1e-6)
    if other_frac > MAX_OTHER_FRACTION:
        return _Analysis(f"mixed colours: {other_frac:.0%} of the foreground is neither of two hues", frac)
    if _components(fg) > 3:
        return _Analysis("fragmented foreground (noise)", frac)
    # body pixels: the coloured body plus unsaturated/dark pixels next to it are kept out; use fg strength as mask
    body_mask = body.float()
    ys = body.any(1).nonzero().flatten()
    xs = body.any(0).nonzero().flatten()
    if ys.numel() < 2 or xs.numel() < 2:
        return _Analysis("empty: body too small", frac)
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    if y0 == 0 or x0 == 0 or y1 == H or x1 == W:
        return _Analysis("object touches the image border", frac)
    bh, bw = y1 - y0, x1 - x0
    area = float(body_mask.sum())
    fill = area / float(bh * bw)
    shade = (v * body_mask) / v[body].max().clamp(min=1e-6)
    crops = _crop(torch.stack([body_mask, shade, part.float()]), (y0, y1, x0, x1))  # (3,CROP,CROP)
    prof_rows = body_mask[y0:y1, x0:x1].sum(1) / bw  # width profile along height
    prof = F.interpolate(prof_rows[None, None], size=8, mode="linear", align_corners=False)[0, 0]
    # a hole: background pixels enclosed in the body bbox whose row and column both have body on both sides
    inner = (~body[y0:y1, x0:x1]).float()
    left = body[y0:y1, x0:x1].float().cumsum(1) > 0
    right = body[y0:y1, x0:x1].float().flip(1).cumsum(1).flip(1) > 0
    up = body[y0:y1, x0:x1].float().cumsum(0) > 0
    down = body[y0:y1, x0:x1].float().flip(0).cumsum(0).flip(0) > 0
    hole = float((inner * (left & right & up & down).float()).sum()) / max(area, 1.0)
    aspect_px = math.log(bh / bw)
    sil = torch.cat([crops.flatten(), prof, torch.tensor([aspect_px, fill, hole * 4.0])])
    extent = torch.tensor([bh, bw, math.sqrt(area), fill], dtype=torch.float32) * torch.tensor(
        [32.0 / H, 32.0 / W, 32.0 / math.sqrt(H * W), 1.0]
    )
    part_pos = None
    if part_hue is not None and bool(part.any()):
        py = part.any(1).nonzero().flatten().float()
        pcy = float(py.mean())
        # top: the part's centre is above the body's top quarter
        part_pos = "top" if pcy < y0 + 0.15 * bh else "side"
    return _Analysis(None, frac, hue, part_hue, part_pos, sil, extent)


def _to_read_resolution(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N,3,H,W) in [0,1], got {tuple(images.shape)}")
    images = images.detach().float().cpu()
    if images.shape[-1] != READ_RESOLUTION or images.shape[-2] != READ_RESOLUTION:
        images = F.interpolate(images, size=(READ_RESOLUTION, READ_RESOLUTION), mode="area")
    return images
