"""The settings of custom/threestudio-dreamdistribution, checked while threestudio reads the config.

threestudio builds the guidance (loading MVDream, minutes on a GPU) before the prompt processor, and parses the
processor's keys only then. The extension's `${dreamdist_tag:…}` resolver runs `check_settings` while the yaml is
resolved instead, so each of these is one error naming its key before anything loads:

- a key that is not one of the processor's (`distrubution=`: the unknown-key error, not "distribution is not set");
- `system.guidance.ckpt_path` left `???`, and no local text encoder (`text_encoder_source`: the example config's
  `text_encoder_path` follows `system.guidance.ckpt_path`; `pretrained_model_name_or_path` is a Hub id there);
- `system.guidance.view_dependent_prompting` true while the processor prepares no direction samples;
- the distribution / mixture settings (`DistributionSpec.from_config`).

The processor itself reads its text encoder through `text_encoder_source` too, for configs without the resolver.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple

from omegaconf import OmegaConf

from dreamdist3d.backbones.load import parse_spec
from dreamdist3d.config import ConfigError
from dreamdist3d.distribution.conditioning import DistributionSpec
from dreamdist3d.lift3d.prompt_processor import check_view_dependence

WHERE = "system.prompt_processor"
PROCESSOR = "dreamdistribution-prompt-processor"


def check_keys(keys: Iterable[str], known: Iterable[str], where: str = WHERE) -> None:
    """An unknown key is an error naming it (and the closest valid key)."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown config key '{where}.{key}' for {PROCESSOR}; {hint}")


def text_encoder_source(text_encoder_path: Optional[str], pretrained_model_name_or_path: Optional[str],
                        where: str = WHERE) -> Tuple[str, str]:
    """(source, config key) of the processor's text encoder: `text_encoder_path`, else a local
    `pretrained_model_name_or_path`; neither local is an error naming the keys to set (nothing is downloaded)."""
    if text_encoder_path:
        return str(text_encoder_path), f"{where}.text_encoder_path"
    source = pretrained_model_name_or_path
    if source and (Path(str(source)).expanduser().exists() or _is_backbone_spec(str(source))):
        return str(source), f"{where}.pretrained_model_name_or_path"
    raise ConfigError(
        f"{where}.text_encoder_path is null and {where}.pretrained_model_name_or_path {source!r} is not a local file "
        f"or folder: set system.guidance.ckpt_path=/path/to/sd-v2.1-base-4view.pt (the example config passes it on "
        f"as {where}.text_encoder_path), or {where}.text_encoder_path to the local MVDream checkpoint or SD 2.1 "
        "folder the distribution was learned with; nothing is downloaded")


def _is_backbone_spec(text: str) -> bool:
    try:
        kind, _ = parse_spec(text)
    except ConfigError:
        return False
    return kind in ("toy", "factory")  # `mvdream:P` / `sd21:D` name a path, checked as one by the loader


def check_settings(processor: Mapping[str, Any], guidance: Optional[Mapping[str, Any]], config_cls) -> DistributionSpec:
    """All the checks of the module docstring; `processor`/`guidance` are the config nodes (or dicts) of
    `system.prompt_processor` / `system.guidance`, `config_cls` the processor's Config dataclass. Returns the
    distribution spec (the resolver names the trial after its files)."""
    defaults = {f.name: f.default for f in fields(config_cls)}
    check_keys(list(processor.keys()), defaults)
    if guidance is not None:
        missing = (OmegaConf.is_missing(guidance, "ckpt_path") if OmegaConf.is_config(guidance)
                   else guidance.get("ckpt_path") == "???")
        if missing:
            raise ConfigError("system.guidance.ckpt_path is not set: give the local MVDream checkpoint, e.g. "
                              "`system.guidance.ckpt_path=/models/sd-v2.1-base-4view.pt` (the prompt processor reads "
                              "its text encoder from it too); nothing is downloaded")
        check_view_dependence(bool(guidance.get("view_dependent_prompting", False)),
                              bool(processor.get("view_dependent_prompting", False)))

    def value(key: str) -> Any:
        default = defaults[key]
        return processor.get(key, None if default is MISSING else default)

    text_encoder_source(value("text_encoder_path"), value("pretrained_model_name_or_path"))
    mixture = value("mixture") or []
    mixture = OmegaConf.to_container(mixture) if OmegaConf.is_config(mixture) else list(mixture)
    return DistributionSpec.from_config(value("distribution"), 1.0, mixture, where=WHERE)


__all__ = ["check_keys", "check_settings", "text_encoder_source"]
