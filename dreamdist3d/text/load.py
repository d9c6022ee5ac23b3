"""Load just the text side (tokenizer + encoder) from what users have on disk, without the UNet or VAE."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import torch

from dreamdist3d.text.encoder import TextEncoder
from dreamdist3d.text.tokenizer import ClipTokenizer

OPENCLIP_PREFIX = "cond_stage_model.model."


def load_text_side(
    source: Union[str, Path, None],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    key: str = "--text-encoder",
) -> Tuple[ClipTokenizer, TextEncoder]:
    """(tokenizer, encoder) from a local diffusers SD 2.x folder or an MVDream checkpoint (.pt / .safetensors).

    For a checkpoint only its OpenCLIP text tower (`cond_stage_model.model.*`, penultimate layer) is built; tiny
    checkpoints give their head count in their config sidecar, real ones use width // 64. `key` names the option or
    config key in errors. Nothing is downloaded: a Hub model id is an error asking for a local path.
    """
    if not source:
        raise ValueError(f"{key} is not set: give the MVDream checkpoint or SD 2.1 diffusers folder the distribution was learned against")
    path = Path(str(source)).expanduser()
    if path.is_dir():
        has_bpe = (path / "tokenizer" / "vocab.json").is_file() or (path / "vocab.json").is_file()
        tok = ClipTokenizer.from_folder(path) if has_bpe else ClipTokenizer.default()
        return tok, TextEncoder.from_diffusers(path, device=device, dtype=dtype)
    if path.is_file():
        from dreamdist3d.backbones.mvdream import INERT_KEYS, TEXT_PREFIX, read_checkpoint

        state, config = read_checkpoint(path, key)
        text = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIX) and k not in INERT_KEYS}
        if TEXT_PREFIX + "token_embedding.weight" not in text:
            raise ValueError(f"{key}: {path} has no OpenCLIP text tower ({TEXT_PREFIX}*); is it an MVDream checkpoint?")
        width = int(text[TEXT_PREFIX + "token_embedding.weight"].shape[1])
        heads = int((config or {}).get("text_heads", max(1, width // 64)))
        enc, _ = TextEncoder.from_openclip_state_dict({k: v.float() for k, v in text.items()}, prefix=TEXT_PREFIX, heads=heads)
        return ClipTokenizer.default(), enc.to(device=device, dtype=dtype)
    hint = " (it looks like a Hub model id; dreamdist3d never downloads weights)" if str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")) else ""
    raise FileNotFoundError(
        f"{key}: {source} does not exist{hint}: give a local MVDream checkpoint (sd-v2.1-base-4view.pt) or a "
        "diffusers Stable Diffusion 2.1 folder"
    )
