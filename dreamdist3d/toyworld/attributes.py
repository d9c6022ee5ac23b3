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

The analytic steps (`analyse`: foreground, colours, silhouette features) and the feature vector (`attribute_feature`,
`spec_feature`, `FEATURE_NAMES`) live in attribute_features.py and are re-exported here; this module holds `Reading`,
the learned `AttributeReader`, multi-view `aggregate` and the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.toyworld.attribute_features import (
    FEATURE_NAMES,
    READ_RESOLUTION,
    _circ_mean,
    _to_read_resolution,
    analyse,
    attribute_feature,
    rgb_to_hsv,
    spec_feature,
)
from dreamdist3d.toyworld.objects import SHAPES, WORLD, ObjectGrammar, nearest_colour

OOD_MARGIN = 1.5  # k-NN threshold = 99.5th percentile of held-out render distances x this


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
