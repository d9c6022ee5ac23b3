"""Typed, strict configs: a dataclass schema merged with user YAML / overrides by omegaconf.

`parse_structured(Schema, cfg)` raises a clear error naming the key when a key is misspelt or has the wrong type.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any, Optional, Type, TypeVar, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A user config problem; the message names the key and what to do."""


def parse_structured(schema: Type[T], cfg: Optional[Union[dict, DictConfig]] = None, where: str = "") -> T:
    """Merge `cfg` into the dataclass `schema` strictly and return a typed object (an OmegaConf-backed dataclass)."""
    if not is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, cfg if cfg is not None else {})
    except ConfigKeyError as e:
        key = f"{where}.{e.full_key}" if where and getattr(e, "full_key", None) else (getattr(e, "full_key", "") or where)
        raise ConfigError(
            f"unknown config key '{key}' for {schema.__name__}: check its spelling; valid keys: "
            f"{', '.join(sorted(base.keys()))}"
        ) from None
    except ValidationError as e:
        key = f"{where}.{e.full_key}" if where and getattr(e, "full_key", None) else (getattr(e, "full_key", "") or where)
        raise ConfigError(f"bad value for config key '{key}' in {schema.__name__}: {e.msg}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
