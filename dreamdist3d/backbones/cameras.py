"""MVDream camera conditioning: the 16-vector a multi-view UNet's `camera_embed` receives.

Two sources give the same vector:

- `get_camera(F, elevation, azimuth_start)`: MVDream's own sampler cameras. A y-up look-at-origin camera on the unit
  sphere at (cos e·sin a, sin e, cos e·cos a), columns right / up / back / position, left-multiplied by the y↔z flip
  ("blender" z-up), flattened row-major. Computed in float64 (numpy), cast to float32 at the end, azimuths stepped
  with `np.arange(start, start + span, span / F)` exactly as the official code.
- `c2w_to_mvdream_camera(c2w)`: MVDream-threestudio's `get_camera_cond(camera_condition_type="rotation")` on a
  threestudio camera-to-world matrix (already z-up: no flip). The translation is divided by ‖t‖+1e-8 and the matrix is
  flattened. Unlike the official `normalize_camera`, **we do not write the normalised translation back into the
  caller's tensor** (the official function mutates its argument through a view); the input is left untouched.

`c2w_from_spherical(e, a, d)` builds threestudio's unperturbed camera (z-up, azimuth 0 on +x), so
`c2w_to_mvdream_camera(c2w_from_spherical(e, a, d)) == get_camera(1, e, a + 90)` (MVDream's azimuth 0 looks from −y).

Layout of a vector: [R00,R01,R02,tx, R10,R11,R12,ty, R20,R21,R22,tz, 0,0,0,1].
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

# OpenGL (y-up) -> Blender (z-up): left-multiply, as MVDream's convert_opengl_to_blender.
FLIP_YZ = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

Angle = Union[float, int, torch.Tensor, np.ndarray]


def _look_at_origin_y_up(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """(4,4) float64 camera-to-world, y up, camera on the unit sphere looking at the origin."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)], dtype=np.float64)
    forward = -pos
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    up = up / np.linalg.norm(up)
    c2w = np.eye(4, dtype=np.float64)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)  # columns: right, up, back
    c2w[:3, 3] = pos
    return c2w


def get_camera(
    num_frames: int,
    elevation: float = 15,
    azimuth_start: float = 0,
    azimuth_span: float = 360,
    blender_coord: bool = True,
) -> torch.Tensor:
    """(num_frames, 16) float32 MVDream cameras, views `azimuth_span/num_frames` degrees apart (official get_camera)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    gap = azimuth_span / num_frames
    cams = []
    for azimuth in np.arange(azimuth_start, azimuth_span + azimuth_start, gap):
        m = _look_at_origin_y_up(elevation, azimuth)
        if blender_coord:
            m = FLIP_YZ @ m
        cams.append(m.reshape(-1))
    return torch.tensor(np.stack(cams, 0)).float()


def c2w_to_mvdream_camera(c2w: torch.Tensor) -> torch.Tensor:
    """threestudio c2w (B,4,4) (or (4,4)) -> (B,16) MVDream camera vectors ("rotation" condition type).

    Translation normalised to the unit sphere by ‖t‖+1e-8, rotation untouched, flattened row-major.
    Does NOT modify `c2w` (the official `normalize_camera` does, in place)."""
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be (B,4,4), got {tuple(c2w.shape)}")
    m = c2w.reshape(-1, 4, 4).clone()
    t = m[:, :3, 3]
    m[:, :3, 3] = t / (torch.linalg.norm(t, dim=-1, keepdim=True) + 1e-8)
    return m.reshape(-1, 16)


def _as_tensor(x: Angle, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x, dtype=dtype).reshape(-1)


def c2w_from_spherical(
    elevation_deg: Angle,
    azimuth_deg: Angle,
    distance: Angle,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """threestudio's unperturbed random-multiview camera: (B,4,4) c2w, z-up, looking at the origin.

    position p = d·(cos e cos a, cos e sin a, sin e) (azimuth 0 on +x); lookat = normalize(−p);
    right = normalize(lookat × z); up = normalize(right × lookat); c2w = [right, up, −lookat | p].
    Scalars or (B,) tensors broadcast; computed in `dtype` (float32 as threestudio)."""
    e = _as_tensor(elevation_deg, dtype) * (math.pi / 180)
    a = _as_tensor(azimuth_deg, dtype) * (math.pi / 180)
    d = _as_tensor(distance, dtype)
    e, a, d = torch.broadcast_tensors(e, a, d)
    pos = torch.stack([d * torch.cos(e) * torch.cos(a), d * torch.cos(e) * torch.sin(a), d * torch.sin(e)], -1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=dtype).expand_as(pos)
    lookat = torch.nn.functional.normalize(-pos, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(lookat, up, dim=-1), dim=-1)
    up = torch.nn.functional.normalize(torch.linalg.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(pos.shape[0], 4, 4, dtype=dtype)
    c2w[:, :3, :3] = torch.stack([right, up, -lookat], dim=-1)
    c2w[:, :3, 3] = pos
    c2w[:, 3, 3] = 1.0
    return c2w


def threestudio_azimuth(mvdream_azimuth_deg: Angle) -> Angle:
    """The threestudio azimuth (degrees) of the view MVDream's sampler calls `mvdream_azimuth_deg`: a − 90, so
    `c2w_from_spherical(e, threestudio_azimuth(a), d)` is the camera of `get_camera(1, e, a)`."""
    return mvdream_azimuth_deg - 90.0


__all__ = ["get_camera", "c2w_to_mvdream_camera", "c2w_from_spherical", "threestudio_azimuth", "FLIP_YZ"]
