"""Texture bake in pure torch: rasterise UV triangles, map texel centres to the surface, read the field's albedo.

For every UV triangle we enumerate the texels whose centres lie in its texel-space bounding box, keep those whose
barycentric coordinates are all >= 0 (inside or on an edge), and turn them into 3D surface points with the same
barycentrics. All of this is batched over triangles (no Python loop per triangle or texel), chunked so that memory
stays bounded at 2048² textures. Texels no triangle covers are then filled by seam dilation (each empty texel takes
the mean of its filled 8-neighbours, `padding` times), and whatever is still empty gets the mean colour, so
bilinear/mip-mapped lookups near chart borders never fetch black.

Texture layout follows OBJ: texel (i, j) has its centre at uv = ((i + 0.5) / W, (j + 0.5) / H) with v up; the
returned image is stored top row first (row 0 = v ≈ 1), as PNG files and glTF (via trimesh) expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamdist3d.export.field import Field, eval_chunked, field_device

__all__ = ["BakedTexture", "rasterize_uv", "dilate", "bake_texture", "vertex_colors", "sample_texture"]


@dataclass
class BakedTexture:
    image: np.ndarray  # (H, W, 3) uint8, row 0 = top (v = 1)
    covered: np.ndarray  # (H, W) bool, texels whose centre lies on a triangle (same row order)
    coverage: float  # fraction of texels covered by triangles


def rasterize_uv(
    uvs: Tensor, faces: Tensor, positions: Tensor, size: int, max_candidates: int = 1 << 20
) -> Tuple[Tensor, Tensor]:
    """Texel centres covered by UV triangles and their 3D points.

    uvs (V, 2) in [0, 1], faces (F, 3) long, positions (V, 3) -> (texel linear index (K,) long into a v-up
    (size, size) grid, i.e. j * size + i, and points (K, 3)). A texel shared by two triangles appears once.
    """
    w = h = int(size)
    uvs = uvs.to(torch.float64)
    pos = positions.to(torch.float64)
    tex = torch.stack([uvs[:, 0] * w - 0.5, uvs[:, 1] * h - 0.5], -1)  # texel-centre coordinates
    t = tex[faces]  # (F, 3, 2)
    lo = t.amin(1).ceil().clamp(min=0).long()
    hi = torch.minimum(t.amax(1).floor().long(), torch.tensor([w - 1, h - 1]))
    nx = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
    ny = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
    counts = nx * ny  # (F,)
    # signed double area, for barycentrics; skip degenerate UV triangles
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    counts = torch.where(area.abs() > 1e-12, counts, torch.zeros_like(counts))

    texel_out, point_out = [], []
    csum = torch.cumsum(counts, 0)
    start = 0
    n_faces = faces.shape[0]
    while start < n_faces:
        base = int(csum[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(csum, torch.tensor(base + max_candidates), right=True))
        stop = max(stop, start + 1)
        idx = torch.arange(start, min(stop, n_faces))
        cnt = counts[idx]
        total = int(cnt.sum())
        start = int(idx[-1]) + 1
        if total == 0:
            continue
        tri = torch.repeat_interleave(idx, cnt)  # (K,) face of each candidate
        first = torch.cumsum(cnt, 0) - cnt
        local = torch.arange(total) - torch.repeat_interleave(first, cnt)
        px = lo[tri, 0] + local % nx[tri]
        py = lo[tri, 1] + local // nx[tri]
        p = torch.stack([px, py], -1).to(torch.float64)  # (K, 2)
        ta, tb, tc = a[tri], b[tri], c[tri]
        ar = area[tri]
        # barycentric weights of a, b, c: sub-triangle areas over the whole
        wa = ((tb[:, 0] - p[:, 0]) * (tc[:, 1] - p[:, 1]) - (tb[:, 1] - p[:, 1]) * (tc[:, 0] - p[:, 0])) / ar
        wb = ((tc[:, 0] - p[:, 0]) * (ta[:, 1] - p[:, 1]) - (tc[:, 1] - p[:, 1]) * (ta[:, 0] - p[:, 0])) / ar
        wc = 1.0 - wa - wb
        eps = -1e-9
        inside = (wa >= eps) & (wb >= eps) & (wc >= eps)
        if not bool(inside.any()):
            continue
        tri, wa, wb, wc = tri[inside], wa[inside], wb[inside], wc[inside]
        f = faces[tri]  # (K, 3)
        pts = wa[:, None] * pos[f[:, 0]] + wb[:, None] * pos[f[:, 1]] + wc[:, None] * pos[f[:, 2]]
        texel_out.append(py[inside] * w + px[inside])
        point_out.append(pts.to(torch.float32))
    if not texel_out:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)
    texels = torch.cat(texel_out)
    points = torch.cat(point_out)
    # one point per texel (on a shared edge both triangles give the same surface point up to rounding)
    order = torch.argsort(texels, stable=True)
    texels, points = texels[order], points[order]
    keep = torch.ones_like(texels, dtype=torch.bool)
    keep[1:] = texels[1:] != texels[:-1]
    return texels[keep], points[keep]


def dilate(color: Tensor, mask: Tensor, iterations: int) -> Tuple[Tensor, Tensor]:
    """Push colours into empty texels: color (H, W, C) float, mask (H, W) bool; `iterations` one-texel steps.

    Each step gives every empty texel with a filled 8-neighbour the mean of those neighbours (3×3 box sums of
    colour·mask and mask via one avg_pool2d; the 1/9 cancels in the ratio).
    """
    c = color.permute(2, 0, 1)[None].contiguous()  # (1, C, H, W)
    m = mask[None, None].to(c.dtype)
    for _ in range(max(0, iterations)):
        if bool(m.all()):
            break
        pooled = F.avg_pool2d(torch.cat([c * m, m], 1), 3, stride=1, padding=1, count_include_pad=True)
        s, n = pooled[:, :-1], pooled[:, -1:]
        grow = (m == 0) & (n > 0)
        c = torch.where(grow, s / n.clamp(min=1e-12), c)
        m = torch.where(grow, torch.ones_like(m), m)
    return c[0].permute(1, 2, 0), m[0, 0] > 0


@torch.no_grad()
def bake_texture(
    field: Field,
    vertices_world: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    size: int = 1024,
    padding: int = 4,
    chunk: int = 262144,
) -> BakedTexture:
    """Albedo texture (size², uint8) of the unwrapped mesh; vertices in the field's world frame."""
    texels, points = rasterize_uv(
        torch.from_numpy(np.asarray(uvs)), torch.from_numpy(np.asarray(faces, dtype=np.int64)),
        torch.from_numpy(np.asarray(vertices_world)), size,
    )
    n = size * size
    color = torch.zeros(n, 3)
    mask = torch.zeros(n, dtype=torch.bool)
    if texels.numel():
        alb = eval_chunked(field.albedo, points, chunk, field_device(field))
        if alb.shape != (points.shape[0], 3):
            raise ValueError(f"field.albedo returned shape {tuple(alb.shape)} for {points.shape[0]} points; expected "
                             "(N, 3)")
        color[texels] = torch.nan_to_num(alb, nan=0.0).clamp(0.0, 1.0)
        mask[texels] = True
    covered = mask.view(size, size).clone()
    color, filled = dilate(color.view(size, size, 3), mask.view(size, size), padding)
    if bool(filled.any()) and not bool(filled.all()):
        mean = color[filled].mean(0)
        color[~filled] = mean
    img = (color * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()[::-1]  # v-up rows -> top row first
    cov = covered.numpy()[::-1]
    return BakedTexture(np.ascontiguousarray(img), np.ascontiguousarray(cov), float(covered.float().mean()))


@torch.no_grad()
def vertex_colors(field: Field, vertices_world: np.ndarray, chunk: int = 262144) -> np.ndarray:
    """(V, 4) uint8 RGBA: the field's albedo at the vertices (the fallback when no texture is baked)."""
    pts = torch.from_numpy(np.asarray(vertices_world, dtype=np.float32))
    alb = torch.nan_to_num(eval_chunked(field.albedo, pts, chunk, field_device(field)), nan=0.0).clamp(0, 1).numpy()
    rgb = np.round(alb * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], 1)


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup (N, C) float in [0, 1] of an image stored top row first, at OBJ-convention uv (N, 2)."""
    img = np.asarray(image, dtype=np.float64)[..., :3] / 255.0
    h, w = img.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bot * fy
