"""`nerf-volume-renderer`: volume rendering with packed samples and an occupancy-grid skip, in plain PyTorch.

What nerfacc's OccGridEstimator does for threestudio, written with torch ops:
- uniform steps of `render_step_size = 1.732·2·radius / num_samples_per_ray` inside the ray–AABB interval
  (near plane 0), jittered by one uniform offset per ray when `randomized` and training;
- samples whose midpoint lies in an empty cell of a 32³ occupancy grid are skipped (`grid_prune`); the grid is
  refreshed every 16 training steps from σ·step at jittered cell points (EMA 0.95, threshold
  min(mean, 0.01)); rays are first clipped to the box of occupied cells, on the same step lattice;
- with `prune_alpha_threshold`, a no-grad pass drops samples with α < 0.01 or transmittance < 1e-4;
- compositing: α_i = 1 − exp(−σ_i δ_i), T_i = Π_{j<i}(1 − α_j) (a segmented cumsum in float64), w_i = T_i α_i;
  comp_rgb = Σ w·rgb + bg·(1 − Σ w).
Samples are "packed": a flat list with their ray index, so memory follows the occupied volume, not rays × 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import BaseModule
from dreamdist3d.registry import register

ALPHA_THRE = 0.01
EARLY_STOP_EPS = 1e-4


def ray_aabb(rays_o: torch.Tensor, rays_d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> Tuple[torch.Tensor,
                                                                                                      torch.Tensor]:
    """(R,3),(R,3), box (3,),(3,) -> t_near, t_far (R,); t_far < t_near when the ray misses."""
    inv = 1.0 / torch.where(rays_d.abs() < 1e-10, torch.full_like(rays_d, 1e-10) * torch.sign(rays_d + 1e-20), rays_d)
    t0 = (lo - rays_o) * inv
    t1 = (hi - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def segment_exclusive_cumsum(values: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sum within each ray of packed `values` (M,), sorted by ray; float64 accumulation."""
    if values.numel() == 0:
        return values
    v = values.double()
    cs = torch.cumsum(v, 0)
    excl = cs - v
    pos = torch.arange(values.shape[0], device=values.device)
    is_first = torch.ones_like(ray_indices, dtype=torch.bool)
    is_first[1:] = ray_indices[1:] != ray_indices[:-1]
    first = torch.cummax(torch.where(is_first, pos, torch.zeros_like(pos)), 0).values
    return (excl - excl[first]).to(values.dtype)


def render_weights(sigmas: torch.Tensor, deltas: torch.Tensor, ray_indices: torch.Tensor):
    """Packed σ, δ (M,) -> (weights, transmittance, alphas) (M,)."""
    sd = sigmas * deltas
    trans = torch.exp(-segment_exclusive_cumsum(sd, ray_indices))
    alphas = 1.0 - torch.exp(-sd)
    return trans * alphas, trans, alphas


def accumulate(weights: torch.Tensor, values: Optional[torch.Tensor], ray_indices: torch.Tensor,
               n_rays: int) -> torch.Tensor:
    """Σ_i w_i·v_i per ray -> (n_rays, C) (C=1 when values is None)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        num_samples_per_ray: int = 512
        randomized: bool = True
        eval_chunk_size: int = 160000
        grid_prune: bool = True
        prune_alpha_threshold: bool = True
        return_comp_normal: bool = False
        return_normal_perturb: bool = False
        # pure-torch occupancy grid (nerfacc's OccGridEstimator defaults)
        occ_grid_resolution: int = 32
        occ_update_every_n_steps: int = 16
        occ_ema_decay: float = 0.95
        occ_thre: float = 0.01
        max_samples_per_chunk: int = 1 << 22  # candidate samples generated at once (memory bound)

    cfg: Config

    def configure(self, geometry: nn.Module, material: nn.Module, background: nn.Module) -> None:
        if self.cfg.num_samples_per_ray < 1:
            raise ConfigError(f"{self.where}.num_samples_per_ray must be >= 1")
        # held outside the module tree (as threestudio's SubModules) so the system owns their parameters
        self._sub = (geometry, material, background)
        r, n = self.cfg.radius, self.cfg.occ_grid_resolution
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3], dtype=torch.float32), persistent=False)
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray
        self.register_buffer("occs", torch.zeros(n**3))
        self.register_buffer("binaries", torch.ones(n, n, n, dtype=torch.bool))
        self.randomized = self.cfg.randomized

    @property
    def geometry(self) -> nn.Module:
        return self._sub[0]

    @property
    def material(self) -> nn.Module:
        return self._sub[1]

    @property
    def background(self) -> nn.Module:
        return self._sub[2]

    # ------------------------------------------------------------------ occupancy grid
    def _cell_of(self, p: torch.Tensor) -> torch.Tensor:
        n, r = self.cfg.occ_grid_resolution, self.cfg.radius
        ijk = ((p + r) / (2 * r) * n).floor().long().clamp(0, n - 1)
        return ijk

    def occupied(self, p: torch.Tensor) -> torch.Tensor:
        ijk = self._cell_of(p)
        return self.binaries[ijk[:, 0], ijk[:, 1], ijk[:, 2]]

    def occupied_box(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """World-space box of the occupied cells (empty grid -> a degenerate box at the origin)."""
        n, r = self.cfg.occ_grid_resolution, self.cfg.radius
        idx = self.binaries.nonzero()
        if idx.numel() == 0:
            z = torch.zeros(3, device=self.binaries.device)
            return z, z
        lo = idx.amin(0).float() / n * 2 * r - r
        hi = (idx.amax(0).float() + 1) / n * 2 * r - r
        return lo, hi

    @torch.no_grad()
    def update_occupancy(self) -> None:
        n, r = self.cfg.occ_grid_resolution, self.cfg.radius
        dev = self.occs.device
        ijk = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
        jitter = torch.rand(ijk.shape)  # CPU RNG: reproducible on any device
        pts = ((ijk + jitter) / n * 2 * r - r).to(dev)
        occ = self.geometry.density(pts)[..., 0] * self.render_step_size
        self.occs.copy_(torch.maximum(self.occs * self.cfg.occ_ema_decay, occ))
        thre = torch.clamp(self.occs.mean(), max=self.cfg.occ_thre)
        self.binaries.copy_((self.occs > thre).reshape(n, n, n))

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.training and self.cfg.grid_prune and global_step % self.cfg.occ_update_every_n_steps == 0:
            self.update_occupancy()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, rays_o: torch.Tensor, rays_d: torch.Tensor, stratified: bool):
        """Flat rays (R,3) -> packed (ray_indices (M,), t_starts (M,), t_ends (M,)), sorted by ray then t.

        Sample k of a ray has midpoint t_near + (k + u)·step (u: one jitter per ray, 0.5 when not stratified), on
        the lattice of the full box whatever box the candidates are clipped to. With the occupancy grid, candidates
        are made in two levels: blocks of m steps (m·step ≤ one cell) are kept when their centre lies in the
        grid dilated by one cell — which contains every cell within half a cell of the centre, so no occupied
        sample is lost — and only the samples of kept blocks are tested against the grid itself."""
        dev = rays_o.device
        step = self.render_step_size
        R = rays_o.shape[0]
        t_near, t_far = ray_aabb(rays_o, rays_d, self.bbox[0], self.bbox[1])
        if self.cfg.grid_prune:
            lo, hi = self.occupied_box()
            tn, tf = ray_aabb(rays_o, rays_d, lo, hi)
            k_lo = ((tn - t_near) / step).floor().clamp_min(0)
            k_hi = ((torch.minimum(tf, t_far) - t_near) / step).ceil()
        else:
            k_lo = torch.zeros_like(t_near)
            k_hi = ((t_far - t_near) / step).ceil()
        k_hi = torch.minimum(k_hi, torch.full_like(k_hi, float(self.cfg.num_samples_per_ray)))
        offset = torch.rand(R).to(dev) if stratified else torch.full((R,), 0.5, device=dev)
        active = (k_hi > k_lo).nonzero()[:, 0]
        if active.numel() == 0:
            empty = torch.zeros(0, device=dev)
            return torch.zeros(0, dtype=torch.long, device=dev), empty, empty
        if self.cfg.grid_prune:
            cell = 2 * self.cfg.radius / self.cfg.occ_grid_resolution
            m = max(1, int(cell / step))  # fine steps per block
        else:
            m = 1
        j_lo = torch.div(k_lo, m, rounding_mode="floor")
        j_hi = torch.ceil(k_hi / m)
        n_blocks = int((j_hi - j_lo)[active].max())
        per_chunk = max(1, self.cfg.max_samples_per_chunk // (n_blocks * (1 if m == 1 else 2)))
        dilated = None
        if self.cfg.grid_prune and m > 1:
            dilated = F.max_pool3d(self.binaries.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
        out_r, out_t = [], []
        arb = torch.arange(n_blocks, device=dev, dtype=k_lo.dtype)
        arm = torch.arange(m, device=dev, dtype=k_lo.dtype)
        for s in range(0, active.numel(), per_chunk):
            rays = active[s : s + per_chunk]
            j = j_lo[rays, None] + arb[None, :]  # (c, n_blocks)
            keep = j < j_hi[rays, None]
            if dilated is not None:  # level 1: blocks near occupied cells
                t_c = t_near[rays, None] + (j * m + (m - 1) / 2 + offset[rays, None]) * step
                p = rays_o[rays, None, :] + t_c[..., None] * rays_d[rays, None, :]
                ijk = self._cell_of(p[keep])
                occ = torch.zeros_like(keep)
                occ[keep] = dilated[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
                keep &= occ
            rb, cb = keep.nonzero(as_tuple=True)  # ray-major, blocks in increasing t
            ray = rays[rb]
            k = j[rb, cb][:, None] * m + arm[None, :]  # (K, m) fine step indices
            valid = (k >= k_lo[ray, None]) & (k < k_hi[ray, None])
            t_mid = t_near[ray, None] + (k + offset[ray, None]) * step
            valid &= t_mid < t_far[ray, None]
            if self.cfg.grid_prune:  # level 2: the samples' own cells
                p = rays_o[ray, None, :] + t_mid[..., None] * rays_d[ray, None, :]
                occ = torch.zeros_like(valid)
                occ[valid] = self.occupied(p[valid])
                valid &= occ
            rr, cc = valid.nonzero(as_tuple=True)
            out_r.append(ray[rr])
            out_t.append(t_mid[rr, cc])
        ray_indices = torch.cat(out_r)
        t_mid = torch.cat(out_t)
        return ray_indices, t_mid - 0.5 * step, t_mid + 0.5 * step

    @torch.no_grad()
    def prune_by_alpha(self, rays_o, rays_d, ray_indices, t_starts, t_ends, depth_slice: int = 32):
        """Drop samples with α < 0.01 or transmittance < 1e-4 (nerfacc's sigma_fn pass).

        σ is evaluated front to back in slices of `depth_slice` samples per ray, and a ray stops being evaluated
        once its transmittance is below 1e-4 — its later samples would be dropped anyway — so opaque objects cost
        about their visible depth, not the whole occupied chord. Same result as evaluating everything."""
        M = ray_indices.shape[0]
        if M == 0:
            return ray_indices, t_starts, t_ends
        dev = ray_indices.device
        t_mid = 0.5 * (t_starts + t_ends)
        deltas = t_ends - t_starts
        pos = torch.arange(M, device=dev)
        is_first = torch.ones(M, dtype=torch.bool, device=dev)
        is_first[1:] = ray_indices[1:] != ray_indices[:-1]
        first = torch.cummax(torch.where(is_first, pos, torch.zeros_like(pos)), 0).values
        slice_id = (pos - first) // depth_slice
        n_rays = int(ray_indices.max()) + 1
        tau = torch.zeros(n_rays, dtype=torch.float64, device=dev)  # optical depth so far, per ray
        sigmas = torch.zeros(M, dtype=t_mid.dtype, device=dev)
        evaluated = torch.zeros(M, dtype=torch.bool, device=dev)
        stop = -torch.log(torch.tensor(EARLY_STOP_EPS, dtype=torch.float64))
        chunk = max(self.cfg.eval_chunk_size, 1) * 8
        for s in range(int(slice_id.max()) + 1):
            idx = ((slice_id == s) & (tau[ray_indices] < stop)).nonzero()[:, 0]
            if idx.numel() == 0:
                break
            for c in range(0, idx.numel(), chunk):
                ii = idx[c : c + chunk]
                ri = ray_indices[ii]
                p = rays_o[ri] + t_mid[ii, None] * rays_d[ri]
                sigmas[ii] = self.geometry.density(p)[..., 0].to(sigmas.dtype)
            evaluated[idx] = True
            tau.index_add_(0, ray_indices[idx], (sigmas[idx] * deltas[idx]).double())
        _, trans, alphas = render_weights(sigmas, deltas, ray_indices)
        keep = evaluated & (alphas >= ALPHA_THRE) & (trans >= EARLY_STOP_EPS)
        return ray_indices[keep], t_starts[keep], t_ends[keep]

    # ------------------------------------------------------------------ render
    def _render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, bg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat rays (R,3) and background colours (R,3) -> per-ray outputs."""
        R = rays_o.shape[0]
        stratified = self.randomized and self.training
        ray_indices, t_starts, t_ends = self.sample(rays_o, rays_d, stratified)
        if self.cfg.prune_alpha_threshold:
            ray_indices, t_starts, t_ends = self.prune_by_alpha(rays_o, rays_d, ray_indices, t_starts, t_ends)
        t_mid = 0.5 * (t_starts + t_ends)
        t_dirs = rays_d[ray_indices]
        points = rays_o[ray_indices] + t_mid[:, None] * t_dirs
        want_normal = bool(self.cfg.return_comp_normal or getattr(self.material, "requires_normal", False))
        geo = self.geometry(points, output_normal=want_normal)
        rgb = self.material(features=geo["features"], viewdirs=t_dirs, positions=points,
                            **({"shading_normal": geo["normal"]} if "normal" in geo else {}))
        weights, _, _ = render_weights(geo["density"][:, 0], t_ends - t_starts, ray_indices)
        opacity = accumulate(weights, None, ray_indices, R)
        depth = accumulate(weights, t_mid[:, None], ray_indices, R)
        comp_rgb_fg = accumulate(weights, rgb, ray_indices, R)
        z_variance = accumulate(weights, (t_mid[:, None] - depth[ray_indices]) ** 2, ray_indices, R)
        out = {
            "comp_rgb": comp_rgb_fg + bg * (1.0 - opacity),
            "comp_rgb_fg": comp_rgb_fg,
            "comp_rgb_bg": bg,
            "opacity": opacity,
            "depth": depth,
            "z_variance": z_variance,
        }
        if "normal" in geo and self.cfg.return_comp_normal:
            n = F.normalize(accumulate(weights, geo["normal"], ray_indices, R), dim=-1)
            out["comp_normal"] = (n + 1.0) / 2.0 * opacity
        if self.training:
            out.update(
                weights=weights[:, None],
                t_points=t_mid[:, None],
                t_intervals=(t_ends - t_starts)[:, None],
                t_dirs=t_dirs,
                ray_indices=ray_indices,
                points=points,
                **{k: v for k, v in geo.items()},
            )
        return out

    def forward(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        light_positions: Optional[torch.Tensor] = None,
        bg_color: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """rays (B,H,W,3) -> comp_rgb, comp_rgb_fg, comp_rgb_bg (B,H,W,3); opacity, depth, z_variance (B,H,W,1)."""
        B, H, W, _ = rays_o.shape
        flat_o, flat_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        if bg_color is None:
            bg = self.background(dirs=rays_d).reshape(-1, 3)
        else:
            bg = bg_color.to(rays_o).expand(B, H, W, 3).reshape(-1, 3) if bg_color.ndim <= 2 else bg_color.reshape(-1,
                                                                                                                   3)
        if self.training:
            out = self._render_rays(flat_o, flat_d, bg)
        else:
            chunk = self.cfg.eval_chunk_size if self.cfg.eval_chunk_size > 0 else flat_o.shape[0]
            parts = [self._render_rays(flat_o[s : s + chunk], flat_d[s : s + chunk],
                                       bg[s : s + chunk]) for s in range(0, flat_o.shape[0], chunk)]
            out = {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}
        shaped = {}
        for k, v in out.items():
            if k in ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg", "opacity", "depth", "z_variance", "comp_normal"):
                shaped[k] = v.reshape(B, H, W, -1)
            else:
                shaped[k] = v
        return shaped

    def train(self, mode: bool = True):
        self.randomized = mode and self.cfg.randomized
        return super().train(mode)


__all__ = ["NeRFVolumeRenderer", "ray_aabb", "render_weights", "accumulate", "segment_exclusive_cumsum"]
