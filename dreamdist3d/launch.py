"""threestudio's `launch.py`, without Lightning: `python launch.py --config C --train|--validate|--test|--export
[--gpu 0] [--cpu] [key=value ...]`. Only argv is parsed here; the work is done by a recipe chosen by the config's
`recipe:` key:

- none (a threestudio-style 3D experiment): `dreamdist3d.recipes.lift3d.run_3d` (trial folder, resume=, the modes);
- `recipe: learn` (configs/dreamdist-learn.yaml): `dreamdist3d.recipes.learn`, --train only;
- `recipe: toy-demo` (configs/toy/dreamdist-toy.yaml): `dreamdist3d.recipes.toy_demo`, --train or no mode flag.

- `key=value` overrides are an OmegaConf dotlist merged over the YAML (`system.prompt_processor.scale=1.5 seed=3`).
- `--gpu 0[,1]` sets CUDA_VISIBLE_DEVICES (unless already set); `--cpu` runs on the CPU even when CUDA is available.
- Errors (config, input files, read-only folders, a full disk) end in one line and an exit code
  (`dreamdist3d.errors`); `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from dreamdist3d.config import ConfigError, load_yaml
from dreamdist3d.recipes.lift3d import ExperimentConfig, config_to_yaml, load_config, run_3d  # noqa: F401 (re-exported)
from dreamdist3d.runs import pick_device, seed_everything  # noqa: F401 (re-exported)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py", description="threestudio-style text-to-3D from a prompt distribution",
        epilog="key=value arguments after the flags override the config (an OmegaConf dotlist), e.g. "
               "system.prompt_processor.distribution=cathedral.safetensors seed=3 resume=latest")
    p.add_argument("--config", required=True, help="path to a config YAML")
    p.add_argument("--gpu", default="0", help="GPU id(s), e.g. 0 or 0,1 (CUDA_VISIBLE_DEVICES unless already set); "
                   "ignored without CUDA")
    group = p.add_mutually_exclusive_group(required=False)  # required, except for `recipe: toy-demo` (see main)
    group.add_argument("--train", action="store_true",
                       help="optimise the 3D field (a new trial folder, or resume=), then render the test turntable")
    group.add_argument("--validate", action="store_true", help="render the validation views of resume=CKPT")
    group.add_argument("--test", action="store_true", help="render the test turntable (mp4 + grid) of resume=CKPT")
    group.add_argument("--export", action="store_true",
                       help="write the meshes of resume=CKPT (system.exporter) into save/it<step>-export/")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    return p


def _mode(args: argparse.Namespace) -> str:
    return next((m for m in ("train", "validate", "test", "export") if getattr(args, m)), "")


def run(args: argparse.Namespace, extras: List[str]) -> int:
    """One 3D launch: --gpu/--cpu → device, the mode flag → `run_3d(mode=…)`."""
    gpus = [g for g in str(args.gpu).split(",") if g.strip() != ""]
    if "CUDA_VISIBLE_DEVICES" not in os.environ and not args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if len(gpus) > 1:
        print(f"launch.py: {len(gpus)} GPUs given; one run uses one device (use `dreamdist3d gallery --gpu` for "
              "several runs)",
              file=sys.stderr)
    run_3d(args.config, mode=_mode(args), overrides=extras, device="cpu" if args.cpu else "auto")
    return 0


def _recipe_of(config: str) -> str:
    """The config's top-level `recipe` ("" for a threestudio-style 3D experiment)."""
    return str(load_yaml(config).get("recipe", "") or "")


def _run_learn(args: argparse.Namespace, extras: List[str]) -> int:
    """`recipe: learn` configs (configs/dreamdist-learn.yaml): learning a distribution, `--train` only."""
    from dreamdist3d.recipes.learn import launch_entry

    if not args.train:
        raise ConfigError("a `recipe: learn` config only supports --train (use `dreamdist3d preview/sample` to look at "
                          "the result)")
    cfg = load_yaml(args.config, extras)
    resume = cfg.pop("resume", None) or None
    if "device" not in {e.split("=", 1)[0] for e in extras}:  # --cpu / --gpu N, unless device= is given
        if args.cpu:
            cfg.device = "cpu"
        elif args.gpu and pick_device("auto").type == "cuda":
            cfg.device = f"cuda:{str(args.gpu).split(',')[0]}"
    return launch_entry(cfg, resume=resume)


def _run_toy_demo(args: argparse.Namespace, extras: List[str]) -> int:
    """`recipe: toy-demo` (configs/toy/dreamdist-toy.yaml): the toy-world demo, end to end (--train or no mode flag)."""
    from dreamdist3d.recipes.toy_demo import launch_entry

    if args.validate or args.test or args.export:
        raise ConfigError("a `recipe: toy-demo` config runs the whole demo: use --train (or no mode flag)")
    return launch_entry(args.config, extras)


def main(argv: Optional[List[str]] = None) -> int:
    from dreamdist3d.errors import run_reporting

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    bad = [e for e in extras if "=" not in e]
    if bad:
        parser.error(f"unrecognised arguments {bad}: overrides are key=value (e.g. seed=3)")

    def go() -> int:
        recipe = _recipe_of(args.config)
        if recipe != "toy-demo" and not (args.train or args.validate or args.test or args.export):
            parser.error("one of the arguments --train --validate --test --export is required")
        if recipe == "learn":
            return _run_learn(args, extras)
        if recipe == "toy-demo":
            return _run_toy_demo(args, extras)
        if recipe:
            raise ConfigError(f"config key 'recipe': unknown recipe {recipe!r} (known: learn, toy-demo; omit it for a "
                              "3D run)")
        return run(args, extras)

    return run_reporting("launch.py", go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
