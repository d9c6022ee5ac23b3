"""Runs: run folders, checkpoints, `resume=latest`, the device and the seed — one way for every trainer.

Used by learning (`recipes/learn.py`), the 3D trainer (`launch.py`, `lift3d/trainer.py`, `lift3d/system.py`) and the
toy backbone trainer (`recipes/toy_train.py`).

- Run folder: `<root>/<name>/<tag>@<YYYYmmdd-HHMMSS>/` (`name` may be "": learning writes `<out_dir>/<name>@<stamp>/`).
  `new_run_dir` creates it with `mkdir(exist_ok=False)`; if a run started in the same second holds the name, it
  takes `…@<stamp>-1`, `-2`, …, so two runs never share a folder. `discard_if_empty` removes a folder this run
  made and never wrote a file into (a config error found after the folder was reserved leaves nothing behind).
- Checkpoints are written through `dreamdist3d.io.atomic_torch_save` (temp file + one rename: kill -9 or a full
  disk leaves the previous checkpoint intact). File names: learning `ckpts/step-NNNNNNN.pt`, 3D threestudio's
  `ckpts/epoch=0-step=N.ckpt` + `ckpts/last.ckpt`, the toy trainer `<weights stem>-ckpt.pt`; `step_of` reads the
  step from each name, and `checkpoints_in` / `latest_checkpoint` order them by it.
- `load_checkpoint(path, fmt)` reads with `weights_only=True`; a truncated, random or foreign file is a
  `CheckpointError` naming the file and the newest intact earlier checkpoint of the same folder, if any.
- `resume=latest`: `find_latest_checkpoint(root, name, tag)` — among `<root>/<name>/<tag>` and `<tag>@*`, the run
  whose newest checkpoint was written last (its latest checkpoint is returned).
- `pick_device("auto"|"cpu"|"cuda"|"cuda:N"|…)`: "auto" is CUDA (the process's LOCAL_RANK device) when available,
  else CPU; asking for CUDA without it is a ConfigError naming the key.
- `seed_everything(seed)`: Python, NumPy and torch global generators.
- `interrupts_held()`: a Ctrl-C or SIGTERM inside the block takes effect when the block ends (an update, or a whole
  3D step, is never cut in half, so the checkpoint written on either is a state an uninterrupted run also passes
  through).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from dreamdist3d.config import ConfigError
from dreamdist3d.errors import Terminated, TerminateHandler
from dreamdist3d.io import atomic_torch_save, holds_pickled_objects, is_torch_file

PathLike = Union[str, Path]

STAMP_FORMAT = "%Y%m%d-%H%M%S"
_STEP_RE = re.compile(r"step[-=](\d+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, random bytes, foreign); names the file and the fallback."""


# ---------------------------------------------------------------------------------------------- device and seed
def pick_device(spec: Optional[str] = "auto", key: str = "device") -> torch.device:
    """The torch device for `spec`: auto | cpu | cuda | cuda:N | any torch device string. `key` names the option."""
    spec = str(spec or "auto").strip()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key} {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} {spec!r}: this torch build sees no CUDA GPU; use {key} cpu (or auto)")
        if dev.index is None:
            dev = torch.device(f"cuda:{local}")
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA included)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def interrupts_held():
    """Hold a Ctrl-C (SIGINT) or a SIGTERM that arrives inside the block and raise it when the block ends, as
    KeyboardInterrupt or `errors.Terminated` (main thread, and only a signal that would raise there: SIGINT under
    Python's default handler, SIGTERM under `errors.sigterm_raises`; elsewhere a plain block)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: handler for sig, handler in ((s, signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM))
             if handler is signal.default_int_handler or isinstance(handler, TerminateHandler)}
    caught: List[int] = []
    for sig in saved:
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in caught:
        raise Terminated("SIGTERM")
    if caught:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- run folders
def run_dir_name(tag: str = "", timestamp: Union[bool, str] = True) -> str:
    """`<tag>@<YYYYmmdd-HHMMSS>` (timestamp True), `<tag><timestamp>` (a given string such as "@20260101-120000"),
    or `<tag>` (False / "")."""
    if timestamp is True:
        return f"{tag}@{datetime.now().strftime(STAMP_FORMAT)}"
    return f"{tag}{timestamp or ''}"


def new_run_dir(root: PathLike, name: str = "", tag: str = "", timestamp: Union[bool, str] = True,
                subdirs: tuple = ("ckpts",)) -> Path:
    """Create a fresh run folder `<root>/<name>/<run_dir_name(tag, timestamp)>` race-free and return it.

    The leaf is made with `mkdir(exist_ok=False)`; when the name is taken (another run started in the same second)
    `-1`, `-2`, … is appended. `subdirs` are made inside."""
    parent = Path(root) / name if name else Path(root)
    parent.mkdir(parents=True, exist_ok=True)
    base = run_dir_name(tag, timestamp)
    if not base:
        raise ConfigError("a run folder needs a tag or a timestamp")
    for i in range(10_000):
        path = parent / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        for sub in subdirs:
            (path / sub).mkdir(parents=True, exist_ok=True)
        return path
    raise FileExistsError(f"no free run folder name {parent / base}-N")


def open_run_dir(path: PathLike, subdirs: tuple = ("ckpts",)) -> bool:
    """Create (or reuse) the run folder `path`; returns True when this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(exist_ok=False)
        created = True
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(20, "is an existing file, not a run folder", str(path)) from None
        created = False
    for sub in subdirs:
        (path / sub).mkdir(parents=True, exist_ok=True)
    return created


def discard_if_empty(path: Optional[PathLike]) -> bool:
    """Remove the run folder `path` if no file was written under it (only empty folders); True if removed."""
    if path is None:
        return False
    path = Path(path)
    if not path.is_dir() or any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def find_runs(root: PathLike, name: str = "", tag: str = "") -> List[Path]:
    """Run folders `<root>/<name>/<tag>` and `<root>/<name>/<tag>@*` (existing folders only)."""
    parent = Path(root) / name if name else Path(root)
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and (p.name == tag or p.name.startswith(f"{tag}@"))]


# ---------------------------------------------------------------------------------------------- checkpoints
def step_of(path: PathLike) -> int:
    """The step in a checkpoint's name (`step-0000200.pt`, `epoch=0-step=200.ckpt`); -1 when it has none."""
    m = _STEP_RE.search(Path(path).name)
    return int(m.group(1)) if m else -1


def ckpt_folder(run_or_ckpts: PathLike) -> Path:
    """`<run>/ckpts` for a run folder, the folder itself otherwise."""
    p = Path(run_or_ckpts)
    return p / "ckpts" if (p / "ckpts").is_dir() else p


def checkpoints_in(folder: PathLike, pattern: str = "*") -> List[Path]:
    """Checkpoints with a step in their name in `folder` (or `<folder>/ckpts`), oldest step first."""
    found = [p for p in ckpt_folder(folder).glob(pattern) if p.is_file() and step_of(p) >= 0]
    return sorted(found, key=lambda p: (step_of(p), p.stat().st_mtime))


def latest_checkpoint(folder: PathLike, pattern: str = "*", last: Optional[str] = None) -> Optional[Path]:
    """`last` (e.g. "last.ckpt") if present, else the highest-step checkpoint matching `pattern`; None if none."""
    ck = ckpt_folder(folder)
    if last and (ck / last).is_file():
        return ck / last
    found = checkpoints_in(ck, pattern)
    return found[-1] if found else None


def find_latest_checkpoint(root: PathLike, name: str = "", tag: str = "", pattern: str = "*",
                           last: Optional[str] = None) -> Optional[Path]:
    """`resume=latest`: the latest checkpoint of the run (see `find_runs`) whose checkpoint was written last."""
    cands = [c for c in (latest_checkpoint(r, pattern, last) for r in find_runs(root, name, tag)) if c is not None]
    if not cands:
        return None
    return max(cands, key=lambda p: (p.stat().st_mtime, p.parent.parent.name))


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write a checkpoint atomically (the previous file at `path` stays intact until the new one is complete)."""
    atomic_torch_save(state, path)
    return Path(path)


def load_checkpoint(path: PathLike, fmt: Optional[str] = None, what: str = "checkpoint",
                    map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint (`weights_only=True`: tensors and plain containers only).

    `fmt`: the value its "format" key must have. A missing file is FileNotFoundError; a truncated, random or foreign
    file is a CheckpointError naming the file and the newest intact earlier checkpoint beside it, if any."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: {what} {path} does not exist")
    problem = _read_problem(path, fmt, map_location)
    if isinstance(problem, dict):
        return problem
    fallback = _intact_fallback(path, fmt)
    hint = (f"; the newest intact earlier checkpoint is {fallback} (resume={fallback})" if fallback
            else "; no intact earlier checkpoint is beside it")
    raise CheckpointError(f"resume: {what} {path} {problem}{hint}")


def _read_problem(path: Path, fmt: Optional[str], map_location: Any = "cpu"):
    """The checkpoint's dict, or a string saying why it cannot be used."""
    if not is_torch_file(path):
        return "is not a checkpoint at all (not a PyTorch file: neither a zip archive nor pickle data)"
    try:
        state = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled code
        if holds_pickled_objects(e):
            return ("holds pickled Python objects, not only tensors and plain containers; it is refused (loading it "
                    "could run code)")
        if isinstance(e, (pickle.UnpicklingError, KeyError, EOFError)):  # what torch says of bytes it cannot parse
            return "is not a checkpoint at all (not a PyTorch file: unreadable pickle data)"
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return f"cannot be read: it is truncated or not a checkpoint ({type(e).__name__}: {first[:160]})"
    if not isinstance(state, dict) or (fmt is not None and state.get("format") != fmt):
        return f"is not a {fmt or 'dreamdist3d'} checkpoint"
    return state


def _intact_fallback(path: Path, fmt: Optional[str]) -> Optional[Path]:
    others = [p for p in checkpoints_in(path.parent) if p.resolve() != path.resolve()]
    for p in reversed(others):
        if isinstance(_read_problem(p, fmt), dict):
            return p
    return None


__all__ = ["CheckpointError", "STAMP_FORMAT", "checkpoints_in", "ckpt_folder", "discard_if_empty",
           "find_latest_checkpoint", "find_runs", "latest_checkpoint", "load_checkpoint", "new_run_dir", "open_run_dir",
           "pick_device", "run_dir_name", "save_checkpoint", "seed_everything", "interrupts_held", "step_of"]
