"""Typed, strict configs: a dataclass schema merged with user YAML / overrides by omegaconf.

`load_yaml(path, overrides)` is the one place a YAML file is merged with `key=value` overrides (launch.py, the learn
command and recipe, the toy demo). `parse_structured(Schema, cfg)` raises a clear error naming the key when a key is
misspelt or has the wrong type. `repo_file(path)` finds the repository's own configs (`configs/…`) from any working
directory.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout an editable install (`pip install -e .`) runs from


def repo_file(path: Union[str, Path]) -> Path:
    """A file given relative to the working directory, or else to the repository root: the default configs
    (`configs/dreamdist-mvdream.yaml`, `configs/toy/toy-3d.yaml`) are found when a command runs from another folder.
    Returns `path` as given when neither holds it (the caller's error names it)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.is_file() else p


class ConfigError(ValueError):
    """A user config problem; the message names the key and what to do."""


def load_yaml(path: Optional[Union[str, Path]], overrides: Sequence[str] = (), *layers: Any,
              base: Any = None, flag: str = "--config") -> DictConfig:
    """`base` (defaults), then the YAML file `path` (None: none), then `key=value` overrides, then any further
    `layers` (dicts / configs, e.g. command-line flags), later ones winning. Unresolved (interpolations stay). A
    missing or unparsable file, or an override that is not `key=value`, is a clear error naming `flag` or the
    override."""
    cfg = OmegaConf.create(base if base is not None else {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{flag} {path} " + ("is not a file" if p.exists() else "does not exist"))
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:  # yaml.YAMLError and friends
            raise ConfigError(f"{flag} {path} is not a readable YAML config: {_yaml_problem(e)}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{flag} {path}: the YAML must be a mapping of keys, not a {type(loaded).__name__}")
        cfg = OmegaConf.merge(cfg, loaded) if base is not None else loaded
    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in str(o)]
    if bad:
        raise ConfigError(f"unrecognised arguments {bad}: overrides are key=value (e.g. seed=3)")
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as e:
        raise ConfigError(f"bad override in {overrides}: {e} (write key=value, e.g. seed=3)") from None
    try:
        return OmegaConf.merge(cfg, cli, *layers)
    except Exception as e:
        raise ConfigError(f"cannot merge the overrides {overrides} into {path or 'the config'}: {e}") from None


def _yaml_problem(e: Exception) -> str:
    """One line: where (line, column) and what a YAML parser error is."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return (str(e).splitlines() or [type(e).__name__])[0]
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None:
        text += f" ({context} that starts at line {cmark.line + 1})"
    return text


def parse_structured(schema: Type[T], cfg: Optional[Union[dict, DictConfig]] = None, where: str = "") -> T:
    """Merge `cfg` into the dataclass `schema` strictly and return a typed object (an OmegaConf-backed dataclass)."""
    if not is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, cfg if cfg is not None else {})
    except ConfigKeyError as e:
        key = f"{where}.{e.full_key}" if where and getattr(e, "full_key", None) else (getattr(e, "full_key",
                                                                                              "") or where)
        raise ConfigError(
            f"unknown config key '{key}' for {schema.__name__}: check its spelling; valid keys: "
            f"{', '.join(sorted(base.keys()))}"
        ) from None
    except ValidationError as e:
        key = f"{where}.{e.full_key}" if where and getattr(e, "full_key", None) else (getattr(e, "full_key",
                                                                                              "") or where)
        raise ConfigError(f"bad value for config key '{key}' in {schema.__name__}: {e.msg}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
