"""`dreamdist3d learn`: learn a prompt distribution from a folder of reference images.

    dreamdist3d learn --images refs/ --backbone mvdream --mvdream sd-v2.1-base-4view.pt --out cathedral.safetensors
    dreamdist3d learn --images refs/ --backbone sd21 --sd21 stable-diffusion-2-1/ --steps 2000
    dreamdist3d learn --images renders/ --mode 4view --backbone mvdream --mvdream ... # object folders + cameras.json
    dreamdist3d learn --images refs/ ... --resume latest          # continue the newest run of this name
    dreamdist3d learn --config configs/dreamdist-learn.yaml images=refs/ mvdream=ckpt.pt steps=500

Flags and `key=value` overrides set the same keys as configs/dreamdist-learn.yaml (`LearnConfig`); flags win over
`key=value`, which win over `--config`. See dreamdist3d/recipes/learn.py for the run folder layout and multi-GPU use.
"""

from __future__ import annotations

import argparse
import os

from dreamdist3d.commands import finite_float
from dreamdist3d.errors import exit_code

NAME = "learn"
HELP = "learn a prompt distribution from reference images (MVDream 2D / 4-view, SD 2.1, any Backbone)"

# flag -> (config key, type, help)
FLAGS = [
    ("--images", "images", str, "folder of reference images (or of multi-view object folders with cameras.json)"),
    ("--backbone", "backbone", str, "mvdream | sd21 (paths from --mvdream / --sd21) | toy[:WEIGHTS] | mvdream:PATH | "
                                    "sd21:DIR | package.module:function returning a Backbone (default mvdream)"),
    ("--mvdream", "mvdream", str, "MVDream checkpoint (sd-v2.1-base-4view.pt or .safetensors)"),
    ("--sd21", "sd21", str, "local diffusers Stable Diffusion 2.1 folder"),
    ("--mode", "mode", str, "auto | 2d | 4view (default auto: 4view when the folder holds object folders)"),
    ("--out", "out", str, "also write the final distribution to this .safetensors file"),
    ("--name", "name", str, "run name (default: the images folder's name)"),
    ("--out-dir", "out_dir", str, "parent of run folders (default outputs/learn)"),
    ("--steps", "steps", int, "optimisation steps (default 2000)"),
    ("--max-steps", "max_steps", int, "pause at this step; continue later with --resume latest"),
    ("--batch-size", "batch_size", int, "images per step and process (default 4)"),
    ("--n-ctx", "n_ctx", int, "context tokens per prompt (default 4)"),
    ("--n-prompts", "n_prompts", int, "K prompts (default 32)"),
    ("--n-samples", "n_samples", int, "reparameterised samples per image (default 4)"),
    ("--lr", "lr", finite_float, "AdamW learning rate (default 1e-3)"),
    ("--loss", "loss", str, "fast (K prompts encoded once) | official (per item, as train.py)"),
    ("--objective", "objective", str, "assign (default: each prompt learns its own reference images) | official "
     "(the paper: R samples per image averaged) | wta | softmin (see README)"),
    ("--covariance", "covariance", str, "sampling law recorded in the file: kernel (default: a mixture around the K "
     "prompts) | lowrank (the K prompts' full covariance) | diag (the paper: per token and channel); objectives "
     "that sample while learning use lowrank for kernel; `--objective official --covariance diag` is the paper's "
     "recipe"),
    ("--prefix", "prefix", str, "fixed text before the learned tokens"),
    ("--suffix", "suffix", str, "fixed text after the learned tokens"),
    ("--lowpass-weight", "lowpass_weight", finite_float, "weigh the error's low frequencies (4×4-latent blocks: a "
     "body's colour) this much more (default 0: the paper's loss; 4 keeps a one-colour set's samples in its colour, "
     "see README)"),
    ("--ctx-init", "ctx_init", str, "start every prompt from this text (at most --n-ctx tokens, e.g. \"a photo of\"); "
     "default: the official random start"),
    ("--position-mode", "position_mode", str, "clean | official (default: official with --loss official, else clean)"),
    ("--resolution", "resolution", int, "image size (default: the backbone's native resolution)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--mixed-precision", "mixed_precision", str, "no | bf16 | fp16 (CUDA only)"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints (default 200)"),
    ("--preview-every", "preview_every", int, "steps between preview grids, 0 = none (default 500)"),
    ("--preview-samples", "preview_samples", int, "prompts drawn per preview (default 4)"),
    ("--preview-steps", "preview_steps", int, "DDIM steps per preview (default 20)"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (e.g. configs/dreamdist-learn.yaml); flags override it")
    for flag, key, typ, text in FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=text)
    p.add_argument("--resume", default=None, help="latest | checkpoint file | run folder")
    p.add_argument("--skip-bad", dest="skip_bad", action="store_true", default=None,
                   help="skip unreadable image files (named in a warning) instead of stopping")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random horizontal mirroring")
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None)
    p.add_argument("--quiet", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=500 lr=2e-3")


def build_config(args: argparse.Namespace):
    """LearnConfig from --config, key=value overrides and flags (in increasing priority)."""
    from omegaconf import OmegaConf

    from dreamdist3d.config import load_yaml, parse_structured
    from dreamdist3d.recipes.learn import LearnConfig

    keys = [k for _, k, _, _ in FLAGS] + ["resume", "skip_bad", "flip", "gradient_checkpointing", "progress"]
    flags = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    raw = OmegaConf.to_container(load_yaml(args.config, args.overrides, flags), resolve=True)
    return parse_structured(LearnConfig, raw), raw


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.recipes.learn import learn

    cfg, raw = build_config(args)
    try:
        learn(cfg, raw=raw)  # a diverged loss (NonFiniteLossError) exits 3 through dreamdist3d.errors
    except KeyboardInterrupt as e:  # under torchrun rank 0 says what was kept and how to resume; the others: nothing
        if int(os.environ.get("RANK", "0")) != 0:
            raise SystemExit(exit_code(e)) from None
        raise
    return 0
