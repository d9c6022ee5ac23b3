"""Frame grids and turntable videos written under a run's `save/` folder (threestudio's file names); images are
converted and written by `dreamdist3d.images` (`to_uint8`, `save_png`).

Videos: H.264 MP4 through imageio-ffmpeg, yuv420p, frame sizes padded to even numbers so every player opens them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from dreamdist3d.images import tile_grid

PathLike = Union[str, Path]


def hstack(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(images), axis=1)


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
    """`n` frames evenly spaced over the sequence, in a grid with `cols` columns (white where a row is short)."""
    if not frames:
        raise ValueError("no frames to put in a grid")
    n = min(n, len(frames))
    idx = np.linspace(0, len(frames), n, endpoint=False).astype(int)
    return tile_grid([frames[i] for i in idx], cols=cols, fill=255)


def sorted_frames(folder: PathLike) -> List[Path]:
    """PNG frames of a folder sorted by the integer in their name (threestudio's `(\\d+)\\.png`)."""
    files = [p for p in Path(folder).glob("*.png") if re.search(r"(\d+)\.png$", p.name)]
    return sorted(files, key=lambda p: int(re.search(r"(\d+)\.png$", p.name).group(1)))
