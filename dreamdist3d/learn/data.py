"""Reference images for learning a prompt distribution, and their latents cached once.

Two kinds of reference folder:

- **2D** (any backbone): a folder of `.jpg/.jpeg/.png/.webp/.bmp` files (`io.IMAGE_SUFFIXES`; any size;
  case-insensitive extensions; hidden files and sub-folders ignored). Each image: EXIF orientation applied
  (`ImageOps.exif_transpose`), transparency composited on white (RGBA, LA, palette with transparency),
  grayscale/CMYK converted to RGB, the largest centred square cropped and resized (Lanczos) to the backbone's
  resolution, scaled to [-1, 1]. At least 2 images.
- **multi-view** (MVDream 4-view mode): a folder of sub-folders, one per object, each holding the V views of the
  object and a `cameras.json`:

      {"views": [{"file": "000.png", "elevation": 15, "azimuth": 0},      # degrees, MVDream's get_camera convention
                 {"file": "001.png", "camera": [16 floats]}, ...]}       # or the MVDream camera vector itself
                                                                          # (c2w 4×4, row-major, blender z-up)
  The views are used in the order listed. At least 1 object.

Latent cache: each image (and, with `flip`, its horizontal mirror) goes through the VAE encoder exactly once; the
posterior mean and std are kept (unscaled), and every training step draws `scale_factor·(mean + std·ε)` — the same
distribution the official trainer samples by re-encoding every step (`latent_dist.sample()·scaling_factor`), without
the encoder. In pixel space (`vae=None`) the "latents" are the images and std is 0 (no draw).
Multi-view objects are not flipped (a mirrored object would need mirrored cameras).

Errors are `ReferenceDataError` (a `ValueError`, so the CLI prints them) naming the folder or file and what to do;
with `skip_bad=True` unreadable files are reported and skipped instead.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dreamdist3d.io import IMAGE_SUFFIXES

CAMERAS_FILE = "cameras.json"

PathLike = Union[str, Path]


class ReferenceDataError(ValueError):
    """A problem with the reference images; the message names the folder/file and what to do.

    `ReferenceDataError(problem, fix)`: the message is "<problem>; <fix>"; `problem` alone is what a `skip_bad`
    warning says (the fix, e.g. "or pass --skip-bad", is no advice to a run that already skips)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem


# ---------------------------------------------------------------------------------------------------- one image
def load_image(path: PathLike, resolution: int) -> torch.Tensor:
    """One image file -> (3, resolution, resolution) float32 in [-1, 1]. Raises ReferenceDataError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ReferenceDataError(f"cannot read reference image {path}: {e.strerror or e}") from None
    if size == 0:
        raise ReferenceDataError(f"reference image {path} is empty (0 bytes)", "remove it or pass --skip-bad")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # > PIL's pixel limit: refuse, don't decode
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb_on_white(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ReferenceDataError(
            f"reference image {path} is too large to decode safely ({e})", "shrink it, remove it, or pass --skip-bad"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ReferenceDataError(
            f"cannot decode reference image {path} ({type(e).__name__}: {e})",
            "remove or replace it, or pass --skip-bad") from None
    rgb = _center_square(rgb).resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _to_rgb_on_white(im: Image.Image) -> Image.Image:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale PNGs: scale to 8 bit first
        arr = np.asarray(im, dtype=np.float64)
        arr = arr / max(1.0, 257.0 if arr.max() > 255 else 1.0)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def _center_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


# ---------------------------------------------------------------------------------------------------- folders
def list_images(folder: PathLike) -> List[Path]:
    """Image files directly in `folder`, sorted by name. Missing folder / not a folder is an error."""
    folder = Path(folder)
    if not folder.exists():
        raise ReferenceDataError(f"reference image folder {folder} does not exist")
    if not folder.is_dir():
        raise ReferenceDataError(f"{folder} is not a folder; pass a folder of reference images (--images DIR)")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def is_multiview_folder(folder: PathLike) -> bool:
    """True when `folder` holds object sub-folders with a cameras.json (the multi-view layout)."""
    folder = Path(folder)
    return folder.is_dir() and any((d / CAMERAS_FILE).is_file() for d in folder.iterdir() if d.is_dir())


@dataclass
class ReferenceSet:
    """Loaded reference data. images (N, 3, R, R) for 2D, or (N, V, 3, R, R) with cameras (N, V, 16) for multi-view."""

    images: torch.Tensor
    paths: List[Path]  # one per image (2D) or per object folder (multi-view)
    cameras: Optional[torch.Tensor] = None
    skipped: List[str] = field(default_factory=list)  # "path: reason" for files left out with skip_bad

    @property
    def multiview(self) -> bool:
        return self.cameras is not None

    @property
    def num_views(self) -> int:
        return int(self.images.shape[1]) if self.multiview else 1

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_reference_images(folder: PathLike, resolution: int, skip_bad: bool = False,
                          min_images: int = 2) -> ReferenceSet:
    """A 2D reference folder -> ReferenceSet with images (N, 3, R, R)."""
    folder = Path(folder)
    files = list_images(folder)
    if not files:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")][:5]
        hint = f" (found: {', '.join(others)})" if others else ""
        raise ReferenceDataError(
            f"no reference images in {folder}{hint}; put {', '.join(IMAGE_SUFFIXES)} files directly in it"
        )
    images, paths, skipped = [], [], []
    for p in files:
        try:
            images.append(load_image(p, resolution))
            paths.append(p)
        except ReferenceDataError as e:
            if not skip_bad:
                raise
            skipped.append(f"{p}: {e.problem}")
            warnings.warn(f"--skip-bad: skipped: {e.problem}", stacklevel=2)
    if len(images) < min_images:
        extra = f" ({len(skipped)} unreadable file(s) skipped)" if skipped else ""
        views = "; its sub-folders hold multi-view objects: learn from them with --mode 4view (or auto)" \
            if is_multiview_folder(folder) else ""
        raise ReferenceDataError(
            f"{folder} has {len(images)} usable reference image(s){extra}; at least {min_images} are needed to learn a "
            f"distribution{views}"
        )
    return ReferenceSet(torch.stack(images), paths, None, skipped)


def _camera_of(entry: dict, where: str) -> torch.Tensor:
    from dreamdist3d.backbones.cameras import get_camera

    if "camera" in entry:
        cam = torch.tensor(entry["camera"], dtype=torch.float32).flatten()
        if cam.numel() != 16:
            raise ReferenceDataError(f"{where}: 'camera' must hold 16 numbers (a 4×4 c2w, row-major), got "
                                     f"{cam.numel()}")
        return cam
    if "elevation" in entry and "azimuth" in entry:
        return get_camera(1, float(entry["elevation"]), float(entry["azimuth"]))[0]
    raise ReferenceDataError(f"{where}: each view needs 'camera' (16 numbers) or 'elevation' and 'azimuth' (degrees)")


def load_multiview_sets(folder: PathLike, resolution: int, num_views: int = 4, skip_bad: bool = False,
                        min_objects: int = 1) -> ReferenceSet:
    """A multi-view reference folder -> ReferenceSet with images (N, V, 3, R, R) and cameras (N, V, 16)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReferenceDataError(f"multi-view reference folder {folder} does not exist or is not a folder")
    objects = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not any((d / CAMERAS_FILE).is_file() for d in objects):
        raise ReferenceDataError(
            f"{folder} has no object sub-folder with a {CAMERAS_FILE}; for MVDream 4-view learning use one sub-folder "
            f"per object holding its {num_views} views and a {CAMERAS_FILE} (see dreamdist3d/learn/data.py)"
        )
    sets, cams, paths, skipped = [], [], [], []
    for obj in objects:
        try:
            spec_path = obj / CAMERAS_FILE
            if not spec_path.is_file():
                raise ReferenceDataError(f"{obj} has no {CAMERAS_FILE}")
            try:
                spec = json.loads(spec_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ReferenceDataError(f"{spec_path} is not valid JSON ({e})") from None
            views = spec.get("views") if isinstance(spec, dict) else None
            if not isinstance(views, list) or len(views) != num_views:
                raise ReferenceDataError(
                    f"{spec_path}: expected {{'views': [...]}} with exactly {num_views} entries, "
                    f"got {len(views) if isinstance(views, list) else type(views).__name__}"
                )
            imgs, vcams = [], []
            for i, v in enumerate(views):
                where = f"{spec_path} view {i}"
                if not isinstance(v, dict) or "file" not in v:
                    raise ReferenceDataError(f"{where}: needs a 'file' entry")
                imgs.append(load_image(obj / v["file"], resolution))
                vcams.append(_camera_of(v, where))
            sets.append(torch.stack(imgs))
            cams.append(torch.stack(vcams))
            paths.append(obj)
        except ReferenceDataError as e:
            if not skip_bad:
                raise ReferenceDataError(e.problem, "fix it, or pass --skip-bad to leave this object out") from None
            skipped.append(f"{obj}: {e.problem}")
            warnings.warn(f"--skip-bad: skipped object {obj}: {e.problem}", stacklevel=2)
    if len(sets) < min_objects:
        raise ReferenceDataError(f"{folder} has {len(sets)} usable multi-view object(s); at least {min_objects} needed")
    return ReferenceSet(torch.stack(sets), paths, torch.stack(cams), skipped)


def load_references(folder: PathLike, resolution: int, multiview: bool = False, num_views: int = 4,
                    skip_bad: bool = False) -> ReferenceSet:
    if multiview:
        return load_multiview_sets(folder, resolution, num_views=num_views, skip_bad=skip_bad)
    folder = Path(folder)
    if is_multiview_folder(folder) and not list_images(folder):
        raise ReferenceDataError(
            f"{folder} holds multi-view object folders (with {CAMERAS_FILE}); learn in 4-view mode (--mode 4view) "
            "or pass a folder of plain images"
        )
    return load_reference_images(folder, resolution, skip_bad=skip_bad)


# ---------------------------------------------------------------------------------------------------- latents
@dataclass
class LatentCache:
    """Posterior moments of every reference image (and mirror), computed once.

    mean/std: (N, P, [V,] C, h, w) unscaled, P = 2 with flips (index 1 = mirrored) else 1; std is None in pixel space.
    """

    mean: torch.Tensor
    std: Optional[torch.Tensor]
    scale: float
    cameras: Optional[torch.Tensor] = None  # (N, V, 16)

    @property
    def flips(self) -> int:
        return int(self.mean.shape[1])

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    @torch.no_grad()
    def build(cls, backbone, refs: ReferenceSet, flip: bool = False, chunk: int = 4,
              device: Optional[torch.device] = None) -> "LatentCache":
        """Encode every image (and its horizontal mirror if `flip`) once. Multi-view sets are never flipped."""
        device = device or backbone.device
        imgs = refs.images  # (N, [V,] 3, R, R)
        flip = flip and not refs.multiview
        variants = [imgs, imgs.flip(-1)] if flip else [imgs]
        means, stds = [], []
        for v in variants:
            flat = v.reshape(-1, *v.shape[-3:])  # (N·V, 3, R, R)
            ms, ss = [], []
            for i in range(0, flat.shape[0], chunk):
                m, s = backbone.posterior(flat[i : i + chunk].to(device))
                ms.append(m.float())
                ss.append(s.float())
            m, s = torch.cat(ms), torch.cat(ss)
            means.append(m.reshape(*v.shape[:-3], *m.shape[1:]))
            stds.append(s.reshape(*v.shape[:-3], *s.shape[1:]))
        mean = torch.stack(means, 1)
        pixel = backbone.vae is None
        std = None if pixel else torch.stack(stds, 1)
        scale = 1.0 if pixel else float(backbone.scale_factor)
        cams = refs.cameras.to(device) if refs.cameras is not None else None
        return cls(mean, std, scale, cams)

    def sample(self, index: torch.Tensor, flipped: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Scaled latents for items `index` (B,): scale·(mean + std·ε), ε drawn on CPU from `generator`.

        Returns (B, [V,] C, h, w) on the cache's device."""
        index = index.to(self.mean.device)
        p = torch.zeros_like(index) if flipped is None else flipped.long().to(self.mean.device)
        mean = self.mean[index, p]
        if self.std is None:
            return mean * self.scale
        eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device)
        return self.scale * (mean + self.std[index, p] * eps)

    def to(self, device) -> "LatentCache":
        return LatentCache(self.mean.to(device), None if self.std is None else self.std.to(device), self.scale,
                           None if self.cameras is None else self.cameras.to(device))


__all__ = [
    "CAMERAS_FILE",
    "LatentCache",
    "ReferenceDataError",
    "ReferenceSet",
    "is_multiview_folder",
    "list_images",
    "load_image",
    "load_multiview_sets",
    "load_reference_images",
    "load_references",
]
