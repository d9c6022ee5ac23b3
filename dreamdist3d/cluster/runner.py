"""`RayRunner`: objects (seeds) of a recipe's task on a pool of Ray actors that keep the backbone resident.

    with RayRunner(ClusterConfig(address="auto", cpu=True)) as runner:
        result = runner(task, out, seeds)          # ObjectsResult: values of finished seeds, errors of failed ones

- The pool: `actors` workers (`cluster.worker.ObjectWorker`), one GPU each (`num_gpus=1`) or `cpus_per_actor` CPUs
  each with `cpu`; each loads the task's backbone once. A later task with the same backbone reuses the pool.
- Feeding: each idle worker takes the next seed; results come back as they finish (`ray.wait`), are written under
  `out/runs/seed<s>/` (no shared filesystem: `files.write_run`) and reported on the progress bar.
- Faults: a worker that dies (killed, out of memory, node lost) is restarted by Ray (`max_restarts`, reloading its
  backbone) and its seed goes to the next free worker, another one when there is one; Ray does not replay the call
  itself (`max_task_retries=0`): this loop counts every try. A seed that fails `tries` times (an error in the run,
  or its worker dying each time) is reported with its error while the others finish. When no worker is left
  the remaining seeds fail with the last worker's error.
- Ctrl-C: outstanding calls are cancelled and the workers stopped; every finished run stays as written.
"""

from __future__ import annotations

import secrets
import sys
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dreamdist3d.cluster.connect import ClusterError, Connection, connect, import_ray, plan_actors
from dreamdist3d.cluster.files import read_inputs, write_run
from dreamdist3d.cluster.progress import ObjectsProgress
from dreamdist3d.cluster.worker import ObjectResult, ObjectWorker
from dreamdist3d.errors import describe
from dreamdist3d.lift3d.gallery import run_dir
from dreamdist3d.recipes.objects import Call, ObjectsResult, ObjectTask


@dataclass
class ClusterConfig:
    address: str = "auto"  # auto (a local cluster, or $RAY_ADDRESS) | HOST:PORT | ray://HOST:PORT
    actors: int = 0  # workers; 0 = one per GPU of the cluster (cpu: one per cpus_per_actor CPUs), ≤ one per object
    cpu: bool = False  # workers on CPUs instead of one GPU each
    cpus_per_actor: int = 1  # CPUs (and torch threads) of each worker
    shared_fs: bool = False  # workers write the runs straight into `out` (the same path on every node)
    scratch: str = ""  # node-local folder for runs in progress and input copies ("" = the system temp folder)
    tries: int = 2  # a seed that fails this many times is reported
    max_restarts: int = 3  # Ray restarts of a worker that died (each reloads the backbone)
    progress: bool = True


class RayRunner:
    """A `recipes.objects.Runner` on a Ray cluster (see the module docstring)."""

    def __init__(self, cfg: ClusterConfig, argv: Optional[Sequence[str]] = None) -> None:
        if cfg.tries < 1:
            raise ClusterError(f"tries must be ≥ 1, got {cfg.tries}")
        self.cfg = cfg
        self.argv = list(sys.argv if argv is None else argv)
        self.connection: Optional[Connection] = None
        self.actors: List[Any] = []
        self.names: List[str] = []
        self._backbone: Optional[Call] = None
        self._token = secrets.token_hex(3)
        self.announced: set = set()  # (worker, pid) whose "ready" line was shown

    # ------------------------------------------------------------------------------------------ lifetime
    def __enter__(self) -> "RayRunner":
        self.connection = connect(self.cfg.address)
        where = self.connection.address
        note = {"local": "started a local Ray cluster", "": "the Ray cluster this process had joined"}.get(
            where, f"joined the Ray cluster at {where}")
        print(f"[cluster] {note}: {self.connection.describe()}", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop_actors()
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _stop_actors(self) -> None:
        ray = import_ray()
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors, self.names, self._backbone = [], [], None

    # ------------------------------------------------------------------------------------------ the pool
    def _pool(self, backbone: Call, n_objects: int, inputs) -> List[Any]:
        if self.actors and backbone == self._backbone:
            return self.actors
        self._stop_actors()
        ray = import_ray()
        address = self.connection.address if self.connection else ""
        where = {"local": "this machine's Ray cluster", "": "the Ray cluster"}.get(
            address, f"the Ray cluster at {address}")
        plan = plan_actors(ray.cluster_resources(), where, self.cfg.cpu, self.cfg.actors, self.cfg.cpus_per_actor,
                           n_objects)
        worker = ray.remote(ObjectWorker)
        for i in range(plan.actors):
            name = f"dreamdist3d-{self._token}-{len(self.names)}"
            self.names.append(name)
            self.actors.append(worker.options(
                name=name, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=self.cfg.max_restarts,
                max_task_retries=0,
            ).remote(name, backbone, inputs, int(plan.num_cpus), self.cfg.scratch, self.cfg.shared_fs))
        self._backbone = backbone
        kind = "one GPU" if plan.num_gpus else f"{int(plan.num_cpus)} CPU(s)"
        print(f"[cluster] {plan.actors} worker(s), {kind} each, loading the backbone once each", file=sys.stderr,
              flush=True)
        return self.actors

    # ------------------------------------------------------------------------------------------ the objects
    def __call__(self, task: ObjectTask, out: Path, seeds: Sequence[int]) -> ObjectsResult:
        ray = import_ray()
        if self.connection is None:
            raise ClusterError("RayRunner is used outside `with RayRunner(...) as runner:`")
        seeds = list(dict.fromkeys(int(s) for s in seeds))
        result = ObjectsResult()
        if not seeds:
            return result
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        marker = ""
        if self.cfg.shared_fs:  # the workers check they see this very folder
            marker = str(out / f".dreamdist3d-shared-fs-{self._token}")
            Path(marker).touch()
        # input files (none with a shared filesystem): the backbone's go with the workers' start (small, kept for a
        # restart), the runs' once into the object store
        inputs_ref = ray.put({} if self.cfg.shared_fs else read_inputs(task.run))
        actors = self._pool(task.backbone, len(seeds), {} if self.cfg.shared_fs else read_inputs(task.backbone))
        bar = ObjectsProgress(len(seeds), task.name, self.cfg.progress)
        loop = _Loop(self, task, out, seeds, inputs_ref, marker, actors, bar, result)
        try:
            loop.run()
        except KeyboardInterrupt:
            loop.cancel()
            self._stop_actors()
            bar.note(f"[cluster] interrupted: cancelled {len(loop.busy)} running and {len(loop.pending)} waiting "
                     f"object(s); the {bar.done} finished run(s) under {out / 'runs'} are kept")
            raise
        finally:
            bar.close()
            if marker:
                Path(marker).unlink(missing_ok=True)
        return result


class _Loop:
    """One call of the runner: feed seeds to idle workers, collect results, retry, give up."""

    def __init__(self, runner: RayRunner, task: ObjectTask, out: Path, seeds: List[int], inputs_ref, marker: str,
                 actors: List[Any], bar: ObjectsProgress, result: ObjectsResult) -> None:
        self.r, self.task, self.out, self.inputs_ref, self.marker = runner, task, out, inputs_ref, marker
        self.actors, self.bar, self.result = actors, bar, result
        self.pending = deque(seeds)
        self.tries: Counter = Counter()
        self.avoid: Dict[int, int] = {}  # seed -> the worker it last failed on
        self.idle: List[int] = []
        self.busy: Dict[Any, tuple] = {}  # ref -> (seed, worker)
        self.checking = {a.ready.remote(): i for i, a in enumerate(actors)}  # ready (again) when this returns
        self.last_error = ""

    def name(self, i: int) -> str:
        return self.r.names[i]

    def run(self) -> None:
        ray = import_ray()
        while self.pending or self.busy:
            self.assign()
            if not self.busy and not self.checking:
                break  # no worker left
            ready, _ = ray.wait([*self.busy, *self.checking], num_returns=1, timeout=2.0)
            for ref in ready:
                if ref in self.checking:
                    self.worker_back(ref)
                else:
                    self.object_back(ref)
            self.bar.running = len(self.busy)
            self.bar.tick()
        if self.pending and not self.result.values and not self.result.failed:
            raise ClusterError(f"no worker could start: {self.last_error}")
        for seed in self.pending:  # only when every worker is gone
            self.result.failed[seed] = f"no worker left ({self.last_error})"
            self.bar.gave_up(f"[cluster] seed {seed} failed: no worker left")

    def assign(self) -> None:
        while self.pending and self.idle:
            seed = self.pending.popleft()
            others = [i for i in self.idle if i != self.avoid.get(seed)]
            i = others[0] if others else self.idle[0]
            self.idle.remove(i)
            ref = self.actors[i].run.remote(self.task.run, seed, str(self.out), self.inputs_ref, self.r.argv,
                                            self.marker)
            self.busy[ref] = (seed, i)
        self.bar.running = len(self.busy)

    def worker_back(self, ref) -> None:
        ray = import_ray()
        i = self.checking.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            self.last_error = _last_line(e)
            self.bar.note(f"[cluster] worker {self.name(i)} is gone: {self.last_error}")
            return
        self.idle.append(i)
        if (i, info["pid"]) not in self.r.announced:  # once per worker process (a restart is announced again)
            self.r.announced.add((i, info["pid"]))
            self.bar.note(f"[cluster] worker {self.name(i)} ready on {info['host']} ({info['device']}, "
                          f"{info['threads']} thread(s), backbone loaded in {info['load_s']} s)")

    def object_back(self, ref) -> None:
        ray = import_ray()
        seed, i = self.busy.pop(ref)
        self.bar.running = len(self.busy)  # before the bar redraws with this object done
        try:
            res: ObjectResult = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # the worker died: Ray restarts it; it rejoins once ready
            error = f"worker {self.name(i)} died ({_last_line(e)})"
            self.checking[self.actors[i].ready.remote()] = i
        except ray.exceptions.RayTaskError as e:  # the run raised
            error = describe(getattr(e, "cause", None) or e)
            self.idle.append(i)
        else:
            self.idle.append(i)
            if res.files is not None:
                write_run(run_dir(self.out, seed), res.files)
            self.result.values[seed] = res.value
            self.bar.finished(f"[cluster] seed {seed} done on {res.host} ({res.worker}) in {res.seconds / 60:.1f} min")
            return
        self.last_error = error
        self.tries[seed] += 1
        if self.tries[seed] < self.r.cfg.tries:
            self.avoid[seed] = i
            self.pending.appendleft(seed)
            self.bar.note(f"[cluster] seed {seed} failed ({error}); trying again on another worker")
        else:
            self.result.failed[seed] = error
            self.bar.gave_up(f"[cluster] seed {seed} failed {self.tries[seed]} times: {error}")

    def cancel(self) -> None:
        ray = import_ray()
        for ref in self.busy:
            ray.cancel(ref)


def _last_line(e: BaseException) -> str:
    """The last line of a Ray error: the cause (e.g. "ValueError: ..." of a worker's failed start)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


__all__ = ["ClusterConfig", "RayRunner"]
