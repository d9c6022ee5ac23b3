"""The gallery of a set of 3D runs `<out>/runs/seed<seed>/`: find each run's turntable, then a PNG grid of turntable
frames (one row per seed) and an HTML page (`dreamdist3d.web.gallery_page`). Used by `dreamdist3d gallery` and the
toy demo."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from dreamdist3d.web.gallery_page import (
    GalleryObject,
    find_anchor,
    find_meshes,
    prompt_sample_settings,
    reference_images,
    save_step,
    write_gallery_page,
)


def run_dir(out: Path, seed: int) -> Path:
    return out / "runs" / f"seed{seed}"


def run_checkpoint(out: Path, seed: int) -> Path:
    """The checkpoint a stopped run of `seed` continues from (it may not exist)."""
    return run_dir(out, seed) / "ckpts" / "last.ckpt"


def find_turntable(run: Path, min_step: int = 0) -> Optional[Dict[str, Path]]:
    """The newest `save/it<step>-test.mp4` of a run and its frame folder; None when there is none at `min_step` or
    later. A run's last step as `min_step` tells a finished run from an interrupted one: Ctrl-C still renders the test
    turntable at the step training stopped (`it37-test.mp4`), as threestudio does."""
    save = run / "save"
    videos = sorted(save.glob("it*-test.mp4"), key=save_step) if save.is_dir() else []
    if not videos or save_step(videos[-1]) < min_step:
        return None
    v = videos[-1]
    return {"video": v, "frames": save / v.name.replace(".mp4", ""), "step": save_step(v)}


def is_finished(run: Path, last_step: int, meshes: bool = False) -> bool:
    """Is the object of `run` made: its turntable at `last_step` (see `find_turntable`) and, with `meshes`, its
    exported meshes there too (`web.gallery_page.find_meshes`)?"""
    return find_turntable(run, min_step=last_step) is not None and (not meshes or bool(find_meshes(run)))


def build_gallery(out: Path, seeds: List[int], n_frames: int = 6, title: str = "",
                  references: Optional[Path] = None) -> Dict[str, Path]:
    """gallery.png (row per seed: n_frames turntable frames) and gallery.html (`dreamdist3d.web.gallery_page`: the
    references, then each object's anchor views (anchored runs), turntable and interactive GLB viewer, its prompt
    sample and mesh links)."""
    from dreamdist3d.images import read_rgb, save_png
    from dreamdist3d.lift3d.saving import sorted_frames

    rows, entries = [], []
    for seed in seeds:
        tt = find_turntable(run_dir(out, seed))
        if tt is None:
            continue
        frames = sorted_frames(tt["frames"])
        if not frames:
            continue
        pick = [frames[i] for i in np.linspace(0, len(frames), n_frames, endpoint=False).astype(int)]
        imgs = [read_rgb(f) for f in pick]
        h = imgs[0].shape[0]
        imgs = [im[:, :h] for im in imgs]  # the RGB panel (saved test images are RGB | opacity side by side)
        rows.append(np.concatenate(imgs, axis=1))
        entries.append((seed, tt))
    if not rows:
        raise FileNotFoundError(f"no finished runs with a turntable under {out / 'runs'}")
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows],
                          axis=0)
    png = save_png(grid, out / "gallery.png")
    cells = []
    for seed, tt in entries:
        run = run_dir(out, seed)
        cells.append(GalleryObject(seed, tt["step"], tt["video"], find_meshes(run), prompt_sample_settings(run),
                                   find_anchor(run)))
    page_path = write_gallery_page(out, cells, reference_images(references), title, grid_png=png)
    return {"png": png, "html": page_path}
