"""Shared pieces of the 3D components: threestudio's scheduled scalars `C(...)` and the component base classes.

A component is built as threestudio builds it, `cls(cfg, **kwargs)`: the dict/DictConfig `cfg` is merged strictly into
the class's `Config` dataclass (a misspelt key is a `ConfigError` naming it), then `configure(**kwargs)` runs.
`update_step(epoch, global_step)` is called by the system before every batch (threestudio's `Updateable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from dreamdist3d.config import ConfigError, parse_structured


def C(value: Any, epoch: int, global_step: int) -> float:
    """threestudio's scheduled scalar.

    - a number is returned as is;
    - `[start_step, start_value, end_value, end_step]` is linear in the step, clamped to t ∈ [0, 1]
      (an int `end_step` counts global steps, a float one counts epochs);
    - a 3-element list means start_step = 0.
    Other forms (threestudio's piecewise lists) are rejected with a clear error.
    """
    if isinstance(value, (int, float)):
        return float(value)
    value = list(value)
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ConfigError(f"a scheduled value must be a number or [start_step, start, end, end_step], got {value}")
    start_step, start_value, end_value, end_step = value
    current = epoch if isinstance(end_step, float) else global_step
    span = max(end_step - start_step, 1e-12)
    t = min(max((current - start_step) / span, 0.0), 1.0)
    return float(start_value + (end_value - start_value) * t)


class Updateable:
    """threestudio's hook: `do_update_step` is called before each batch; subclasses override `update_step`."""

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        pass

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Update owned Updateable attributes (child modules and plain attributes, not properties), then self."""
        owned = dict(vars(self))
        owned.update(getattr(self, "_modules", {}) or {})
        for name, attr in owned.items():
            if name.startswith("_") and name != "_modules":
                continue
            if isinstance(attr, Updateable) and attr is not self:
                attr.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)


def _parse(cls, cfg: Any, where: str):
    if cfg is None:
        cfg = {}
    return parse_structured(cls.Config, cfg, where=where)


class BaseObject(Updateable):
    """A configured object that is not an nn.Module (threestudio's BaseObject): prompt processors, datamodules."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Any = None, *args, where: str = "", **kwargs) -> None:
        super().__init__()
        self.where = where
        self.cfg = _parse(type(self), cfg, where)
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs) -> None:
        pass


class BaseModule(nn.Module, Updateable):
    """A configured nn.Module (threestudio's BaseModule): geometry, material, background, renderer, guidance."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    cfg: Config

    def __init__(self, cfg: Any = None, *args, where: str = "", **kwargs) -> None:
        super().__init__()
        self.where = where
        self.cfg = _parse(type(self), cfg, where)
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs) -> None:
        pass

    # nn.Module.__dir__ lists children too; Updateable walks them through `do_update_step`.


def get_activation(name: Optional[str]):
    """threestudio's `get_activation` for the names its configs use."""
    if name is None or name in ("none", "None"):
        return lambda x: x
    table = {
        "lin2srgb": lambda x: torch.where(x > 0.0031308, torch.pow(torch.clamp(x, min=0.0031308),
                                                                   1.0 / 2.4) * 1.055 - 0.055, 12.92 * x).clamp(0.0,
                                                                                                                1.0),
        "exp": torch.exp,
        "shifted_exp": lambda x: torch.exp(x - 1.0),
        "trunc_exp": torch.exp,
        "shifted_trunc_exp": lambda x: torch.exp(x - 1.0),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "shifted_softplus": lambda x: torch.nn.functional.softplus(x - 1.0),
        "scale_-11_01": lambda x: x * 0.5 + 0.5,
        "softplus": torch.nn.functional.softplus,
        "relu": torch.relu,
    }
    if name not in table:
        raise ConfigError(f"unknown activation '{name}'; known: {', '.join(sorted(table))}")
    return table[name]


def as_list(x: Union[Any, Sequence[Any]]) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
