"""A recipe's per-object work as a task that can run elsewhere: one object (seed) = one call
`run.fn(backbone, out=OUT, seed=S, **run.kwargs)` that writes `OUT/runs/seed<S>/`, guided by the backbone that
`backbone.fn(**backbone.kwargs)` loads (once per worker, then kept resident for every seed it takes).

Both calls name module-level functions, so a task pickles by reference and runs the same code on any machine that
has the package. `Call.files` names the keyword arguments that are input files (a config, a distribution, weights):
without a shared filesystem a runner ships their bytes and passes the worker's local copies instead.

A `Runner` (`dreamdist3d.cluster.RayRunner`) takes a task, the output folder and the seeds, and returns the value of
each finished seed's call and the error of each failed one. Recipes that accept `runner=` run their objects here
as before when it is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Protocol, Sequence, Tuple


@dataclass(frozen=True)
class Call:
    """A module-level function and its keyword arguments; `files`: those arguments that name input files."""

    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    files: Tuple[str, ...] = ()

    def __call__(self, *args: Any, **extra: Any) -> Any:
        return self.fn(*args, **{**self.kwargs, **extra})


@dataclass(frozen=True)
class ObjectTask:
    """`run(backbone, out=OUT, seed=S)` makes one object in `OUT/runs/seed<S>/`; `backbone()` loads its guidance."""

    run: Call
    backbone: Call
    name: str = "objects"  # for progress bars and messages


@dataclass
class ObjectsResult:
    """`values[seed]`: what the task's call returned for a finished seed (paths under the worker's output folder are
    given under the caller's); `failed[seed]`: the error of a seed that failed on every try."""

    values: Dict[int, Any] = field(default_factory=dict)
    failed: Dict[int, str] = field(default_factory=dict)


class ObjectsFailedError(RuntimeError):
    """Objects that failed on a runner after the others finished: `failed` maps where (e.g. "seed 3") to the error."""

    def __init__(self, failed: Mapping[str, str], hint: str = "") -> None:
        self.failed = dict(failed)
        text = "; ".join(f"{k}: {v}" for k, v in self.failed.items())
        super().__init__(f"objects failed ({text})" + (f"; {hint}" if hint else ""))


class Runner(Protocol):
    def __call__(self, task: ObjectTask, out: Path, seeds: Sequence[int]) -> ObjectsResult: ...


__all__ = ["Call", "ObjectTask", "ObjectsFailedError", "ObjectsResult", "Runner"]
