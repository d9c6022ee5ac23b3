"""Scores of the toy-world evaluation (`dreamdist3d.recipes.toy_eval`, `toy_arms`): the metrics of one method's
attribute readings against a reference set, the markdown table, the caption-check lines and the K=32-vs-K=1
claim check."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

METRICS = ("n", "reject", "in_dist", "in_dist_acc", "coverage", "density", "precision", "recall", "diversity",
           "pix_div")


def pairwise_mean_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over distinct pairs of rows of x (M, D); nan when M < 2."""
    from dreamdist3d.evaluation.metrics import mean_pairwise_l2

    return mean_pairwise_l2(x)


def score_readings(readings: Sequence[Any], support: Any, real_feats: torch.Tensor,
                   images: Optional[torch.Tensor] = None,
                   k: int = 5) -> Dict[str, float]:
    """The metrics of one method (see the module docstring). readings: one `Reading` per image; support: an
    `AttributeSupport`; real_feats (R, D): attribute features of the reference set; images (N,3,H,W) for pix_div."""
    from dreamdist3d.evaluation.metrics import prdc as precision_recall_density_coverage

    n = len(readings)
    if n == 0:
        raise ValueError("score_readings needs at least one reading")
    ok = [r for r in readings if r.ok]
    inside = [r for r in ok if support.contains(r.labels())]
    feats = torch.stack([r.feature for r in ok]) if ok else torch.zeros(0, real_feats.shape[1])
    prdc = precision_recall_density_coverage(real_feats, feats, k=k)
    pix = float("nan")
    if images is not None and images.shape[0] >= 2:
        flat = images.reshape(images.shape[0], -1).double()
        pix = pairwise_mean_distance(flat) / math.sqrt(flat.shape[1])
    return {
        "n": n,
        "reject": 1.0 - len(ok) / n,
        "in_dist": len(inside) / n,
        "in_dist_acc": len(inside) / len(ok) if ok else float("nan"),
        "coverage": prdc["coverage"],
        "density": prdc["density"],
        "precision": prdc["precision"],
        "recall": prdc["recall"],
        "diversity": pairwise_mean_distance(feats),
        "pix_div": pix,
    }


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table: one row per (refset, method)."""
    cols = ("refset", "method", *METRICS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def medoid_caption(refset) -> str:
    """Caption of the reference object nearest (L2 on exact attribute features) to the set's mean feature."""
    from dreamdist3d.toyworld.attributes import spec_feature

    specs = refset.specs()
    feats = torch.stack([spec_feature(s) for s in specs])
    i = int((feats - feats.mean(0)).norm(dim=1).argmin())
    return specs[i].caption()


def verdicts(readings, support) -> List[str]:
    return ["reject" if not r.ok else ("in" if support.contains(r.labels()) else "out") for r in readings]


def format_caption_match(check: Dict[str, Any]) -> str:
    """The caption check as text: one line per view mode, then the interpolation readout."""
    lines = [_caption_line(check)] + ([_caption_line(check["four_view"])] if "four_view" in check else [])
    if "interpolation" in check:
        it = check["interpolation"]
        lines.append('interpolated text embeddings, "{}" -> "{}": read hue {}'.format(
            *it["captions"], " → ".join("rejected" if h is None else f"{h:.0f}°" for h in it["hues"])))
    return "\n".join(lines)


def _caption_line(check: Dict[str, Any]) -> str:
    return (f"caption check ({check['n']} seen-world captions, {check['views']} view(s), DDIM {check['steps']}, CFG "
            f"{check['guidance']}): accepted {check['accepted']:.2f}, colour {check['colour']:.2f}, shape "
            f"{check['shape']:.2f}, part {check['part']:.2f}, colour and shape {check['colour_and_shape']:.2f}")


def claim_check(rows: Sequence[Dict[str, Any]], tol: float = 0.15) -> Dict[str, str]:
    """Per refset, in 2D and (where there are 3D rows) in 3D: does K=32 have higher coverage than K=1 at an
    in-distribution rate no more than `tol` below K=1's (a higher rate is better, not a mismatch)?"""
    out = {}
    for name in dict.fromkeys(r["refset"] for r in rows):
        by = {r["method"]: r for r in rows if r["refset"] == name}
        for suffix in ("", " (3D)"):
            a, b = by.get("K=32" + suffix), by.get("K=1" + suffix)
            if not a or not b:
                continue
            higher = a["coverage"] > b["coverage"]
            in_dist_kept = a["in_dist"] >= b["in_dist"] - tol
            verdict = "holds" if (higher and in_dist_kept) else "does not hold"
            out[name + suffix] = (f"{verdict} (coverage {a['coverage']:.2f} vs {b['coverage']:.2f}, in-dist "
                                  f"{a['in_dist']:.2f} vs {b['in_dist']:.2f})")
    return out
