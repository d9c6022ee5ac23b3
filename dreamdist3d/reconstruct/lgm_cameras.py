"""LGM's input cameras, its frame, Plücker rays and the input tensor, in this repo's camera conventions.

Frames. This repo's world (threestudio's, `lift3d/data.py`): +z up, a camera at azimuth a / elevation e sits at
d·(cos e cos a, cos e sin a, sin e), c2w columns [right, up, back, position] (OpenGL camera axes). LGM's frame (kiui's
`orbit_camera`): +y up, azimuth 0 on +z. The two are related by the cyclic axis permutation

    p_lgm = LGM_FROM_WORLD · p_world,   (x, y, z)_world -> (y, z, x)_lgm

the same rotation `export/transform.py` uses for the exported files (+y up, front towards +z), so LGM's frame IS the
export frame. Under it, LGM's input camera at kiui azimuth a is this repo's camera at azimuth a, and kiui's
elevation is the NEGATIVE of ours (kiui puts positive elevations below the equator: y = -r·sin e).

LGM's cameras: `config.num_input_views` (4) views at azimuths 0/90/180/270, radius `cam_radius` (1.5), vertical field
of view `fovy` (49.1°), looking at the origin; the Gaussians it predicts lie in [-1, 1]³. The U-Net's cross-view
attention has no notion of view order, so any order of the same cameras (with the matching images) gives the same
Gaussians, only listed in another order. MVDream's 4-view sampler (`backbones.cameras.get_camera`, azimuth 0 looking
from -y) shows its view k from this repo's azimuth 90·k - 90.

Scenes. A 4-view sample sits in a scene at cameras of some distance d and field of view f (an anchored run's:
`system.anchor.camera_distance` / `fovy_deg`). LGM is shown the views as if its own cameras (same directions, radius
`cam_radius`, fovy `fovy`) took them, and the object it predicts is scaled by `scene_scale` = d·tan(f/2) /
(cam_radius·tan(fovy/2)), so that it fills the scene's views as it filled LGM's (`LGM.forward_scene`).

Input (infer.py / app.py of LGM): each RGB view in [0, 1] on a white background, resized (bilinear, no corner
alignment) to `input_size`, normalised with ImageNet's mean/std, then the Plücker embedding (o × d, d) of the ray
through every pixel centre, o the camera centre and d the unit direction, both in LGM's frame.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dreamdist3d.backbones.cameras import c2w_from_spherical
from dreamdist3d.export.transform import UP_ROTATIONS
from dreamdist3d.reconstruct.gaussians import Gaussians

LGM_FROM_WORLD = torch.tensor(UP_ROTATIONS["y"], dtype=torch.float32)  # (3, 3): p_lgm = M · p_world
LGM_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def lgm_cameras(elevation_deg: float = 0.0, radius: float = 1.5,
                azimuths_deg: Sequence[float] = LGM_AZIMUTHS) -> torch.Tensor:
    """(V,4,4) c2w in this repo's world of LGM's input cameras (elevation in this repo's sense: positive = above)."""
    return c2w_from_spherical(torch.tensor([float(elevation_deg)] * len(azimuths_deg)),
                              torch.tensor([float(a) for a in azimuths_deg]), float(radius))


def plucker_rays(c2w: torch.Tensor, size: int, fovy_deg: float) -> torch.Tensor:
    """(V,4,4) world c2w -> (V,6,size,size) Plücker embeddings [o × d, d] in LGM's frame (LGM's `get_rays`)."""
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be (V,4,4), got {tuple(c2w.shape)}")
    m = LGM_FROM_WORLD.to(c2w)
    focal = 0.5 * size / math.tan(0.5 * math.radians(fovy_deg))  # pixels
    # pixel centres, OpenGL camera axes (x right, y up, looking down -z): lift3d.data.ray_directions' convention
    c = (torch.arange(size, dtype=c2w.dtype, device=c2w.device) + 0.5 - size / 2) / focal
    dirs = torch.stack([c[None, :].expand(size, size), -c[:, None].expand(size, size),
                        -torch.ones(size, size, dtype=c2w.dtype, device=c2w.device)], -1)  # (S,S,3)
    rot = m @ c2w[:, :3, :3]  # (V,3,3) camera -> LGM frame
    d = F.normalize(torch.einsum("vij,hwj->vhwi", rot, dirs), dim=-1)  # (V,S,S,3)
    o = (c2w[:, :3, 3] @ m.T)[:, None, None, :].expand_as(d)  # (V,S,S,3)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1).permute(0, 3, 1, 2).contiguous()


def lgm_input(images: torch.Tensor, c2w: torch.Tensor, input_size: int, fovy_deg: float) -> torch.Tensor:
    """(B,V,3,h,w) RGB in [0,1] (white background) + (V,4,4) or (B,V,4,4) world c2w -> (B,V,9,S,S) LGM input."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, V, 3, H, W) RGB in [0, 1], got {tuple(images.shape)}")
    b, v = images.shape[:2]
    if c2w.ndim == 3:
        c2w = c2w.expand(b, *c2w.shape)
    if c2w.shape[:2] != (b, v):
        raise ValueError(f"{v} views of {b} objects need (V,4,4) or (B,V,4,4) cameras, got {tuple(c2w.shape)}")
    x = F.interpolate(images.flatten(0, 1).float(), size=(input_size, input_size), mode="bilinear",
                      align_corners=False)  # ((b v),3,S,S)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rays = torch.stack([plucker_rays(c.to(x), input_size, fovy_deg) for c in c2w])  # (B,V,6,S,S)
    return torch.cat([((x - mean) / std).unflatten(0, (b, v)), rays], dim=2)


def gaussians_to_world(gaussians: Gaussians, scale: float = 1.0) -> Gaussians:
    """Gaussians in LGM's frame -> this repo's world frame (z up), unit quaternions, positions and sizes × `scale`."""
    return gaussians.transform(LGM_FROM_WORLD.T.to(gaussians.means), scale=scale)


def scene_scale(distance: float, fovy_deg: float, cam_radius: float, lgm_fovy_deg: float) -> float:
    """World units of a scene per unit of LGM's frame, for views taken at `distance` with `fovy_deg` and shown to LGM
    as if taken by its own cameras (`cam_radius`, `lgm_fovy_deg`): an object at the origin fills both images alike
    when the scene is this factor larger (exactly so for equal fields of view)."""
    return distance * math.tan(0.5 * math.radians(fovy_deg)) / (cam_radius * math.tan(0.5 * math.radians(
        lgm_fovy_deg)))


def scene_distance(c2w: torch.Tensor) -> float:
    """The one distance from the origin of scene cameras (…,4,4) (an error if they differ: LGM's cameras share one
    radius)."""
    d = c2w[..., :3, 3].norm(dim=-1)
    if float(d.max() - d.min()) > 1e-4 * float(d.max()):
        raise ValueError(f"LGM's input cameras share one distance from the origin; got {d.min():.4f} to {d.max():.4f}")
    return float(d.mean())


def on_lgm_sphere(c2w: torch.Tensor, radius: float) -> torch.Tensor:
    """Scene cameras (…,4,4) looking at the origin -> the same directions at LGM's camera `radius`."""
    out = c2w.clone()
    out[..., :3, 3] = F.normalize(c2w[..., :3, 3], dim=-1) * radius
    return out


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LGM_AZIMUTHS", "LGM_FROM_WORLD", "gaussians_to_world", "lgm_cameras",
           "lgm_input", "on_lgm_sphere", "plucker_rays", "scene_distance", "scene_scale"]
