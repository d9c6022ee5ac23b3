"""The files of a `sample` run (`dreamdist3d.sample2d.sd21.sample_to_folder`): which files in a folder belong to an
earlier run (`earlier_run_files`), the refusal to overwrite a finished one (`check_out_folder`), the images a stopped
run already wrote and may keep (`stopped_run_images`), and the writing of one image (`write_image`: the PNG, then its
sidecar)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np

from dreamdist3d.images import save_png
from dreamdist3d.sample2d.metadata import write_json

PathLike = Union[str, Path]


RUN_FILES = ("grid.png", "run.json", "embeddings.safetensors")


def earlier_run_files(out: PathLike) -> List[Path]:
    """The files of an earlier `sample` run in folder `out` (`NNNN.png`, `NNNN.json`, `grid.png`, `run.json`,
    `embeddings.safetensors`); other files are not the run's and never touched."""
    import re

    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_file() and (p.name in RUN_FILES or re.fullmatch(r"\d{4,}\.(png|json)", p.name)))


# what differs from image to image of one run; every other key of a sidecar is the run's settings
PER_IMAGE_KEYS = ("file", "index", "sample_seed", "latent_seed", "embedding", "command")


def check_out_folder(out: PathLike, overwrite: bool = False) -> None:
    """Refuse an output folder that holds a finished earlier run (its `run.json`: a new run would overwrite 0000.png …
    and leave the rest of the old run beside the new run.json), unless `overwrite`. A stopped run (images, no
    run.json) passes here: `stopped_run_images` decides, once the settings are known, whether it continues. Cheap:
    call it before loading any model."""
    found = earlier_run_files(out)
    if found and not overwrite and (Path(out) / "run.json").is_file():
        names = ", ".join(p.name for p in found[:3]) + (", …" if len(found) > 3 else "")
        raise ValueError(f"--out {out} already holds an earlier run ({len(found)} files: {names}); pass a new --out "
                         "folder, or --overwrite to replace that run")


def written_images(out: PathLike) -> Dict[int, Dict[str, Any]]:
    """index -> sidecar record of each image of a run in `out` that is written whole: its `NNNN.json` parses and its
    `NNNN.png` exists (the sidecar is written after its PNG, both atomically)."""
    found: Dict[int, Dict[str, Any]] = {}
    for sidecar in sorted(Path(out).glob("[0-9][0-9][0-9][0-9]*.json")):
        if not sidecar.stem.isdigit() or not sidecar.with_suffix(".png").is_file():
            continue
        try:
            found[int(sidecar.stem)] = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: not written whole
    return found


def stopped_run_images(out: PathLike, settings: Mapping[str, Any], n: int) -> Dict[int, Dict[str, Any]]:
    """The images a stopped run (Ctrl-C, a killed job) left in `out` that a run of `n` images with `settings` (its
    base record; `command` aside) keeps: `written_images(out)`. ValueError if they were drawn with other settings,
    or beyond `n`: the folder then holds another run, which is neither continued nor mixed into this one."""
    want = json.loads(json.dumps({k: v for k, v in settings.items() if k not in PER_IMAGE_KEYS}, ensure_ascii=False))
    kept = written_images(out)
    for index, record in kept.items():
        had = {k: v for k, v in record.items() if k not in PER_IMAGE_KEYS}
        if had != want or index >= n:
            diff = next((k for k in sorted(set(had) | set(want)) if had.get(k) != want.get(k)), None)
            why = (f"{diff}: {_short(had.get(diff))} there, {_short(want.get(diff))} now" if diff is not None
                   else f"image {index} is beyond --n {n}")
            raise ValueError(f"--out {out} holds a stopped run with other settings ({why}); run it again with the "
                             "same settings to go on, pass a new --out folder, or --overwrite to replace that run")
    return kept


def _short(value: Any, limit: int = 100) -> str:
    """repr of a setting for a one-line message (a list of distributions can be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_image(image: np.ndarray, png: Path, record: Dict[str, Any], sidecar: Path) -> None:
    save_png(image, png, record)
    write_json(record, sidecar)
