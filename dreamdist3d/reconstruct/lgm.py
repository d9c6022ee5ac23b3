"""LGM (Large Multi-View Gaussian Model, 3DTopia/LGM, MIT): 4 views + Plücker rays -> 3D Gaussians, one forward pass.

`LGM(config)` is the official `core.models.LGM` without its renderer and losses: the U-Net (`unet.*`), a 1×1 conv
(`conv.*`) and the activations. Its `state_dict()` keys are the official checkpoint's (`model_fp16.safetensors` and
the re-finetuned `model_fp16_fixrot.safetensors` hold exactly `unet.*` + `conv.*`), so they load strictly
(`lgm_load.load_lgm`).

Input: (B, V, 9, S, S) per view = ImageNet-normalised RGB (3) + Plücker ray embedding (o×d, d) (6) at S =
`config.input_size` (`lgm_cameras.lgm_input` builds it). Output: `Gaussians` with N = V·s² per object (s =
`config.splat_size`, one Gaussian per output pixel of each view, view-major), in LGM's frame (see lgm_cameras.py):

    position = clamp(x[0:3], -1, 1)      opacity = sigmoid(x[3])        scale = 0.1·softplus(x[4:7])
    rotation = normalise(x[7:11])        colour = 0.5·tanh(x[11:14]) + 0.5

Positions (`LGMConfig.position`): "free" is LGM's (the official code and every released checkpoint); "ray" puts
output pixel (i, j) of view v on the ray through that pixel (its input pixels' Plücker rays averaged), at signed
depth x[0] from the ray's point nearest the origin (x[1:3] unused), as pixel-aligned successors (GRM, GS-LRM) do:
the toy reconstructor's choice, because with LGM's free positions a CPU budget of ~10⁴ training objects gave grey
blobs (README, "3D in seconds").

Rotation normalisation (`LGMConfig.rotation_normalization`): LGM's first checkpoints were trained with
`F.normalize(x)`, whose default dim=1 of the (B, N, 4) tensor normalises each quaternion COMPONENT over all N
Gaussians of the object instead of each quaternion (README news 2024-04-03; fixed by the official commit 9a0797c
"fix rotation normalization"); the later checkpoints (`*_fixrot*`) were fine-tuned with `dim=-1`.
- "fixed": per quaternion (dim=-1). The current official code; for `model_fp16_fixrot.safetensors`.
- "legacy": over the Gaussians (dim=1), as `model_fp16.safetensors` was trained. Its quaternions are far from unit
  length (about 1/√N), and the official CUDA renderer does not normalise them, so it draws nearly axis-aligned
  Gaussians; `Gaussians.covariances()` keeps that formula and `Gaussians.canonical()` gives the equivalent unit form.
The weights do not tell which one a checkpoint needs: the loader takes it from the file's metadata, the official file
names, or its `rotation_normalization` argument.

Configs: `LGM_CONFIGS` holds the official `big` (the released weights: 256² input, 128² splats per view, 65,536
Gaussians), `small` (the official default Options: 64² splats) and `tiny` (the official ablation model), and `toy`:
the same class at the toy world's size (32² views, 1,024 Gaussians; trained by `dreamdist3d toyworld train-lgm`,
shipped in `reconstruct/data/`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.backbones.multiview_blocks import AttentionFn, sdpa_attention
from dreamdist3d.reconstruct.gaussians import LGM_CHANNELS, Gaussians
from dreamdist3d.reconstruct.lgm_blocks import LGMUNet, PackedSelfAttention, check_unet_layout
from dreamdist3d.reconstruct.lgm_cameras import (
    gaussians_to_world,
    lgm_cameras,
    lgm_input,
    on_lgm_sphere,
    scene_distance,
    scene_scale,
)

ROTATION_NORMALIZATIONS = ("fixed", "legacy")
POSITIONS = ("free", "ray")
IN_CHANNELS = 9  # RGB + Plücker (6)


@dataclass(frozen=True)
class LGMConfig:
    """The official `core.options.Options` fields the model and its cameras use, plus the rotation normalisation."""

    input_size: int = 256  # U-Net input resolution (S)
    down_channels: Tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: Tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: Tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: Tuple[bool, ...] = (True, True, True, False, False)
    splat_size: int = 128  # U-Net output resolution (s): s² Gaussians per view
    output_size: int = 512  # resolution LGM rendered and supervised at in training (turntables may use it)
    fovy: float = 49.1  # degrees, the input cameras' vertical field of view
    znear: float = 0.5
    zfar: float = 2.5
    cam_radius: float = 1.5  # distance of the input cameras from the origin
    num_input_views: int = 4
    rotation_normalization: str = "fixed"  # "fixed" (dim=-1) | "legacy" (dim=1, the first checkpoints); module doc
    position: str = "free"  # "free" (LGM: x[0:3]) | "ray" (on the output pixel's ray at depth x[0]); module doc

    def __post_init__(self) -> None:
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON/yaml
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.rotation_normalization not in ROTATION_NORMALIZATIONS:
            raise ValueError(f"rotation_normalization must be one of {ROTATION_NORMALIZATIONS}, got "
                             f"{self.rotation_normalization!r}")
        check_unet_layout(self.down_channels, self.down_attention, self.up_channels, self.up_attention)
        down, up = len(self.down_channels) - 1, len(self.up_channels) - 1
        if self.input_size % 2**down:
            raise ValueError(f"input_size {self.input_size} is not divisible by 2^{down} (the down levels)")
        splat = self.input_size // 2**down * 2**up
        if self.splat_size != splat:
            raise ValueError(f"splat_size {self.splat_size} does not match the U-Net: input_size {self.input_size} "
                             f"/ 2^{down} · 2^{up} = {splat}")

    @property
    def gaussians_per_object(self) -> int:
        return self.num_input_views * self.splat_size**2

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LGMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LGM config key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)


# The official core/options.py presets (model fields only). `tiny` lists 4 up_attention flags officially; the U-Net
# reads only the first 3 (one per up level).
LGM_CONFIGS: Dict[str, LGMConfig] = {
    "big": LGMConfig(),
    "small": LGMConfig(up_channels=(1024, 1024, 512, 256), up_attention=(True, True, True, False), splat_size=64,
                       output_size=256),
    "tiny": LGMConfig(down_channels=(32, 64, 128, 256, 512), down_attention=(False, False, False, False, True),
                      up_channels=(512, 256, 128), up_attention=(True, False, False), splat_size=64, output_size=256),
    # the toy world's reconstructor (ours, not an official preset): 4 toy views at 32², 16² splats per view (1,024
    # Gaussians), 1.35 M parameters, pixel-aligned positions; its cameras frame objects as the toy world does (fovy
    # 40°; radius 2, so the toy scene at distance 3 is 1.5× LGM's frame and every toy object stays inside [-1, 1]³)
    "toy": LGMConfig(input_size=32, down_channels=(32, 64, 64), down_attention=(False, False, True),
                     up_channels=(64, 64), up_attention=(True, False), splat_size=16, output_size=32, fovy=40.0,
                     cam_radius=2.0, position="ray"),
}


def lgm_config(name_or_config, **overrides: Any) -> LGMConfig:
    """An `LGMConfig` from a preset name ("big" | "small" | "tiny"), a config, or a dict of its fields."""
    if isinstance(name_or_config, LGMConfig):
        cfg = name_or_config
    elif isinstance(name_or_config, str):
        if name_or_config not in LGM_CONFIGS:
            raise ValueError(f"unknown LGM config {name_or_config!r}; choose one of {', '.join(LGM_CONFIGS)}")
        cfg = LGM_CONFIGS[name_or_config]
    else:
        cfg = LGMConfig.from_dict(dict(name_or_config))
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def normalize_rotations(x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, N, 4) raw rotations -> LGM's rotations: per quaternion ("fixed") or over the N Gaussians ("legacy")."""
    if mode == "fixed":
        return F.normalize(x, dim=-1)
    if mode == "legacy":
        return F.normalize(x, dim=1)
    raise ValueError(f"rotation normalisation must be one of {ROTATION_NORMALIZATIONS}, got {mode!r}")


class LGM(nn.Module):
    """forward(x (B,V,9,S,S)) -> Gaussians (B, V·s², ...) in LGM's frame; `raw(x)` gives the pre-activation maps."""

    def __init__(self, config: LGMConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = LGMUNet(IN_CHANNELS, LGM_CHANNELS, config.down_channels, config.down_attention,
                            config.mid_attention, config.up_channels, config.up_attention)
        self.conv = nn.Conv2d(LGM_CHANNELS, LGM_CHANNELS, kernel_size=1)

    def set_attention_fn(self, fn: AttentionFn = sdpa_attention) -> "LGM":
        """Replace the attention kernel (q,k,v (B,heads,L,d) -> (B,heads,L,d)) of every MVAttention."""
        for m in self.modules():
            if isinstance(m, PackedSelfAttention):
                m.attention_fn = fn
        return self

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B,V,9,S,S) -> (B,V,14,s,s) pre-activation Gaussian maps, in the weights' dtype."""
        b, v, c, h, w = x.shape
        s, size = self.config.splat_size, self.config.input_size
        if c != IN_CHANNELS or (h, w) != (size, size):
            raise ValueError(f"LGM input must be (B, V, {IN_CHANNELS}, {size}, {size}) (RGB + Plücker rays at "
                             f"input_size), got {tuple(x.shape)}; build it with lgm_input()")
        dtype = self.conv.weight.dtype
        y = self.conv(self.unet(x.reshape(b * v, c, h, w).to(dtype), num_views=v))  # ((b v),14,s,s)
        return y.reshape(b, v, LGM_CHANNELS, s, s)

    def activate(self, raw: torch.Tensor, inputs: Optional[torch.Tensor] = None) -> Gaussians:
        """(B,V,14,s,s) raw maps -> Gaussians (B, V·s², …), activations in float32. `inputs` (B,V,9,S,S), the
        model's input, gives the rays of `position: ray`."""
        b = raw.shape[0]
        x = raw.float().permute(0, 1, 3, 4, 2).reshape(b, -1, LGM_CHANNELS)  # (B, V·s·s, 14), view-major
        if self.config.position == "ray":
            if inputs is None:
                raise ValueError("position 'ray' needs the model's input (its Plücker rays): activate(raw, inputs)")
            foot, d = self.output_rays(inputs)  # (B, V·s·s, 3) each
            means = (foot + x[..., 0:1] * d).clamp(-1, 1)
        else:
            means = x[..., 0:3].clamp(-1, 1)
        return Gaussians(
            means=means,
            opacities=torch.sigmoid(x[..., 3]),
            scales=0.1 * F.softplus(x[..., 4:7]),
            rotations=normalize_rotations(x[..., 7:11], self.config.rotation_normalization),
            colors=0.5 * torch.tanh(x[..., 11:14]) + 0.5,
        )

    def output_rays(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B,V,9,S,S) input -> (foot, direction) (B, V·s², 3) of the ray through each output pixel, from the input's
        Plücker embedding (m = o × d, d) averaged over the input pixels of an output pixel: d normalised, foot = d × m
        (the ray's point nearest the origin)."""
        b, v = x.shape[:2]
        s = self.config.splat_size
        rays = F.adaptive_avg_pool2d(x[:, :, 3:9].float().flatten(0, 1), s).unflatten(0, (b, v))  # (B,V,6,s,s)
        rays = rays.permute(0, 1, 3, 4, 2).reshape(b, -1, 6)
        d = F.normalize(rays[..., 3:6], dim=-1)
        return torch.linalg.cross(d, rays[..., 0:3], dim=-1), d

    def forward(self, x: torch.Tensor) -> Gaussians:
        return self.activate(self.raw(x), x)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, c2w: Optional[torch.Tensor] = None,
                    elevation_deg: float = 0.0) -> Gaussians:
        """(B,V,3,h,w) RGB in [0,1] on white -> Gaussians (B, V·s², …) in this repo's world frame (z up).

        `c2w` (V,4,4) or (B,V,4,4): the views' cameras in this repo's world (radius `cam_radius`, fovy `fovy`, as
        LGM was trained); default `lgm_cameras(elevation_deg)`, LGM's own at azimuths 0/90/180/270."""
        cfg = self.config
        cams = lgm_cameras(elevation_deg, cfg.cam_radius) if c2w is None else c2w
        x = lgm_input(images, cams.to(images.device), cfg.input_size, cfg.fovy)
        return gaussians_to_world(self(x))

    def forward_scene(self, images: torch.Tensor, c2w: torch.Tensor, fovy_deg: float) -> Gaussians:
        """(B,V,3,h,w) RGB in [0,1] on white, taken by scene cameras `c2w` ((V,4,4) or (B,V,4,4), looking at the
        origin from one distance) with vertical field of view `fovy_deg` -> Gaussians (B, V·s², …) in that scene
        (differentiable): LGM sees the views from its own cameras in the same directions, and its object is scaled by
        `scene_scale` (lgm_cameras.py)."""
        cfg = self.config
        scale = scene_scale(scene_distance(c2w), fovy_deg, cfg.cam_radius, cfg.fovy)
        x = lgm_input(images, on_lgm_sphere(c2w, cfg.cam_radius).to(images.device), cfg.input_size, cfg.fovy)
        return gaussians_to_world(self(x), scale)

    @torch.no_grad()
    def reconstruct_scene(self, images: torch.Tensor, c2w: torch.Tensor, fovy_deg: float) -> Gaussians:
        """`forward_scene` without gradients: the feed-forward 3D object of a set of views in their scene."""
        return self.forward_scene(images, c2w, fovy_deg)


__all__ = ["LGM", "LGMConfig", "LGM_CONFIGS", "POSITIONS", "ROTATION_NORMALIZATIONS", "lgm_config",
           "normalize_rotations"]
