"""`no-material`: colour = activation(features) (threestudio's NoMaterial; MVDream's no-shading runs use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import BaseModule, get_activation
from dreamdist3d.lift3d.networks import get_mlp
from dreamdist3d.registry import register


@register("no-material")
class NoMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config
    requires_normal = False

    def configure(self) -> None:
        self.act = get_activation(self.cfg.color_activation)
        self.requires_normal = bool(self.cfg.requires_normal)
        self.use_network = self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None
        if self.use_network:
            self.network = get_mlp(self.cfg.input_feature_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.use_network:
            x = self.network(features.reshape(-1, features.shape[-1])).reshape(*features.shape[:-1],
                                                                               self.cfg.n_output_dims)
        else:
            if features.shape[-1] != self.cfg.n_output_dims:
                raise ConfigError(
                    f"no-material: geometry gives {features.shape[-1]} feature dims but material.n_output_dims is "
                    f"{self.cfg.n_output_dims}; set system.geometry.n_feature_dims to match"
                )
            x = features
        return self.act(x)

    def export(self, features: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        return {"albedo": self(features).clamp(0.0, 1.0)}
