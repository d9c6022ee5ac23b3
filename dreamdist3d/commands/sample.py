"""`dreamdist3d sample`: Stable Diffusion 2.1 images drawn from one distribution or a mixture of several."""

from __future__ import annotations

import argparse
import sys
from typing import Tuple

from dreamdist3d.commands import finite_float
from dreamdist3d.distribution.gaussian import COVARIANCES

NAME = "sample"
HELP = "generate SD 2.1 images from a prompt distribution (or a mixture), with text edits and diversity scale γ"


def add_common_arguments(p: argparse.ArgumentParser, n_default: int, n_help: str) -> None:
    """Arguments shared by `sample` and `sweep`."""
    g = p.add_argument_group("distributions")
    g.add_argument("--distribution", action="append", required=True, metavar="FILE",
                   help="distribution file (.safetensors from `dreamdist3d learn`, or an official prompt_learner.pt); "
                        "repeat to mix several")
    g.add_argument("--weight", type=finite_float, nargs="+", metavar="W",
                   help="mixture weight per distribution, summing to 1 (default: equal shares)")
    g.add_argument("--scale", type=finite_float, nargs="+", metavar="GAMMA",
                   help="diversity scale γ ≥ 0, one value or one per distribution (0: the mean prompt; default 1)")
    g.add_argument("--class-index", type=int, nargs="+", metavar="N",
                   help="class of a multi-class official .pt, one value or one per distribution (default 0)")
    g.add_argument("--prefix", default=None,
                   help="text before the learned tokens (edit; default: the distribution's training prefix)")
    g.add_argument("--suffix", default=None,
                   help='text after the learned tokens (edit, e.g. "jumping on the grass"; default: training suffix)')
    g.add_argument("--covariance", default=None, choices=COVARIANCES,
                   help="sampling law: diag (the paper: per-token σ), lowrank (the K prompts' full covariance) or "
                        "kernel (a mixture around the K prompts); default: what each file records (official: diag)")

    m = p.add_argument_group("model and sampling")
    m.add_argument("--sd21", required=True, metavar="PATH",
                   help="local diffusers Stable Diffusion 2.1 folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/); "
                        "nothing is downloaded")
    m.add_argument("--n", type=int, default=n_default, help=n_help)
    m.add_argument("--negative", default="", help="negative prompt (default empty, as the pipeline)")
    m.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    m.add_argument("--cfg", type=finite_float, default=7.5,
                   help="classifier-free guidance scale (default 7.5; ≤1 disables)")
    m.add_argument("--seed", type=int, default=0,
                   help="base seed: image i uses sample seed seed+i and latent seed seed+i+2**31 (default 0)")
    m.add_argument("--same-latents", action="store_true",
                   help="one latent noise for every image, so images differ only by their prompt sample")
    m.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    m.add_argument("--height", type=int, default=None, help="image height (default: the model's native size)")
    m.add_argument("--width", type=int, default=None, help="image width (default: the model's native size)")
    m.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta (default 0)")
    m.add_argument("--scheduler", default=None, choices=["ddim", "pndm", "euler", "euler-a", "dpm++"],
                   help="replace the folder's scheduler (default: the folder's, DDIM for SD 2.1)")

    d = p.add_argument_group("device")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    d.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="pipeline dtype (default: fp16 on CUDA, fp32 on CPU); distributions are fitted in fp32")
    d.add_argument("--attention-slicing", action="store_true", help="diffusers attention slicing (less GPU memory)")
    d.add_argument("--vae-tiling", action="store_true", help="diffusers VAE tiling (less GPU memory when decoding)")

    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--title", default="", help="a line shown above the grid (e.g. what model made it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def prepare(args: argparse.Namespace) -> Tuple[object, object, object]:
    """(sampler, fitted mixture, settings) from parsed arguments; cheap checks come before the model is loaded."""
    from dreamdist3d.distribution import DistributionSpec
    from dreamdist3d.io import check_writable
    from dreamdist3d.sample2d.sd21 import SampleSettings, SD21Sampler, check_sd21_folder, resolve_device, resolve_dtype

    check_writable(args.out, "--out", is_dir=True)  # before the model is loaded
    spec = DistributionSpec.from_lists(args.distribution, args.weight, args.scale, args.class_index, args.prefix,
                                       args.suffix, args.covariance)
    settings = SampleSettings(
        n=args.n, steps=args.steps, cfg=args.cfg, seed=args.seed, batch_size=args.batch_size, negative=args.negative,
        height=args.height, width=args.width, eta=args.eta, same_latents=args.same_latents,
    ).validate()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    check_sd21_folder(args.sd21)
    sampler = SD21Sampler.from_folder(args.sd21, device=device, dtype=dtype, scheduler=args.scheduler,
                                      attention_slicing=args.attention_slicing, vae_tiling=args.vae_tiling)
    mixture = sampler.fit(spec)
    return sampler, mixture, settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, 16, "number of images (default 16)")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write embeddings.safetensors with every drawn prompt embedding and the law's mean/std")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (its images, sidecars, grid.png, run.json); without it a "
                        "finished run there is refused, and a stopped one (Ctrl-C) continues if its settings are these")


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.sample2d.run_files import written_images
    from dreamdist3d.sample2d.sd21 import check_out_folder, sample_to_folder

    check_out_folder(args.out, args.overwrite)  # before any model is loaded
    sampler, mixture, settings = prepare(args)
    try:
        records = sample_to_folder(sampler, mixture, settings, args.out, save_embeddings=args.save_embeddings,
                                   command=sys.argv[:], title=args.title, overwrite=args.overwrite,
                                   progress=not args.quiet)
    except KeyboardInterrupt as e:  # (SIGTERM too) the images written so far stay; say how to go on
        written = len(written_images(args.out))
        raise type(e)(f"{written} of {settings.n} images are written in {args.out}; run the same command again to go "
                      "on (they are kept)") from None
    t = sampler.timings
    print(f"wrote {len(records)} images to {args.out} (contact sheet grid.png, settings in each PNG, <i>.json and "
          "run.json); "
          f"pipeline {t['pipeline']:.1f}s, fit {t['fit']:.2f}s, on {sampler.device} {records[0]['dtype']}")
    return 0
