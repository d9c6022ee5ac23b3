"""Small file helpers: the one atomic writer (`atomic_path` and its byte/text/torch/safetensors forms), an early
writability check for output locations, checked safetensors reads, `BackgroundWriter` (files written on worker
threads while the caller computes) and `kept_batches` (a long job's batches kept in a folder, so that the same
command after a Ctrl-C goes on)."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

# what counts as an image file, for every folder we read images from (references, samples, gallery pages); what PIL
# decodes and browsers show
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

PathLike = Union[str, Path]


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask has no getter; read once at import (it is not thread-safe later)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


@contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """The one atomic writer: yield a temporary path beside `path`; on success it replaces `path` in one step.

    A reader never sees a half-written file; on any failure (an exception in the body, a full disk, Ctrl-C) the
    temporary file is removed and an existing `path` is left as it was. The file gets the mode a plain `open()`
    would give it under the process umask (0644 under umask 022), not `mkstemp`'s 0600. `suffix` ends the temporary
    name (e.g. ".tmp.mp4" for writers that pick the format from the extension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # after the body: a writer may have replaced the file (safetensors makes it 0600)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`), flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: PathLike, flag: str = "", is_dir: bool = False, suffix: Optional[str] = None) -> Path:
    """Fail early, before models are loaded or training starts, if `path` cannot be written.

    `is_dir`: `path` is a folder to create or write into (it may not exist yet); otherwise a file whose folder must
    be writable. `suffix` (e.g. ".png"): the file's format, which its name must end in so viewers open it.
    `flag` names the option in the message (e.g. "--out"). The nearest existing folder is probed by
    creating and removing a hidden empty file (so a read-only mount or a full inode table is caught as well as
    permissions, whoever runs it). Raises `OutputPathError` (an OSError) with a one-line message; leaves nothing."""
    path = Path(path)
    what = f"{flag} {path}" if flag else str(path)
    if is_dir:
        if path.exists() and not path.is_dir():
            raise OutputPathError(errno.ENOTDIR, f"{what}: is an existing file, not a folder; choose another path")
        if not path.exists() and path.suffix.lower() in IMAGE_SUFFIXES:
            raise OutputPathError(errno.EINVAL, f"{what}: names a folder (several files go in it); "
                                                f"give a folder name, e.g. {path.with_suffix('')}")
        folder = path
    else:
        if path.is_dir():
            raise OutputPathError(errno.EISDIR, f"{what}: is a folder; give a file name")
        if suffix is not None and path.suffix.lower() != suffix:
            raise OutputPathError(errno.EINVAL, f"{what}: the file is written as {suffix[1:].upper()}; give a name "
                                                f"ending in {suffix} (e.g. {path.with_suffix(suffix)})")
        folder = path.parent
    probe = folder
    while not probe.exists() and probe.parent != probe:  # the nearest existing ancestor is where folders get made
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(errno.ENOTDIR, f"{what}: {probe} is an existing file, so no folder can be made in it")
    try:
        _probe_write(probe)
    except OSError as e:
        reason = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk",
                  errno.EDQUOT: "is over its disk quota"}.get(e.errno, "is not writable (permission denied)")
        raise OutputPathError(e.errno or errno.EACCES, f"{what}: folder {probe} {reason}") from None
    return path


def _probe_write(folder: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=".dreamdist3d-write-test.", dir=folder)
    os.close(fd)
    os.unlink(name)


class OutputPathError(OSError):
    """An output location that cannot be written: `OutputPathError(errno, message)`; str() is the message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


def atomic_save_safetensors(tensors: Dict[str, torch.Tensor], path: PathLike,
                            metadata: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def atomic_torch_save(obj, path: PathLike) -> None:
    """`torch.save` atomically, flushed to disk. A failed write (a full disk, a quota) is raised as the OSError it is,
    naming `path`: torch turns the OSError of a file write into a RuntimeError ("unexpected pos …"), so the errno is
    taken from the OSError in the exception chain, never from torch's text."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            cause = os_error_in_chain(e)
            if cause is None or cause.errno is None:
                raise
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from e


def os_error_in_chain(e: BaseException) -> Optional[OSError]:
    """The first OSError among `e`, its `__cause__`s and `__context__`s (None if there is none)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class DistributionFileError(ValueError):
    """A distribution (or other dreamdist3d .safetensors) file that cannot be used; the message names the file and the
    fix. Defined here, at the bottom, because `read_safetensors` raises it; `dreamdist3d.distribution` re-exports it."""


def read_safetensors(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing, truncated or foreign file raises a clear error."""
    from safetensors import SafetensorError, safe_open


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


def holds_pickled_objects(e: BaseException) -> bool:
    """`torch.load(weights_only=True)` refused a real PyTorch file because it pickles Python objects (classes,
    functions), as opposed to bytes that are no checkpoint at all (which it reports with the same exception type)."""
    text = str(e)
    return "allowed global" in text or "Unsupported global" in text


def is_torch_file(path: Union[str, Path]) -> bool:
    """Does the file start as `torch.save` writes: a zip archive (PK\\x03\\x04) or pickle data (protocol 2-5)?
    Decided by content, not by the error torch.load happens to raise for other bytes (that varies with the bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_error_reason(e: BaseException, path: Optional[Union[str, Path]] = None) -> str:
    """One line saying why `torch.load(weights_only=True)` refused a file (`path`, when given, is checked for being
    a PyTorch file at all), without torch's advice to retry with `weights_only=False` (that would run whatever code
    the file's pickle holds)."""
    import pickle

    if path is not None and not is_torch_file(path):
        return "it is not a PyTorch checkpoint (neither a zip archive nor pickle data)"
    text = str(e)
    if holds_pickled_objects(e):
        return ("it holds pickled Python objects besides tensors, which dreamdist3d never unpickles "
                "(that could run code)")
    if isinstance(e, pickle.UnpicklingError):
        return "it is not a PyTorch checkpoint (unreadable pickle data)"
    first = text.splitlines()[0].split(". ")[0].strip() if text.strip() else ""
    if "weights_only" in first:
        first = ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class BackgroundWriter:
    """Writes files on worker threads while the caller computes the next ones (PNG compression releases the GIL; a
    768² PNG costs tens of ms, a large share of a fast GPU's time per image): `submit(fn, *args)` runs `fn(*args)`
    on a worker (inline with `workers=0`); `close()` waits for all and re-raises the first error."""

    def __init__(self, workers: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=workers,
                                       thread_name_prefix="dreamdist3d-write") if workers > 0 else None
        self.futures: list = []

    def submit(self, fn, *args) -> None:
        if self.pool is None:
            fn(*args)
        else:
            self.futures.append(self.pool.submit(fn, *args))

    def close(self) -> None:
        try:
            for f in self.futures:
                f.result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def kept_batches(folder: PathLike, key: Dict[str, Any], n_batches: int,
                 make: Callable[[int], Dict[str, torch.Tensor]],
                 done: Optional[Callable[[Dict[str, torch.Tensor]], None]] = None) -> List[Dict[str, torch.Tensor]]:
    """Batches 0…n_batches−1 of a job: batch i is read back from `folder` when an earlier run with the same `key`
    (JSON: every setting the batches depend on) wrote it, else made by `make(i)` and written there (atomically, one
    file a batch, so nothing is rewritten as the job grows). A folder of another key is emptied first. `done(batch)`
    after each batch (e.g. a progress bar). The caller removes `folder` once its own result is written."""
    import json
    import shutil

    from safetensors.torch import load_file

    folder = Path(folder)
    stamp = json.dumps(key, sort_keys=True, default=str)
    if (folder / "key.json").is_file() and (folder / "key.json").read_text() != stamp:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "key.json", stamp)
    batches = []
    for i in range(n_batches):
        path = folder / f"batch-{i:06d}.safetensors"
        if path.is_file():
            batch = load_file(str(path))
        else:
            batch = make(i)
            atomic_save_safetensors({k: v.contiguous() for k, v in batch.items()}, path)
        batches.append(batch)
        if done is not None:
            done(batch)
    return batches


def kept_rows(folder: PathLike, name: str) -> int:
    """How many rows (first dimension) of tensor `name` the batches `kept_batches` left in `folder` hold."""
    from safetensors import safe_open

    n = 0
    for path in sorted(Path(folder).glob("batch-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            n += f.get_slice(name).get_shape()[0]
    return n
