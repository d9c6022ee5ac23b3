"""Small file helpers: atomic writes and checked safetensors reads."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import torch

PathLike = Union[str, Path]


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask has no getter; read once at import (it is not thread-safe later)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # again: writers that replace the file (safetensors' save_file) leave it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_save_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike, metadata: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def atomic_torch_save(obj, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_safetensors(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing, truncated or foreign file raises a clear error."""
    from safetensors import SafetensorError, safe_open

    from dreamdist3d.distribution.errors import DistributionFileError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DistributionFileError(
            f"{path} is not a readable .safetensors file ({e}); it may be truncated or not a dreamdist3d file"
        ) from None
    return tensors, meta


def load_error_reason(e: BaseException) -> str:
    """One line saying why `torch.load(weights_only=True)` refused a file, without torch's advice to retry with
    `weights_only=False` (that would run whatever code the file's pickle holds)."""
    import pickle

    text = str(e)
    if "allowed global" in text or "Unsupported global" in text:
        return "it holds pickled Python objects besides tensors, which dreamdist3d never unpickles (that could run code)"
    if isinstance(e, pickle.UnpicklingError):
        return "it is not a PyTorch checkpoint (unreadable pickle data)"
    first = text.splitlines()[0].split(". ")[0].strip() if text.strip() else ""
    if "weights_only" in first:
        first = ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
