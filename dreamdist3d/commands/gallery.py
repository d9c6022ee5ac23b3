"""`dreamdist3d gallery --distribution F (--n 8 | --seeds S,S,…) [--lift sds|lgm|lgm+sds] [--lgm L] [--mvdream M]
[--config C] [--gpu 0,1 | --ray [auto|ADDRESS]] [key=value ...]`: N 3D objects of one distribution with seeds
0..N-1 or the seeds given (one prompt sample each; `dreamdist3d preview --pick N` names the seeds of the N most
different previews), then one gallery of the objects: a PNG grid of turntable frames (one row per seed) and an HTML
page with the turntable videos side by side, each beside the 4-view sample it came from.

How a seed becomes an object (`--lift`, `recipes.gallery`):
- `sds` (default): a text-to-3D run of `--config` (SDS, anchored to the 4-view sample if the config says so);
- `lgm`: feed-forward, seconds per object: the seed's 4-view sample (`preview`'s images) -> the reconstructor
  `--lgm` (`system.anchor.reconstructor`) -> Gaussians -> turntable, splat .ply and meshes (`recipes/reconstruct.py`);
- `lgm+sds`: a 3D run anchored to renders of that reconstruction (`system.anchor.source=lgm`), then SDS.

One GPU (or the CPU): the objects are made one after another in this process, sharing the loaded MVDream model
(and reconstructor); the seconds each took are printed.
Several GPUs (`--gpu 0,1,2`): one worker process per GPU, each taking seeds from its share of the list; Ctrl-C or
SIGTERM is handed on to each, and the command waits while they save their runs.
A Ray cluster (`--ray [auto|ADDRESS]`): each seed a task on a pool of actors, one GPU each (`--cpu`: CPUs), that
load the model once; results come back as files unless `--shared-fs` (`dreamdist3d.cluster`).
Finished runs are kept (their turntable is at the config's last step): re-running the command only makes the
missing seeds, and a run that was stopped (Ctrl-C, SIGTERM) continues from its `ckpts/last.ckpt`. Failed seeds are
listed with the command that retries them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from dreamdist3d.commands import ray_options
from dreamdist3d.config import REPO_ROOT, repo_file

NAME = "gallery"
HELP = ("N 3D objects of one distribution (seeds 0..N-1 or --seeds; runs of --config, by default anchored to each "
        "seed's 4-view sample, or feed-forward with --lift lgm), then a PNG grid and an HTML page of their turntables")
LIFTS = ("sds", "lgm", "lgm+sds")  # recipes.gallery.LIFTS (not imported here: --help loads no torch)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--distribution", required=True, help="the distribution file (.safetensors or official .pt)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--n", type=int, default=8, help="number of runs / seeds (default 8: seeds 0..7)")
    which.add_argument("--seeds", type=seed_list, default=None, metavar="S,S,…",
                       help="these seeds instead, comma-separated (e.g. those `dreamdist3d preview --pick N` names)")
    p.add_argument("--first-seed", type=int, default=0, help="seed of the first run with --n (default 0)")
    p.add_argument("--lift", choices=LIFTS, default="sds",
                   help="how a seed becomes 3D: sds = a text-to-3D run of --config (default; the default config "
                        "anchors it to the seed's 4-view sample, then SDS); lgm = feed-forward reconstruction "
                        "of its 4-view sample (seconds per object); lgm+sds = a run anchored to that reconstruction, "
                        "then SDS")
    p.add_argument("--lgm", default=None, metavar="CKPT",
                   help="the reconstructor of --lift lgm / lgm+sds: an LGM checkpoint (e.g. model_fp16_fixrot."
                        "safetensors), or 'toy' (sets system.anchor.reconstructor; default: the config's)")
    p.add_argument("--mvdream", default=None, metavar="CKPT",
                   help="the MVDream checkpoint sd-v2.1-base-4view.pt (sets system.guidance."
                        "pretrained_model_name_or_path; default: the config's)")
    p.add_argument("--config", default="configs/dreamdist-mvdream.yaml",
                   help="launch config (default configs/dreamdist-mvdream.yaml)")
    p.add_argument("--out", default=None,
                   help="gallery folder (default outputs/gallery/<distribution stem>, with -lgm / -lgm+sds for those "
                        "lifts)")
    p.add_argument("--gpu", default=None, help="GPU id(s) of this machine (default 0); several ids run one worker "
                                                "per GPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --ray: on the cluster's CPUs)")
    p.add_argument("--frames", type=int, default=6, help="turntable frames per row of the PNG grid (default 6)")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="no meshes (by default each object's GLB/OBJ/PLY are exported as `launch.py --export` does, "
                        "with the config's system.exporter, and shown in the page)")
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


def _overrides(args: argparse.Namespace) -> List[str]:
    from dreamdist3d.recipes.gallery import lift_settings

    return [*lift_settings(args.lift, args.lgm, args.mvdream), *args.overrides]


def _run_sequential(args, out: Path, seeds: List[int]) -> List[int]:
    from dreamdist3d.lift3d.gallery import run_checkpoint
    from dreamdist3d.recipes.gallery import run_seed, run_settings
    from dreamdist3d.recipes.lift3d import load_guidance_backbone

    failed, backbone, overrides = [], None, _overrides(args)
    device = "cpu" if args.cpu else "auto"
    what = "reconstructing" if args.lift == "lgm" else "training"
    for i, seed in enumerate(seeds):
        settings = run_settings(args.distribution, out, seed, overrides)
        print(f"[gallery] seed {seed} ({i + 1}/{len(seeds)}): {what} ({args.config} {' '.join(settings)})", flush=True)
        t0 = time.perf_counter()
        try:
            if backbone is None:  # the guidance checkpoint, loaded once for all objects
                backbone = load_guidance_backbone(args.config, settings, device=device)
            folder = run_seed(backbone, out, seed, config=args.config, distribution=args.distribution,
                              overrides=overrides, lift=args.lift, device=device, export=args.export)
            print(f"[gallery] seed {seed} ({i + 1}/{len(seeds)}) done in {time.perf_counter() - t0:.1f} s"
                  f"{_stages(folder) if args.lift == 'lgm' else ''}", flush=True)
        except KeyboardInterrupt as e:  # (SIGTERM too) the run kept its step in last.ckpt: say how to go on here
            step = getattr(e, "step", None)
            kept = (f"seed {seed} stopped at step {step}, kept in {run_checkpoint(out, seed)}"
                    if step is not None else f"seed {seed} was not finished")
            worker = getattr(args, "worker_seeds", None)  # (the parent of --gpu workers says how to go on)
            raise type(e)(kept if worker else _go_on(args, out, kept)) from None
        except Exception as e:  # keep going: one bad seed should not lose the others
            if args.debug:
                raise
            print(f"[gallery] seed {seed} failed: {e}", file=sys.stderr)
            failed.append(seed)
    return failed


def _stages(folder: Path) -> str:
    """" (prompt 0.01 s, views 0.52 s, …)": the seconds of a reconstruction's stages, from its record."""
    import json

    from dreamdist3d.recipes.reconstruct import RECORD

    seconds = json.loads((Path(folder) / RECORD).read_text())["seconds"]
    return " (" + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items() if k != "total") + ")"


def _check_gpus(gpus: List[str]) -> None:
    """Several --gpu workers need GPUs: without CUDA they would share this machine's CPU cores, each run many times
    slower than one alone (measured: 35× with two toy workers on 2 cores)."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--gpu {','.join(gpus)}: this torch build sees no CUDA GPU, so the workers would share the "
                         "CPU cores; drop --gpu to make the objects one after another here")


def _go_on(args, out: Path, what: str) -> str:
    """The message of a stopped gallery: what stopped, then the command that goes on."""
    return (f"{what}; run the same command again to go on (finished runs are kept, a stopped run continues where it "
            f"stopped):\n  {retry_command(args, out)}")


def _run_parallel(args, out: Path, seeds: List[int], gpus: List[str], last: int) -> List[int]:
    """One worker per GPU; worker i takes seeds[i::len(gpus)] one after another. The workers run in sessions of
    their own, so a Ctrl-C at the terminal reaches this process alone; it hands Ctrl-C (or a SIGTERM) on to each
    worker once, and waits while they save their runs."""
    from dreamdist3d.errors import Terminated
    from dreamdist3d.lift3d.gallery import is_finished, run_checkpoint, run_dir

    procs = []
    for i, gpu in enumerate(gpus):
        share = seeds[i::len(gpus)]
        if not share:
            continue
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
        cmd = [sys.executable, "-m", "dreamdist3d.cli", "gallery", "--distribution", args.distribution,
               "--config", args.config, "--out", str(out), "--gpu", "0", "--frames", str(args.frames),
               *_lift_flags(args), "--worker-seeds", ",".join(map(str, share)), *args.overrides]
        procs.append((gpu, share, subprocess.Popen(cmd, env=env, start_new_session=True)))
    try:
        for gpu, share, p in procs:
            if p.wait() != 0:
                print(f"[gallery] worker on GPU {gpu} (seeds {share}) exited with {p.returncode}", file=sys.stderr)
    except KeyboardInterrupt as e:
        sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        while any(p.poll() is None for _, _, p in procs):
            for _, _, p in procs:
                if p.poll() is None:
                    p.send_signal(sig)
            try:
                for _, _, p in procs:
                    p.wait()
            except KeyboardInterrupt:  # again: handed on again (a second Ctrl-C skips the workers' test stage)
                sig = signal.SIGINT
        stopped = [s for s in seeds if not is_finished(run_dir(out, s), last) and run_checkpoint(out, s).is_file()]
        raise type(e)(_go_on(args, out, f"the workers stopped; seed(s) {', '.join(map(str, stopped))} kept their "
                                        "step in ckpts/last.ckpt" if stopped else "the workers stopped")) from None
    failed = []
    for gpu, share, _ in procs:
        failed += [s for s in share if not is_finished(run_dir(out, s), last, args.export)]
    return failed


def _run_ray(args, out: Path, seeds: List[int]) -> List[int]:
    """The seeds as tasks on a Ray cluster (`dreamdist3d.cluster`): the same run of each seed as `_run_sequential`,
    with the config, distribution and output folder given as absolute paths (the same on every node)."""
    from dreamdist3d.cluster import RayRunner
    from dreamdist3d.recipes.gallery import gallery_task

    cluster = ray_options.cluster_config(args)
    config, dist, out = str(Path(args.config).resolve()), str(Path(args.distribution).resolve()), out.resolve()
    overrides = _overrides(args)
    task = gallery_task(config, dist, out, seeds[0], overrides, lift=args.lift, device="cpu" if args.cpu else "auto",
                        export=args.export)
    with RayRunner(cluster) as runner:
        res = runner(task, out, seeds)
    for seed, error in sorted(res.failed.items()):
        print(f"[gallery] seed {seed} failed: {error}", file=sys.stderr)
    return sorted(res.failed)


def _lift_flags(args: argparse.Namespace) -> List[str]:
    return [*(["--lift", args.lift] if args.lift != "sds" else []), *(["--lgm", args.lgm] if args.lgm else []),
            *(["--mvdream", args.mvdream] if args.mvdream else []), *([] if args.export else ["--no-export"])]


def retry_command(args: argparse.Namespace, out: Path) -> str:
    """This command again, with the folder spelled out: it runs only the seeds that have no finished run."""
    which = ["--seeds", ",".join(map(str, args.seeds))] if args.seeds else ["--n", str(args.n)]
    if not args.seeds and args.first_seed:
        which += ["--first-seed", str(args.first_seed)]
    parts = ["dreamdist3d", "gallery", "--distribution", args.distribution, *which, *_lift_flags(args),
             "--config", args.config, "--out", str(out), *(["--cpu"] if args.cpu else []),
             *(["--gpu", args.gpu] if args.gpu else []),
             *(["--frames", str(args.frames)] if args.frames != 6 else []), *ray_options.flags(args), *args.overrides]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.lift3d.gallery import build_gallery, is_finished, run_dir  # (lift3d loads torch models)
    from dreamdist3d.recipes.gallery import last_step

    dist = Path(args.distribution)
    if not dist.is_file():
        raise FileNotFoundError(f"--distribution {dist} does not exist")
    config = repo_file(args.config)  # the default config is found from any working directory
    if not config.is_file():
        raise FileNotFoundError(f"--config {args.config} does not exist, neither here nor in {REPO_ROOT}; pass the "
                                "path of a launch config (e.g. a run's configs/parsed.yaml)")
    args.config = str(config)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be key=value, got {bad}")
    if args.seeds and args.first_seed:
        raise ValueError("--first-seed goes with --n; with --seeds list every seed")
    if args.lgm and args.lift == "sds":
        raise ValueError("--lgm names the reconstructor of --lift lgm or --lift lgm+sds; with --lift sds (the default) "
                         "no reconstructor is used")
    if args.ray is not None and args.gpu is not None:
        raise ValueError("--gpu picks GPUs of this machine; with --ray each worker takes one GPU of the cluster "
                         "(how many: --actors N)")
    ray_options.cluster_config(args)  # a bad --ray value is an error before anything runs
    out = Path(args.out) if args.out else Path("outputs") / "gallery" / (
        dist.stem + ("" if args.lift == "sds" else f"-{args.lift}"))
    out.mkdir(parents=True, exist_ok=True)
    worker = getattr(args, "worker_seeds", None)
    seeds = seed_list(worker) if worker else args.seeds or list(range(args.first_seed, args.first_seed + args.n))
    seeds = list(dict.fromkeys(seeds))
    last = last_step(args.config, args.distribution, out, _overrides(args), args.lift)  # (a config error: here)
    todo = [s for s in seeds if not is_finished(run_dir(out, s), last, args.export)]
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
        _check_gpus(gpus)
        failed = _run_parallel(args, out, todo, gpus, last)
    if worker:
        return 1 if failed else 0
    if failed and len(failed) == len(seeds):
        print(f"[gallery] no run finished: no gallery under {out}", file=sys.stderr)
    else:  # the page of whatever finished
        how = {"sds": "", "lgm": ", feed-forward (LGM)", "lgm+sds": ", LGM then SDS"}[args.lift]
        res = build_gallery(out, seeds, args.frames, title=f"{dist.stem}: {len(seeds)} samples{how}")
        from dreamdist3d.web.serve import view_hint

        print(f"gallery: {res['png']}\npage:    {res['html']}\nview it: {view_hint(res['html'])}")
    if failed:
        print(f"[gallery] failed seeds: {failed}; retry only them (finished runs are kept):\n"
              f"  {retry_command(args, out)}", file=sys.stderr)
        return 1
    return 0
