"""The body of a Ray actor: it loads a task's backbone once, keeps it resident, and makes one object per call.

`ObjectWorker(name, backbone, inputs, ...)` runs `backbone()` when the actor starts (again after a restart);
`run(call, seed, out, inputs, argv)` makes object `seed` with that backbone:
- shared filesystem: straight into the driver's `out` (checked to be the same folder through a marker file);
- otherwise in a scratch folder on this node (`<scratch>/dreamdist3d-ray/<worker name>-seed<S>-pid<P>-*/`,
  removed afterwards; one a killed worker left goes when the next worker starts there), reading local copies of
  the input files (kept in `<scratch>/dreamdist3d-ray/inputs/` by content), and returns the run folder's files as
  bytes (`files.pack_run`).
The process's argv is the driver's while a run is made, so the run's `cmd.txt` names the command that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from dreamdist3d.cluster.files import local_call, pack_run, relocate, stage_inputs
from dreamdist3d.lift3d.gallery import run_dir
from dreamdist3d.recipes.objects import Call


@dataclass
class ObjectResult:
    seed: int
    value: Any  # what the task's call returned (paths under the worker's folder given under the driver's `out`)
    files: Optional[Dict[str, bytes]]  # the run folder, relative path -> bytes; None: written in place
    worker: str
    host: str
    seconds: float


class ObjectWorker:
    def __init__(self, name: str, backbone: Call, inputs: Mapping[str, bytes], threads: int, scratch: str = "",
                 shared_fs: bool = False) -> None:
        import torch

        torch.set_num_threads(max(int(threads), 1))
        self.name, self.shared_fs = name, shared_fs
        self.scratch = Path(scratch or tempfile.gettempdir()) / "dreamdist3d-ray"
        self.cache = self.scratch / "inputs"
        for stale in self.scratch.glob("*-seed*-pid*-*"):  # runs of dead workers on this node (killed mid-run)
            pid = int(stale.name.split("-pid")[-1].split("-")[0])
            if not _alive(pid):
                shutil.rmtree(stale, ignore_errors=True)
        t0 = time.perf_counter()
        call = backbone if shared_fs else local_call(backbone, stage_inputs(inputs, self.cache))
        self.backbone = call()
        self.load_s = time.perf_counter() - t0

    def ready(self) -> Dict[str, Any]:
        """Where this worker runs: host, process, device, seconds its backbone took to load."""
        import torch

        device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"worker": self.name, "host": socket.gethostname(), "pid": os.getpid(),
                "device": f"GPU {device}" if device and torch.cuda.is_available() else "CPU",
                "threads": torch.get_num_threads(), "load_s": round(self.load_s, 1)}

    def run(self, call: Call, seed: int, out: str, inputs: Mapping[str, bytes], argv: Sequence[str],
            marker: str = "") -> ObjectResult:
        t0 = time.perf_counter()
        saved_argv = sys.argv
        sys.argv = list(argv)
        try:
            if self.shared_fs:
                if marker and not Path(marker).is_file():
                    raise FileNotFoundError(
                        f"--shared-fs: {out} is not the driver's folder on {socket.gethostname()} (its marker "
                        f"{Path(marker).name} is missing there); mount the shared filesystem at the same path on "
                        "every node, or drop --shared-fs")
                value = call(self.backbone, out=Path(out), seed=seed)
                return ObjectResult(seed, value, None, self.name, socket.gethostname(), time.perf_counter() - t0)
            local = stage_inputs(inputs, self.cache)
            self.scratch.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f"{self.name}-seed{seed}-pid{os.getpid()}-", dir=self.scratch))
            try:
                value = local_call(call, local)(self.backbone, out=work, seed=seed)
                renames = {str(work): out, **{v: k for k, v in local.items()}}
                files = pack_run(run_dir(work, seed), renames)
                value = relocate(value, work, Path(out))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return ObjectResult(seed, value, files, self.name, socket.gethostname(), time.perf_counter() - t0)
        finally:
            sys.argv = saved_argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


__all__ = ["ObjectResult", "ObjectWorker"]
