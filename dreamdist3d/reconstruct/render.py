"""Render `Gaussians` with this repo's cameras: 3D Gaussian Splatting's rasteriser in pure PyTorch (gsplat when asked).

Cameras are `lift3d/data.py`'s: c2w (V,4,4) with columns [right, up, back, position] (OpenGL axes, z up world) and a
vertical field of view in degrees; pixel (i, j) is the ray through the pixel centre, as `camera_batch` casts it. So a
Gaussian render and a NeRF render of the same camera batch line up pixel for pixel.

The "torch" backend follows the official 3DGS CUDA rasteriser (diff-gaussian-rasterization, which LGM uses) step by
step, so it draws the same image up to float rounding:
- view-space depth z (the camera looks down +z after flipping y and z); Gaussians with z <= `near` (0.2, the CUDA
  code's hard-coded cut) are dropped;
- EWA splatting: 2D covariance J·W·Σ·Wᵀ·Jᵀ with x/z, y/z clamped to ±1.3·tan(fov/2) in the Jacobian, plus 0.3 px² on
  the diagonal (the anti-aliasing low-pass); Σ from the quaternion as given (`Gaussians.covariances`);
- screen radius ceil(3·sqrt(largest eigenvalue)) decides which 16×16 tiles a Gaussian touches; within a tile every
  pixel sees every such Gaussian, nearest first (stable sort by depth);
- alpha = min(0.99, opacity·exp(-½·dᵀΣ⁻¹d)), skipped if below 1/255 (so Gaussians of opacity < 1/255 are culled before
  tiling: the same image and gradients) or if the exponent is positive; front-to-back
  compositing C = Σ c·α·T, T = Π(1-α), stopping before a Gaussian that would take T below 1e-4;
- rgb = C + T·background; alpha = 1 - T; depth = Σ z·α·T (not divided by alpha, as the 3DGS fork LGM uses).
It is differentiable (autograd through the compositing) and runs on any device. The views of a call are projected
and composited together (their tiles side by side; views go in chunks of at most `VIEW_ENTRIES` view × Gaussian
pairs), so many small views cost little more than one; tiles with similar numbers of Gaussians are batched, and
memory is bounded by `max_elements` (pixels × Gaussians evaluated at once).

The "gsplat" backend calls `gsplat.rasterization` (CUDA only, not a dependency: used when importable). gsplat
normalises quaternions, so it is given `Gaussians.canonical()`; its alpha clamp and culling differ in details, so it
is not bit-identical to the torch backend (tests/test_lgm_render.py compares the two where both can run). "auto"
picks gsplat on CUDA when importable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dreamdist3d.reconstruct.gaussians import Gaussians

BACKENDS = ("auto", "torch", "gsplat")
LOW_PASS = 0.3  # px², added to the 2D covariance's diagonal
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
FOV_CLAMP = 1.3  # the Jacobian sees x/z, y/z at most 1.3·tan(half fov)
VIEW_ENTRIES = 1 << 21  # (view, Gaussian) pairs projected at once (the views of a call go in chunks)


@dataclass
class SplatRender:
    rgb: Tensor  # (V, H, W, 3) composited over the background
    alpha: Tensor  # (V, H, W, 1) accumulated opacity 1 - T
    depth: Tensor  # (V, H, W, 1) Σ z·α·T (divide by alpha for the mean depth)


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def world_to_camera(c2w: Tensor) -> Tensor:
    """(V,4,4) OpenGL-axes c2w -> (V,4,4) w2c with OpenCV axes (x right, y down, z forward), what rasterisers take."""
    w2c = torch.linalg.inv(c2w)
    flip = torch.diag(c2w.new_tensor([1.0, -1.0, -1.0, 1.0]))
    return flip @ w2c


def intrinsics(fovy_deg: float, height: int, width: int) -> Tuple[float, float]:
    """(fx, fy) in pixels; square pixels, so fovx follows from the aspect ratio."""
    f = 0.5 * height / math.tan(0.5 * math.radians(fovy_deg))
    return f, f


@dataclass
class Projected:
    """The visible (view, Gaussian) pairs of a batch of views, view after view, nearest first within a view."""

    index: Tensor  # (M,) into the Gaussians
    view: Tensor  # (M,) into the views
    xy: Tensor  # (M, 2) pixel coordinates in their view, pixel centres at integers
    conic: Tensor  # (M, 3) inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depth: Tensor  # (M,)
    rect: Tensor  # (M, 4) tile range x0, y0, x1, y1 of their view (exclusive ends)


def project(g: Gaussians, w2c: Tensor, fx: Tensor, fy: Tensor, height: int, width: int, near: float,
            tile_size: int) -> Projected:
    """Project one object's Gaussians into V views (the preprocess step of the 3DGS rasteriser, every view at once):
    w2c (V,4,4), fx / fy (V,) focal lengths in pixels."""
    n = g.num
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    p = torch.einsum("vij,nj->vni", rot, g.means) + trans[:, None]  # (V,N,3) camera space
    z = p[..., 2]
    fx, fy = fx[:, None], fy[:, None]  # (V,1)
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    zs = z.clamp(min=near)  # keeps the maths finite for the culled ones
    tx = (p[..., 0] / zs).clamp(-FOV_CLAMP * tan_x, FOV_CLAMP * tan_x)
    ty = (p[..., 1] / zs).clamp(-FOV_CLAMP * tan_y, FOV_CLAMP * tan_y)
    zero = torch.zeros_like(zs)
    jac = torch.stack([torch.stack([fx / zs, zero, -fx * tx / zs], -1),
                       torch.stack([zero, fy / zs, -fy * ty / zs], -1)], -2)  # (V,N,2,3)
    m = jac @ rot[:, None]  # (V,N,2,3)
    cov = m @ g.covariances()[None] @ m.transpose(-1, -2)  # (V,N,2,2)
    a = cov[..., 0, 0] + LOW_PASS
    b = cov[..., 0, 1]
    c = cov[..., 1, 1] + LOW_PASS
    det = a * c - b * b
    mid = 0.5 * (a + c)
    lam = mid + (mid * mid - det).clamp(min=0.1).sqrt()
    radius = torch.ceil(3.0 * lam.clamp(min=0).sqrt())
    x = fx * p[..., 0] / zs + 0.5 * width - 0.5
    y = fy * p[..., 1] / zs + 0.5 * height - 0.5
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    rect = torch.stack([
        ((x - radius) / tile_size).floor().clamp(0, tiles_x), ((y - radius) / tile_size).floor().clamp(0, tiles_y),
        ((x + radius + tile_size - 1) / tile_size).floor().clamp(0, tiles_x),
        ((y + radius + tile_size - 1) / tile_size).floor().clamp(0, tiles_y),
    ], -1).long()  # (V,N,4)
    area = (rect[..., 2] - rect[..., 0]) * (rect[..., 3] - rect[..., 1])
    # a Gaussian with opacity < ALPHA_MIN is skipped at every pixel (alpha ≤ opacity), so dropping it here changes no
    # value and no gradient; most of a feed-forward reconstruction's Gaussians are such (toy: 75-90 %)
    visible = (g.opacities >= ALPHA_MIN)[None]  # (1,N)
    keep = ((z > near) & (det > 0) & (radius > 0) & (area > 0) & visible).reshape(-1)
    flat = keep.nonzero()[:, 0]  # view-major, Gaussian index order within a view
    flat = flat[torch.sort(z.reshape(-1)[flat], stable=True).indices]  # nearest first, ties in index order
    flat = flat[torch.sort(flat // n, stable=True).indices]  # then view after view
    conic = torch.stack([c, -b, a], -1) / det.clamp(min=1e-30)[..., None]
    return Projected(flat % n, flat // n, torch.stack([x, y], -1).reshape(-1, 2)[flat], conic.reshape(-1, 3)[flat],
                     z.reshape(-1)[flat], rect.reshape(-1, 4)[flat])


def tile_lists(proj: Projected, tiles_x: int, tiles_y: int) -> Tuple[Tensor, Tensor]:
    """(tile id, slot into proj) pairs, sorted by tile and, within a tile, nearest first; tile ids count the tiles of
    all views (view·tiles_y·tiles_x + row·tiles_x + column)."""
    r = proj.rect
    w = r[:, 2] - r[:, 0]
    counts = w * (r[:, 3] - r[:, 1])  # (M,)
    slot = torch.repeat_interleave(torch.arange(len(counts), device=r.device), counts)
    local = torch.arange(len(slot), device=r.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    tx = r[slot, 0] + local % w[slot]
    ty = r[slot, 1] + local // w[slot]
    tile = (proj.view[slot] * tiles_y + ty) * tiles_x + tx
    order = torch.sort(tile, stable=True).indices  # slots are already nearest first within their view
    return tile[order], slot[order]


def composite_tiles(proj: Projected, colors: Tensor, opacities: Tensor, tiles: Tensor, slot: Tensor, starts: Tensor,
                    counts: Tensor, tiles_x: int, tiles_y: int, tile_size: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of the pixels of `tiles` (n,) -> (rgb (n,P,3), depth (n,P), T (n,P)), P = T².

    `slot` lists proj entries tile after tile (nearest first); tile t owns slot[starts[t] : starts[t] + counts[t]].
    Padding entries get opacity 0, so they never contribute."""
    k = int(counts[tiles].max())
    dev = colors.device
    j = torch.arange(k, device=dev)
    valid = j[None] < counts[tiles][:, None]  # (n,K)
    s = torch.where(valid, slot[(starts[tiles][:, None] + j[None]).clamp(max=len(slot) - 1)], 0)  # (n,K), pads: 0
    gid = proj.index[s]  # (n,K)
    t = torch.arange(tile_size, device=dev, dtype=proj.xy.dtype)
    local = tiles % (tiles_x * tiles_y)  # the tile within its view
    px = (local % tiles_x)[:, None] * tile_size + t  # (n,T) pixel columns of each tile
    py = (local // tiles_x)[:, None] * tile_size + t  # (n,T) pixel rows
    dx = proj.xy[s][:, None, :, 0] - px[:, :, None]  # (n,T,K) per column
    dy = proj.xy[s][:, None, :, 1] - py[:, :, None]  # (n,T,K) per row
    con = proj.conic[s][:, None]  # (n,1,K,3)
    # power = -½(a·dx² + c·dy²) - b·dx·dy, built from per-row and per-column parts: (n, rows, cols, K)
    row = (-0.5 * con[..., 2] * dy * dy)[:, :, None]
    col = (-0.5 * con[..., 0] * dx * dx)[:, None]
    power = (row + col - (con[..., 1] * dx)[:, None] * dy[:, :, None]).flatten(1, 2)  # (n,P,K)
    power = torch.where(power > 0, -torch.inf, power)  # the CUDA code skips positive exponents
    opa = torch.where(valid, opacities[gid], 0)[:, None]  # (n,1,K)
    alpha = (opa * power.exp()).clamp(max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, 0)
    trans = torch.cumprod(1 - alpha, -1)  # (n,P,K) T after each Gaussian
    keep = trans >= T_MIN  # stop before the Gaussian that takes T below T_MIN
    if not bool(keep.all()):
        alpha = alpha * keep
        trans = torch.cumprod(1 - alpha, -1)
    before = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
    values = torch.cat([colors[gid], proj.depth[s][..., None]], -1)  # (n,K,4)
    out = (alpha * before) @ values  # (n,P,4)
    return out[..., :3], out[..., 3], trans[..., -1]


def render_views_torch(g: Gaussians, w2c: Tensor, fx: Tensor, fy: Tensor, height: int, width: int,
                       background: Tensor, near: float, tile_size: int, max_elements: int
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """V views at once: (rgb (V,H,W,3), alpha (V,H,W,1), depth (V,H,W,1)). The tiles of every view are composited
    together, batched by similar Gaussian counts."""
    v = w2c.shape[0]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    n_tiles, pix = v * tiles_x * tiles_y, tile_size * tile_size
    proj = project(g, w2c, fx, fy, height, width, near, tile_size)
    tile, slot = tile_lists(proj, tiles_x, tiles_y)
    counts = torch.bincount(tile, minlength=n_tiles)
    starts = counts.cumsum(0) - counts
    rgb = background.new_zeros(n_tiles, pix, 3)
    depth = background.new_zeros(n_tiles, pix)
    trans = background.new_ones(n_tiles, pix)
    busy = (counts > 0).nonzero()[:, 0]
    busy = busy[torch.sort(counts[busy], descending=True).indices].tolist()  # similar counts share a batch
    i = 0
    while i < len(busy):
        k = int(counts[busy[i]])
        n = max(1, min(len(busy) - i, max_elements // max(1, k * pix)))
        chunk = torch.tensor(busy[i : i + n], device=background.device)
        c_rgb, c_depth, c_t = composite_tiles(proj, g.colors, g.opacities, chunk, slot, starts, counts, tiles_x,
                                              tiles_y, tile_size)
        # in place (autograd records it): an out-of-place copy of the whole buffer per batch of tiles made a
        # 120-view turntable O(views²) (benchmarks/lgm.py --views 120: 130.6 s against 16.5 s at 256²)
        rgb.index_copy_(0, chunk, c_rgb)
        depth.index_copy_(0, chunk, c_depth)
        trans.index_copy_(0, chunk, c_t)
        i += n

    def image(t: Tensor) -> Tensor:  # (n_tiles, P, C) -> (V, H, W, C)
        c = t.shape[-1]
        t = t.reshape(v, tiles_y, tiles_x, tile_size, tile_size, c).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(v, tiles_y * tile_size, tiles_x * tile_size, c)[:, :height, :width]

    alpha = image((1 - trans)[..., None])
    return image(rgb) + image(trans[..., None]) * background, alpha, image(depth[..., None])


def render_view_gsplat(g: Gaussians, w2c: Tensor, fx: float, fy: float, height: int, width: int,
                       background: Tensor, near: float, tile_size: int) -> Tuple[Tensor, Tensor, Tensor]:
    from gsplat import rasterization

    g = g.canonical()
    ks = w2c.new_tensor([[fx, 0.0, 0.5 * width], [0.0, fy, 0.5 * height], [0.0, 0.0, 1.0]])  # centres at +0.5
    out, alpha, _ = rasterization(g.means, g.rotations, g.scales, g.opacities, g.colors, w2c[None], ks[None],
                                  width, height, near_plane=near, eps2d=LOW_PASS, tile_size=tile_size,
                                  render_mode="RGB+D")
    rgb, depth, alpha = out[0, ..., :3], out[0, ..., 3:], alpha[0]
    return rgb + (1 - alpha) * background, alpha, depth


def render_gaussians(
    gaussians: Gaussians,
    c2w: Tensor,
    fovy_deg: Union[float, Sequence[float], Tensor],
    height: int,
    width: int,
    background: Union[Sequence[float], Tensor] = (1.0, 1.0, 1.0),
    backend: str = "auto",
    near: float = 0.2,
    tile_size: int = 16,
    max_elements: Optional[int] = None,
) -> SplatRender:
    """Render one object's Gaussians (N, …) from V cameras: c2w (V,4,4) or (4,4), fovy in degrees (one per view or
    one for all), into (V,H,W,·) images; see the module docstring. `max_elements` (torch backend): pixels × Gaussians
    per batch of tiles, default 2^18 on CPU (cache-sized: 3x faster than 2^22) and 2^24 on CUDA."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if gaussians.batch_shape:
        raise ValueError("render_gaussians renders one object: pass gaussians[b] of a batch")
    c2w = c2w[None] if c2w.ndim == 2 else c2w
    if c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be (V,4,4), got {tuple(c2w.shape)}")
    g = gaussians.to(dtype=torch.float32)
    c2w = c2w.to(g.means)
    fovs = torch.as_tensor(fovy_deg, dtype=torch.float64).reshape(-1).expand(c2w.shape[0]).tolist()
    bg = torch.as_tensor(background, dtype=torch.float32, device=g.device).reshape(3)
    if max_elements is None:
        max_elements = 1 << (24 if g.device.type == "cuda" else 18)
    use_gsplat = backend == "gsplat" or (backend == "auto" and g.device.type == "cuda" and gsplat_available())
    if backend == "gsplat" and (g.device.type != "cuda" or not gsplat_available()):
        raise RuntimeError("backend='gsplat' needs CUDA tensors and `pip install gsplat`; use backend='torch'")
    w2cs = world_to_camera(c2w)
    if use_gsplat:
        views = [render_view_gsplat(g, w2c, *intrinsics(fov, height, width), height, width, bg, near, tile_size)
                 for w2c, fov in zip(w2cs, fovs)]
        rgb, alpha, depth = (torch.stack(t) for t in zip(*views))
        return SplatRender(rgb, alpha, depth)
    focal = torch.tensor([intrinsics(fov, height, width)[1] for fov in fovs], dtype=g.means.dtype, device=g.device)
    step = max(1, VIEW_ENTRIES // max(1, g.num))  # views projected together: (view, Gaussian) pairs bounded
    parts = [render_views_torch(g, w2cs[i : i + step], focal[i : i + step], focal[i : i + step], height, width, bg,
                                near, tile_size, max_elements) for i in range(0, len(fovs), step)]
    rgb, alpha, depth = (torch.cat(t) for t in zip(*parts))
    return SplatRender(rgb, alpha, depth)


__all__ = ["BACKENDS", "SplatRender", "gsplat_available", "render_gaussians", "world_to_camera"]
