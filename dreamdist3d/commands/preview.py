"""`dreamdist3d preview --mvdream CKPT (--prompt TEXT | --distribution FILE) ...`: MVDream 4-view DDIM previews.

Writes a PNG grid (one row per sample, 4 view columns; a single sample as 2×2) and a JSON sidecar with every setting.
Samples are kept four at a time in `OUT.partial/` until the grid is written, so after a Ctrl-C the same command
draws only the rest.
With `--pick N` it also names the sample seeds of the N most different previews (`dreamdist3d.sample2d.pick`, compared
by `--features`: colour, form, colour+form or a local image encoder) and
the `dreamdist3d gallery --seeds …` command that lifts exactly those to 3D.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dreamdist3d.commands import finite_float
from dreamdist3d.distribution.gaussian import COVARIANCES

if TYPE_CHECKING:  # for the annotation only: the command imports its sampler module when it runs
    from dreamdist3d.sample2d.mvdream_preview import PreviewRequest

NAME = "preview"
HELP = "MVDream 4-view previews (DDIM + classifier-free guidance) of a text prompt or a learned prompt distribution"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mvdream", required=True, metavar="CKPT",
                   help="MVDream checkpoint sd-v2.1-base-4view.pt (or a .safetensors re-save)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt")
    src.add_argument("--distribution", metavar="FILE",
                     help="learned prompt distribution (.safetensors from `dreamdist3d learn`, or an official .pt)")
    p.add_argument("--class-index", type=int, default=0, help="class of a multi-class official file (default 0)")
    p.add_argument("--scale", type=finite_float, default=1.0,
                   help="γ: spread of distribution samples (0 = mean; default 1)")
    p.add_argument("--covariance", default=None, choices=COVARIANCES,
                   help="sampling law (diag: the paper; lowrank: the K prompts' full covariance; kernel: a mixture "
                        "around the K prompts); default: the file's")
    p.add_argument("--prefix", default=None, help="edit: re-encode the distribution with this prefix")
    p.add_argument("--suffix", default=None, help="edit: re-encode the distribution with this suffix")
    p.add_argument("--negative", default="", help="negative / unconditional prompt (default \"\")")
    p.add_argument("--n", type=int, default=1, help="number of 4-view samples (default 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="DDIM steps (default: the backbone's, 50 for MVDream, 25 for the toy backbone)")
    p.add_argument("--cfg", type=finite_float, default=None,
                   help="classifier-free guidance scale (default: the backbone's, 7.5 for MVDream, 2 for the toy)")
    p.add_argument("--elevation", type=finite_float, default=15.0, help="camera elevation in degrees (default 15)")
    p.add_argument("--azimuth-start", type=finite_float, default=0.0,
                   help="azimuth of the first view in degrees (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="sample i is the 4-view sample of seed+i: prompt sample seed+i (as `sample` and 3D runs) "
                        "and image noise seed+i+2**31; an anchored 3D run with that seed fits exactly these views")
    p.add_argument("--pick", type=int, default=0, metavar="N",
                   help="with --distribution: name the sample seeds of the N most different of the --n previews "
                        "(by --features) to lift to 3D with `dreamdist3d gallery --seeds`")
    p.add_argument("--features", default=None, metavar="SPEC",
                   help="with --pick: what 'different' means: colour (foreground colour histograms; the default), "
                        "form (silhouettes: shape, size, parts), colour+form, or an image encoder from a local "
                        "transformers folder: dinov2=DIR, clip=DIR or dino=DIR (as `dreamdist3d eval` loads them)")
    p.add_argument("--out", default="preview.png",
                   help="output PNG (JSON sidecar written beside it; finished samples kept in OUT.partial/ until the "
                        "grid is written, so the same command after a Ctrl-C goes on)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--skip-encoder-check", action="store_true",
                   help="use a distribution even if it was learned against a different text encoder")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.io import check_writable
    from dreamdist3d.runs import pick_device
    from dreamdist3d.sample2d.mvdream_preview import PreviewRequest, run_preview

    check_writable(args.out, "--out", suffix=".png")  # before the model is loaded and the views are sampled
    check_writable(Path(args.out).with_suffix(".json"), "--out (its .json sidecar)")
    device = str(pick_device(args.device, key="--device"))
    req = PreviewRequest(
        mvdream=str(args.mvdream), prompt=args.prompt, distribution=args.distribution, class_index=args.class_index,
        scale=args.scale, covariance=args.covariance, prefix=args.prefix, suffix=args.suffix, negative=args.negative,
        n=args.n,
        steps=args.steps, cfg=args.cfg, elevation=args.elevation, azimuth_start=args.azimuth_start, seed=args.seed,
        device=device, dtype=args.dtype, check_encoder=not args.skip_encoder_check, pick=args.pick,
        pick_features=args.features,
    )
    try:
        side = run_preview(req, Path(args.out), progress=True)
    except KeyboardInterrupt as e:  # (SIGTERM too) the finished batches of samples stay; say how to go on
        from dreamdist3d.io import kept_rows
        from dreamdist3d.sample2d.mvdream_preview import partial_folder

        folder = partial_folder(Path(args.out))
        raise type(e)(f"{kept_rows(folder, 'images')} of {args.n} samples are kept in {folder}; run the same command "
                      "again to go on") from None
    g = side["grid"]
    print(f"wrote {args.out} ({g['rows']}×{g['cols']} views of {g['tile']} px) and "
          f"{Path(args.out).with_suffix('.json')}")
    if side["picked_seeds"]:
        seeds = ",".join(map(str, side["picked_seeds"]))
        print(f"the {args.pick} most different of the {args.n} samples ({side['pick_features']}): seeds {seeds}\n"
              f"lift them: {gallery_command(req, seeds)}")
    return 0


def gallery_command(req: PreviewRequest, seeds: str) -> str:
    """The `dreamdist3d gallery` line that lifts `seeds` of this preview: the same checkpoint, prompt-sample settings
    (γ, law, edits, class) and 4-view sampler (steps, CFG, negative prompt, cameras), so each anchored run fits the
    very views the grid shows; settings left at their defaults are left out."""
    import json
    import shlex

    from dreamdist3d.sample2d.mvdream_preview import PreviewRequest

    toy = req.mvdream.split(":", 1)[0] == "toy"
    words = ["dreamdist3d", "gallery", "--distribution", req.distribution, "--seeds", seeds,
             *(["--config", "configs/toy/toy-3d.yaml"] if toy else []), "--mvdream", req.mvdream]
    default = PreviewRequest(mvdream=req.mvdream)
    keys = {"scale": "system.prompt_processor.scale", "covariance": "system.prompt_processor.covariance",
            "prefix": "system.prompt_processor.prefix", "suffix": "system.prompt_processor.suffix",
            "class_index": "system.prompt_processor.class_index", "steps": "system.anchor.sampler_steps",
            "cfg": "system.anchor.guidance_scale", "negative": "system.anchor.negative_prompt",
            "elevation": "system.anchor.elevation", "azimuth_start": "system.anchor.azimuth_start"}
    for name, key in keys.items():
        value = getattr(req, name)
        if value is not None and value != getattr(default, name):  # a string as a YAML double-quoted scalar
            words.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return shlex.join(words)
