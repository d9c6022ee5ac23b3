"""The toy backbone's weights file: `save_toy_backbone` and `load_toy_backbone` (architecture: `toy.py`).

`data/toy-backbone.safetensors` (shipped as package data, float16, about 3 MB; loaded as float32) holds every UNet and
text encoder tensor except the (49408×64) token-embedding table, of which only the rows that training changed are
stored (`token_rows.ids`, `token_rows.values`: the ~110 tokens of the toy captions plus SOS/EOS/pad). Every other
row is regenerated at load by `toy.initial_token_table` (seeded `randn · embedding_std`), exactly the values the
trainer started from; a checksum of the regenerated table (`init_table_checksum`) is stored and checked at load, so
a change of torch's random generator is caught. The safetensors header carries the config (the file is
self-contained); the JSON beside it (`toy-backbone.json`) repeats it with the training record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.toy import (
    ToyBackboneConfig,
    build_toy_backbone,
    initial_token_table,
    table_checksum,
    toy_config_of,
)
from dreamdist3d.io import atomic_path, atomic_save_safetensors
from dreamdist3d.text import ClipTokenizer
from dreamdist3d.text.encoder import _with_buffers

DATA_DIR = Path(__file__).resolve().parent / "data"
WEIGHTS_NAME = "toy-backbone.safetensors"
FORMAT = "dreamdist3d-toy-backbone/1"
TOKEN_IDS_KEY = "token_rows.ids"
TOKEN_VALUES_KEY = "token_rows.values"
TOKEN_TABLE_KEY = "text.embeddings.token_embedding.weight"

STORAGE_DTYPE = torch.float16  # weights are stored in float16 and computed in float32 (or the dtype asked for)

PathLike = Union[str, Path]


def toy_state_tensors(backbone: Backbone, dtype: torch.dtype = STORAGE_DTYPE) -> Dict[str, torch.Tensor]:
    """The tensors of the weights file: `unet.*`, `text.*` without the token table, and the changed token rows,
    floating-point tensors cast to `dtype` (float16 keeps the file under 5 MB)."""
    config = toy_config_of(backbone)
    out: Dict[str, torch.Tensor] = {}
    cast = lambda v: (v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()  # noqa: E731
    for k, v in backbone.unet.state_dict().items():
        out[f"unet.{k}"] = cast(v)
    core = backbone.text_encoder._core
    for k, v in core.state_dict().items():
        key = f"text.{k}"
        if key == TOKEN_TABLE_KEY:
            continue
        out[key] = cast(v)
    table = backbone.text_encoder.token_embedding.weight.detach().float().cpu()
    changed = (table != initial_token_table(config)).any(dim=1).nonzero().flatten()
    out[TOKEN_IDS_KEY] = changed.to(torch.int64).contiguous()
    out[TOKEN_VALUES_KEY] = cast(table[changed])
    return out


def save_toy_backbone(backbone: Backbone, path: PathLike, record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write the weights file (atomically) and, beside it, `<stem>.json` with the config and `record`.

    Returns the JSON dict. The safetensors header carries the config too, so the weights file is self-contained."""
    path = Path(path)
    config = toy_config_of(backbone)
    tensors = toy_state_tensors(backbone)
    meta = {
        "format": FORMAT,
        "storage_dtype": str(STORAGE_DTYPE).replace("torch.", ""),
        "config": config.to_dict(),
        "init_table_checksum": table_checksum(initial_token_table(config)),
        "stored_token_rows": int(tensors[TOKEN_IDS_KEY].numel()),
        "parameters": {
            "unet": sum(p.numel() for p in backbone.unet.parameters()),
            "text_encoder_without_token_table": sum(
                v.numel() for k, v in tensors.items() if k.startswith("text.")
            ),
            "token_table": int(backbone.text_encoder.token_embedding.weight.numel()),
        },
    }
    atomic_save_safetensors(tensors, path, metadata={"dreamdist3d_toy": json.dumps(meta)})
    doc = dict(meta, weights=path.name, size_bytes=path.stat().st_size, record=record or {})
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return doc


def default_weights_path() -> Path:
    return DATA_DIR / WEIGHTS_NAME


def load_toy_backbone(
    path: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer: Optional[ClipTokenizer] = None,
    config_key: Optional[str] = None,
) -> Backbone:
    """The trained toy Backbone ("toy", pixel space, 32 px, v prediction, cameras) from the shipped weights (or
    `path`). `config_key` names the setting the path came from, for error messages.

    Every tensor of the file is consumed and every parameter is set (strict). Prefer
    `dreamdist3d.backbones.load.load_backbone("toy[:PATH]")`, the one loader."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        where = f"{config_key}: " if config_key else ""
        raise FileNotFoundError(
            f"{where}toy backbone weights not found at {path}; train them with `dreamdist3d toyworld train --out "
            f"{path}`"
        )
    where = f"{config_key}: " if config_key else ""
    hint = ("give a toy backbone weights file written by `dreamdist3d toyworld train` (or none for the shipped one); "
            "an MVDream checkpoint is the backbone mvdream:PATH")
    try:
        with safe_open(str(path), "pt") as f:
            header = (f.metadata() or {}).get("dreamdist3d_toy")
    except Exception as e:  # SafetensorError, OSError: a random file, an MVDream .pt (a zip), a truncated file
        raise ValueError(f"{where}{path} is not a toy backbone weights file (not a readable .safetensors: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); {hint}") from None
    if header is None:
        raise ValueError(f"{where}{path} is not a toy backbone file (no 'dreamdist3d_toy' metadata); {hint}")
    try:
        meta = json.loads(header)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
        config = ToyBackboneConfig.from_dict(meta["config"])
        tensors = load_file(str(path))
        return _fill_toy_backbone(path, meta, config, tensors, tokenizer, device, dtype)
    except _ToyWeightsError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError,
            IndexError) as e:  # damaged header, missing/mis-shaped tensors
        msg = f"missing {e}" if isinstance(e, KeyError) else (" ".join(str(e).split())[:300] or type(e).__name__)
        raise ValueError(f"{where}{path}: a damaged toy backbone weights file ({msg}); {hint}") from None


class _ToyWeightsError(ValueError):
    """A clear error about a readable weights file (passed on as it is)."""


def _fill_toy_backbone(path: Path, meta: Dict[str, Any], config, tensors: Dict[str, torch.Tensor],
                       tokenizer: Optional[ClipTokenizer], device, dtype) -> Backbone:
    backbone = build_toy_backbone(config, seed=0, tokenizer=tokenizer)
    table = backbone.text_encoder.token_embedding.weight
    if table_checksum(table.detach()) != meta["init_table_checksum"]:
        raise _ToyWeightsError(
            f"{path}: the regenerated token-embedding rows differ from those the weights were trained with "
            "(torch's random generator changed?); retrain with `dreamdist3d toyworld train`"
        )
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    unet_sd = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    backbone.unet.load_state_dict(unet_sd, strict=True)
    text_sd = {k[len("text."):]: v for k, v in tensors.items() if k.startswith("text.")}
    ids, rows = tensors[TOKEN_IDS_KEY], tensors[TOKEN_VALUES_KEY]
    full_table = table.detach().clone()
    full_table[ids] = rows.to(full_table.dtype)
    text_sd[TOKEN_TABLE_KEY[len("text."):]] = full_table
    core = backbone.text_encoder._core  # transformers 4.28 (threestudio's pin) keeps position_ids in the state dict
    core.load_state_dict(_with_buffers(core, text_sd), strict=True)
    used = {f"unet.{k}" for k in unet_sd} | {f"text.{k}" for k in text_sd} | {TOKEN_IDS_KEY, TOKEN_VALUES_KEY}
    extra = sorted(set(tensors) - used - {TOKEN_TABLE_KEY})
    if extra:
        raise _ToyWeightsError(f"{path}: unexpected tensors {extra[:5]}")
    backbone.source = str(path)
    backbone.unet.eval()
    backbone.unet.requires_grad_(False)
    return backbone.to(device, dtype)


__all__ = ["DATA_DIR", "FORMAT", "default_weights_path", "load_toy_backbone", "save_toy_backbone", "toy_state_tensors"]
