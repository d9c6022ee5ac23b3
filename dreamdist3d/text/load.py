"""Load just the text side (tokenizer + encoder) from what users have on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from dreamdist3d.text.encoder import TextEncoder
from dreamdist3d.text.tokenizer import ClipTokenizer

OPENCLIP_PREFIX = "cond_stage_model.model."


def load_text_side(
    source: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    heads: Optional[int] = None,
) -> Tuple[ClipTokenizer, TextEncoder]:
    """(tokenizer, encoder) from a diffusers SD 2.1 folder or an MVDream checkpoint (.pt / .safetensors).

    For a checkpoint only the `cond_stage_model.model.*` tensors are read (memory-mapped)."""
    source = Path(source)
    if source.is_dir():
        tok = ClipTokenizer.from_folder(source) if (source / "tokenizer").is_dir() or (source / "vocab.json").is_file() else ClipTokenizer.default()
        return tok, TextEncoder.from_diffusers(source, device=device, dtype=dtype)
    if not source.is_file():
        raise FileNotFoundError(
            f"text encoder source {source} not found: pass a diffusers Stable Diffusion 2.1 folder or the MVDream "
            "checkpoint sd-v2.1-base-4view.pt"
        )
    state = _read_checkpoint_tensors(source, OPENCLIP_PREFIX)
    if not state:
        raise ValueError(f"{source} has no OpenCLIP text tower ('{OPENCLIP_PREFIX}*' keys); is it an MVDream checkpoint?")
    if heads is None:
        heads = _sidecar_heads(source)
    enc, _ = TextEncoder.from_openclip_state_dict(state, prefix=OPENCLIP_PREFIX, heads=heads)
    return ClipTokenizer.default(), enc.to(device=device, dtype=dtype)


def _sidecar_heads(path: Path) -> Optional[int]:
    """Tiny test checkpoints carry their text width/heads in a JSON sidecar (`<file>.json`); real ones use width//64."""
    import json

    for side in (path.with_suffix(path.suffix + ".json"), path.with_suffix(".json")):
        if side.is_file():
            try:
                info = json.loads(side.read_text())
            except json.JSONDecodeError:
                return None
            for key in ("text_heads", "heads"):
                if key in info:
                    return int(info[key])
            text_cfg = info.get("text", info.get("text_cfg", {}))
            if isinstance(text_cfg, dict) and "heads" in text_cfg:
                return int(text_cfg["heads"])
    return None


def _read_checkpoint_tensors(path: Path, prefix: str):
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read as a checkpoint with weights_only=True ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a state-dict checkpoint")
    return {k: v for k, v in obj.items() if k.startswith(prefix)}
