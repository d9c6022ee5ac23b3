"""`random-multiview-camera-datamodule`: MVDream-threestudio's random multi-view cameras (threestudio's keys).

Training batches: `batch_size` cameras in groups of `n_view` that share elevation, distance, fovy and perturbations
and sit exactly 360/n_view degrees apart in azimuth (group-major order, as MVDream's cross-view attention needs).
Progressive resolution: `height`/`width`/`batch_size` may be lists switched at `resolution_milestones`.
Validation: `n_val_views` cameras around the object; test: the `n_test_views` (120) turntable orbit, azimuth
linspace(0, 360, n) at `eval_elevation_deg`, `eval_camera_distance`, `eval_fovy_deg`.
World frame: z up; camera position d·(cos e cos a, cos e sin a, sin e); c2w columns [right, up, -lookat, position].
All random draws use torch's CPU generator (reproducible and resumable on any device).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import BaseObject, as_list
from dreamdist3d.registry import register


def ray_directions(H: int, W: int, focal: float = 1.0) -> torch.Tensor:
    """(H, W, 3) camera-space directions through pixel centres (OpenGL: x right, y up, looking down -z)."""
    j, i = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([(i + 0.5 - W / 2) / focal, -(j + 0.5 - H / 2) / focal, -torch.ones_like(i)], -1)


def look_at_c2w(positions: torch.Tensor, center: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(B,3) camera positions, centres, up vectors -> (B,4,4) c2w with columns [right, up, -lookat, position]."""
    lookat = F.normalize(center - positions, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up2 = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w3 = torch.cat([torch.stack([right, up2, -lookat], -1), positions[:, :, None]], -1)  # (B,3,4)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(positions.shape[0], 1, 4)
    return torch.cat([c2w3, bottom.to(c2w3)], 1)


def projection_matrix(fovy_rad: torch.Tensor, aspect: float, near: float = 0.1, far: float = 1000.0) -> torch.Tensor:
    """(B,) fovy -> (B,4,4) OpenGL projection with a negative [1,1] (threestudio's, y flipped for rasterisers)."""
    B = fovy_rad.shape[0]
    proj = torch.zeros(B, 4, 4)
    t = torch.tan(fovy_rad / 2)
    proj[:, 0, 0] = 1.0 / (t * aspect)
    proj[:, 1, 1] = -1.0 / t
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def mvp_matrix(c2w: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    R, t = c2w[:, :3, :3], c2w[:, :3, 3:]
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = R.transpose(1, 2)
    w2c[:, :3, 3:] = -R.transpose(1, 2) @ t
    w2c[:, 3, 3] = 1.0
    return proj @ w2c


def spherical_positions(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """(B,) degrees, distances -> (B,3) z-up positions d·(cos e cos a, cos e sin a, sin e)."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a),
                        distance * torch.sin(e)], -1)


def camera_batch(
    elevation_deg: torch.Tensor,
    azimuth_deg: torch.Tensor,
    distance: torch.Tensor,
    fovy_deg: torch.Tensor,
    H: int,
    W: int,
    positions: Optional[torch.Tensor] = None,
    center: Optional[torch.Tensor] = None,
    up: Optional[torch.Tensor] = None,
    light_positions: Optional[torch.Tensor] = None,
    normalize_rays: bool = True,
) -> Dict[str, Any]:
    """threestudio's batch dict from per-camera angles (degrees), distances and fovy (degrees).

    `positions` overrides the spherical positions (perturbed cameras); the angles are still reported."""
    B = elevation_deg.shape[0]
    pos = spherical_positions(elevation_deg, azimuth_deg, distance) if positions is None else positions
    center = torch.zeros_like(pos) if center is None else center
    up = torch.tensor([0.0, 0.0, 1.0]).expand(B, 3) if up is None else up
    c2w = look_at_c2w(pos, center, up)
    fovy = torch.deg2rad(fovy_deg)
    focal = 0.5 * H / torch.tan(0.5 * fovy)  # (B,)
    dirs = ray_directions(H, W)[None].repeat(B, 1, 1, 1)
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    rays_d = (dirs[:, :, :, None, :] * c2w[:, None, None, :3, :3]).sum(-1)  # R · dir
    if normalize_rays:
        rays_d = F.normalize(rays_d, dim=-1)
    rays_o = pos[:, None, None, :].expand(B, H, W, 3).contiguous()
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "mvp_mtx": mvp_matrix(c2w, projection_matrix(fovy, W / H)),
        "camera_positions": pos,
        "c2w": c2w,
        "light_positions": pos.clone() if light_positions is None else light_positions,
        "elevation": elevation_deg,
        "azimuth": azimuth_deg,
        "camera_distances": distance,
        "height": H,
        "width": W,
        "fovy": fovy_deg,
    }


@register("random-multiview-camera-datamodule")
class RandomMultiviewCameraDataModule(BaseObject):
    @dataclass
    class Config:
        height: Any = 64
        width: Any = 64
        batch_size: Any = 1
        resolution_milestones: List[int] = field(default_factory=list)
        eval_height: int = 512
        eval_width: int = 512
        eval_batch_size: int = 1
        n_val_views: int = 1
        n_test_views: int = 120
        elevation_range: Tuple[float, float] = (-10, 90)
        azimuth_range: Tuple[float, float] = (-180, 180)
        camera_distance_range: Tuple[float, float] = (1, 1.5)
        fovy_range: Tuple[float, float] = (40, 70)
        camera_perturb: float = 0.1
        center_perturb: float = 0.2
        up_perturb: float = 0.02
        light_position_perturb: float = 1.0
        light_distance_range: Tuple[float, float] = (0.8, 1.5)
        eval_elevation_deg: float = 15.0
        eval_camera_distance: float = 1.5
        eval_fovy_deg: float = 70.0
        light_sample_strategy: str = "dreamfusion"
        batch_uniform_azimuth: bool = True
        progressive_until: int = 0
        rays_d_normalize: bool = True
        # multiview
        relative_radius: bool = True
        n_view: int = 1
        zoom_range: Tuple[float, float] = (1.0, 1.0)

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        self.heights, self.widths, self.batch_sizes = as_list(cfg.height), as_list(cfg.width), as_list(cfg.batch_size)
        n = max(len(self.heights), len(self.widths), len(self.batch_sizes))
        self.heights = self.heights * n if len(self.heights) == 1 else self.heights
        self.widths = self.widths * n if len(self.widths) == 1 else self.widths
        self.batch_sizes = self.batch_sizes * n if len(self.batch_sizes) == 1 else self.batch_sizes
        w = self.where or "data"
        if not (len(self.heights) == len(self.widths) == len(self.batch_sizes) == len(cfg.resolution_milestones) + 1):
            raise ConfigError(
                f"{w}.height/width/batch_size must be lists of len(resolution_milestones)+1 = "
                f"{len(cfg.resolution_milestones) + 1} (got {cfg.height}, {cfg.width}, {cfg.batch_size})"
            )
        for b in self.batch_sizes:
            if b % cfg.n_view != 0:
                raise ConfigError(f"{w}.batch_size {b} must be a multiple of {w}.n_view {cfg.n_view}")
        if cfg.light_sample_strategy != "dreamfusion":
            raise ConfigError(f"{w}.light_sample_strategy {cfg.light_sample_strategy!r}: only 'dreamfusion' is "
                              "supported")
        self.elevation_range = tuple(cfg.elevation_range)
        self.azimuth_range = tuple(cfg.azimuth_range)
        self._set_resolution(0)

    def _set_resolution(self, i: int) -> None:
        self.height, self.width, self.batch_size = int(self.heights[i]), int(self.widths[i]), int(self.batch_sizes[i])

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        i = bisect.bisect_right([-1] + list(self.cfg.resolution_milestones), global_step) - 1
        self._set_resolution(i)
        r = min(1.0, global_step / (self.cfg.progressive_until + 1))
        e0, e1 = self.cfg.elevation_range
        ev = self.cfg.eval_elevation_deg
        self.elevation_range = ((1 - r) * ev + r * e0, (1 - r) * ev + r * e1)
        a0, a1 = self.cfg.azimuth_range
        self.azimuth_range = (r * a0, r * a1)

    # ------------------------------------------------------------------ training
    def train_batch(self) -> Dict[str, Any]:
        cfg, nv = self.cfg, self.cfg.n_view
        B = self.batch_size
        G = B // nv
        rep = lambda x: x.repeat_interleave(nv, 0)  # noqa: E731
        e0, e1 = self.elevation_range
        if torch.rand(()) < 0.5:
            elev = torch.rand(G) * (e1 - e0) + e0
        else:
            p0, p1 = (e0 + 90.0) / 180.0, (e1 + 90.0) / 180.0
            elev = torch.rad2deg(torch.asin(2 * (torch.rand(G) * (p1 - p0) + p0) - 1.0))
        a0, a1 = self.azimuth_range
        u = torch.rand(G)
        azi = ((u[:, None] + torch.arange(nv)[None, :]) / nv * (a1 - a0) + a0).reshape(-1)  # (B,)
        fovy = torch.rand(G) * (cfg.fovy_range[1] - cfg.fovy_range[0]) + cfg.fovy_range[0]
        d0, d1 = cfg.camera_distance_range
        dist = torch.rand(G) * (d1 - d0) + d0
        if cfg.relative_radius:
            dist = dist / torch.tan(torch.deg2rad(fovy) / 2)
        zoom = torch.rand(G) * (cfg.zoom_range[1] - cfg.zoom_range[0]) + cfg.zoom_range[0]
        fovy = fovy * zoom
        cam_pert = (torch.rand(G, 3) * 2 - 1) * cfg.camera_perturb
        center = torch.randn(G, 3) * cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0])[None] + torch.randn(G, 3) * cfg.up_perturb
        light_dir_noise = torch.randn(G, 3) * cfg.light_position_perturb
        l0, l1 = cfg.light_distance_range
        light_dist = torch.rand(G) * (l1 - l0) + l0

        elev_b, dist_b, fovy_b = rep(elev), rep(dist), rep(fovy)
        pos = spherical_positions(elev_b, azi, dist_b) + rep(cam_pert)
        light = F.normalize(pos + rep(light_dir_noise), dim=-1) * rep(light_dist)[:, None]
        return camera_batch(
            elev_b, azi, dist_b, fovy_b, self.height, self.width, positions=pos, center=rep(center),
            up=F.normalize(rep(up), dim=-1), light_positions=light, normalize_rays=cfg.rays_d_normalize,
        )

    # ------------------------------------------------------------------ evaluation
    def _eval_batches(self, azimuths: torch.Tensor) -> Iterator[Dict[str, Any]]:
        cfg = self.cfg
        for i, az in enumerate(azimuths):
            b = camera_batch(
                torch.tensor([cfg.eval_elevation_deg], dtype=torch.float32), az.reshape(1).float(),
                torch.tensor([cfg.eval_camera_distance], dtype=torch.float32), torch.tensor([cfg.eval_fovy_deg],
                                                                                            dtype=torch.float32),
                cfg.eval_height, cfg.eval_width, normalize_rays=cfg.rays_d_normalize,
            )
            b["index"] = torch.tensor([i], dtype=torch.long)
            yield b

    def val_batches(self) -> Iterator[Dict[str, Any]]:
        n = self.cfg.n_val_views
        return self._eval_batches(torch.linspace(0.0, 360.0, n + 1)[:n])

    def test_batches(self) -> Iterator[Dict[str, Any]]:
        return self._eval_batches(torch.linspace(0.0, 360.0, self.cfg.n_test_views))

    @property
    def n_test_views(self) -> int:
        return self.cfg.n_test_views


__all__ = ["RandomMultiviewCameraDataModule", "camera_batch", "look_at_c2w", "ray_directions", "spherical_positions"]
