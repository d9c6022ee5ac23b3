"""Image grids: a contact sheet of a sampling run and labelled sweep grids (row/column labels, PIL default font).

Cells are resized to one square-ish size: small images (the tiny test pipeline's 32 px) are enlarged with nearest
neighbour so pixels stay visible, large ones (768 px) are reduced with Lanczos so a 16-image sheet stays small.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ImageLike = Union[np.ndarray, Image.Image]

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 4


def _pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"grid cells must be uint8 (H,W,3) arrays or PIL images, got dtype {arr.dtype}")
    return Image.fromarray(arr).convert("RGB")


def cell_size(size: Tuple[int, int], min_cell: int = 128, max_cell: int = 256) -> Tuple[int, int]:
    """Display size (w, h) of a cell: the long side brought into [min_cell, max_cell] (integer zoom when enlarging)."""
    w, h = size
    long = max(w, h)
    if long < min_cell:
        k = math.ceil(min_cell / long)
        return w * k, h * k
    if long > max_cell:
        f = max_cell / long
        return max(1, round(w * f)), max(1, round(h * f))
    return w, h


def _resize(img: Image.Image, size: Tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    enlarge = size[0] >= img.size[0]
    return img.resize(size, Image.NEAREST if enlarge else Image.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1 with FreeType: the default font, scalable
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> Tuple[int, int]:
    if not text:
        return 0, 0
    box = draw.multiline_textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def labelled_grid(
    rows: Sequence[Sequence[ImageLike]],
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    title: str = "",
    min_cell: int = 128,
    max_cell: int = 256,
    font_size: int = 14,
    return_boxes: bool = False,
):
    """A grid of images: rows[r][c]; labels left of each row and above each column, an optional title on top.

    With `return_boxes` also returns the (x, y, w, h) of every cell, row-major."""
    if not rows or not rows[0]:
        raise ValueError("labelled_grid needs at least one row with one image")
    n_cols = len(rows[0])
    if any(len(r) != n_cols for r in rows):
        raise ValueError(f"every grid row needs {n_cols} images, got {[len(r) for r in rows]}")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")
    cells = [[_pil(im) for im in r] for r in rows]
    cw, ch = cell_size(cells[0][0].size, min_cell, max_cell)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((_text_size(probe, t, font)[0] for t in row_labels or []), default=0)
    label_w = label_w + 2 * PAD if row_labels else 0
    head_h = max((_text_size(probe, t, font)[1] for t in col_labels or []), default=0)
    head_h = head_h + 2 * PAD if col_labels else 0
    title_w, title_h = _text_size(probe, title, font)
    title_h = title_h + 2 * PAD if title else 0
    width = max(label_w + n_cols * (cw + PAD) + PAD, title_w + 2 * PAD)
    height = title_h + head_h + len(rows) * (ch + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.multiline_text((PAD, PAD), title, fill=INK, font=font)
    top = title_h + head_h
    boxes: List[Tuple[int, int, int, int]] = []
    for c, text in enumerate(col_labels or []):
        tw, _ = _text_size(draw, text, font)
        x = label_w + PAD + c * (cw + PAD) + max(0, (cw - tw) // 2)
        draw.multiline_text((x, title_h + PAD), text, fill=INK, font=font)
    for r, row in enumerate(cells):
        y = top + PAD + r * (ch + PAD)
        if row_labels:
            _, th = _text_size(draw, row_labels[r], font)
            draw.multiline_text((PAD, y + max(0, (ch - th) // 2)), row_labels[r], fill=INK, font=font)
        for c, img in enumerate(row):
            x = label_w + PAD + c * (cw + PAD)
            sheet.paste(_resize(img, (cw, ch)), (x, y))
            boxes.append((x, y, cw, ch))
    return (sheet, boxes) if return_boxes else sheet


def contact_sheet(
    images: Sequence[ImageLike],
    captions: Optional[Sequence[str]] = None,
    cols: Optional[int] = None,
    title: str = "",
    min_cell: int = 128,
    max_cell: int = 256,
    font_size: int = 12,
) -> Image.Image:
    """All images of a run in a near-square grid, each with a caption under it (e.g. its index and seed)."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    cells = [_pil(im) for im in images]
    cw, ch = cell_size(cells[0].size, min_cell, max_cell)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cap_h = max((_text_size(probe, t, font)[1] for t in captions or []), default=0)
    cap_h = cap_h + 2 * PAD if captions else 0
    title_w, title_h = _text_size(probe, title, font)
    title_h = title_h + 2 * PAD if title else 0
    n_rows = math.ceil(n / cols)
    width = max(cols * (cw + PAD) + PAD, title_w + 2 * PAD)
    height = title_h + n_rows * (ch + cap_h + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.multiline_text((PAD, PAD), title, fill=INK, font=font)
    for i, img in enumerate(cells):
        r, c = divmod(i, cols)
        x, y = PAD + c * (cw + PAD), title_h + PAD + r * (ch + cap_h + PAD)
        sheet.paste(_resize(img, (cw, ch)), (x, y))
        if captions:
            draw.multiline_text((x, y + ch + PAD // 2), captions[i], fill=INK, font=font)
    return sheet


__all__ = ["cell_size", "contact_sheet", "labelled_grid"]
