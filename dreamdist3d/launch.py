"""threestudio's `launch.py`, without Lightning: `python launch.py --config C --train|--validate|--test|--export
[--gpu 0] [key=value ...]`.

- `key=value` overrides are an OmegaConf dotlist merged over the YAML (`system.prompt_processor.scale=1.5 seed=3`).
- The trial folder is `<exp_root_dir>/<name>/<tag>[@%Y%m%d-%H%M%S]/` with `configs/{raw,parsed}.yaml`, `ckpts/`,
  `save/`, `csv_logs/`, `cmd.txt`; `${trial_dir}`, `${name}`, `${tag}` may be used inside the config. It is made by
  `dreamdist3d.runs` (a run started in the same second gets `…-1`; a config error leaves no empty folder).
- Errors (config, input files, read-only folders, a full disk) end in one line and an exit code
  (`dreamdist3d.errors`); `--verbose` shows the traceback.
- `resume=<ckpt>` continues training (same step, optimizer, RNG and prompt sample) or picks the weights to
  validate/test/export; `resume=latest` takes the newest `last.ckpt` of runs with the same name and tag and keeps
  writing into that run's folder.
- `--train` trains, then renders the test turntable; Ctrl-C once stops training and still runs the test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from dreamdist3d.config import ConfigError, load_yaml, parse_structured
from dreamdist3d.io import check_writable
from dreamdist3d.runs import (discard_if_empty, find_latest_checkpoint, new_run_dir, open_run_dir, pick_device,
                              run_dir_name, seed_everything)

# ---------------------------------------------------------------------------------------------- resolvers


def _register_resolvers() -> None:
    import math

    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # omegaconf 2.4 / 2.3

    def reg(name, fn):
        if not OmegaConf.has_resolver(name):
            register(name, fn)

    reg("calc_exp_lr_decay_rate", lambda factor, n: factor ** (1.0 / n))
    reg("add", lambda a, b: a + b)
    reg("sub", lambda a, b: a - b)
    reg("mul", lambda a, b: a * b)
    reg("div", lambda a, b: a / b)
    reg("idiv", lambda a, b: a // b)
    reg("basename", lambda p: os.path.basename(str(p)))
    reg("stem", lambda p: Path(str(p)).stem)
    reg("rmspace", lambda s, sub: str(s).replace(" ", sub))
    reg("tuple2", lambda s: [float(s), float(s)])
    reg("gt0", lambda s: s > 0)
    reg("cmaxgt0", lambda s: (max(s) if isinstance(s, (list, tuple)) or OmegaConf.is_list(s) else s) > 0)
    reg("not", lambda s: not s)
    reg("cmaxgt0orcmaxgt0", lambda a, b: _cmax(a) > 0 or _cmax(b) > 0)
    del math


def _cmax(x):
    if OmegaConf.is_list(x) or isinstance(x, (list, tuple)):
        return max(list(x))
    return x


_register_resolvers()


# ---------------------------------------------------------------------------------------------- config
@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    exp_dir: str = ""
    trial_name: str = ""
    trial_dir: str = ""
    n_gpus: int = 1
    resume: Optional[str] = None
    data_type: str = "random-multiview-camera-datamodule"
    data: dict = field(default_factory=dict)
    system_type: str = "mvdream-system"
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)


def _config_error(e: Exception, key: str = "") -> ConfigError:
    """A readable ConfigError from an omegaconf exception (a missing `???` value says which key to set)."""
    import re

    text = str(e)
    m = re.search(r"Missing mandatory value: ([\w.\[\]-]+)", text)
    if m:
        return ConfigError(f"{m.group(1)} is required (it is ??? in the config): set it on the command line, "
                           f"e.g. `{m.group(1)}=...`")
    first = text.splitlines()[0] if text else type(e).__name__
    return ConfigError(f"config key '{key}': {first}" if key else f"cannot resolve the config: {first}")


def _select(cfg: DictConfig, key: str, default=None):
    try:
        v = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except Exception as e:  # MissingMandatoryValue, interpolation errors
        raise _config_error(e, key) from None
    return v


def load_config(path: str, cli_args: Sequence[str] = (), n_gpus: int = 1, make_dirs: bool = True) -> ExperimentConfig:
    """YAML + dotlist overrides → resolved, strict ExperimentConfig with its trial folder.

    `make_dirs`: reserve the trial folder now (`runs.new_run_dir`, race-free: a run started in the same second gets
    `…-1`); if the config then fails to resolve or parse, the folder is removed again. The caller owns it after."""
    cfg = load_yaml(path, cli_args, {"n_gpus": n_gpus})
    # the trial folder first, so ${trial_dir} can be used inside the config
    name = str(_select(cfg, "name", "default"))
    tag = str(_select(cfg, "tag", "") or "")
    use_ts = bool(_select(cfg, "use_timestamp", True))
    root = Path(str(_select(cfg, "exp_root_dir", "outputs")))
    resume = _select(cfg, "resume", None)
    if not tag and not use_ts:
        raise ConfigError("either `tag` must be set or `use_timestamp` must be true")
    # as threestudio: the folder is always <exp_root_dir>/<name>/<tag><timestamp>; a parsed.yaml carries its old
    # timestamp, so `--config <run>/configs/parsed.yaml --test/--export` writes into that run's folder
    created = None
    if resume == "latest":
        ckpt = find_latest_checkpoint(root, name, tag, pattern="*.ckpt", last="last.ckpt")
        if ckpt is None:
            raise FileNotFoundError(f"resume=latest: no {root / name / (tag or '*')}[@*]/ckpts/last.ckpt to resume")
        cfg.resume = str(ckpt)
        trial_dir = ckpt.parent.parent
        cfg.timestamp = trial_dir.name[len(tag):]
    else:
        ts = _select(cfg, "timestamp", None)
        fresh = ts is None and use_ts and n_gpus == 1
        if make_dirs:
            check_writable(root, "exp_root_dir", is_dir=True)  # before any model is loaded
        if fresh and make_dirs:  # a new folder, never one another run started in the same second
            trial_dir = created = new_run_dir(root, name, tag, timestamp=True, subdirs=())
            ts = trial_dir.name[len(tag):]
        else:
            if ts is None:
                ts = run_dir_name("", True) if fresh else ""
            trial_dir = root / name / (tag + ts)
        cfg.timestamp = ts
    trial_dir = Path(trial_dir)
    cfg.exp_dir = str(root / name)
    cfg.trial_name = trial_dir.name
    cfg.trial_dir = str(trial_dir)
    try:
        try:
            OmegaConf.resolve(cfg)
        except Exception as e:
            raise _config_error(e) from None
        ecfg = parse_structured(ExperimentConfig, cfg, where="")
        if make_dirs and created is None:
            open_run_dir(trial_dir, subdirs=())
    except BaseException:
        discard_if_empty(created)
        raise
    return ecfg


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="threestudio-style text-to-3D from a prompt distribution")
    p.add_argument("--config", required=True, help="path to a config YAML")
    p.add_argument("--gpu", default="0", help="GPU id(s), e.g. 0 or 0,1 (CUDA_VISIBLE_DEVICES unless already set); "
                   "ignored without CUDA")
    group = p.add_mutually_exclusive_group(required=False)  # required, except for `recipe: toy-demo` (see main)
    group.add_argument("--train", action="store_true")
    group.add_argument("--validate", action="store_true")
    group.add_argument("--test", action="store_true")
    group.add_argument("--export", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show full tracebacks")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is available")
    p.add_argument("--gradio", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--typecheck", action="store_true", help=argparse.SUPPRESS)
    return p


def run(args: argparse.Namespace, extras: List[str], backbone=None) -> int:
    """One launch (`backbone`: an already loaded MVDream Backbone to reuse, e.g. by `dreamdist3d gallery`)."""
    gpus = [g for g in str(args.gpu).split(",") if g.strip() != ""]
    if "CUDA_VISIBLE_DEVICES" not in os.environ and not args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if len(gpus) > 1:
        print(f"launch.py: {len(gpus)} GPUs given; one run uses one device (use `dreamdist3d gallery --gpu` for several runs)",
              file=sys.stderr)
    cfg = load_config(args.config, extras, n_gpus=1)
    trial = Path(cfg.trial_dir)
    try:
        return _run(args, cfg, trial, backbone)
    except BaseException:
        discard_if_empty(trial)  # a config error found late leaves no empty trial folder
        raise


def _run(args: argparse.Namespace, cfg: ExperimentConfig, trial: Path, backbone=None) -> int:
    from dreamdist3d.lift3d.system import find_component, load_run_field
    from dreamdist3d.lift3d.trainer import CheckpointConfig, Trainer, TrainerConfig, load_checkpoint

    device = pick_device("cpu" if args.cpu else "auto", key="--gpu")
    trainer_cfg = parse_structured(TrainerConfig, cfg.trainer, where="trainer")
    ckpt_cfg = parse_structured(CheckpointConfig, cfg.checkpoint, where="checkpoint")
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    seed_everything(cfg.seed)

    if args.export:
        from dreamdist3d.export import export_field

        field = load_run_field(trial if not cfg.resume else Path(cfg.resume).parent.parent, ckpt=cfg.resume, device=device) \
            if cfg.resume else None
        if field is None:
            raise ConfigError("--export needs resume=<run>/ckpts/last.ckpt (or resume=latest)")
        sys_cfg = dict(cfg.system)
        exporter = _exporter_options(dict(sys_cfg.get("exporter") or {}), dict(sys_cfg.get("geometry") or {}))
        formats = exporter.pop("formats")
        out = trial / "save" / f"it{field.step}-export"
        res = export_field(field, out, formats=formats, cfg=exporter, source=str(cfg.resume))
        print(f"exported to {res.out_dir}: {', '.join(sorted(p.name for p in res.files.values()))}")
        return 0

    dm = find_component(cfg.data_type, "data_type")(cfg.data, where="data")
    system_cls = find_component(cfg.system_type, "system_type")
    system = system_cls(
        cfg.system, device=device, seed=cfg.seed, save_dir=str(trial / "save"),
        prompt_sample=(resume or {}).get("prompt_sample"), backbone=backbone,
    )
    trainer = Trainer(trainer_cfg, ckpt_cfg, trial, device)
    if args.train:
        (trial / "configs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.config, trial / "configs" / "raw.yaml") if Path(args.config).resolve() != (trial / "configs" / "raw.yaml").resolve() else None
        (trial / "configs" / "parsed.yaml").write_text(config_to_yaml(cfg))
        (trial / "cmd.txt").write_text(" ".join([sys.executable, *sys.argv]) + "\n")
        step = trainer.fit(system, dm, resume=resume)
        res = trainer.test(system, dm, step)
        print(f"turntable: {res['video']}\ngrid: {res['grid']}")
        return 0
    if resume is not None:
        system.load_trainable_state_dict(resume["state_dict"])
    step = int(resume["global_step"]) if resume is not None else 0
    system.global_step = step
    if args.validate:
        trainer.validate(system, dm, step)
        print(f"validation images: {trial / 'save'}")
    elif args.test:
        res = trainer.test(system, dm, step)
        print(f"turntable: {res['video']}\ngrid: {res['grid']}")
    return 0


def _exporter_options(exporter: dict, geometry: dict) -> dict:
    """threestudio's mesh-exporter keys (and the geometry's isosurface keys) -> dreamdist3d.export options."""
    fmt = exporter.pop("fmt", "obj-mtl")
    formats = exporter.pop("formats", None) or {"obj-mtl": "obj", "obj": "obj"}.get(fmt, fmt)
    out = {"formats": formats}
    if "save_name" in exporter:
        out["name"] = exporter.pop("save_name")
    if "texture_size" in exporter:
        out["texture_size"] = exporter.pop("texture_size")
    if "save_texture" in exporter:
        out["texture"] = bool(exporter.pop("save_texture"))
    for k in ("xatlas_chart_options", "xatlas_pack_options"):
        if k in exporter:
            out[k] = exporter.pop(k)
    for k in ("save_normal", "save_uv", "texture_format", "context_type", "save_video"):
        exporter.pop(k, None)  # threestudio options with no effect here
    out.update(exporter)  # anything else is a dreamdist3d.export option (checked strictly there)
    for k in ("isosurface_resolution", "isosurface_threshold", "isosurface_coarse_to_fine"):
        if k in geometry and k not in out:
            out[k] = geometry[k]
    return out


def _recipe_of(config: str) -> str:
    """The config's top-level `recipe` ("" for a threestudio-style 3D experiment)."""
    return str(load_yaml(config).get("recipe", "") or "")


def _run_learn(args: argparse.Namespace, extras: List[str]) -> int:
    """`recipe: learn` configs (configs/dreamdist-learn.yaml): learning a distribution, `--train` only."""
    from dreamdist3d.recipes.learn import launch_entry

    if not args.train:
        raise ConfigError("a `recipe: learn` config only supports --train (use `dreamdist3d preview/sample` to look at the result)")
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
            raise ConfigError(f"config key 'recipe': unknown recipe {recipe!r} (known: learn, toy-demo; omit it for a 3D run)")
        return run(args, extras)

    return run_reporting("launch.py", go, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
