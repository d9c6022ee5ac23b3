"""The files of a learning run (`dreamdist3d.recipes.learn`): the run folder and its configs, the step checkpoints
(save, load with the resume checks, prune, find), `metrics.csv`, `loss.png`, the preview sheets, and the command line
that resumes a run. `cfg` below is the run's `LearnConfig`."""

from __future__ import annotations

import csv
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.config import ConfigError
from dreamdist3d.io import atomic_path
from dreamdist3d.learn.loop_parts import IndexStream
from dreamdist3d.runs import (
    checkpoints_in,
    find_latest_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    new_run_dir,
    save_checkpoint,
    step_of,
)

CHECKPOINT_FORMAT = "dreamdist3d.learn-checkpoint"
CHECKPOINT_VERSION = 1
# Changing these on resume would make the checkpoint mean something else.
RESUME_MUST_MATCH = ("n_ctx", "n_prompts", "prefix", "suffix", "position_mode", "mode", "backbone", "objective",
                     "covariance", "ctx_init")


def make_run_dir(cfg, rank: int, world: int) -> Path:
    path = new_run_dir(cfg.out_dir, "", cfg.name) if rank == 0 else None  # <out_dir>/<name>@<stamp>[-N]/ckpts
    if world > 1:
        box = [str(path) if path else None]
        torch.distributed.broadcast_object_list(box, src=0)
        path = Path(box[0])
    return path


def write_configs(run_dir: Path, cfg, raw: Optional[dict], resumed_from: Optional[Path]) -> None:
    from omegaconf import OmegaConf

    folder = run_dir / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    name = "parsed.yaml" if resumed_from is None else f"parsed-resume-{step_of(resumed_from)}.yaml"
    with atomic_path(folder / name) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if raw is not None and resumed_from is None:
        with atomic_path(folder / "raw.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))



def resume_command(ckpt: Path) -> str:
    """The command line that continues from `ckpt`: this process's own, with its resume argument replaced; under
    torchrun the torchrun launch with as many processes (the global batch is per-process batch × processes)."""
    import shlex

    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else ""
    rest, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not (a.startswith("--resume=") or a.startswith("resume=")):
            rest.append(a)
    if prog == "launch.py":
        return " ".join(shlex.quote(a) for a in ["python", "launch.py", *rest, f"resume={ckpt}"])
    if rest[:1] == ["learn"]:
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
        line = " ".join(shlex.quote(a) for a in [*_launcher(nodes), *rest, "--resume", str(ckpt)])
        return line + (f" (on each of the {nodes} nodes, with the launch's rendezvous options)" if nodes > 1 else "")
    return f"the same settings with resume={shlex.quote(str(ckpt))} (learn(cfg, resume=...))"


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "ckpts" / f"step-{step:07d}.pt"


def find_checkpoint(resume: str, cfg) -> Optional[Path]:
    """`latest` (newest run `<out_dir>/<name>@*` holding a checkpoint), a checkpoint file, or a run folder."""
    if resume == "latest":
        return find_latest_checkpoint(cfg.out_dir, "", cfg.name, pattern="step-*.pt")
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        ck = latest_checkpoint(path, "step-*.pt")
        if ck is None:
            raise FileNotFoundError(f"resume: {path} holds no step-*.pt checkpoint")
        return ck
    raise FileNotFoundError(f"resume: {path} does not exist (give 'latest', a run folder or a ckpts/step-*.pt file)")


def _launcher(nodes: int) -> List[str]:
    """How this `learn` process was started: `torchrun … -m dreamdist3d.cli` with its process count per node (and
    the `nodes` count) when torchrun started it (it sets LOCAL_WORLD_SIZE), else `dreamdist3d`."""
    if "LOCAL_WORLD_SIZE" not in os.environ:
        return ["dreamdist3d"]
    return ["torchrun", *(["--nnodes", str(nodes)] if nodes > 1 else []), "--nproc_per_node",
            os.environ["LOCAL_WORLD_SIZE"], "-m", "dreamdist3d.cli"]


def save_learn_checkpoint(path: Path, step: int, cfg, fingerprint: dict, ctx: torch.Tensor, opt, rng: torch.Tensor,
                          sampler, history: Dict[str, List[float]], scaler, processes: int = 1) -> None:
    """sampler: an IndexStream or its state_dict; processes: how many share each step (torchrun's world size)."""
    sampler = sampler.state_dict() if isinstance(sampler, IndexStream) else sampler
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "ctx": ctx.detach().float().cpu().clone(),
        "optimizer": opt.state_dict(),
        "rng": rng.clone(),
        "sampler": sampler,
        "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "config": json.dumps(asdict(cfg)),
        "text_encoder": json.dumps(fingerprint),
        "processes": int(processes),
    }
    save_checkpoint(state, path)


def load_learn_checkpoint(path: Path, cfg, fingerprint: dict, ctx, opt, gen, stream, history, scaler,
                          processes: int = 1) -> int:
    from dreamdist3d.text import fingerprints_match

    state = load_checkpoint(path, CHECKPOINT_FORMAT, what="learning checkpoint")  # a damaged file names the intact one
    old = json.loads(state["config"])
    for key in RESUME_MUST_MATCH:
        if key in old and old[key] != getattr(cfg, key):
            raise ConfigError(f"resume: config key '{key}' is {getattr(cfg, key)!r} but the run {path.parent.parent} "
                              f"was made with {old[key]!r}; use the same value or start a new run")
    for key in ("seed", "batch_size", "n_samples", "lr", "loss", "flip", "images"):
        if key in old and old[key] != getattr(cfg, key):
            warnings.warn(f"resume: '{key}' changed from {old[key]!r} to {getattr(cfg, key)!r}; the run continues with "
                          "the new value (it will not match an uninterrupted run)", stacklevel=3)
    before = int(state.get("processes", processes))  # (checkpoints before this key: not checked)
    if before != processes:
        warnings.warn(f"resume: the run was made with {before} process(es), this one has {processes}: the global batch "
                      f"changes from {cfg.batch_size * before} to {cfg.batch_size * processes} (it will not match an "
                      "uninterrupted run); start it as before to keep it", stacklevel=3)
    if not fingerprints_match(json.loads(state["text_encoder"]), fingerprint):
        from dreamdist3d.distribution.file import describe_encoder

        old_encoder = describe_encoder(json.loads(state["text_encoder"]))
        raise ConfigError(f"resume: {path} was learned with text encoder ({old_encoder}) "
                          f"but got another ({describe_encoder(fingerprint)}); load the same backbone")
    if tuple(state["ctx"].shape) != tuple(ctx.shape):
        raise ConfigError(f"resume: checkpoint ctx {tuple(state['ctx'].shape)} does not fit {tuple(ctx.shape)}")
    with torch.no_grad():
        ctx.copy_(state["ctx"].to(ctx))
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["rng"])
    stream.load_state_dict(state["sampler"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    for k, v in state["history"].items():
        if k in history:
            history[k] = [int(x) if k == "step" else float(x) for x in v.tolist()]
    return int(state["step"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in checkpoints_in(run_dir / "ckpts", "step-*.pt")[:-keep]:
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- outputs
def write_metrics(run_dir: Path, history: Dict[str, List[float]]) -> None:
    keys = list(history)
    with atomic_path(run_dir / "metrics.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for row in zip(*(history[k] for k in keys)):
                w.writerow(row)


def write_loss_curve(path: Path, history: Dict[str, List[float]]) -> None:
    """Loss per step (light) and its running mean (dark), orthogonal term on a second panel. Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, loss = history.get("step", []), history.get("loss", [])
    if not steps:
        return
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
    win = max(1, len(loss) // 20)
    if win > 1:
        c = torch.tensor(loss, dtype=torch.float64).cumsum(0)
        avg = ((c[win - 1 :] - torch.cat([c.new_zeros(1), c[:-win]])) / win).tolist()
        ax.plot(steps[win - 1 :], avg, color="tab:blue", lw=1.6, label=f"mean of {win}")
    ax.set_ylabel("loss (min-SNR MSE + ortho)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    ax2.plot(steps, history.get("ortho", []), color="tab:orange", lw=1)
    ax2.set_ylabel("orthogonal")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_step_preview(run_dir: Path, step: int, cfg, backbone: Backbone, learner, multiview: bool, views: int) -> None:
    from dreamdist3d.learn.preview import write_preview

    cameras = None
    frames = 1
    if backbone.supports_camera:  # MVDream: 4-view previews whatever the learning mode
        from dreamdist3d.backbones.cameras import get_camera

        frames = views if multiview else 4
        cameras = get_camera(frames, elevation=15, azimuth_start=0)
    write_preview(run_dir / "previews" / f"step-{step:07d}.png", backbone, learner, n_samples=cfg.preview_samples,
                  steps=cfg.preview_steps, guidance=cfg.preview_guidance, seed=cfg.seed + 1, num_frames=frames,
                  cameras=cameras, covariance=cfg.covariance)


