"""`implicit-volume`: hash-grid density + feature field inside the cube [-radius, radius]³ (threestudio's keys).

forward(points (...,3)) -> {"density": σ (...,1), "features": f (..., n_feature_dims)}, with
  x01 = (p + r)/(2r);  enc = HashGrid(x01);  σ = softplus(density_mlp(enc) + bias(p));  f = feature_mlp(enc)
and, for `density_bias: blob_magic3d`, bias(p) = scale·(1 − ‖p‖/std) on the raw points (+10 at the centre, 0 at
radius 0.5 with the defaults). The `isosurface_*` keys are read by the exporter (dreamdist3d.export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import BaseModule, get_activation
from dreamdist3d.lift3d.networks import get_encoding, get_mlp
from dreamdist3d.registry import register


def _default_hashgrid() -> Dict[str, Any]:
    return {
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 16,
        "per_level_scale": 1.447269237440378,
    }


def _default_mlp() -> Dict[str, Any]:
    return {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 64,
            "n_hidden_layers": 1}


@register("implicit-volume")
class ImplicitVolume(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        # BaseGeometry / BaseImplicitGeometry
        radius: float = 1.0
        isosurface: bool = True
        isosurface_method: str = "mt"
        isosurface_resolution: int = 128
        isosurface_threshold: Any = 25.0  # a float or "auto"
        isosurface_chunk: int = 0
        isosurface_coarse_to_fine: bool = True
        isosurface_deformable_grid: bool = False
        isosurface_remove_outliers: bool = True
        isosurface_outlier_n_faces_threshold: Any = 0.01
        # ImplicitVolume
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        density_bias: Any = "blob_magic3d"  # "blob_magic3d" | "blob_dreamfusion" | a number
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(default_factory=_default_hashgrid)
        mlp_network_config: dict = field(default_factory=_default_mlp)
        normal_type: Optional[str] = "finite_difference"  # finite_difference | null
        finite_difference_normal_eps: Any = 0.01
        anneal_density_blob_std_config: Optional[dict] = None

    cfg: Config

    def configure(self) -> None:
        cfg = self.cfg
        if not (isinstance(cfg.density_bias, (int, float)) or cfg.density_bias in ("blob_magic3d", "blob_dreamfusion")):
            raise ConfigError(
                f"{self.where}.density_bias must be blob_magic3d, blob_dreamfusion or a number, got "
                f"{cfg.density_bias!r}"
            )
        if cfg.normal_type not in (None, "finite_difference"):
            raise ConfigError(f"{self.where}.normal_type {cfg.normal_type!r} is not supported: use finite_difference "
                              "or null")
        self.density_act = get_activation(cfg.density_activation)
        self.register_buffer("bbox", torch.tensor([[-cfg.radius] * 3, [cfg.radius] * 3], dtype=torch.float32),
                             persistent=False)
        self.encoding = get_encoding(cfg.n_input_dims, cfg.pos_encoding_config,
                                     where=f"{self.where}.pos_encoding_config")
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, cfg.mlp_network_config,
                                       where=f"{self.where}.mlp_network_config")
        if cfg.n_feature_dims > 0:
            self.feature_network = get_mlp(
                self.encoding.n_output_dims, cfg.n_feature_dims, cfg.mlp_network_config,
                where=f"{self.where}.mlp_network_config"
            )
        self.blob_std = float(cfg.density_blob_std)

    # ------------------------------------------------------------------ pieces
    def density_bias(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) raw points -> (..., 1) bias."""
        b = self.cfg.density_bias
        if b == "blob_magic3d":
            return self.cfg.density_blob_scale * (1.0 - points.norm(dim=-1, keepdim=True) / self.blob_std)
        if b == "blob_dreamfusion":
            return self.cfg.density_blob_scale * torch.exp(-0.5 * (points**2).sum(-1, keepdim=True) / self.blob_std**2)
        return torch.full_like(points[..., :1], float(b))

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        r = self.cfg.radius
        return (points + r) / (2 * r)

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        flat = points.reshape(-1, 3)
        return self.encoding(self.normalize(flat))

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        """Raw (pre-activation) density incl. the bias, (..., 1)."""
        raw = self.density_network(self._encode(points)).reshape(*points.shape[:-1], 1)
        return raw + self.density_bias(points)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """σ (..., 1)."""
        return self.density_act(self.forward_density(points))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        enc = self._encode(points)
        raw = self.density_network(enc).reshape(*points.shape[:-1], 1) + self.density_bias(points)
        out = {"density": self.density_act(raw)}
        if self.cfg.n_feature_dims > 0:
            out["features"] = self.feature_network(enc).reshape(*points.shape[:-1], self.cfg.n_feature_dims)
        if output_normal and self.cfg.normal_type == "finite_difference":
            eps = float(self.cfg.finite_difference_normal_eps)
            offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps  # (3, 3)
            p = points[..., None, :]
            d_plus = self.forward_density(p + offsets)[..., 0]  # (..., 3)
            d_minus = self.forward_density(p - offsets)[..., 0]
            grad = (d_plus - d_minus) / (2 * eps)
            out["normal"] = F.normalize(-grad, dim=-1)
            out["shading_normal"] = out["normal"]
        return out

    def export(self, points: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-point features for texturing (threestudio's `geometry.export`)."""
        out = {}
        if self.cfg.n_feature_dims > 0:
            out["features"] = self.feature_network(self._encode(points)).reshape(*points.shape[:-1],
                                                                                 self.cfg.n_feature_dims)
        return out

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        a = self.cfg.anneal_density_blob_std_config
        if a:
            lo, hi = int(a["min_anneal_step"]), int(a["max_anneal_step"])
            t = min(max((global_step - lo) / max(hi - lo, 1), 0.0), 1.0)
            self.blob_std = float(a["start_val"]) + (float(a["end_val"]) - float(a["start_val"])) * t
