"""Load an LGM checkpoint (`model_fp16.safetensors`, `model_fp16_fixrot.safetensors`, …) into `LGM`, strictly.

The released files (huggingface.co/ashawkey/LGM) are `LGM.state_dict()` of the official code: `unet.*` and `conv.*`
(its `state_dict` drops the LPIPS loss network), float16 for the `*_fp16*` files. They carry no config: the
architecture is a preset (`big` for every released file) and the rotation normalisation (see lgm.py) comes from

1. `rotation_normalization=` ("fixed" | "legacy"), when given;
2. else the file's own metadata (dreamdist3d's files record their `LGMConfig` under `dreamdist3d_lgm_config`);
3. else the official file names: a name containing "fixrot" -> "fixed"; `model.safetensors` / `model_fp16.safetensors`
   -> "legacy" (trained before LGM's commit 9a0797c);
4. else an error asking for the argument.

Strict: every key of the file is consumed and every parameter filled, with the shapes of the config, or one
`LGMCheckpointError` names the file, the setting it came from (`config_key`) and all missing / unexpected /
mis-shaped keys. The tensors are read from safetensors' memory map (`dreamdist3d.io.read_safetensors`) and the
model is built on the meta device and filled with `assign=True`: no random initialisation; with `dtype` the file's
own (float16 for the release) its tensors become the parameters, otherwise each is converted once. Nothing is
downloaded.

`load_reconstructor(spec)` is how configs and commands name one: "toy" (the toy world's reconstructor, shipped as
package data: `reconstruct/data/toy-lgm.safetensors`, trained by `dreamdist3d toyworld train-lgm`) or a checkpoint
path; loaded models are kept (one per spec, rotation and device), so many objects of one process share one.
`save_lgm` writes dreamdist3d's own files (the official key layout in float16, the config in the header, a JSON
record beside it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from dreamdist3d.io import DistributionFileError, atomic_save_safetensors, atomic_write_text, read_safetensors
from dreamdist3d.reconstruct.lgm import LGM, ROTATION_NORMALIZATIONS, LGMConfig, lgm_config

CONFIG_METADATA_KEY = "dreamdist3d_lgm_config"
CHECKPOINT_SOURCE = ("huggingface.co/ashawkey/LGM (model_fp16_fixrot.safetensors, fine-tuned with the rotation fix, "
                     "or the original model_fp16.safetensors)")
LEGACY_NAMES = ("model.safetensors", "model_fp16.safetensors")
DATA_DIR = Path(__file__).resolve().parent / "data"
TOY_LGM = DATA_DIR / "toy-lgm.safetensors"


class LGMCheckpointError(ValueError):
    """An LGM checkpoint that cannot be read or does not fit the configured model; the message names the file."""


def rotation_from_name(path: Union[str, Path]) -> Optional[str]:
    """The rotation normalisation an official file name implies, or None."""
    name = Path(path).name
    if "fixrot" in name:
        return "fixed"
    return "legacy" if name in LEGACY_NAMES else None


def read_lgm_checkpoint(path: Union[str, Path], config_key: str = "--lgm"
                        ) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """(state dict on CPU, the config the file records or None) of an LGM .safetensors file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LGMCheckpointError(f"{path} (set by {config_key}): LGM checkpoints are .safetensors files, as released "
                                 f"at {CHECKPOINT_SOURCE}")
    if not path.is_file():
        raise FileNotFoundError(f"LGM checkpoint not found: {path} (set by {config_key}). Expected a file from "
                                f"{CHECKPOINT_SOURCE}; nothing is downloaded.")
    try:
        sd, meta = read_safetensors(path)
    except DistributionFileError as e:
        raise LGMCheckpointError(f"cannot read LGM checkpoint {path} (set by {config_key}): the file is truncated or "
                                 f"not a safetensors file (an interrupted download?); download it again") from e
    config = None
    if CONFIG_METADATA_KEY in meta:
        try:
            config = json.loads(meta[CONFIG_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise LGMCheckpointError(f"{path} (set by {config_key}): its {CONFIG_METADATA_KEY} metadata is not JSON: "
                                     f"{e}") from e
    return sd, config


def _fmt(keys: List[str], n: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


def lgm_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Union[str, LGMConfig, Mapping[str, Any]] = "big",
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "<state dict>",
    config_key: str = "--lgm",
    rotation_normalization: Optional[str] = None,
) -> LGM:
    """A strict `LGM` (eval mode, frozen) from the official key layout; `config` is a preset name, an `LGMConfig` or
    its dict; `rotation_normalization` ("fixed" | "legacy"), when given, replaces the config's."""
    try:
        cfg = lgm_config(config)
        if rotation_normalization is not None:
            cfg = lgm_config(cfg, rotation_normalization=rotation_normalization)
        with torch.device("meta"):
            model = LGM(cfg)
    except (ValueError, TypeError) as e:
        raise LGMCheckpointError(f"{source} (set by {config_key}): bad LGM config: {e}") from e
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_fmt(unexpected)}")
    if shapes:
        problems.append(f"keys with the wrong shape {_fmt(shapes, 6)}")
    if problems:
        which = f"'{config}' config" if isinstance(config, str) else "given config"
        raise LGMCheckpointError(
            f"{source} (set by {config_key}) does not fit the LGM of the {which} (strict load; every released LGM "
            f"checkpoint is 'big'):\n  - " + "\n  - ".join(problems))
    device = torch.device(device)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}, strict=True,
                          assign=True)
    return model.eval().requires_grad_(False)


def load_lgm(
    path: Union[str, Path],
    config: Union[None, str, LGMConfig, Mapping[str, Any]] = None,
    rotation_normalization: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    config_key: str = "--lgm",
) -> LGM:
    """`LGM` from an official or dreamdist3d checkpoint file, offline and strict (see the module docstring).

    `config`: None -> the file's recorded config, else "big" (every released file). `rotation_normalization`:
    "fixed" | "legacy" | None (from the config the file records, else the official file name). `config_key` names
    the setting the path came from, for messages (e.g. "--lgm")."""
    sd, recorded = read_lgm_checkpoint(path, config_key)
    if config is None:
        config = recorded or "big"
    if rotation_normalization is None:
        recorded_rotation = recorded.get("rotation_normalization") if recorded else None
        rotation_normalization = recorded_rotation or rotation_from_name(path)
    if rotation_normalization is None:
        raise LGMCheckpointError(
            f"{path} (set by {config_key}): cannot tell which rotation normalisation it was trained with (the weights "
            "do not show it); pass rotation_normalization='fixed' for checkpoints fine-tuned after LGM's "
            "'fix rotation normalization' (e.g. model_fp16_fixrot.safetensors) or 'legacy' for the original "
            "model_fp16.safetensors")
    if rotation_normalization not in ROTATION_NORMALIZATIONS:
        raise LGMCheckpointError(f"rotation_normalization must be one of {ROTATION_NORMALIZATIONS}, got "
                                 f"{rotation_normalization!r} (for {path})")
    return lgm_from_state_dict(sd, config, device=device, dtype=dtype, source=str(path), config_key=config_key,
                               rotation_normalization=rotation_normalization)


def save_lgm(model: LGM, path: Union[str, Path], record: Optional[Dict[str, Any]] = None,
             dtype: torch.dtype = torch.float16) -> Dict[str, Any]:
    """Write `model` (official key layout, `dtype`) with its config in the header, atomically, and `<stem>.json`
    beside it (the config, the parameter count and `record`); returns that JSON."""
    path = Path(path)
    tensors = {k: v.detach().cpu().to(dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(tensors, path, {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())})
    info = {"format": "dreamdist3d-lgm/1", "storage_dtype": str(dtype).replace("torch.", ""),
            "config": model.config.to_dict(), "parameters": sum(t.numel() for t in tensors.values()),
            "weights": path.name, "size_bytes": path.stat().st_size, "record": record or {}}
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
    return info


def load_reconstructor(spec: Union[str, Path], rotation_normalization: Optional[str] = None,
                       device: Union[str, torch.device] = "cpu", config_key: str = "--lgm") -> LGM:
    """The LGM named by `spec`: "toy" (the shipped toy reconstructor) or a checkpoint path (see `load_lgm`); one
    loaded model per (spec, rotation, device) is kept for the process."""
    if spec is None or not str(spec).strip():
        raise LGMCheckpointError(f"{config_key} is not set: name an LGM checkpoint (e.g. model_fp16_fixrot.safetensors "
                                 f"from {CHECKPOINT_SOURCE}), or 'toy' for the toy world's reconstructor")
    path = TOY_LGM if str(spec) == "toy" else Path(spec).expanduser()
    return _load_cached(str(path), rotation_normalization, str(torch.device(device)), config_key)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, rotation_normalization: Optional[str], device: str, config_key: str) -> LGM:
    return load_lgm(path, rotation_normalization=rotation_normalization, device=device, config_key=config_key)


__all__ = ["CONFIG_METADATA_KEY", "LGMCheckpointError", "TOY_LGM", "lgm_from_state_dict", "load_lgm",
           "load_reconstructor", "read_lgm_checkpoint", "rotation_from_name", "save_lgm"]
