"""Density grid sampling (chunked) and marching cubes (PyMCubes) with threestudio's threshold semantics.

threestudio's `implicit-volume` meshes the level set `density == isosurface_threshold` (default 25.0, inside where the
density is larger) on a `isosurface_resolution`³ grid over the geometry's bbox, optionally twice
(`isosurface_coarse_to_fine`: the second pass covers the coarse surface's bounds grown by 10 % of their extent).
We do the same with `mcubes.marching_cubes` (threestudio's `mc-cpu`), and add:

- an automatic threshold when the configured one gives an empty surface (no sample above it) or an exploded one
  (the level set reaches the bbox walls: more than `max_wall_fraction` of the boundary samples are inside).
  Methods: `otsu` (Otsu's between-class-variance maximum on log1p(density), 256 bins; repeated on the values
  above it, up to 3 levels, while the surface is still exploded, e.g. a bbox full of low "fog") or `threestudio`
  (threestudio's own "auto": mean + 5·std of the grid on the coarse pass, mean on the fine pass);
- a one-sample layer of "outside" padding around the grid, so an object cut by the bbox still gives a closed mesh;
- an `ExportError` naming `isosurface_threshold` when the field has no density anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from dreamdist3d.export.field import Field, eval_chunked, field_device

__all__ = [
    "ExportError",
    "Isosurface",
    "ThresholdChoice",
    "sample_density_grid",
    "otsu_threshold",
    "threestudio_auto_threshold",
    "choose_threshold",
    "marching_cubes",
    "extract_isosurface",
]

EMPTY_EPS = 1e-6


class ExportError(ValueError):
    """An export problem the user can act on; the message names the option/config key to change."""


@dataclass
class ThresholdChoice:
    value: float
    method: str  # "config", "otsu", "threestudio"
    reason: str  # why this value: "" when the configured one was used


@dataclass
class Isosurface:
    vertices: np.ndarray  # (V, 3) float64, field world frame
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside (outward normals)
    threshold: ThresholdChoice
    bbox: np.ndarray  # (2, 3) the region of the final (fine) grid
    resolution: int
    density_range: Tuple[float, float]  # min, max of the coarse grid


def _axis(lo: float, hi: float, n: int) -> Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float32)


def sample_density_grid(field: Field, bbox: Tensor, resolution: int, chunk: int = 262144) -> np.ndarray:
    """Density on the `resolution`³ grid of sample points spanning `bbox` (corners included).

    Returns float32 (R, R, R) indexed [ix, iy, iz]. Points are generated slab by slab along x so that at most
    ~`chunk` points exist at once, whatever the resolution.
    """
    if resolution < 2:
        raise ExportError(f"isosurface_resolution must be >= 2, got {resolution}")
    bbox = torch.as_tensor(bbox, dtype=torch.float32).cpu()
    r = resolution
    xs, ys, zs = (_axis(float(bbox[0, i]), float(bbox[1, i]), r) for i in range(3))
    yz = torch.stack(torch.meshgrid(ys, zs, indexing="ij"), -1).reshape(-1, 2)  # (R², 2)
    grid = np.empty((r, r, r), dtype=np.float32)
    slab = max(1, chunk // (r * r))
    device = field_device(field)
    for i0 in range(0, r, slab):
        x = xs[i0 : i0 + slab]
        pts = torch.cat(
            [x.repeat_interleave(r * r)[:, None], yz.repeat(x.shape[0], 1)], 1
        )  # (n·R², 3), x-major like grid
        d = eval_chunked(field.density, pts, chunk, device)
        if d.shape != (pts.shape[0],):
            d = d.reshape(-1)
            if d.shape[0] != pts.shape[0]:
                raise ExportError(f"field.density returned {d.shape[0]} values for {pts.shape[0]} points; expected "
                                  "(N,)")
        grid[i0 : i0 + x.shape[0]] = d.reshape(x.shape[0], r, r).numpy()
    if not np.isfinite(grid).all():
        bad = int((~np.isfinite(grid)).sum())
        raise ExportError(f"field.density returned {bad} non-finite values (NaN/inf) on the isosurface grid")
    return grid


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold on log1p(values): the split maximising the between-class variance.

    Density is heavy-tailed (0 outside, tens to thousands inside), so the split is found in log space and mapped
    back. Where the maximum is a plateau (e.g. a two-valued grid), the middle of the plateau is used.
    """
    v = np.log1p(np.clip(values.astype(np.float64).ravel(), 0.0, None))
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return float(np.expm1(lo))
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)[:-1]  # class 0 = bins [0, k], split after bin k
    mu = np.cumsum(p * centers)
    mu0 = mu[:-1]
    mu_t = mu[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between, nan=-1.0)
    best = between.max()
    ks = np.nonzero(between >= best - 1e-9 * max(abs(best), 1e-30))[0]
    k_lo, k_hi = int(ks.min()), int(ks.max())
    split = 0.5 * (edges[k_lo + 1] + edges[k_hi + 1])
    return float(np.expm1(split))


def threestudio_auto_threshold(values: np.ndarray, fine_stage: bool) -> float:
    """threestudio's `isosurface_threshold: auto` (BaseImplicitGeometry): mean + 5·std (coarse), mean (fine)."""
    v = values.astype(np.float64)
    return float(v.mean() + (0.0 if fine_stage else 5.0 * v.std()))


def _wall_fraction(inside: np.ndarray) -> float:
    walls = [inside[0], inside[-1], inside[:, 0], inside[:, -1], inside[:, :, 0], inside[:, :, -1]]
    return float(sum(w.sum() for w in walls)) / float(sum(w.size for w in walls))


def _problem(grid: np.ndarray, t: float, max_wall_fraction: float) -> str:
    inside = grid > t
    n_in = int(inside.sum())
    if n_in == 0:
        return f"empty surface (max density {float(grid.max()):.4g} <= threshold {t:.4g})"
    if n_in == inside.size:
        return f"no surface: every sample is inside (min density {float(grid.min()):.4g} > threshold {t:.4g})"
    wf = _wall_fraction(inside)
    if wf > max_wall_fraction:
        return (
            f"exploded surface ({100 * wf:.0f}% of the bbox-wall samples are inside at threshold {t:.4g}, "
            f"limit {100 * max_wall_fraction:.0f}%)"
        )
    return ""


def choose_threshold(
    grid: np.ndarray,
    threshold: Union[float, str],
    auto_method: str = "otsu",
    max_wall_fraction: float = 0.5,
    fine_stage: bool = False,
    log: Callable[[str], None] = print,
) -> ThresholdChoice:
    """The isosurface threshold to use on `grid`.

    `threshold` is a number (threestudio's `isosurface_threshold`; kept when it gives a sensible surface) or
    "auto" (use `auto_method` directly). `auto_method` is "otsu", "threestudio" or "off" (never replace the
    configured value; a bad value then becomes an error).
    """
    gmax, gmin = float(grid.max()), float(grid.min())
    if gmax <= EMPTY_EPS or gmax - gmin <= EMPTY_EPS:
        raise ExportError(
            f"the field is empty everywhere in its bbox (density in [{gmin:.4g}, {gmax:.4g}] on the "
            f"{grid.shape[0]}³ grid): no isosurface_threshold (--threshold) can give a surface. Check the "
            "checkpoint is trained (not step 0 / an empty run), that field.density returns the activated density, "
            "and that field.bbox covers the object."
        )
    if auto_method not in ("otsu", "threestudio", "off"):
        raise ExportError(f"auto_threshold must be 'otsu', 'threestudio' or 'off', got '{auto_method}'")

    def auto(reason: str) -> ThresholdChoice:
        if auto_method == "threestudio":
            t = threestudio_auto_threshold(grid, fine_stage)
            how = "threestudio auto (mean + 5·std of the density grid)" if not fine_stage else "threestudio auto (mean)"
        else:
            t = otsu_threshold(grid)
            levels = 1
            # a fog-filled bbox is three-class (outside, fog, object): split again above the threshold while the
            # walls are still inside (multi-level Otsu, at most 3 levels)
            while levels < 3 and _problem(grid, t, max_wall_fraction).startswith("exploded"):
                upper = grid[grid > t]
                if upper.size < 2 or float(upper.max() - upper.min()) <= EMPTY_EPS:
                    break
                t = otsu_threshold(upper)
                levels += 1
            how = "Otsu on log1p(density), 256 bins" + (f", {levels} levels" if levels > 1 else "")
        log(f"[export] {reason}; using isosurface_threshold {t:.4g} from {how}")
        return ThresholdChoice(float(t), "threestudio" if auto_method == "threestudio" else "otsu", reason)

    if isinstance(threshold, str):
        if threshold != "auto":
            raise ExportError(f"isosurface_threshold must be a number or 'auto', got '{threshold}'")
        if auto_method == "off":
            raise ExportError("isosurface_threshold is 'auto' but auto_threshold is 'off'; set one of them")
        return auto("isosurface_threshold is 'auto'")
    t = float(threshold)
    problem = _problem(grid, t, max_wall_fraction)
    if not problem:
        return ThresholdChoice(t, "config", "")
    if auto_method == "off":
        raise ExportError(
            f"isosurface_threshold {t:.4g} gives an {problem}; density on the grid spans [{gmin:.4g}, {gmax:.4g}]. "
            "Pass a threshold inside that range (--threshold / isosurface_threshold) or enable auto_threshold."
        )
    choice = auto(f"isosurface_threshold {t:.4g} gives an {problem}")
    later = _problem(grid, choice.value, max_wall_fraction)
    if later.startswith("empty") or later.startswith("no surface"):
        raise ExportError(
            f"isosurface_threshold {t:.4g} gives an {problem}, and the automatic threshold {choice.value:.4g} gives "
            f"an {later}; pass --threshold (isosurface_threshold) inside [{gmin:.4g}, {gmax:.4g}]"
        )
    if later:
        log(f"[export] warning: the automatic threshold still gives an {later}")
    return choice


def marching_cubes(grid: np.ndarray, threshold: float, bbox: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Marching cubes of `grid > threshold` with a padded outside layer; vertices in bbox coordinates.

    Returns (vertices (V, 3) float64, faces (F, 3) int64) with outward-facing (counter-clockwise) triangles.
    """
    import mcubes

    r = np.array(grid.shape, dtype=np.float64)
    outside = min(float(grid.min()), threshold - 1.0)
    padded = np.pad(grid.astype(np.float64), 1, mode="constant", constant_values=outside)
    verts, faces = mcubes.marching_cubes(padded, float(threshold))
    if len(faces) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    idx = np.clip(verts - 1.0, 0.0, r - 1.0)  # undo padding; the closing layer lies on the bbox walls
    lo, hi = bbox[0].astype(np.float64), bbox[1].astype(np.float64)
    verts = lo + idx / (r - 1.0) * (hi - lo)
    # With values that grow inwards (density), PyMCubes' triangles are already counter-clockwise seen from
    # outside (checked: positive signed volume in tests/test_export.py).
    return verts, np.ascontiguousarray(faces.astype(np.int64))


def _occupied_bounds(grid: np.ndarray, threshold: float, bbox: np.ndarray) -> np.ndarray:
    inside = grid > threshold
    r = grid.shape[0]
    lo_i, hi_i = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(inside.any(axis=other))[0]
        lo_i.append(max(int(nz.min()) - 1, 0))
        hi_i.append(min(int(nz.max()) + 1, r - 1))
    lo, hi = bbox[0].astype(np.float64), bbox[1].astype(np.float64)
    step = (hi - lo) / (r - 1)
    return np.stack([lo + np.array(lo_i) * step, lo + np.array(hi_i) * step])


def extract_isosurface(
    field: Field,
    resolution: int = 128,
    threshold: Union[float, str] = 25.0,
    auto_method: str = "otsu",
    coarse_to_fine: bool = True,
    max_wall_fraction: float = 0.5,
    chunk: int = 262144,
    log: Callable[[str], None] = print,
) -> Isosurface:
    """Mesh the field's `density > threshold` region (threestudio `mc-cpu`, optional coarse-to-fine pass)."""
    bbox = torch.as_tensor(field.bbox, dtype=torch.float32).cpu().numpy()
    grid = sample_density_grid(field, torch.from_numpy(bbox), resolution, chunk)
    drange = (float(grid.min()), float(grid.max()))
    choice = choose_threshold(grid, threshold, auto_method, max_wall_fraction, fine_stage=False, log=log)
    region = bbox
    if coarse_to_fine:
        occ = _occupied_bounds(grid, choice.value, bbox)
        ext = occ[1] - occ[0]
        fine = np.stack([np.maximum(occ[0] - 0.1 * ext, bbox[0]), np.minimum(occ[1] + 0.1 * ext, bbox[1])])
        if np.all(fine[1] - fine[0] > 1e-6):
            region = fine.astype(np.float32)
            grid = sample_density_grid(field, torch.from_numpy(region), resolution, chunk)
            if choice.method == "threestudio":
                choice = ThresholdChoice(threestudio_auto_threshold(grid, True), "threestudio", choice.reason)
                log(f"[export] fine pass: threestudio auto threshold (mean) {choice.value:.4g}")
    verts, faces = marching_cubes(grid, choice.value, region)
    if len(faces) == 0:
        raise ExportError(
            f"marching cubes found no surface at isosurface_threshold {choice.value:.4g} "
            f"(density range [{drange[0]:.4g}, {drange[1]:.4g}]); try another --threshold or a higher --resolution"
        )
    return Isosurface(verts, faces, choice, np.asarray(region, dtype=np.float64), resolution, drange)
