"""Frame grids and turntable videos written under a run's `save/` folder (threestudio's file names); images are
converted and written by `dreamdist3d.images` (`to_uint8`, `save_png`). `write_turntable` is the one writer of a
test orbit, for a trained field (`MVDreamSystem.test`) and for Gaussians (`recipes/reconstruct.py`).

Videos: H.264 MP4 through imageio-ffmpeg, yuv420p, frame sizes padded to even numbers so every player opens them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dreamdist3d.images import save_png, tile_grid, to_uint8
from dreamdist3d.io import BackgroundWriter

PathLike = Union[str, Path]

# turntable frame PNGs (save/it<step>-test/<i>.png, threestudio's layout; 120 per object): zlib level 1 (3.4× faster
# than PIL's 6 on a 1024×512 frame, 30% larger) on worker threads while the next views render (benchmarks/turntable.py)
FRAME_PNG_LEVEL = 1
FRAME_WRITERS = 4


def hstack(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(images), axis=1)


class EmptyFieldError(ValueError):
    """The trained field (or the Gaussians) renders nothing."""


def eval_image(out: Dict[str, torch.Tensor]) -> np.ndarray:
    """RGB | normal (if any) | opacity of a render's first view, side by side (threestudio's validation image)."""
    parts = [to_uint8(out["comp_rgb"][0], rgb=True)]
    if "comp_normal" in out:
        parts.append(to_uint8(out["comp_normal"][0], rgb=True))
    parts.append(to_uint8(out["opacity"][0], rgb=True))
    return hstack(parts)


def save_frame(image: np.ndarray, path: Path) -> Path:
    """One turntable frame PNG, at the fast zlib level (no metadata record)."""
    return save_png(image, path, compress_level=FRAME_PNG_LEVEL)


def write_turntable(save_dir: PathLike, step: int, renders: Iterable[Tuple[int, Dict[str, torch.Tensor]]],
                    fps: int = 30, grid_frames: int = 8, progress: Optional[Callable[[], None]] = None,
                    empty_hint: str = "the object") -> Dict[str, Path]:
    """Write a test orbit from `(index, render)` pairs (render: "comp_rgb" (1,H,W,3), "opacity" (1,H,W,1)):
    `it{step}-test/{index}.png` (RGB | opacity), `it{step}-test.mp4` and `it{step}-test-grid.png` under `save_dir`.
    An orbit whose opacity stays below 1e-3 is an `EmptyFieldError` (`empty_hint` says what rendered empty and what
    to check)."""
    save_dir = Path(save_dir)
    folder = save_dir / f"it{step}-test"
    frames: List[np.ndarray] = []
    max_opacity = 0.0
    writer = BackgroundWriter(FRAME_WRITERS)  # the frame PNGs are written while the next views render
    try:
        for index, out in renders:
            max_opacity = max(max_opacity, float(out["opacity"].max()))
            writer.submit(save_frame, eval_image(out), folder / f"{index}.png")
            frames.append(to_uint8(out["comp_rgb"][0], rgb=True))
            if progress is not None:
                progress()
        if max_opacity < 1e-3:
            raise EmptyFieldError(f"the test orbit of step {step} renders empty (max opacity {max_opacity:.2e} over "
                                  f"{len(frames)} views): {empty_hint}")
        video = write_video(save_dir / f"it{step}-test.mp4", frames, fps=fps)
        grid = save_png(frame_grid(frames, n=grid_frames), save_dir / f"it{step}-test-grid.png")
    finally:
        writer.close()
    return {"video": video, "grid": grid, "frames": folder}


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
