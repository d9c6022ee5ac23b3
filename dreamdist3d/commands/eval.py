"""`dreamdist3d eval --refs DIR --samples DIR [--samples DIR …] --dinov2 DIR --clip DIR [--dino DIR] [--prompt TEXT]
--out DIR [--views N] [--device D]`: measure sample sets (image folders, or 3D runs read at N turntable views) against
a reference image folder with FD/KD-DINOv2, precision/recall/density/coverage, diversity, CLIP-I, DINO-I and CLIP-T,
from local transformers model folders; writes report.json, report.md and report.html under --out
(`dreamdist3d.evaluation`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "eval"
HELP = ("measure sample folders (2D images or 3D runs) against reference images: FD/KD-DINOv2, precision/recall/"
        "density/coverage, diversity, CLIP-I/DINO-I/CLIP-T; writes report.json/.md/.html")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refs", required=True, help="folder of reference images")
    p.add_argument("--samples", action="append", required=True, metavar="DIR",
                   help="folder of generated images, or of 3D runs (save/*.mp4 turntables); repeat for several sets")
    p.add_argument("--name", action="append", default=None, metavar="NAME",
                   help="display name of each --samples set, in order (default: the folder names)")
    p.add_argument("--dinov2", required=True, metavar="DIR",
                   help="local transformers Dinov2Model folder (e.g. dinov2-base)")
    p.add_argument("--clip", required=True, metavar="DIR", help="local transformers CLIPModel folder (CLIP-I, CLIP-T)")
    p.add_argument("--dino", default=None, metavar="DIR",
                   help="local transformers ViTModel folder of DINO ViT-S/16 (DINO-I; skipped when not given)")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="text for CLIP-T (e.g. the edit prompt)")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (also holds the feature cache)")
    p.add_argument("--views", type=int, default=8, help="turntable frames read per 3D run (default 8)")
    p.add_argument("--device", default="auto",
                   help="torch device: cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--kid-subsets", type=int, default=100, help="random subsets for KD's mean and std (default 100)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.evaluation.pipeline import EvalSpec, run_eval
    from dreamdist3d.evaluation.report import format_table

    if args.name and len(args.name) != len(args.samples):
        raise ValueError(f"--name: give one per --samples ({len(args.samples)}), got {len(args.name)}")
    spec = EvalSpec(refs=args.refs, samples=list(args.samples), dinov2=args.dinov2, clip=args.clip, dino=args.dino,
                    prompt=args.prompt, out=args.out, views=args.views, device=args.device, batch_size=args.batch_size,
                    kid_subsets=args.kid_subsets, progress=not args.quiet, names=list(args.name or []))
    try:
        report = run_eval(spec)
    except KeyboardInterrupt as e:  # (SIGTERM too) the features embedded so far were saved on the way out
        from dreamdist3d.evaluation.features import FeatureCache
        from dreamdist3d.evaluation.pipeline import CACHE_NAME

        cache = Path(args.out) / CACHE_NAME
        held = len(FeatureCache(cache).data)
        raise type(e)(f"{cache} holds {held} image features; run the same command again to go on (they are not "
                      "computed again)") from None
    print(format_table(report))
    for note in report["notes"]:
        print(f"note: {note}")
    c = report["cache"]
    n_img = report["refs"]["n"] + sum(st["metrics"]["n"] for st in report["sets"])
    print(f"[eval] {n_img} images x {len(report['models'])} models: {c['embedded']} features computed, "
          f"{c['from_cache']} from the cache; {report['seconds']} s on {report['device']}", file=sys.stderr)
    print(f"[eval] wrote {args.out}/report.html, report.md, report.json", file=sys.stderr)
    return 0
