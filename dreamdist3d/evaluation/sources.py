"""What a `--refs`/`--samples` folder holds, as a list of images with content hashes.

- A folder of images (.png .jpg .jpeg .webp .bmp, searched recursively, sorted by path): one item per file, keyed by
  the SHA-256 of the file's bytes.
- A 3D run folder, or a folder of runs (e.g. a gallery's `runs/seed*/`): every folder below with a `save/*.mp4`
  turntable is one object, read (imageio) at `views` evenly spaced frames around the turntable (frame i·T/views of T);
  keyed by the video's hash and the frame index. The newest `it<step>-test.mp4` is used when there are several.
A folder holding a turntable is read as 3D (its validation PNGs are ignored).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from dreamdist3d.io import IMAGE_SUFFIXES


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImageItem:
    name: str  # shown in the report: relative path, or "<run>@frame<i>"
    key: str  # content hash (cache key)
    load: Callable[[], "object"] = field(repr=False)  # -> PIL RGB image


@dataclass
class ImageSet:
    name: str
    folder: Path
    kind: str  # "2d" | "3d"
    items: List[ImageItem]
    objects: int  # images (2D) or runs (3D)
    sweep: Optional[dict] = None  # one row of a `dreamdist3d sweep --save-cells` folder: {"group", "param", "value"}


def _pil_loader(path: Path):
    def load():
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    return load


def turntable_video(run: Path) -> Optional[Path]:
    """The newest `save/it<step>-test.mp4` of a run (else the newest `save/*.mp4` by name), or None."""
    save = run / "save"
    if not save.is_dir():
        return None
    vids = sorted(save.glob("*.mp4"))
    if not vids:
        return None
    stepped = [v for v in vids if re.fullmatch(r"it\d+-test\.mp4", v.name)]
    if stepped:
        return max(stepped, key=lambda v: int(v.name[2:].split("-")[0]))
    return vids[-1]


class _Video:
    """A turntable's `views` evenly spaced frames (frame i·T/views of T), decoded on first use; only those frames are
    kept in memory."""

    def __init__(self, path: Path, views: int) -> None:
        self.path, self.views = path, views
        self._frames: Optional[List[np.ndarray]] = None

    def frame(self, i: int) -> np.ndarray:
        if self._frames is None:
            import imageio.v2 as imageio

            reader = imageio.get_reader(str(self.path))
            try:
                frames = [np.asarray(f)[..., :3] for f in reader]
            finally:
                reader.close()
            if not frames:
                raise ValueError(f"{self.path}: the video has no frames")
            self._frames = [frames[(j * len(frames)) // self.views] for j in range(self.views)]
        return self._frames[i]


def _frame_loader(video: _Video, index: int):
    def load():
        from PIL import Image

        return Image.fromarray(video.frame(index)).convert("RGB")

    return load


def find_runs(folder: Path) -> List[Path]:
    """Folders at or below `folder` with a `save/*.mp4` turntable, sorted."""
    runs = {p.parent.parent for p in folder.rglob("save/*.mp4")}
    if (folder / "save").is_dir() and any((folder / "save").glob("*.mp4")):
        runs.add(folder)
    return sorted(runs)


def read_folder(folder, views: int = 8, name: Optional[str] = None, flag: str = "--samples") -> ImageSet:
    """The images of a folder (2D) or the turntable frames of the 3D runs in it; errors name `flag`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    name = name or folder.name
    runs = find_runs(folder)
    if runs:
        if views < 1:
            raise ValueError(f"--views must be at least 1, got {views}")
        items = []
        for run in runs:
            video = turntable_video(run)
            if video is None:
                continue
            vh, v = file_hash(video), _Video(video, views)
            rel = run.relative_to(folder).as_posix() if run != folder else run.name
            for i in range(views):
                # the frame index depends on the frame count, unknown before decoding: key by (video, i, views)
                items.append(ImageItem(f"{rel}@view{i}", f"{vh}:view{i}/{views}", _frame_loader(v, i)))
        return ImageSet(name, folder, "3d", items, len(runs))
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    listed = _sample_run_images(files)
    files = [p for p in files if listed.get(p.parent) is None or p.name in listed[p.parent]]
    if not files:
        raise ValueError(f"{flag} {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no 3D runs (save/*.mp4)")
    items = [ImageItem(p.relative_to(folder).as_posix(), file_hash(p), _pil_loader(p)) for p in files]
    return ImageSet(name, folder, "2d", items, len(items))


def _sample_run_images(files: List[Path]) -> dict:
    """{folder: names of its images} for the folders of `files` that hold a `dreamdist3d sample` run: its
    `run.json` lists the samples (`files`), so the contact sheet `grid.png` beside them is not read as a sample."""
    listed = {}
    for d in {p.parent for p in files}:
        try:
            names = json.loads((d / "run.json").read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(names, list) and names and all(isinstance(n, str) and (d / n).is_file() for n in names):
            listed[d] = set(names)
    return listed


def read_sweep(folder, flag: str = "--samples") -> List[ImageSet]:
    """A `dreamdist3d sweep --save-cells` folder (`sweep-scale.json` / `sweep-mix.json` listing its cell PNGs) as one
    set per row (γ or mixing weight w), in row order; [] when the folder holds no such sweep."""
    folder = Path(folder)
    sets: List[ImageSet] = []
    for js in sorted(folder.glob("sweep-*.json")):
        try:
            cells = json.loads(js.read_text()).get("cells", [])
        except (json.JSONDecodeError, AttributeError):
            continue
        rows: dict = {}
        for c in cells:
            if c.get("file") and (folder / c["file"]).is_file():
                rows.setdefault((c.get("row", 0), c.get("label", "")), []).append(folder / c["file"])
        for (_, label), files in sorted(rows.items()):
            param, _, value = str(label).partition("=")
            try:
                v = float(value)
            except ValueError:
                v = None
            items = [ImageItem(p.name, file_hash(p), _pil_loader(p)) for p in files]
            sets.append(ImageSet(f"{folder.name} {label}", folder, "2d", items, len(items),
                                 sweep={"group": f"{folder.name} ({js.stem})",
                                        "param": "γ" if param == "gamma" else param,
                                        "value": v}))
    if not sets and any(folder.glob("sweep-*.json")):
        raise ValueError(f"{flag} {folder}: a sweep folder without its cell images: run the sweep with --save-cells")
    return sets


__all__ = ["read_sweep", "ImageItem", "ImageSet", "file_hash", "find_runs", "read_folder",
           "turntable_video"]
