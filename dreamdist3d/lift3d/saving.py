"""Images, frame grids and turntable videos written under a run's `save/` folder (threestudio's file names).

Videos: H.264 MP4 through imageio-ffmpeg, yuv420p, frame sizes padded to even numbers so every player opens them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from PIL import Image

PathLike = Union[str, Path]


def to_uint8(img: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """(H,W,C) float in [0,1] (C = 1 or 3) -> (H,W,3) uint8."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.clip(np.nan_to_num(img), 0.0, 1.0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return (img * 255.0 + 0.5).astype(np.uint8)


def hstack(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(images), axis=1)


def save_image(path: PathLike, img: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return img


def write_video(path: PathLike, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """uint8 (H,W,3) frames -> H.264/yuv420p MP4 (even size)."""
    import imageio.v2 as imageio

    from dreamdist3d.io import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:
        writer = imageio.get_writer(str(tmp), fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
                                    ffmpeg_log_level="error", quality=8)
        try:
            for f in frames:
                writer.append_data(_even(f))
        finally:
            writer.close()
    return path


def frame_grid(frames: Sequence[np.ndarray], n: int = 8, cols: int = 4) -> np.ndarray:
    """`n` frames evenly spaced over the sequence, in a grid with `cols` columns."""
    if not frames:
        raise ValueError("no frames to put in a grid")
    n = min(n, len(frames))
    idx = np.linspace(0, len(frames), n, endpoint=False).astype(int)
    picked = [frames[i] for i in idx]
    rows = math.ceil(n / cols)
    h, w = picked[0].shape[:2]
    grid = np.full((rows * h, min(cols, n) * w, 3), 255, dtype=np.uint8)
    for k, f in enumerate(picked):
        r, c = divmod(k, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = f
    return grid


def sorted_frames(folder: PathLike) -> List[Path]:
    """PNG frames of a folder sorted by the integer in their name (threestudio's `(\\d+)\\.png`)."""
    files = [p for p in Path(folder).glob("*.png") if re.search(r"(\d+)\.png$", p.name)]
    return sorted(files, key=lambda p: int(re.search(r"(\d+)\.png$", p.name).group(1)))
