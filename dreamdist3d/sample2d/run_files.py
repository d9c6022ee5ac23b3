"""The files of a `sample` run (`dreamdist3d.sample2d.sd21.sample_to_folder`): which files in a folder belong to an
earlier run (`earlier_run_files`), the refusal to overwrite one (`check_out_folder`), and the writer that saves
images on worker threads while the pipeline computes the next batch (`BackgroundWriter`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

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


def check_out_folder(out: PathLike, overwrite: bool = False) -> None:
    """Refuse an output folder that holds an earlier run (a new run would overwrite 0000.png … and leave the rest of
    the old run beside the new run.json), unless `overwrite`. Cheap: call it before loading any model."""
    found = earlier_run_files(out)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:3]) + (", …" if len(found) > 3 else "")
        raise ValueError(f"--out {out} already holds an earlier run ({len(found)} files: {names}); pass a new --out "
                         "folder, or --overwrite to replace that run")


class BackgroundWriter:
    """Writes files on worker threads while the pipeline computes the next batch (PNG compression releases the GIL;
    a 768² PNG costs tens of ms, a large share of a fast GPU's time per image). `close()` waits and re-raises."""

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


def write_image(image: np.ndarray, png: Path, record: Dict[str, Any], sidecar: Path) -> None:
    save_png(image, png, record)
    write_json(record, sidecar)
