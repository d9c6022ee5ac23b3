"""Attribute reader: reads toy-world attributes back from images, and rejects images that are not toy objects.

Analytic where it can be, learned only where it must:
- foreground: pixels far from the white background (1 − min(r,g,b) > FG_THRESHOLD);
- colours: a chroma-weighted circular hue histogram of the foreground; the highest peak is the body's hue (the body
  is always the larger part), a second peak far enough from it is the part's hue; names by nearest palette hue.
  Shading and antialiasing against white do not move an RGB colour's hue, so this is exact on clean renders;
- shape: silhouette features of the body's pixels (a bounding-box-normalised 12×12 mask and shading crop, aspect,
  fill, hole, width profile) → a small MLP trained in seconds on toy renders from random MVDream views;
- size and aspect: per-shape least squares from the body's pixel extent;
- part position: part pixels above the body's top → "top", else "side".

Reject (reading.ok False, reading.reason says why): empty image, grey/unsaturated foreground, multi-colour mush
(too much foreground far from both colour peaks), fragmented foreground (noise), a body that touches the border,
and silhouettes far from every training render (k-NN distance in feature space above a threshold calibrated on
held-out renders: catches smooth blobs a classifier would label confidently).

`precision_recall_density_coverage` (Naeem et al. 2020) works on any feature vectors; `Reading.feature` gives the
attribute features the evaluator uses (hue on the unit circle, size, aspect, shape probabilities, part).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.toyworld.objects import (
    SHAPES,
    SIZE_MAX,
    SIZE_MIN,
    WORLD,
    ObjectGrammar,
    hue_distance,
    nearest_colour,
)

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
OOD_MARGIN = 1.5  # k-NN threshold = 99.5th percentile of held-out render distances x this
FEATURE_NAMES = ("hue_cos", "hue_sin", "size", "aspect", *[f"p_{s}" for s in SHAPES], "has_part", "part_cos",
                 "part_sin")


# ----------------------------------------------------------------------------------------------------- readings
@dataclass
class Reading:
    """Attributes read from one image. ok False: rejected (reason says why; the other fields may be None)."""

    ok: bool
    reason: Optional[str] = None
    colour: Optional[str] = None
    hue: Optional[float] = None
    shape: Optional[str] = None
    shape_prob: Optional[float] = None
    shape_probs: Optional[List[float]] = None
    size: Optional[float] = None
    aspect: Optional[float] = None
    has_part: Optional[bool] = None
    part_colour: Optional[str] = None
    part_hue: Optional[float] = None
    part_position: Optional[str] = None  # "top" | "side"
    ood_score: Optional[float] = None  # k-NN distance / threshold (> 1 rejects)
    fg_fraction: float = 0.0

    def labels(self) -> Dict[str, object]:
        """Fields in the vocabulary of `ObjectSpec.labels()` / `AttributeSupport.contains`."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "hue": self.hue,
            "size": self.size,
            "aspect": self.aspect,
            "has_part": self.has_part,
            "part_colour": self.part_colour,
            "part_hue": self.part_hue,
            "part_position": self.part_position,
        }

    @property
    def feature(self) -> Optional[torch.Tensor]:
        """(D,) attribute feature for coverage/density metrics; None when rejected."""
        if not self.ok:
            return None
        return attribute_feature(self.hue, self.size, self.aspect, self.shape_probs,
                                 self.part_hue if self.has_part else None)


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


# ----------------------------------------------------------------------------------------------------- reader
class _ShapeNet(nn.Module):
    def __init__(self, d_in: int, n_out: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


class AttributeReader:
    """Reads Reading records from (N,3,H,W) images. Build with `AttributeReader.fit(...)` (seconds), or `load`."""

    def __init__(self, net: _ShapeNet, mean: torch.Tensor, std: torch.Tensor, size_coef: torch.Tensor,
                 aspect_coef: torch.Tensor, bank: torch.Tensor, ood_threshold: float, meta: Optional[dict] = None):
        self.net = net.eval()
        self.mean, self.std = mean, std  # silhouette feature standardisation (D,)
        self.size_coef = size_coef  # (S, 5): per-shape least squares on [bh, bw, sqrt(area), fill, 1]
        self.aspect_coef = aspect_coef  # (S, 5)
        self.bank = bank  # (B, D) standardised silhouette features of training renders (k-NN reject)
        self.ood_threshold = float(ood_threshold)
        self.meta = dict(meta or {})

    # -------------------------------------------------------------- training
    @staticmethod
    def training_renders(n: int, seed: int, grammar: ObjectGrammar = WORLD, resolution: int = READ_RESOLUTION):
        """n random objects, each from one random MVDream view (elevation 0-30, any azimuth) -> (specs, images)."""
        from dreamdist3d.backbones.cameras import get_camera
        from dreamdist3d.toyworld.render import render

        specs = grammar.sample_many(n, seed)
        rng = np.random.default_rng(seed + 1)
        cams = torch.stack(
            [get_camera(1, float(rng.uniform(0, 30)), float(rng.uniform(0, 360)))[0] for _ in range(n)]
        )[:, None]
        out = render(specs, cams, resolution=resolution)
        return specs, out.image

    @classmethod
    def fit(
        cls,
        n_train: int = 4000,
        seed: int = 0,
        epochs: int = 40,
        hidden: int = 128,
        k: int = 5,
        verbose: bool = False,
    ) -> "AttributeReader":
        """Render n_train toy views (each also mirrored left-right: shape labels are mirror-invariant), fit the shape
        MLP (minibatch Adam), the size/aspect regressions and the k-NN reject. ~30 s for the default 4000 on one
        CPU thread; accuracy on held-out renders is stored in `meta["calibration_shape_accuracy"]`."""
        specs, images = cls.training_renders(n_train, seed)
        images = _to_read_resolution(images)
        rows = [analyse(im) for im in images]
        rows_m = [analyse(im) for im in images.flip(-1)]
        keep = [i for i, a in enumerate(rows) if a.reason is None]
        keep_m = [i for i, a in enumerate(rows_m) if a.reason is None]
        sil = torch.stack([rows[i].silhouette for i in keep])
        ext = torch.stack([rows[i].extent for i in keep])
        y = torch.tensor([SHAPES.index(specs[i].shape) for i in keep])
        mean, std = sil.mean(0), sil.std(0).clamp(min=1e-3)
        x = (sil - mean) / std
        x_m = (torch.stack([rows_m[i].silhouette for i in keep_m]) - mean) / std
        y_m = torch.tensor([SHAPES.index(specs[i].shape) for i in keep_m])
        # hold out 10% of the objects (and their mirror images) to calibrate the k-NN threshold and report accuracy
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(keep), generator=g)
        n_cal = max(20, len(keep) // 10)
        cal, tr = perm[:n_cal], perm[n_cal:]
        cal_objs = {keep[int(i)] for i in cal}
        tr_m = torch.tensor([j for j, i in enumerate(keep_m) if i not in cal_objs], dtype=torch.long)
        x_tr = torch.cat([x[tr], x_m[tr_m]])
        y_tr = torch.cat([y[tr], y_m[tr_m]])
        torch.manual_seed(seed)
        net = _ShapeNet(x.shape[1], len(SHAPES), hidden)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-3)
        batch = 256
        n_steps = epochs * ((x_tr.shape[0] + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=n_steps)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(x_tr.shape[0], generator=g)
            for j in range(0, x_tr.shape[0], batch):
                b = order[j : j + batch]
                opt.zero_grad()
                F.cross_entropy(net(x_tr[b]), y_tr[b]).backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            cal_acc = float((net(x[cal]).argmax(1) == y[cal]).float().mean())
        # size / aspect: per-shape linear least squares on extent features
        design = torch.cat([ext, torch.ones(len(keep), 1)], 1)
        size_t = torch.tensor([specs[i].size for i in keep])
        aspect_t = torch.tensor([specs[i].aspect for i in keep])
        size_coef = torch.zeros(len(SHAPES), design.shape[1])
        aspect_coef = torch.zeros(len(SHAPES), design.shape[1])
        for si in range(len(SHAPES)):
            sel = y == si
            if int(sel.sum()) < design.shape[1] + 2:
                continue
            a = design[sel]
            reg = 1e-3 * torch.eye(a.shape[1])
            size_coef[si] = torch.linalg.solve(a.T @ a + reg, a.T @ size_t[sel])
            aspect_coef[si] = torch.linalg.solve(a.T @ a + reg, a.T @ aspect_t[sel])
        bank = x_tr
        dcal = _knn_dist(x[cal], bank, k)
        thr = float(torch.quantile(dcal, 0.995)) * OOD_MARGIN
        meta = {"n_train": n_train, "seed": seed, "epochs": epochs, "hidden": hidden, "k": k,
                "calibration_shape_accuracy": cal_acc,
                "rejected_training_renders": len(rows) - len(keep)}
        if verbose:
            print(meta)
        return cls(net, mean, std, size_coef, aspect_coef, bank, thr, meta)

    # -------------------------------------------------------------- reading
    @torch.no_grad()
    def read(self, images: torch.Tensor) -> List[Reading]:
        """images (N,3,H,W) in [0,1] (any square size; resampled to 32) -> one Reading per image."""
        images = _to_read_resolution(images)
        analyses = [analyse(im) for im in images]
        good = [i for i, a in enumerate(analyses) if a.reason is None]
        out: List[Reading] = [Reading(ok=False, reason=a.reason, fg_fraction=a.fg_fraction) for a in analyses]
        if not good:
            return out
        x = (torch.stack([analyses[i].silhouette for i in good]) - self.mean) / self.std
        ood = _knn_dist(x, self.bank, int(self.meta.get("k", 5))) / self.ood_threshold
        probs = F.softmax(self.net(x), -1)
        design = torch.cat([torch.stack([analyses[i].extent for i in good]), torch.ones(len(good), 1)], 1)
        for j, i in enumerate(good):
            a = analyses[i]
            si = int(probs[j].argmax())
            score = float(ood[j])
            out[i] = Reading(
                ok=score <= 1.0,
                reason=None if score <= 1.0 else "out of world: silhouette unlike any toy render (k-NN score "
                                                 f"{score:.2f})",
                colour=nearest_colour(a.hue),
                hue=a.hue,
                shape=SHAPES[si],
                shape_prob=float(probs[j, si]),
                shape_probs=[float(p) for p in probs[j]],
                size=float(design[j] @ self.size_coef[si]),
                aspect=float(design[j] @ self.aspect_coef[si]),
                has_part=a.part_hue is not None,
                part_colour=nearest_colour(a.part_hue) if a.part_hue is not None else None,
                part_hue=a.part_hue,
                part_position=a.part_position,
                ood_score=score,
                fg_fraction=a.fg_fraction,
            )
        return out

    def read_views(self, images: torch.Tensor, num_views: int) -> List[Reading]:
        """Read (B·F,3,H,W) multi-view sets (rows (b f)) -> one aggregated Reading per object (see `aggregate`)."""
        if images.shape[0] % num_views:
            raise ValueError(f"{images.shape[0]} images is not a multiple of num_views={num_views}")
        rs = self.read(images)
        return [aggregate(rs[i : i + num_views]) for i in range(0, len(rs), num_views)]

    def features(self, readings: Sequence[Reading]) -> torch.Tensor:
        """(M, D) attribute features of the accepted readings (rejected ones are skipped)."""
        feats = [r.feature for r in readings if r.ok]
        if not feats:
            return torch.zeros(0, len(FEATURE_NAMES))
        return torch.stack(feats)

    # -------------------------------------------------------------- files
    def save(self, path: Union[str, Path]) -> None:
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors.update(mean=self.mean, std=self.std, size_coef=self.size_coef, aspect_coef=self.aspect_coef,
                       bank=self.bank.contiguous())
        meta = dict(self.meta, ood_threshold=self.ood_threshold, d_in=int(self.mean.shape[0]))
        save_file(tensors, str(path), metadata={"reader": json.dumps(meta)})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AttributeReader":
        from safetensors import safe_open
        from safetensors.torch import load_file

        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["reader"])
        net = _ShapeNet(int(meta["d_in"]), len(SHAPES), int(meta["hidden"]))
        net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
        return cls(net, t["mean"], t["std"], t["size_coef"], t["aspect_coef"], t["bank"], meta["ood_threshold"], meta)


def _vote(labels: Sequence[str], weights: Sequence[float]) -> str:
    tally: Dict[str, float] = {}
    for lab, w in zip(labels, weights):
        tally[lab] = tally.get(lab, 0.0) + float(w)
    return max(tally, key=lambda k: tally[k])


def aggregate(readings: Sequence[Reading]) -> Reading:
    """One Reading from several views of one object: rejected unless more than half the views are accepted; hue by
    circular mean, shape by the mean of the shape probabilities, size/aspect by mean, a part if any view sees one."""
    ok = [r for r in readings if r.ok]
    if 2 * len(ok) <= len(readings):
        reasons = sorted({r.reason for r in readings if not r.ok})
        return Reading(ok=False,
                       reason=f"{len(readings) - len(ok)}/{len(readings)} views rejected: " + "; ".join(reasons))
    # colour by a vote weighted by foreground area (a view where the part hides the body can flip one view),
    # hue by the circular mean over the views that agree with the vote
    colour = _vote([r.colour for r in ok], [r.fg_fraction for r in ok])
    hue = _circ_mean(torch.tensor([r.hue for r in ok if r.colour == colour]),
                     torch.ones(sum(r.colour == colour for r in ok)))
    probs = torch.tensor([r.shape_probs for r in ok]).mean(0)
    si = int(probs.argmax())
    parts = [r for r in ok if r.has_part]
    part_hue = None
    if parts:
        pc = _vote([r.part_colour for r in parts], [r.fg_fraction for r in parts])
        part_hue = _circ_mean(torch.tensor([r.part_hue for r in parts if r.part_colour == pc]),
                              torch.ones(sum(r.part_colour == pc for r in parts)))
    positions = [r.part_position for r in parts if r.part_position]
    return Reading(
        ok=True,
        colour=nearest_colour(hue),
        hue=hue,
        shape=SHAPES[si],
        shape_prob=float(probs[si]),
        shape_probs=[float(p) for p in probs],
        size=float(np.mean([r.size for r in ok])),
        aspect=float(np.mean([r.aspect for r in ok])),
        has_part=bool(parts),
        part_colour=nearest_colour(part_hue) if part_hue is not None else None,
        part_hue=part_hue,
        part_position=max(set(positions), key=positions.count) if positions else None,
        ood_score=float(max(r.ood_score for r in ok)),
        fg_fraction=float(np.mean([r.fg_fraction for r in ok])),
    )


def _knn_dist(x: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) mean distance from each row of x (M,D) to its k nearest rows of bank (B,D)."""
    d = torch.cdist(x, bank)
    return d.topk(min(k, bank.shape[0]), largest=False).values.mean(1)


# ----------------------------------------------------------------------------------------------------- metrics
def precision_recall_density_coverage(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 5) -> Dict[str,
                                                                                                              float]:
    """Naeem et al. (2020) precision, recall, density and coverage of fake features against real ones: the one
    implementation, `dreamdist3d.evaluation.metrics.prdc` (closed k-NN balls; needs more than k real features; recall
    nan when there are at most k fakes)."""
    from dreamdist3d.evaluation.metrics import prdc

    return prdc(real_feats, fake_feats, k=k)


__all__ = [
    "Reading",
    "AttributeReader",
    "analyse",
    "aggregate",
    "rgb_to_hsv",
    "attribute_feature",
    "spec_feature",
    "precision_recall_density_coverage",
    "FEATURE_NAMES",
]
