"""The text-to-3D recipe: `run_3d(cfg, backbone=None, mode="train"|"validate"|"test"|"export", resume=None)`.

One run of a threestudio-style experiment config (configs/dreamdist-mvdream.yaml, configs/toy/toy-3d.yaml), called
from Python with a config object (an OmegaConf DictConfig, a dict, or `config.load_yaml(path, overrides)`) or a path:

    from dreamdist3d.config import load_yaml
    from dreamdist3d.recipes.lift3d import run_3d
    res = run_3d(load_yaml("configs/toy/toy-3d.yaml", ["system.prompt_processor.distribution=d.safetensors"]))
    res.run_dir, res.files["video"]

- `key=value` overrides (`overrides=`) are an OmegaConf dotlist merged over the config.
- The trial folder is `<exp_root_dir>/<name>/<tag>[@%Y%m%d-%H%M%S]/` with `configs/{raw,parsed}.yaml`, `ckpts/`,
  `save/`, `csv_logs/`, `cmd.txt`; `${trial_dir}`, `${name}`, `${tag}` may be used inside the config. It is made by
  `dreamdist3d.runs` (a run started in the same second gets `…-1`). A config or input error leaves no trial folder:
  a fresh folder is removed with what the run wrote into it (configs, cmd.txt, the prompt sample) unless a
  checkpoint was saved; a folder that held files before (resume, `use_timestamp: false`) keeps them.
- `resume=<ckpt>` continues training (same step, optimizer, RNG and prompt sample) or picks the weights to
  validate/test/export; `resume=latest` takes the newest `last.ckpt` of runs with the same name and tag and keeps
  writing into that run's folder.
- mode "train" trains, then renders the test turntable; Ctrl-C once stops training after the step in progress,
  writes last.ckpt, still runs the test, then raises KeyboardInterrupt (its message says how to resume; the command
  line exits with 130).
- `backbone`: an already loaded Backbone to guide with (e.g. one loaded once for a gallery of runs); by default the
  guidance loads the one the config names.

`launch.py` maps threestudio's argv (--train/--validate/--test/--export, --gpu, --cpu, key=value) onto this.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf

from dreamdist3d.config import ConfigError, load_yaml, parse_structured
from dreamdist3d.errors import Terminated, is_input_error
from dreamdist3d.io import check_writable
from dreamdist3d.runs import (
    discard_if_empty,
    find_latest_checkpoint,
    latest_checkpoint,
    new_run_dir,
    open_run_dir,
    pick_device,
    run_dir_name,
    seed_everything,
)

ConfigSource = Union[str, Path, DictConfig, Mapping[str, Any]]
MODES = ("train", "validate", "test", "export")

# ---------------------------------------------------------------------------------------------- resolvers


def _register_resolvers() -> None:
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


def load_config(config: ConfigSource, cli_args: Sequence[str] = (), n_gpus: int = 1,
                make_dirs: bool = True) -> ExperimentConfig:
    """YAML (a path, or an already loaded config object / dict) + dotlist overrides → resolved, strict
    ExperimentConfig with its trial folder.

    `make_dirs`: reserve the trial folder now (`runs.new_run_dir`, race-free: a run started in the same second gets
    `…-1`); if the config then fails to resolve or parse, the folder is removed again. The caller owns it after."""
    cfg = _as_config(config, cli_args, {"n_gpus": n_gpus})
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


def _as_config(config: ConfigSource, overrides: Sequence[str] = (), *layers: Any) -> DictConfig:
    """A path is read as YAML; a config object or dict is copied (the caller's object is never changed)."""
    if isinstance(config, (str, Path)):
        return load_yaml(config, overrides, *layers)
    if not isinstance(config, (DictConfig, Mapping)):
        raise ConfigError(f"run_3d: cfg must be a path, a DictConfig or a dict, not {type(config).__name__}")
    return load_yaml(None, overrides, *layers, base=config)


@dataclass
class Run3DResult:
    """The run's folder and the files it wrote (train/test: "video", "grid"; validate: "save"; export: one entry per
    exported file, e.g. "obj", "glb", "ply")."""

    run_dir: Path
    files: Dict[str, Path] = field(default_factory=dict)


def run_3d(cfg: ConfigSource, backbone=None, mode: str = "train", resume: Optional[str] = None, *,
           overrides: Sequence[str] = (), device: str = "auto") -> Run3DResult:
    """One 3D run (see the module docstring). `resume` wins over the config's `resume` key; `device`: auto | cpu |
    cuda[:N]."""
    if mode not in MODES:
        raise ConfigError(f"run_3d: mode must be one of {', '.join(MODES)}, not {mode!r}")
    layers = [{"resume": str(resume)}] if resume is not None else []
    source = cfg if isinstance(cfg, (str, Path)) else _as_config(cfg)  # configs/raw.yaml: the config, no overrides
    ecfg = load_config(_as_config(cfg, overrides, *layers), n_gpus=1)
    trial = Path(ecfg.trial_dir)
    fresh = trial.is_dir() and not any(trial.iterdir())  # everything that will be in it is this run's
    try:
        return _run(ecfg, trial, mode, backbone, device, source)
    except BaseException as e:
        if fresh and is_input_error(e) and latest_checkpoint(trial, "*.ckpt", last="last.ckpt") is None:
            shutil.rmtree(trial, ignore_errors=True)  # a config error found late: no configs/sample/cmd.txt left
        else:
            discard_if_empty(trial)
        raise


def load_guidance_backbone(cfg: ConfigSource, overrides: Sequence[str] = (), device: str = "cpu"):
    """The backbone a 3D config guides with (`system.guidance.ckpt_path` or `pretrained_model_name_or_path`), loaded
    once by whoever makes many objects with it (`gallery`, the feed-forward lift, a Ray actor), on `device` (auto |
    cpu | cuda[:N]): where the objects are made, since the 4-view sample is drawn on the backbone's device."""
    from dreamdist3d.backbones.load import load_backbone

    ecfg = load_config(cfg, overrides, make_dirs=False)
    g = dict(ecfg.system.get("guidance") or {})
    key = "system.guidance.ckpt_path" if g.get("ckpt_path") else "system.guidance.pretrained_model_name_or_path"
    return load_backbone(g.get("ckpt_path") or g.get("pretrained_model_name_or_path"),
                         device=pick_device(str(device)), config_key=key, default_kind="mvdream")


def _write_configs(trial: Path, source: Union[str, Path, DictConfig], cfg: ExperimentConfig) -> None:
    (trial / "configs").mkdir(parents=True, exist_ok=True)
    raw = trial / "configs" / "raw.yaml"
    if isinstance(source, DictConfig):
        raw.write_text(OmegaConf.to_yaml(source))
    elif Path(source).resolve() != raw.resolve():
        shutil.copyfile(source, raw)
    (trial / "configs" / "parsed.yaml").write_text(config_to_yaml(cfg))
    (trial / "cmd.txt").write_text(" ".join([sys.executable, *sys.argv]) + "\n")


def _run(cfg: ExperimentConfig, trial: Path, mode: str, backbone, device: str, source) -> Run3DResult:
    from dreamdist3d.lift3d.system import find_component, load_run_field
    from dreamdist3d.lift3d.trainer import CheckpointConfig, Trainer, TrainerConfig, load_checkpoint

    dev = pick_device(device, key="device")
    trainer_cfg = parse_structured(TrainerConfig, cfg.trainer, where="trainer")
    ckpt_cfg = parse_structured(CheckpointConfig, cfg.checkpoint, where="checkpoint")
    resume = load_checkpoint(cfg.resume) if cfg.resume else None
    seed_everything(cfg.seed)

    if mode == "export":
        from dreamdist3d.export import export_field

        if not cfg.resume:
            raise ConfigError("--export needs resume=<run>/ckpts/last.ckpt (or resume=latest)")
        run_field = load_run_field(Path(cfg.resume).parent.parent, ckpt=cfg.resume, device=dev)
        sys_cfg = dict(cfg.system)
        exporter = exporter_options(dict(sys_cfg.get("exporter") or {}), dict(sys_cfg.get("geometry") or {}))
        formats = exporter.pop("formats")
        out = trial / "save" / f"it{run_field.step}-export"
        res = export_field(run_field, out, formats=formats, cfg=exporter, source=str(cfg.resume))
        print(f"exported to {res.out_dir}: {', '.join(sorted(p.name for p in res.files.values()))}")
        return Run3DResult(trial, dict(res.files))

    dm = find_component(cfg.data_type, "data_type")(cfg.data, where="data")
    system_cls = find_component(cfg.system_type, "system_type")
    system = system_cls(
        cfg.system, device=dev, seed=cfg.seed, save_dir=str(trial / "save"),
        prompt_sample=(resume or {}).get("prompt_sample"), backbone=backbone,
    )
    trainer = Trainer(trainer_cfg, ckpt_cfg, trial, dev)
    if mode == "train":
        _write_configs(trial, source, cfg)
        step = trainer.fit(system, dm, resume=resume)
        if not trainer.terminated:  # SIGTERM: the checkpoint is written; nothing more runs
            res = trainer.test(system, dm, step)
            print(f"turntable: {res['video']}\ngrid: {res['grid']}")
        if trainer.interrupted:  # Ctrl-C: the test stage ran as threestudio does; the caller still stops (exit 130)
            last = trainer.ckpt_dir / "last.ckpt"
            stop = (Terminated if trainer.terminated else KeyboardInterrupt)(
                f"training stopped at step {step}; {last} holds it: continue with resume=latest (same exp_root_dir, "
                f"name and tag) or resume={last}" if ckpt_cfg.save_last and last.is_file() else
                f"training stopped at step {step}; no checkpoint was kept (checkpoint.save_last is false)")
            stop.step = step  # for callers that continue the run themselves (gallery) and say so in their words
            raise stop
        return Run3DResult(trial, dict(res))
    if resume is not None:
        system.load_trainable_state_dict(resume["state_dict"])
    step = int(resume["global_step"]) if resume is not None else 0
    system.global_step = step
    if mode == "validate":
        trainer.validate(system, dm, step)
        print(f"validation images: {trial / 'save'}")
        return Run3DResult(trial, {"save": trial / "save"})
    res = trainer.test(system, dm, step)
    print(f"turntable: {res['video']}\ngrid: {res['grid']}")
    return Run3DResult(trial, dict(res))


def exporter_options(exporter: dict, geometry: dict) -> dict:
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


__all__ = ["ExperimentConfig", "MODES", "Run3DResult", "config_to_yaml", "exporter_options", "load_config",
           "load_guidance_backbone", "run_3d"]
