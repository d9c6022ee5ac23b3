"""What each generated image carries: per-image embedding statistics, PNG text metadata, JSON sidecars.

Every image is written atomically (temporary file beside it, then one rename) as a PNG whose `tEXt` chunk
`dreamdist3d` holds its settings as ASCII JSON (non-ASCII escaped, so it stays a plain tEXt chunk), plus a
`<stem>.json` sidecar with the same record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dreamdist3d.io import atomic_path

PNG_KEY = "dreamdist3d"
PathLike = Union[str, Path]


@torch.no_grad()
def embedding_stats(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fed: Optional[torch.Tensor] = None) -> Dict[str, Any]:
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


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N,H,W,3) floats in [0,1] -> uint8, exactly as diffusers' `numpy_to_pil` rounds."""
    return (images * 255).round().astype("uint8")


def _json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=True, sort_keys=False)


def save_png(image: Union[np.ndarray, Image.Image], path: PathLike, record: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `image` ((H,W,3) uint8 or PIL) as PNG with `record` in a tEXt chunk `dreamdist3d`, atomically."""
    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    info = PngInfo()
    info.add_text("Software", "dreamdist3d")
    if record is not None:
        info.add_text(PNG_KEY, _json(record))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return path


def write_json(record: Any, path: PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_png_record(path: PathLike) -> Dict[str, Any]:
    """The `dreamdist3d` record of a PNG written by `save_png` (KeyError naming the file if it has none)."""
    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    if PNG_KEY not in text:
        raise KeyError(f"{path} has no '{PNG_KEY}' PNG text chunk; it was not written by dreamdist3d")
    return json.loads(text[PNG_KEY])


__all__ = ["PNG_KEY", "embedding_stats", "read_png_record", "save_png", "to_uint8", "write_json"]
