"""Joining a Ray cluster (or starting one on this machine) and sizing the pool of workers from its resources.

`connect("auto")` starts a local cluster with this machine's CPUs and GPUs (or joins `$RAY_ADDRESS` when set);
`connect("HOST:PORT")` / `connect("ray://HOST:PORT")` joins an existing one. An address that cannot be reached is a
`ClusterError` naming it, after a short TCP probe: `ray.init` itself would retry for minutes, and nothing falls back
to this machine. An already initialised Ray (e.g. a test's `ray.init(num_cpus=2)`) is used as it is.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

INSTALL_HINT = "pip install 'dreamdist3d[ray]' (the same version on every node of the cluster)"


class ClusterError(ConnectionError):
    """The cluster cannot do what was asked (unreachable, too few GPUs, no worker left); the message says what to
    do. An OSError: exit code 1 through `dreamdist3d.errors`."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def split_address(address: str) -> Tuple[str, int]:
    """"HOST:PORT" or "ray://HOST:PORT" -> (host, port); the GCS port defaults to 6379, the client port to 10001."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        return host.strip("[]"), int(port) if port else (10001 if client else 6379)
    except ValueError:
        raise ClusterError(f"--ray {address}: not an address; give HOST:PORT (e.g. 10.0.0.5:6379, as `ray start "
                           "--head` prints it), ray://HOST:10001, or auto") from None


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({reason}): start one there (`ray start --head --port {port}` "
            "on the head node, `ray start --address HEAD:PORT` on the others) or fix the address; "
            "--ray auto starts one on this machine") from None


@dataclass
class Connection:
    address: str  # what was joined ("local": a cluster started here; "": the one this process had joined already)
    started: bool  # this process started Ray (and shuts it down at the end)

    def resources(self) -> Dict[str, float]:
        return dict(import_ray().cluster_resources())

    def describe(self) -> str:
        r = self.resources()
        return (f"{int(r.get('CPU', 0))} CPUs, {int(r.get('GPU', 0))} GPUs, "
                f"{r.get('memory', 0) / 2**30:.0f} GiB memory")

    def close(self) -> None:
        if self.started:
            import_ray().shutdown()


def connect(address: Optional[str] = "auto") -> Connection:
    """Join the cluster at `address` ("auto": $RAY_ADDRESS, else a new local one)."""
    ray = import_ray()
    if ray.is_initialized():
        return Connection("", started=False)
    address = (address or "auto").strip()
    joined = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if joined:
        probe(joined)
    try:
        if joined:
            ray.init(address=joined, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(log_to_driver=False, include_dashboard=False, logging_level="WARNING")
    except Exception as e:  # ConnectionError, a missing ray[client] for ray://, a version mismatch, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        where = f"the Ray cluster at {joined}" if joined else "a local Ray cluster"
        raise ClusterError(f"cannot join {where}: {first}") from None
    return Connection(joined or "local", started=True)


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    num_cpus: float
    num_gpus: float


def plan_actors(resources: Dict[str, float], where: str, cpu: bool, actors: int, cpus_per_actor: int,
                n_objects: int) -> ActorPlan:
    """How many workers and what each holds: one GPU each (`cpu`: `cpus_per_actor` CPUs each); `actors` 0 = as many
    as the cluster holds, never more than there are objects. Asking for more than the cluster has is an error naming
    its resources."""
    if cpus_per_actor < 1:
        raise ClusterError(f"--cpus-per-actor must be ≥ 1, got {cpus_per_actor}")
    have_cpu, have_gpu = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    have = f"{where} has {have_cpu} CPUs and {have_gpu} GPUs"
    if cpu:
        most = have_cpu // cpus_per_actor
        unit = f"{cpus_per_actor} CPU(s) each (--cpus-per-actor)"
    else:
        if have_gpu == 0:
            raise ClusterError(f"{have}: no GPU for the workers (one GPU each); add GPU nodes "
                               "(`ray start --address HEAD:PORT --num-gpus N`) or pass --cpu to run on its CPUs")
        most = have_gpu
        unit = "one GPU each"
    if actors < 0 or actors > most:
        raise ClusterError(f"--actors {actors}: {have}, room for {most} worker(s) at {unit}")
    if most == 0:
        raise ClusterError(f"{have}: no room for a worker at {unit}")
    n = min(actors or most, max(n_objects, 1))
    return ActorPlan(n, float(cpus_per_actor), 0.0 if cpu else 1.0)


__all__ = ["ActorPlan", "ClusterError", "Connection", "INSTALL_HINT", "connect", "import_ray", "plan_actors", "probe",
           "split_address"]
