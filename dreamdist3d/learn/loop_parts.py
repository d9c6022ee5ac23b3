"""The parts of the learning loop (`dreamdist3d.recipes.learn`) that are neither the loss nor a file: the order the
reference items are drawn in, the processes of a data-parallel run, the progress bar and gradient checkpointing of
the UNet. (The Ctrl-C / SIGTERM hold around an update is `dreamdist3d.runs.interrupts_held`, shared with the 3D
trainer.)"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from dreamdist3d.config import ConfigError


def enable_gradient_checkpointing(unet) -> None:
    for m in (unet, getattr(unet, "unet", None)):
        fn = getattr(m, "enable_gradient_checkpointing", None)
        if fn is not None:
            fn()
            return
    warnings.warn(f"{type(unet).__name__} has no gradient checkpointing; ignoring gradient_checkpointing", stacklevel=2)


class IndexStream:
    """Items in shuffled epochs, concatenated (a shuffling loader that never drops items); state resumes exactly."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def take(self, k: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=gen), 0
            chunk = self.perm[self.pos : self.pos + k]
            out.append(chunk)
            self.pos += len(chunk)
            k -= len(chunk)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ConfigError(f"the checkpoint was made with {state['n']} reference items, the folder now has {self.n}")
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


def distributed_setup(device_cfg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and not device_cfg.startswith("cpu")
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), dist.get_world_size()


def mean_over_processes(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world
    return x.cpu()


def progress_bar(cfg, step: int, rank: int):
    """cfg: the run's `LearnConfig` (steps, name, progress); only rank 0 shows a bar."""
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=step, desc=f"learn {cfg.name}", unit="step", dynamic_ncols=True,
                disable=not cfg.progress or rank != 0, file=sys.stderr)
