"""The one backbone loader, and the one loader of the text side alone.

`load_backbone(spec)` is how learning, 3D guidance, previews, the toy world and the gallery get a `Backbone`:

    mvdream:PATH              MVDream checkpoint (sd-v2.1-base-4view.pt, or a .safetensors re-save): `load_mvdream`
    sd21:DIR                  local diffusers Stable Diffusion 2.1 folder: `load_sd21`
    toy  |  toy:WEIGHTS       the toy world's backbone, shipped weights or a weights file: `load_toy_backbone`
    package.module:function   a user factory `function(device=, dtype=) -> Backbone`

`config_key` names the setting (config key or command-line flag) the spec came from; every error names it, and a
missing file names the file. Settings that hold a bare path (threestudio's `pretrained_model_name_or_path`,
`--mvdream`) pass `default_kind="mvdream"`: a value that is not one of the forms above is then that kind's path.

`load_text_side(source)` gives (tokenizer, text encoder) without building the UNet or VAE, from a diffusers folder,
an MVDream checkpoint (only its OpenCLIP text tower is read), or any spec above. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.config import ConfigError
from dreamdist3d.text import ClipTokenizer, TextEncoder

SPEC_FORMS = ("mvdream:PATH", "sd21:DIR", "toy", "toy:WEIGHTS", "package.module:function")
KINDS = ("mvdream", "sd21", "toy")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
PathLike = Union[str, Path]


def parse_spec(spec: Optional[PathLike], config_key: str = "backbone",
               default_kind: Optional[str] = None) -> Tuple[str, str]:
    """(kind, argument): kind is "mvdream", "sd21", "toy" or "factory" (argument "module:function"); the argument of
    the others is a path ("" for the shipped toy weights). A bare value is `default_kind`'s path if one is given."""
    text = "" if spec is None else str(spec).strip()
    if text == "toy":
        return "toy", ""
    kind, sep, arg = text.partition(":")
    if sep and kind in KINDS:
        return kind, arg.strip()
    if _FACTORY.match(text):
        return "factory", text
    if default_kind is not None:
        return default_kind, text
    if not text:
        raise ConfigError(f"{config_key} is not set: name a backbone, one of {', '.join(SPEC_FORMS)}")
    raise ConfigError(
        f"{config_key}: unknown backbone {text!r}; use one of {', '.join(SPEC_FORMS)} "
        "(e.g. mvdream:/models/sd-v2.1-base-4view.pt)"
    )


def _need_path(kind: str, arg: str, config_key: str) -> None:
    if kind == "mvdream" and not arg:
        raise ConfigError(
            f"{config_key} is not set: give the path of the MVDream checkpoint (sd-v2.1-base-4view.pt, or a "
            f".safetensors re-save), e.g. `{config_key}=/models/sd-v2.1-base-4view.pt`; nothing is downloaded"
        )
    if kind == "sd21" and not arg:
        raise ConfigError(f"{config_key} is not set: give a local diffusers Stable Diffusion 2.1 folder; nothing is "
                          "downloaded")


def _factory(arg: str, config_key: str):
    module, _, fn = arg.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{config_key}: backbone '{arg}': cannot import {fn} from {module} ({e})") from None


def load_backbone(
    spec: Optional[PathLike],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    config_key: str = "backbone",
    default_kind: Optional[str] = None,
) -> Backbone:
    """The frozen `Backbone` named by `spec` (see the module docstring for the forms), on `device` in `dtype`."""
    if default_kind is not None and (spec is None or not str(spec).strip()):
        _need_path(default_kind, "", config_key)
    kind, arg = parse_spec(spec, config_key, default_kind)
    _need_path(kind, arg, config_key)
    if kind == "mvdream":
        from dreamdist3d.backbones.mvdream import load_mvdream

        return load_mvdream(arg, device=device, dtype=dtype, config_key=config_key)
    if kind == "sd21":
        from dreamdist3d.backbones.sd21 import load_sd21

        return load_sd21(arg, device=device, dtype=dtype, config_key=config_key)
    if kind == "toy":
        from dreamdist3d.backbones.toy_weights import load_toy_backbone

        return load_toy_backbone(arg or None, device=device, dtype=dtype, config_key=config_key)
    bb = _factory(arg, config_key)(device=device, dtype=dtype)
    if not isinstance(bb, Backbone):
        raise ConfigError(f"{config_key}: backbone '{arg}' returned {type(bb).__name__}, expected a dreamdist3d "
                          "Backbone")
    return bb


def load_text_side(
    source: Optional[PathLike],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    key: str = "--text-encoder",
) -> Tuple[ClipTokenizer, TextEncoder]:
    """(tokenizer, encoder) from a local diffusers SD 2.x folder or an MVDream checkpoint (.pt / .safetensors), or
    from a backbone spec (`toy`, `toy:W`, `mvdream:P`, `sd21:D`, `module:function`).

    For a checkpoint only its OpenCLIP text tower (`cond_stage_model.model.*`, penultimate layer) is built; tiny
    checkpoints give their head count in their config sidecar, real ones use width // 64. The toy and factory forms
    load their (small) whole backbone and keep its text side. `key` names the option or config key in errors.
    Nothing is downloaded: a Hub model id is an error asking for a local path.
    """
    if not source:
        raise ConfigError(
            f"{key} is not set: give the MVDream checkpoint or SD 2.1 diffusers folder the distribution was learned "
            "against"
        )
    try:
        kind, arg = parse_spec(source, key)
    except ConfigError:  # not a spec: a path
        kind, arg = "path", str(source)
    if kind in ("toy", "factory"):
        bb = load_backbone(source, device=device, dtype=dtype, config_key=key)
        return bb.tokenizer, bb.text_encoder
    path = Path(arg).expanduser()
    if path.is_dir() and kind in ("path", "sd21"):
        has_bpe = (path / "tokenizer" / "vocab.json").is_file() or (path / "vocab.json").is_file()
        tok = ClipTokenizer.from_folder(path) if has_bpe else ClipTokenizer.default()
        return tok, TextEncoder.from_diffusers(path, device=device, dtype=dtype)
    if path.is_file() and kind in ("path", "mvdream"):
        from dreamdist3d.backbones.mvdream import INERT_KEYS, TEXT_PREFIX, read_checkpoint

        state, config = read_checkpoint(path, key)
        text = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIX) and k not in INERT_KEYS}
        if TEXT_PREFIX + "token_embedding.weight" not in text:
            raise ValueError(f"{key}: {path} has no OpenCLIP text tower ({TEXT_PREFIX}*); is it an MVDream checkpoint?")
        width = int(text[TEXT_PREFIX + "token_embedding.weight"].shape[1])
        heads = int((config or {}).get("text_heads", max(1, width // 64)))
        enc, _ = TextEncoder.from_openclip_state_dict({k: v.float() for k, v in text.items()}, prefix=TEXT_PREFIX,
                                                      heads=heads)
        return ClipTokenizer.default(), enc.to(device=device, dtype=dtype)
    if path.exists():
        want = "an MVDream checkpoint file" if kind == "mvdream" else "a diffusers folder"
        raise ValueError(f"{key}: {path} is a {'folder' if path.is_dir() else 'file'}; {kind}: needs {want}")
    looks_hub = arg.count("/") == 1 and not arg.startswith((".", "/", "~"))
    hint = " (it looks like a Hub model id; dreamdist3d never downloads weights)" if looks_hub else ""
    raise FileNotFoundError(
        f"{key}: {arg} does not exist{hint}: give a local MVDream checkpoint (sd-v2.1-base-4view.pt) or a "
        "diffusers Stable Diffusion 2.1 folder"
    )


__all__ = ["KINDS", "SPEC_FORMS", "load_backbone", "load_text_side", "parse_spec"]
