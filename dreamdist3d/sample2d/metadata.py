"""What each generated image carries: per-image embedding statistics, PNG text metadata, JSON sidecars.

Every image is written by `dreamdist3d.images.save_png` (atomically) as a PNG whose `tEXt` chunk `dreamdist3d`
holds its settings as ASCII JSON, plus a `<stem>.json` sidecar with the same record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from dreamdist3d.io import atomic_write_text

PathLike = Union[str, Path]


@torch.no_grad()
def embedding_stats(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    fed: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """Statistics of one drawn prompt embedding against the law it came from.

    sample, mean, std: (77, D) (float32, before any cast to the pipeline dtype); fed: the tensor actually given to
    the pipeline (its dtype), if different. `equals_mean` is exact equality (γ=0 gives True, max_abs_minus_mean 0).
    """
    s, m, sd = sample.float(), mean.float(), std.float()
    diff = s - m
    nz = sd > 0
    z = diff[nz] / sd[nz]
    out: Dict[str, Any] = {
        "shape": list(s.shape),
        "equals_mean": bool(torch.equal(s, m)),
        "max_abs_minus_mean": float(diff.abs().max()),
        "rms_minus_mean": float(diff.pow(2).mean().sqrt()),
        "rms_z": float(z.pow(2).mean().sqrt()) if z.numel() else 0.0,  # ≈ γ for a single distribution
        "norm": float(s.norm()),
        "law_mean_norm": float(m.norm()),
        "law_std_mean": float(sd.mean()),  # the law's std after γ and mixing
    }
    if fed is not None:
        out["fed_dtype"] = str(fed.dtype).replace("torch.", "")
        out["fed_max_abs_minus_mean"] = float((fed.float() - m.to(fed.dtype).float()).abs().max())
    return out


def write_json(record: Any, path: PathLike) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


__all__ = ["embedding_stats", "write_json"]
