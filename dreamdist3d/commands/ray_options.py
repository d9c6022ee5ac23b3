"""The `--ray` flags shared by `dreamdist3d gallery`, `toyworld demo` and `toyworld arms` (a helper module, not a
command): each object (seed) becomes a task on a pool of Ray actors with the backbone resident
(`dreamdist3d.cluster`)."""

from __future__ import annotations

import argparse
from typing import List, Optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("on a Ray cluster (pip install 'dreamdist3d[ray]')")
    g.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="run the objects on Ray: each seed a task on a pool of actors that load the backbone once; "
                        "`auto` (the default with a bare --ray) starts a local cluster (or joins $RAY_ADDRESS), "
                        "HOST:PORT or ray://HOST:PORT joins an existing one")
    g.add_argument("--actors", type=int, default=0, metavar="N",
                   help="workers (default: as many as the cluster has room for, one GPU each, or on CPUs "
                        "--cpus-per-actor CPUs each; never more than there are objects)")
    g.add_argument("--cpus-per-actor", type=int, default=1, metavar="N",
                   help="CPUs (and torch threads) each worker holds (default 1)")
    g.add_argument("--shared-fs", action="store_true",
                   help="the output folder is on a filesystem every node mounts at the same path: workers write the "
                        "runs there directly (checkpoints included); without it they send each run's files back")
    g.add_argument("--scratch", default="", metavar="DIR",
                   help="node-local folder for runs in progress and copies of the input files (default: the system "
                        "temp folder)")


def cluster_config(args: argparse.Namespace, cpu: Optional[bool] = None):
    """The runner's settings from the flags (`cluster.ClusterConfig`); None without --ray."""
    from dreamdist3d.cluster.runner import ClusterConfig

    if args.ray is None:
        return None
    address = str(args.ray).strip()
    if "=" in address or not address:
        raise ValueError(f"--ray {address!r}: give auto, HOST:PORT or ray://HOST:PORT (key=value overrides go after "
                         "the flags: write `--ray auto key=value`)")
    if args.actors < 0 or args.cpus_per_actor < 1:
        raise ValueError("--actors must be ≥ 0 and --cpus-per-actor ≥ 1")
    return ClusterConfig(address=address, actors=args.actors, cpu=bool(args.cpu if cpu is None else cpu),
                         cpus_per_actor=args.cpus_per_actor, shared_fs=args.shared_fs, scratch=args.scratch,
                         progress=not getattr(args, "quiet", False))


def flags(args: argparse.Namespace) -> List[str]:
    """The --ray flags as given (for a printed command that repeats them)."""
    if args.ray is None:
        return []
    out = ["--ray", args.ray]
    if args.actors:
        out += ["--actors", str(args.actors)]
    if args.cpus_per_actor != 1:
        out += ["--cpus-per-actor", str(args.cpus_per_actor)]
    if args.shared_fs:
        out.append("--shared-fs")
    if args.scratch:
        out += ["--scratch", args.scratch]
    return out


__all__ = ["add_arguments", "cluster_config", "flags"]
