"""Files across machines without a shared filesystem.

Inputs: the driver reads each input file of a task once (`read_inputs`: driver path -> bytes); a worker keeps a copy
per content hash in its node-local cache (`stage_inputs`) and runs with those paths (`local_call`).
Results: a worker packs a finished run folder as relative path -> bytes (`pack_run`: every file but the checkpoints,
with its own paths in text files and safetensors metadata given as the driver's); the driver writes them with the one
atomic writer (`write_run`), the turntable video last, so a run counts as finished (`lift3d.gallery.find_turntable`)
only once all of it is there.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping

from dreamdist3d.io import atomic_write_bytes
from dreamdist3d.recipes.objects import Call

SKIPPED = ("ckpts",)  # checkpoints stay on the worker (hundreds of MB for a real run); --shared-fs keeps them
TEXT_SUFFIXES = (".yaml", ".txt", ".json")  # where a run writes its own paths (configs/parsed.yaml, ...)


def input_paths(call: Call) -> Dict[str, str]:
    """The call's file arguments that are set: argument -> path."""
    return {k: str(call.kwargs[k]) for k in call.files if call.kwargs.get(k)}


def read_inputs(*calls: Call) -> Dict[str, bytes]:
    """driver path -> bytes of every input file of the calls (a missing one is an error naming it)."""
    out: Dict[str, bytes] = {}
    for call in calls:
        for key, path in input_paths(call).items():
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"{key} {path} does not exist")
            out[path] = p.read_bytes()
    return out


def stage_inputs(blobs: Mapping[str, bytes], cache: Path) -> Dict[str, str]:
    """Write each input once per content into `cache/<sha256>/<name>` (the name kept: a run's raw config and the
    gallery page show it); returns driver path -> local path."""
    local = {}
    for path, data in blobs.items():
        target = cache / hashlib.sha256(data).hexdigest()[:32] / Path(path).name
        if not target.is_file():
            atomic_write_bytes(target, data)
        local[path] = str(target)
    return local


def local_call(call: Call, local: Mapping[str, str]) -> Call:
    """`call` with its file arguments pointing at the local copies."""
    swapped = {k: local.get(str(v), v) for k, v in input_paths(call).items()}
    return Call(call.fn, {**call.kwargs, **swapped}, call.files)


def pack_run(run: Path, renames: Mapping[str, str]) -> Dict[str, bytes]:
    """Every file of a run folder but its checkpoints, relative path -> bytes; in text files each key of `renames`
    (a worker path) is replaced by its value (the driver's path)."""
    files = {}
    order = sorted(renames, key=len, reverse=True)  # a longer path first: it may contain a shorter one
    for p in sorted(run.rglob("*")):
        rel = p.relative_to(run)
        if not p.is_file() or rel.parts[0] in SKIPPED:
            continue
        data = p.read_bytes()
        if p.suffix in TEXT_SUFFIXES:
            data = _rename(data.decode("utf-8", errors="surrogateescape"), renames, order).encode(
                "utf-8", errors="surrogateescape")
        elif p.suffix == ".safetensors":
            data = _renamed_safetensors(p, renames, order) or data
        files[rel.as_posix()] = data
    return files


def _rename(text: str, renames: Mapping[str, str], order) -> str:
    for old in order:
        text = text.replace(old, renames[old])
    return text


def _renamed_safetensors(path: Path, renames: Mapping[str, str], order):
    """The file written again with the paths in its metadata renamed (e.g. the prompt sample's distribution file);
    None when its metadata names none."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    renamed = {k: _rename(v, renames, order) for k, v in meta.items()}
    return save(load_file(str(path)), metadata=renamed) if renamed != meta else None


def write_run(run: Path, files: Mapping[str, bytes]) -> Path:
    """Write a packed run into `run`, the turntable last. The packed run is whole: what an earlier attempt left there
    is cleared first (a stopped run's checkpoint and its turntable at the step it stopped would otherwise stay beside
    the new object)."""
    if run.exists():
        shutil.rmtree(run)
    last = lambda rel: (rel.startswith("save/") and rel.endswith("-test.mp4"), rel)  # noqa: E731
    for rel in sorted(files, key=last):
        atomic_write_bytes(run / rel, files[rel])
    return run


def relocate(value: Any, old: Path, new: Path) -> Any:
    """`value` with every Path under `old` (inside dicts, lists and tuples) moved under `new`."""
    if isinstance(value, Path):
        try:
            return new / value.relative_to(old)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocate(v, old, new) for v in value)
    return value


__all__ = ["SKIPPED", "input_paths", "local_call", "pack_run", "read_inputs", "relocate", "stage_inputs", "write_run"]
