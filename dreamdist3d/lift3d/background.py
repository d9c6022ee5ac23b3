"""Backgrounds: `solid-color-background` and `neural-environment-map-background` (threestudio's keys and defaults).

forward(dirs (B,H,W,3)) -> colour (B,H,W,3). In training, `random_aug` replaces the colour, with probability
`random_aug_prob` (one coin flip per batch), by a uniform random colour — one for the whole batch if `share_aug_bg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from dreamdist3d.lift3d.base import BaseModule, get_activation
from dreamdist3d.lift3d.networks import get_encoding, get_mlp
from dreamdist3d.registry import register


def _random_aug(color: torch.Tensor, prob: float, share: bool) -> torch.Tensor:
    if torch.rand(()) < prob:
        n = 1 if share else color.shape[0]
        rnd = torch.rand(n, 1, 1, color.shape[-1]).to(color)
        return color * 0 + rnd
    return color


@register("solid-color-background")
class SolidColorBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        color: Any = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        color = torch.as_tensor(list(self.cfg.color), dtype=torch.float32)[: self.cfg.n_output_dims]
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color, persistent=False)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        color = self.env_color.to(dirs).expand(*dirs.shape[:-1], self.cfg.n_output_dims)
        if self.training and self.cfg.random_aug:
            color = _random_aug(color, self.cfg.random_aug_prob, share=False)
        return color


def _default_sh() -> dict:
    return {"otype": "SphericalHarmonics", "degree": 3}


def _default_env_mlp() -> dict:
    return {"otype": "VanillaMLP", "activation": "ReLU", "n_neurons": 16, "n_hidden_layers": 2}


@register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        dir_encoding_config: dict = field(default_factory=_default_sh)
        mlp_network_config: dict = field(default_factory=_default_env_mlp)
        random_aug: bool = False
        random_aug_prob: float = 0.5
        eval_color: Optional[Any] = None
        share_aug_bg: bool = False

    cfg: Config

    def configure(self) -> None:
        self.encoding = get_encoding(3, self.cfg.dir_encoding_config, where=f"{self.where}.dir_encoding_config")
        self.network = get_mlp(self.encoding.n_output_dims, self.cfg.n_output_dims, self.cfg.mlp_network_config)
        self.act = get_activation(self.cfg.color_activation)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if not self.training and self.cfg.eval_color is not None:
            c = torch.as_tensor(list(self.cfg.eval_color), dtype=dirs.dtype, device=dirs.device)
            return c.expand(*dirs.shape[:-1], self.cfg.n_output_dims)
        x = (dirs.reshape(-1, 3) + 1.0) / 2.0  # [-1, 1] -> [0, 1], tcnn's SH input range
        color = self.act(self.network(self.encoding(x))).reshape(*dirs.shape[:-1], self.cfg.n_output_dims)
        if self.training and self.cfg.random_aug:
            color = _random_aug(color, self.cfg.random_aug_prob, share=self.cfg.share_aug_bg)
        return color
