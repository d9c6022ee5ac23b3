"""`dreamdist3d toyworld <subcommand>`: the toy world (train the tiny backbone, sample from it, …).

Sub-subcommands live in `SUBCOMMANDS`: name -> `Subcommand(help, add_arguments, run)`. To add one (e.g. `demo`,
`eval`), write its `add_arguments(parser)` and `run(args) -> int` (here or in another module) and add an entry;
nothing else needs to change.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict

from dreamdist3d.commands import finite_float, ray_options

NAME = "toyworld"
HELP = ("the toy world (no weights needed): train its backbone and reconstructor, run the whole method end to end "
        "(demo), and measure it (eval, arms, lift)")


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------------------------------- train
def _train_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_train import TrainConfig

    d = TrainConfig()
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {d.steps}, the shipped weights' count; the result then does not "
                        "depend on the machine's speed)")
    p.add_argument("--minutes", type=finite_float, default=None,
                   help="time budget instead: the step count is fixed from the speed of the first 20 steps so that "
                        "training ends after about this many minutes (with --steps: a cap on wall time)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--float32", action="store_true",
                   help="turn every speed switch off (bfloat16 autocast, channels-last, math attention, sparse token "
                        "rows, fused Adam): plain float32, 1.4× slower; for CPUs without bfloat16 support")
    p.add_argument("--out", default="outputs/toyworld/toy-backbone.safetensors",
                   help="weights file to write (a JSON record is written beside it; to refresh the shipped weights: "
                        "dreamdist3d/backbones/data/toy-backbone.safetensors)")
    _trainer_arguments(p, d.ckpt_every)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _trainer_arguments(p: argparse.ArgumentParser, ckpt_every: int) -> None:
    """The flags every toy trainer shares: checkpoint, resume, threads, log, quiet, debug."""
    p.add_argument("--checkpoint", default=None,
                   help="training checkpoint (default: <out stem>-ckpt.pt beside --out, or in outputs/toyworld/ when "
                        f"--out is in the package's data folder), written atomically every {ckpt_every} steps")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (same arguments)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log", default=None, help="append JSON-lines progress (step, loss, lr) to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _train_run(args: argparse.Namespace) -> int:
    import torch

    from dreamdist3d.recipes.toy_train import FLOAT32, TrainConfig, train_toy_backbone

    if args.threads:
        torch.set_num_threads(int(args.threads))
    cfg = TrainConfig(seed=args.seed, **(FLOAT32 if args.float32 else {}))
    minutes = args.minutes
    if args.steps is not None:
        cfg.steps = int(args.steps)
    elif minutes is not None:
        cfg.steps = 10**7  # fixed from the measured speed after 20 steps
    command = " ".join(["dreamdist3d"] + [shlex.quote(a) for a in sys.argv[1:]])
    rec = train_toy_backbone(
        cfg, args.out, checkpoint=args.checkpoint, resume=args.resume, minutes=minutes, device=args.device,
        progress=not args.quiet, command=command, log_path=args.log,
    )
    print(
        f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: {rec['steps']} steps in "
        f"{rec['train_minutes']} min (+{rec['cache_render_minutes']} min rendering), final loss {rec['final_loss']}"
    )
    return 0


# ----------------------------------------------------------------------------------------------------- train-lgm
def _train_lgm_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_lgm_train import DEFAULT_OUT, LGMTrainConfig

    d = LGMTrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps}, the shipped "
                                                                "reconstructor's)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch", type=int, default=d.batch, help=f"objects per step (default {d.batch})")
    p.add_argument("--cache-objects", type=int, default=d.cache_objects,
                   help=f"toy objects rendered for training (default {d.cache_objects})")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"weights file to write (default {DEFAULT_OUT}; a JSON record is written beside it; to refresh "
                        "the shipped reconstructor: dreamdist3d/reconstruct/data/toy-lgm.safetensors)")
    _trainer_arguments(p, d.ckpt_every)


def _train_lgm_run(args: argparse.Namespace) -> int:
    import torch

    from dreamdist3d.recipes.toy_lgm_train import LGMTrainConfig, train_toy_lgm

    if args.threads:
        torch.set_num_threads(int(args.threads))
    for flag, value in (("--steps", args.steps), ("--batch", args.batch), ("--cache-objects", args.cache_objects)):
        if value < 1:
            raise ValueError(f"{flag} must be ≥ 1, got {value}")
    cfg = LGMTrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, cache_objects=args.cache_objects)
    command = " ".join(["dreamdist3d"] + [shlex.quote(a) for a in sys.argv[1:]])
    info = train_toy_lgm(cfg, args.out, checkpoint=args.checkpoint, resume=args.resume, progress=not args.quiet,
                         command=command, log_path=args.log)
    rec = info["record"]
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}: {rec['steps']} steps in "
          f"{rec['train_minutes']} min (+{rec['cache_render_minutes']} min rendering), final loss {rec['final_loss']}")
    return 0


# ----------------------------------------------------------------------------------------------------- sample
def _sample_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE

    p.add_argument("--prompt", action="append", required=True, help="caption (repeat for several)")
    p.add_argument("--weights", default=None, help="toy backbone weights (default: the shipped ones)")
    p.add_argument("--views", type=int, choices=[1, 4], default=4, help="4-view sets with cameras, or single views")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--cfg", type=finite_float, default=DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}, measured best for the shipped "
                        "weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, help="upscale factor of the PNG (nearest)")
    p.add_argument("--out", default="toy-samples.png", help="PNG grid: one row per sample")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _sample_run(args: argparse.Namespace) -> int:
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.backbones.toy import generate
    from dreamdist3d.images import save_png, tile_grid, to_uint8
    from dreamdist3d.io import check_writable

    for flag, value in (("--n", args.n), ("--steps", args.steps), ("--scale", args.scale)):
        if value < 1:  # --n 0 would write an empty grid (PIL: tile cannot extend outside image)
            raise ValueError(f"{flag} must be ≥ 1, got {value}")
    check_writable(args.out, "--out", suffix=".png")  # before the backbone is loaded and the samples drawn
    bb = load_backbone(f"toy:{args.weights or ''}", config_key="--weights")
    prompts = [p for p in args.prompt for _ in range(args.n)]
    images = generate(bb, prompts, steps=args.steps, cfg=args.cfg, num_frames=args.views, seed=args.seed)
    n, f, _, h, w = images.shape  # one row per sample, one column per view
    tiles = list(to_uint8(images, channels_first=True).reshape(n * f, h, w, 3))
    save_png(tile_grid(tiles, cols=f), args.out, upscale=args.scale)
    print(f"wrote {args.out} ({len(prompts)} samples × {args.views} views)")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_demo import add_arguments

    add_arguments(p)
    ray_options.add_arguments(p)


def _demo_run(args: argparse.Namespace) -> int:
    from dreamdist3d.recipes.toy_demo import cli_run, config_from_args

    cluster = ray_options.cluster_config(args, cpu=str(config_from_args(args).device) == "cpu")
    return _with_runner(cluster, lambda runner: cli_run(args, runner=runner))


def _with_runner(cluster, fn: Callable) -> int:
    """fn(runner): a Ray runner for the flags' cluster (`--ray`), or None (the objects are made here)."""
    if cluster is None:
        return fn(None)
    from dreamdist3d.cluster import RayRunner

    with RayRunner(cluster) as runner:
        return fn(runner)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_eval import add_arguments

    add_arguments(p)


def _eval_run(args: argparse.Namespace) -> int:
    from dreamdist3d.recipes.toy_eval import cli_run

    rc = cli_run(args)
    if rc == 0 and not args.caption_check_only:  # report.html beside the evaluator's report.json / .md / sheets
        from dreamdist3d.evaluation.toy_report import write_toy_html

        print(f"[toy-eval] page: {write_toy_html(args.out)}", file=sys.stderr)
    return rc


def _arms_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_arms import add_arguments

    add_arguments(p)
    ray_options.add_arguments(p)


def _arms_run(args: argparse.Namespace) -> int:
    from dreamdist3d.recipes.toy_arms import cli_run

    cluster = ray_options.cluster_config(args, cpu=True) if args.n_3d > 0 and not args.table_only else None
    return _with_runner(cluster, lambda runner: cli_run(args, runner=runner))


def _lift_arguments(p: argparse.ArgumentParser) -> None:
    from dreamdist3d.recipes.toy_lift import add_arguments

    add_arguments(p)


def _lift_run(args: argparse.Namespace) -> int:
    from dreamdist3d.recipes.toy_lift import cli_run

    return cli_run(args)


SUBCOMMANDS: Dict[str, Subcommand] = {
    "train": Subcommand("train the toy backbone from scratch (≈19 min on 2 CPU cores)", _train_arguments, _train_run),
    "train-lgm": Subcommand("train the toy reconstructor (LGM's architecture at toy size: 4 views -> 3D Gaussians) "
                            "on renders of toy objects", _train_lgm_arguments, _train_lgm_run),
    "sample": Subcommand("generate images of captions with the toy backbone", _sample_arguments, _sample_run),
    "demo": Subcommand("the whole method end to end: reference set -> distribution -> 2D/4-view samples -> N 3D runs, "
                       "meshes, turntables and a gallery (minutes on a CPU)", _demo_arguments, _demo_run),
    "eval": Subcommand("evaluate K=32 vs K=1 vs a caption on toy reference sets (in-distribution rate, coverage, "
                       "density, diversity)", _eval_arguments, _eval_run),
    "arms": Subcommand("compare learning objectives × covariance modes (and K=1, captions) over seeds on toy "
                       "reference sets: coverage, in-distribution rate, colour spread (mean ± std)", _arms_arguments,
                       _arms_run),
    "lift": Subcommand("is each 3D object its own 4-view sample? SDS-only vs anchored runs on captions and learned "
                       "prompt samples: caption fidelity, agreement, parts kept, time per object (mean ± std)",
                       _lift_arguments, _lift_run),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toyworld_command", metavar="SUBCOMMAND")
    for name, sc in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=sc.help, description=sc.help)
        sc.add_arguments(p)
        p.set_defaults(_toyworld_run=sc.run)


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "_toyworld_run", None)
    if fn is None:
        names = ", ".join(SUBCOMMANDS)
        print(f"dreamdist3d toyworld: choose a subcommand ({names}); see `dreamdist3d toyworld --help`",
              file=sys.stderr)
        return 2
    return int(fn(args) or 0)
