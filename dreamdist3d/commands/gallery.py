"""`dreamdist3d gallery --distribution F (--n 8 | --seeds S,S,…) [--config C] [--gpu 0,1] [key=value ...]`: N
text-to-3D runs of one distribution with seeds 0..N-1 or the seeds given (one prompt sample each; `dreamdist3d
preview --pick N` names the seeds of the N most different previews), then one gallery of the objects: a PNG grid of
turntable frames (one row per seed) and an HTML page with the turntable videos side by side.

One GPU (or the CPU): the runs go one after another in this process, sharing the loaded MVDream model.
Several GPUs (`--gpu 0,1,2`): one worker process per GPU, each taking seeds from its share of the list.
A Ray cluster (`--ray [auto|ADDRESS]`): each seed a task on a pool of actors, one GPU each (`--cpu`: CPUs), that
load the model once; results come back as files unless `--shared-fs` (`dreamdist3d.cluster`).
Runs that already have a turntable are kept (re-running the command only fills in the missing seeds); failed seeds
are listed with the command that retries them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

from dreamdist3d.commands import ray_options

NAME = "gallery"
HELP = ("N text-to-3D runs of one distribution (seeds 0..N-1 or --seeds), then a PNG grid and an HTML page of their "
        "turntables")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distribution", required=True, help="the distribution file (.safetensors or official .pt)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--n", type=int, default=8, help="number of runs / seeds (default 8: seeds 0..7)")
    which.add_argument("--seeds", type=seed_list, default=None, metavar="S,S,…",
                       help="these seeds instead, comma-separated (e.g. those `dreamdist3d preview --pick N` names)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first run with --n (default 0)")
    p.add_argument("--config", default="configs/dreamdist-mvdream.yaml",
                   help="launch config (default configs/dreamdist-mvdream.yaml)")
    p.add_argument("--out", default=None, help="gallery folder (default outputs/gallery/<distribution stem>)")
    p.add_argument("--gpu", default=None, help="GPU id(s) of this machine (default 0); several ids run one worker "
                                                "per GPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --ray: on the cluster's CPUs)")
    p.add_argument("--frames", type=int, default=6, help="turntable frames per row of the PNG grid (default 6)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--worker-seeds", default=None, help=argparse.SUPPRESS)  # set for the per-GPU worker processes
    p.add_argument("overrides", nargs="*",
                   help="key=value config overrides for every run (e.g. trainer.max_steps=5000)")
    ray_options.add_arguments(p)


def seed_list(text: str) -> List[int]:
    """"2,5,9" -> [2, 5, 9] (argparse type of --seeds)."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 2,5,9, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed")
    return seeds


def _run_sequential(args, out: Path, seeds: List[int]) -> List[int]:
    from dreamdist3d.recipes.gallery import load_guidance_backbone, run_seed, run_settings

    failed, backbone = [], None
    for seed in seeds:
        settings = run_settings(args.distribution, out, seed, args.overrides)
        print(f"[gallery] seed {seed}: training ({args.config} {' '.join(settings)})", flush=True)
        try:
            if backbone is None:
                backbone = load_guidance_backbone(args.config, settings)  # once for all sequential runs
            run_seed(backbone, out, seed, config=args.config, distribution=args.distribution,
                     overrides=args.overrides, device="cpu" if args.cpu else "auto")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # keep going: one bad seed should not lose the others
            if args.debug:
                raise
            print(f"[gallery] seed {seed} failed: {e}", file=sys.stderr)
            failed.append(seed)
    return failed


def _run_parallel(args, out: Path, seeds: List[int], gpus: List[str]) -> List[int]:
    """One worker per GPU; worker i takes seeds[i::len(gpus)] one after another."""
    from dreamdist3d.lift3d.gallery import find_turntable, run_dir

    procs = []
    for i, gpu in enumerate(gpus):
        share = seeds[i::len(gpus)]
        if not share:
            continue
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
        cmd = [sys.executable, "-m", "dreamdist3d.cli", "gallery", "--distribution", args.distribution,
               "--config", args.config, "--out", str(out), "--gpu", "0", "--frames", str(args.frames),
               "--worker-seeds", ",".join(map(str, share)), *args.overrides]
        procs.append((gpu, share, subprocess.Popen(cmd, env=env)))
    failed = []
    for gpu, share, p in procs:
        if p.wait() != 0:
            print(f"[gallery] worker on GPU {gpu} (seeds {share}) exited with {p.returncode}", file=sys.stderr)
    for gpu, share, _ in procs:
        failed += [s for s in share if find_turntable(run_dir(out, s)) is None]
    return failed


def _run_ray(args, out: Path, seeds: List[int]) -> List[int]:
    """The seeds as tasks on a Ray cluster (`dreamdist3d.cluster`): the same run of each seed as `_run_sequential`,
    with the config, distribution and output folder given as absolute paths (the same on every node)."""
    from dreamdist3d.cluster import RayRunner
    from dreamdist3d.recipes.gallery import gallery_task, run_settings
    from dreamdist3d.recipes.lift3d import load_config

    cluster = ray_options.cluster_config(args)
    config, dist, out = str(Path(args.config).resolve()), str(Path(args.distribution).resolve()), out.resolve()
    load_config(config, run_settings(dist, out, seeds[0], args.overrides), make_dirs=False)  # a config error: here
    task = gallery_task(config, dist, out, seeds[0], args.overrides, device="cpu" if args.cpu else "auto")
    with RayRunner(cluster) as runner:
        res = runner(task, out, seeds)
    for seed, error in sorted(res.failed.items()):
        print(f"[gallery] seed {seed} failed: {error}", file=sys.stderr)
    return sorted(res.failed)


def retry_command(args: argparse.Namespace, out: Path) -> str:
    """This command again, with the folder spelled out: it runs only the seeds that have no finished run."""
    which = ["--seeds", ",".join(map(str, args.seeds))] if args.seeds else ["--n", str(args.n)]
    if not args.seeds and args.first_seed:
        which += ["--first-seed", str(args.first_seed)]
    parts = ["dreamdist3d", "gallery", "--distribution", args.distribution, *which, "--config", args.config,
             "--out", str(out), *(["--cpu"] if args.cpu else []), *(["--gpu", args.gpu] if args.gpu else []),
             *(["--frames", str(args.frames)] if args.frames != 6 else []), *ray_options.flags(args), *args.overrides]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.lift3d.gallery import build_gallery, find_turntable, run_dir  # (lift3d loads torch models)

    dist = Path(args.distribution)
    if not dist.is_file():
        raise FileNotFoundError(f"--distribution {dist} does not exist")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config} does not exist (run from the repository root, or pass "
                                "--config)")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    if args.seeds and args.first_seed:
        raise ValueError("--first-seed goes with --n; with --seeds list every seed")
    if args.ray is not None and args.gpu is not None:
        raise ValueError("--gpu picks GPUs of this machine; with --ray each worker takes one GPU of the cluster "
                         "(how many: --actors N)")
    ray_options.cluster_config(args)  # a bad --ray value is an error before anything runs
    out = Path(args.out) if args.out else Path("outputs") / "gallery" / dist.stem
    out.mkdir(parents=True, exist_ok=True)
    worker = getattr(args, "worker_seeds", None)
    seeds = seed_list(worker) if worker else args.seeds or list(range(args.first_seed, args.first_seed + args.n))
    seeds = list(dict.fromkeys(seeds))
    todo = [s for s in seeds if find_turntable(run_dir(out, s)) is None]
    if len(todo) < len(seeds):
        print(f"[gallery] keeping {len(seeds) - len(todo)} finished run(s); {len(todo)} to do")
    gpus = [g for g in str(args.gpu or "0").split(",") if g.strip()]
    if args.ray is not None:
        failed = _run_ray(args, out, todo) if todo else []
    elif worker or args.cpu or len(gpus) <= 1:
        if not args.cpu and gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        failed = _run_sequential(args, out, todo)
    else:
        failed = _run_parallel(args, out, todo, gpus)
    if worker:
        return 1 if failed else 0
    if failed and len(failed) == len(seeds):
        print(f"[gallery] no run finished: no gallery under {out}", file=sys.stderr)
    else:  # the page of whatever finished
        res = build_gallery(out, seeds, args.frames, title=f"{dist.stem}: {len(seeds)} samples")
        print(f"gallery: {res['png']}\npage:    {res['html']}")
    if failed:
        print(f"[gallery] failed seeds: {failed}; retry only them (finished runs are kept):\n"
              f"  {retry_command(args, out)}", file=sys.stderr)
        return 1
    return 0
