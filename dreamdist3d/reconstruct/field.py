"""`GaussianField`: Gaussians as an export `Field` (export/field.py), so `export_field` makes meshes from them.

    occupancy o(p) = Σ_i α_i · exp(-½ (p - μ_i)ᵀ Σ_i⁻¹ (p - μ_i))      (each term cut at `cutoff` standard deviations)
    density(p)   = level · o(p) / surface_opacity
    albedo(p)    = Σ_i w_i c_i / Σ_i w_i with w_i the terms of o(p); the nearest centre's colour where no Gaussian
                   reaches p

so the exporter's default threshold (`level`, 25.0 = threestudio's `isosurface_threshold`) meshes the surface where the
opacity-weighted Gaussians sum to `surface_opacity` (0.5): an isotropic Gaussian of opacity α and scale σ alone
becomes a sphere of radius σ·sqrt(2 ln(2α)). The field is evaluated through a uniform grid of cells, each listing the
Gaussians whose cut-off box reaches it, so a query costs O(points × nearby Gaussians), not O(points × N).
`bbox` defaults to the Gaussians' cut-off boxes plus 5 % of their extent on every side (so the box walls are empty).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from dreamdist3d.reconstruct.gaussians import Gaussians, quaternion_to_matrix

MAX_GRID = 128  # cells per axis at most
MAX_CELL_ENTRIES = 1 << 25  # (cell, Gaussian) entries at most; the grid coarsens until it fits


class GaussianField:
    """Field protocol: `bbox` (2,3), `density(points (P,3)) -> (P,)`, `albedo(points (P,3)) -> (P,3)`."""

    def __init__(self, gaussians: Gaussians, bbox: Optional[Tensor] = None, level: float = 25.0,
                 surface_opacity: float = 0.5, cutoff: float = 3.0, min_opacity: float = 0.005,
                 max_pairs: int = 1 << 22) -> None:
        if gaussians.batch_shape:
            raise ValueError("GaussianField takes one object: pass gaussians[b] of a batch")
        g = gaussians.detach().to(dtype=torch.float32)
        g = g.select(g.opacities >= min_opacity).canonical()
        if g.num == 0:
            raise ValueError(f"no Gaussian has opacity >= {min_opacity}: nothing to mesh")
        self.level, self.surface_opacity, self.cutoff, self.max_pairs = level, surface_opacity, cutoff, max_pairs
        self.means, self.opacities, self.colors = g.means, g.opacities, g.colors
        r = quaternion_to_matrix(g.rotations)
        self.precision = (r / g.scales.clamp(min=1e-6)[:, None, :].square()) @ r.transpose(1, 2)  # (N,3,3) Σ⁻¹
        reach = cutoff * g.scales.max(-1).values  # (N,) radius of a box around each cut-off ellipsoid
        lo, hi = (g.means - reach[:, None]).min(0).values, (g.means + reach[:, None]).max(0).values
        if bbox is None:
            pad = 0.05 * (hi - lo).max()
            bbox = torch.stack([lo - pad, hi + pad])
        self.bbox = bbox.to(g.means)
        self._build_grid(lo, hi, reach)

    def _build_grid(self, lo: Tensor, hi: Tensor, reach: Tensor) -> None:
        extent = float((hi - lo).max())
        cells = max(1, min(MAX_GRID, math.ceil(extent / max(2 * float(reach.median()), 1e-9))))
        while True:
            size = extent / cells
            c0 = ((self.means - reach[:, None] - lo) / size).floor().long().clamp(0, cells - 1)  # (N,3)
            c1 = ((self.means + reach[:, None] - lo) / size).floor().long().clamp(0, cells - 1)
            span = c1 - c0 + 1
            counts = span.prod(-1)
            if int(counts.sum()) <= MAX_CELL_ENTRIES or cells == 1:
                break
            cells = max(1, cells // 2)
        gid = torch.repeat_interleave(torch.arange(len(counts)), counts)
        local = torch.arange(len(gid)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        sy, sz = span[gid, 1], span[gid, 2]
        cell = ((c0[gid, 0] + local // (sy * sz)) * cells + c0[gid, 1] + (local // sz) % sy) * cells + (
            c0[gid, 2] + local % sz)
        order = torch.sort(cell, stable=True).indices
        self._lo, self._size, self._cells = lo, size, cells
        self._entries = gid[order]  # Gaussians, cell after cell
        self._count = torch.bincount(cell, minlength=cells**3)
        self._start = self._count.cumsum(0) - self._count

    def _terms(self, points: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(point index, Gaussian index, weight α·exp(-½m²)) of every (point, nearby Gaussian) pair."""
        dev = self.means.device
        c = ((points - self._lo) / self._size).floor().long()
        inside = ((c >= 0) & (c < self._cells)).all(-1)
        pts = inside.nonzero()[:, 0]
        c = c[pts]
        cell = (c[:, 0] * self._cells + c[:, 1]) * self._cells + c[:, 2]
        counts = self._count[cell]
        pi = torch.repeat_interleave(pts, counts)
        local = torch.arange(len(pi), device=dev) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        gi = self._entries[torch.repeat_interleave(self._start[cell], counts) + local]
        d = points[pi] - self.means[gi]  # (pairs,3)
        m2 = (d[:, None, :] @ self.precision[gi] @ d[:, :, None])[:, 0, 0]
        w = torch.where(m2 <= self.cutoff**2, self.opacities[gi] * torch.exp(-0.5 * m2), torch.zeros_like(m2))
        return pi, gi, w

    def _chunks(self, points: Tensor):
        """(start, end) point ranges of at most `max_pairs` (point, Gaussian) pairs each (at least one point)."""
        c = ((points - self._lo) / self._size).floor().long().clamp(0, self._cells - 1)
        cost = self._count[(c[:, 0] * self._cells + c[:, 1]) * self._cells + c[:, 2]].cumsum(0)  # inclusive
        start = 0
        while start < len(points):
            base = cost[start - 1] if start else cost.new_zeros(())
            end = max(int(torch.searchsorted(cost, base + self.max_pairs, right=True)), start + 1)
            yield start, end
            start = end

    def _nearest_colors(self, points: Tensor, chunk: int = 4096) -> Tensor:
        """(P,3) -> (P,3) the colour of the nearest Gaussian centre."""
        idx = [torch.cdist(points[i : i + chunk], self.means).argmin(-1) for i in range(0, len(points), chunk)]
        return self.colors[torch.cat(idx)]

    def occupancy(self, points: Tensor) -> Tensor:
        """(P,3) -> (P,) Σ α·G (see the module docstring)."""
        points = points.to(self.means)
        out = torch.zeros(len(points), device=self.means.device)
        for a, b in self._chunks(points):
            pi, _, w = self._terms(points[a:b])
            out[a:b] = torch.zeros(b - a, device=out.device).index_add_(0, pi, w)
        return out

    def density(self, points: Tensor) -> Tensor:
        return self.occupancy(points) * (self.level / self.surface_opacity)

    def albedo(self, points: Tensor) -> Tensor:
        points = points.to(self.means)
        out = torch.zeros(len(points), 3, device=self.means.device)
        for a, b in self._chunks(points):
            p = points[a:b]
            pi, gi, w = self._terms(p)
            total = torch.zeros(len(p), device=p.device).index_add_(0, pi, w)
            col = torch.zeros(len(p), 3, device=p.device).index_add_(0, pi, w[:, None] * self.colors[gi])
            far = (total <= 0).nonzero()[:, 0]
            if len(far):
                col[far] = self._nearest_colors(p[far])
                total[far] = 1.0
            out[a:b] = col / total[:, None]
        return out


__all__ = ["GaussianField"]
