"""The learning recipe: a folder of reference images in, a `PromptDistribution` file out.

`learn()` is one loop, top to bottom: config → backbone → reference latents (encoded once) → prompt learner and
AdamW → [resume] → for each step: draw a batch, noise, timesteps and reparameterisation ε from one seeded CPU
generator; the loss of `learn/loss.py` (K prompts encoded once, B·R UNet rows, min-SNR γ=5 without +1, orthogonal
term 0.001); backward; clip 1.0; AdamW; log / checkpoint / preview → final distribution file.

Defaults are the official train.sh: n_ctx 4, K 32, 4 reparameterised samples, batch 4, 2000 steps, lr 1e-3 constant,
AdamW β (0.9, 0.999), wd 1e-2, eps 1e-8, grad clip 1.0, checkpoint every 200. Differences from the official trainer
(none changes the loss or its gradient): the K prompts go through the text encoder once per step instead of once
per batch item (`loss: official` restores the per-item arrangement), the VAE posterior of each image (and mirror) is
cached once instead of re-encoding every step, items are drawn from concatenated shuffled epochs (no item dropped),
images are centre-cropped (the official default is a random crop) and mirrored at random (`flip`, official: off).

Run folder `<out_dir>/<name>@<YYYYmmdd-HHMMSS>/`: `configs/parsed.yaml` (+ `raw.yaml`), `ckpts/step-NNNNNNN.pt`
(atomic; ctx, AdamW state, step, RNG and sampler state, loss history), `previews/step-NNNNNNN.png`, `metrics.csv`,
`loss.png`, `distribution.safetensors`. `resume: latest` continues the newest run of the same name (same step
count, optimizer and RNG: an interrupted run ends with the bit-identical ctx on CPU).

Devices: CPU and CUDA. On CUDA `mixed_precision: bf16|fp16` casts the frozen networks and autocasts (ctx and AdamW
stay float32; fp16 uses a GradScaler) and `tf32: true` enables TF32 matmuls; on CPU both are ignored (float32).
`channels_last: true` puts the UNet's convolutions in channels-last layout (same numbers up to rounding).

Multi-GPU data parallel, no accelerate needed for one process:

    torchrun --nproc_per_node 4 -m dreamdist3d.cli learn --images DIR ... --batch-size 4
    accelerate launch --multi_gpu --num_processes 4 -m dreamdist3d.cli learn --images DIR ...

Each process takes `batch_size` items (global batch = batch_size × processes); all processes draw the randomness of
the whole global batch from the same seeded generator and use their slice, and gradients are averaged with
all_reduce, so an N-process run equals a one-process run with an N× batch. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.load import load_backbone
from dreamdist3d.config import ConfigError, parse_structured
from dreamdist3d.distribution import COVARIANCES, PromptDistribution, PromptLearner
from dreamdist3d.io import atomic_path, check_writable
from dreamdist3d.learn.data import LatentCache, is_multiview_folder, load_references
from dreamdist3d.learn.loss import LOSS_MODES, OBJECTIVES, assigned_prompts, distribution_loss
from dreamdist3d.runs import (
    checkpoints_in,
    find_latest_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    new_run_dir,
    pick_device,
    save_checkpoint,
    step_of,
)

CHECKPOINT_FORMAT = "dreamdist3d.learn-checkpoint"
CHECKPOINT_VERSION = 1
MODES = ("auto", "2d", "4view")
PRECISIONS = ("no", "fp16", "bf16")
# Changing these on resume would make the checkpoint mean something else.
RESUME_MUST_MATCH = ("n_ctx", "n_prompts", "prefix", "suffix", "position_mode", "mode", "backbone", "objective",
                     "covariance")


@dataclass
class LearnConfig:
    """Everything a learning run reads (strict: unknown keys are errors). CLI flags and launch.py key=value map 1:1."""

    recipe: str = "learn"
    name: str = ""  # run name; "" = the images folder's name
    images: str = ""  # folder of reference images, or of multi-view object folders (4view)
    mode: str = "auto"  # auto (4view if the folder holds object folders with cameras.json) | 2d | 4view
    num_views: int = 4  # views per object in 4view mode
    backbone: str = "mvdream"  # mvdream | sd21 | any backbones.load spec: toy[:W], mvdream:P, "package.module:function"
    mvdream: str = ""  # MVDream checkpoint (sd-v2.1-base-4view.pt or .safetensors) for backbone=mvdream
    sd21: str = ""  # local diffusers SD 2.1 folder for backbone=sd21
    resolution: int = 0  # 0 = the backbone's native resolution
    flip: bool = True  # random horizontal mirror of 2D references (official default: off)
    skip_bad: bool = False  # skip unreadable image files (named in a warning) instead of stopping
    n_ctx: int = 4
    n_prompts: int = 32  # K
    prefix: str = ""
    suffix: str = ""
    position_mode: str = ""  # "" = "official" with loss=official, else "clean"
    n_samples: int = 4  # R reparameterised samples per image
    # assign + lowrank won on the held-out toy sets (README, "The toy world"); the paper: official + diag
    objective: str = "assign"  # assign | official (the paper) | wta | softmin (see learn/loss.py)
    covariance: str = "lowrank"  # law of the samples, recorded in the file: lowrank | diag (the paper)
    objective_delta: float = 0.1  # wta: weight of the mean over the R samples
    objective_tau: float = 0.1  # softmin: temperature relative to the image's mean loss
    batch_size: int = 4  # per process
    steps: int = 2000
    max_steps: int = 0  # stop (pause) at this step; 0 = run to `steps`. The run resumes with resume=latest.
    lr: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # ≤ 0: no clipping
    snr_gamma: float = 5.0  # min-SNR γ (no +1 for v-prediction, as official); ≤ 0: unweighted
    ortho_weight: float = 1e-3
    loss: str = "fast"  # fast (K prompts encoded once) | official (encoded per batch item, as train.py)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mixed_precision: str = "no"  # no | bf16 | fp16 (CUDA only)
    tf32: bool = True  # CUDA only
    gradient_checkpointing: bool = False
    channels_last: bool = True  # UNet convolutions in channels-last layout (≈1.3× faster fwd+bwd on CPU)
    checkpoint_every: int = 200
    keep_checkpoints: int = 3  # newest step checkpoints kept (0 = all)
    preview_every: int = 500  # 0 = no previews
    preview_samples: int = 4
    preview_steps: int = 20
    preview_guidance: float = 7.5
    out_dir: str = "outputs/learn"
    out: str = ""  # also write the final distribution here
    resume: str = ""  # "" | latest | checkpoint file | run folder
    progress: bool = True  # tqdm bar


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""

    exit_code = 3  # dreamdist3d.errors


@dataclass
class LearnResult:
    run_dir: Path
    step: int
    distribution: Path
    ctx: torch.Tensor  # (K, L, D) float32, CPU
    history: Dict[str, List[float]] = field(default_factory=dict)


# ==================================================================================================== the recipe
def learn(cfg: LearnConfig, backbone: Optional[Backbone] = None, resume: Optional[str] = None,
          raw: Optional[dict] = None) -> LearnResult:
    """Run (or resume) a learning run; returns where everything went. See the module docstring.

    Ctrl-C (KeyboardInterrupt) during the steps writes a checkpoint of the current step (the update of a step is
    never cut in half), prints the command that resumes it, and re-raises (the CLI exits with 130)."""
    live: Dict[str, object] = {}
    try:
        return _learn(cfg, backbone, resume, raw, live)
    except KeyboardInterrupt:
        keep = live.get("keep_good_state")
        if keep is not None and live.get("rank") == 0:  # only rank 0 writes files
            saved = keep()
            if saved is not None:
                print(f"\n[learn] interrupted at step {step_of(saved)}: saved {saved}\n[learn] resume with: "
                      f"{resume_command(saved)}", file=sys.stderr)
        raise


def _learn(cfg: LearnConfig, backbone: Optional[Backbone], resume: Optional[str], raw: Optional[dict],
           live: Dict[str, object]) -> LearnResult:
    cfg = _checked(cfg)
    resume = resume or cfg.resume or None

    # ---------------------------------------------------------------- processes, device, precision
    rank, world = _distributed_setup(cfg.device)
    device = pick_device(cfg.device)
    if rank == 0:  # every output location is checked before the backbone is loaded
        check_writable(cfg.out_dir, "out_dir (--out-dir)", is_dir=True)
        if cfg.out:
            check_writable(cfg.out, "out (--out)")
    cuda = device.type == "cuda"
    precision = cfg.mixed_precision if cuda else "no"
    if cfg.mixed_precision != "no" and not cuda:
        warnings.warn(f"mixed_precision={cfg.mixed_precision} needs CUDA; running float32 on {device}", stacklevel=2)
    if cuda and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = (lambda: torch.autocast("cuda", dtype=weight_dtype)) if precision != "no" else contextlib.nullcontext

    # ---------------------------------------------------------------- which run (new, or the one to resume)
    ckpt_path = find_checkpoint(resume, cfg) if resume else None
    if resume and ckpt_path is None and rank == 0:
        print(f"[learn] resume={resume}: no checkpoint of run '{cfg.name}' under {cfg.out_dir}; starting a new run",
              file=sys.stderr)

    # ---------------------------------------------------------------- backbone (frozen)
    if backbone is None:
        spec, key = backbone_spec(cfg)
        backbone = load_backbone(spec, device=device, dtype=weight_dtype, config_key=key)
    else:
        backbone.to(device=device)
    for m in (backbone.unet, backbone.vae, backbone.text_encoder):
        if m is not None:
            m.eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        _enable_gradient_checkpointing(backbone.unet)
    if cfg.channels_last:
        backbone.unet.to(memory_format=torch.channels_last)
    multiview = cfg.mode == "4view" or (cfg.mode == "auto" and is_multiview_folder(cfg.images))
    if multiview and not backbone.supports_camera:
        raise ConfigError(f"mode=4view needs a multi-view (camera-conditioned) backbone; '{backbone.name}' has none: "
                          "use --backbone mvdream or mode=2d")

    # ---------------------------------------------------------------- reference images -> latents, once
    resolution = cfg.resolution or backbone.resolution
    refs = load_references(cfg.images, resolution, multiview=multiview, num_views=cfg.num_views, skip_bad=cfg.skip_bad)
    cache = LatentCache.build(backbone, refs, flip=cfg.flip, device=device)
    views = refs.num_views if multiview else 1

    # ---------------------------------------------------------------- prompt learner, optimizer, RNG
    gen = torch.Generator().manual_seed(cfg.seed)  # every random draw of the run comes from here (CPU)
    learner = PromptLearner(backbone.text_encoder, backbone.tokenizer, n_ctx=cfg.n_ctx, n_prompts=cfg.n_prompts,
                            prefix=cfg.prefix, suffix=cfg.suffix, position_mode=cfg.position_mode, generator=gen)
    learner.ctx = torch.nn.Parameter(learner.ctx.detach().float())  # float32 master copy whatever the weight dtype
    ctx = learner.ctx
    opt = torch.optim.AdamW([ctx], lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
                            eps=cfg.adam_eps)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    stream = IndexStream(len(refs))
    history: Dict[str, List[float]] = {k: [] for k in ("step", "loss", "mse", "ortho", "grad_norm", "time")}
    step = 0
    fingerprint = backbone.text_encoder.fingerprint()

    if ckpt_path is not None:
        step = _load_checkpoint(ckpt_path, cfg, fingerprint, ctx, opt, gen, stream, history, scaler)

    # ---------------------------------------------------------------- run folder (only once the inputs are good)
    run_dir = ckpt_path.parent.parent if ckpt_path else _new_run_dir(cfg, rank, world)
    if rank == 0:
        _write_configs(run_dir, cfg, raw, resumed_from=ckpt_path)
        kind = f"{len(refs)} objects × {views} views" if multiview else f"{len(refs)} images"
        print(f"[learn] {kind} at {resolution}px → latents {tuple(cache.mean.shape[-3:])} cached "
              f"({cache.flips} variant(s) each); backbone {backbone.name} ({backbone.schedule.prediction_type}); "
              f"run {run_dir}" + (f"; resumed {ckpt_path.name} at step {step}" if ckpt_path else ""), file=sys.stderr)

    # ---------------------------------------------------------------- the loop
    stop = min(cfg.steps, cfg.max_steps) if cfg.max_steps > 0 else cfg.steps
    schedule = backbone.schedule
    n_train_t = schedule.num_train_timesteps
    dim = backbone.text_encoder.hidden_size
    global_batch = cfg.batch_size * world
    mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
    last_ckpt = ckpt_path
    bar = _progress(cfg, step, rank)
    t_start = time.perf_counter()
    rng_before, stream_before = gen.get_state(), stream.state_dict()
    pending = False  # True from a step's first random draw until its update is applied

    def keep_good_state() -> Optional[Path]:
        """Checkpoint the current state (the state before the pending step, if one is), never a non-finite ctx;
        returns the newest good checkpoint (None if there is none)."""
        if rank != 0:
            return last_ckpt
        if not bool(torch.isfinite(ctx.detach()).all()):
            return last_ckpt if last_ckpt is not None and last_ckpt.exists() else None
        path = _checkpoint_path(run_dir, step)
        if not path.exists():
            rng, sampler = (rng_before, stream_before) if pending else (gen.get_state(), stream)
            _save_checkpoint(path, step, cfg, fingerprint, ctx, opt, rng, sampler, history, scaler)
        _write_metrics(run_dir, history)
        return path

    live.update(keep_good_state=keep_good_state, rank=rank)
    while step < stop:
        rng_before, stream_before = gen.get_state(), stream.state_dict()  # to save the pre-step state on NaN
        pending = True
        # batch: items, mirror flags, timesteps, reparameterisation ε, latent posterior draws, diffusion noise
        idx = stream.take(global_batch, gen)
        flips = torch.rand(global_batch, generator=gen) < 0.5 if cache.flips == 2 else None
        timesteps = torch.randint(0, n_train_t, (global_batch,), generator=gen)
        eps, prompt_index = None, None
        if cfg.objective == "assign":
            choice = torch.randint(0, 2**31 - 1, (global_batch, cfg.n_samples), generator=gen)
        elif cfg.covariance == "diag":
            eps = torch.randn((global_batch, cfg.n_samples, backbone.text_encoder.max_length, dim), generator=gen)
        else:  # lowrank: one coefficient per prompt
            eps = torch.randn((global_batch, cfg.n_samples, cfg.n_prompts), generator=gen)
        latents = cache.sample(idx, flips, gen)  # (GB, [F,] C, h, w)
        noise = torch.randn(latents.shape, generator=gen)
        idx, timesteps, latents, noise = idx[mine], timesteps[mine], latents[mine], noise[mine]
        if eps is not None:
            eps = eps[mine].to(device)
        else:
            prompt_index = assigned_prompts(idx, choice[mine], cfg.n_prompts, len(refs)).to(device)
        cams = cache.cameras[idx.to(cache.cameras.device)] if multiview else None

        with autocast():
            out = distribution_loss(learner, backbone, schedule, latents, noise.to(device), timesteps.to(device),
                                    eps, snr_gamma=cfg.snr_gamma, ortho_weight=cfg.ortho_weight,
                                    cameras=cams, mode=cfg.loss, covariance=cfg.covariance, objective=cfg.objective,
                                    prompt_index=prompt_index, objective_delta=cfg.objective_delta,
                                    objective_tau=cfg.objective_tau)
        loss_value = _mean_over_processes(out.total.detach().float(), world)
        if not torch.isfinite(loss_value):
            _stop_non_finite(
                f"loss became {loss_value.item()} at step {step + 1} (diffusion {out.mse.item():.4g}, orthogonal "
                f"{out.ortho.item():.4g}, precision {precision})", keep_good_state(), bar)

        opt.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        scaler.unscale_(opt)
        if world > 1:
            torch.distributed.all_reduce(ctx.grad)
            ctx.grad /= world
        if cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_([ctx], cfg.max_grad_norm)
        else:
            grad_norm = ctx.grad.norm()
        if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # the update would make ctx NaN: keep ctx
            _stop_non_finite(f"the gradient became {float(grad_norm)} at step {step + 1} (loss {loss_value.item():.4g}, "
                             f"precision {precision})", keep_good_state(), bar)
        with _sigint_held():  # a Ctrl-C here would leave ctx and the AdamW moments half-updated
            scaler.step(opt)
            scaler.update()
            step += 1
            pending = False
            for k, v in (("step", step), ("loss", loss_value.item()), ("mse", out.mse.item()), ("ortho", out.ortho.item()),
                         ("grad_norm", float(grad_norm)), ("time", time.perf_counter() - t_start)):
                history[k].append(v)
        if not bool(torch.isfinite(ctx.detach()).all()):  # finite gradient, non-finite update (lr far too high)
            _stop_non_finite(f"the learned context became NaN/Inf in the update of step {step} (gradient norm "
                             f"{float(grad_norm):.4g}, lr {cfg.lr})", keep_good_state(), bar)

        # ------------------------------------------------------------ log, checkpoint, preview
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value.item():.4f}", ortho=f"{out.ortho.item():.3f}")
        if rank == 0 and (step % max(1, cfg.checkpoint_every) == 0 or step == stop):
            last_ckpt = _checkpoint_path(run_dir, step)
            _save_checkpoint(last_ckpt, step, cfg, fingerprint, ctx, opt, gen.get_state(), stream, history, scaler)
            _prune_checkpoints(run_dir, cfg.keep_checkpoints)
            _write_metrics(run_dir, history)
            write_loss_curve(run_dir / "loss.png", history)
        if rank == 0 and cfg.preview_every > 0 and (step % cfg.preview_every == 0 or step == cfg.steps):
            _preview(run_dir, step, cfg, backbone, learner, multiview, views)
    bar.close()
    live.clear()  # the steps are over: an interrupt from here on has nothing new to keep

    # ---------------------------------------------------------------- the distribution file
    dist_path = run_dir / "distribution.safetensors"
    if rank == 0:
        dist = PromptDistribution.from_learner(
            learner, backbone=backbone.name, steps=step, n_images=len(refs), images=str(cfg.images),
            backbone_source=backbone.source, prediction_type=backbone.schedule.prediction_type,
            mode="4view" if multiview else "2d", loss=cfg.loss, run=str(run_dir), complete=step >= cfg.steps,
            covariance=cfg.covariance, objective=cfg.objective,
        )
        dist.save(dist_path)
        if cfg.out:
            dist.save(cfg.out)
        _write_metrics(run_dir, history)
        write_loss_curve(run_dir / "loss.png", history)
        state = "done" if step >= cfg.steps else f"paused at step {step}/{cfg.steps} (resume=latest continues)"
        print(f"[learn] {state}; distribution {cfg.out or dist_path}", file=sys.stderr)
    if world > 1:
        torch.distributed.barrier()
    return LearnResult(run_dir, step, Path(cfg.out) if cfg.out else dist_path, ctx.detach().float().cpu().clone(), history)


# ==================================================================================================== entry points
def launch_entry(cfg, resume: Optional[str] = None) -> int:
    """`python launch.py --config configs/dreamdist-learn.yaml --train [key=value ...]`: cfg is the loaded
    OmegaConf config (top-level `recipe: learn`). Returns the process exit code."""
    from omegaconf import DictConfig, OmegaConf

    from dreamdist3d.errors import run_reporting

    def go() -> int:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        if raw.get("recipe", "learn") != "learn":
            raise ConfigError(f"config has recipe={raw.get('recipe')!r}, expected 'learn'")
        learn(parse_structured(LearnConfig, raw), resume=resume, raw=raw)
        return 0

    return run_reporting("dreamdist3d learn", go)  # the one error → exit-code path (NonFiniteLossError: 3)


# ==================================================================================================== helpers
def _checked(cfg: LearnConfig) -> LearnConfig:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"config key '{key}': {msg}")

    if cfg.recipe != "learn":
        raise bad("recipe", f"must be 'learn', got {cfg.recipe!r}")
    if not cfg.images:
        raise bad("images", "set the folder of reference images (--images DIR)")
    if cfg.mode not in MODES:
        raise bad("mode", f"must be one of {MODES}, got {cfg.mode!r}")
    if cfg.loss not in LOSS_MODES:
        raise bad("loss", f"must be one of {LOSS_MODES}, got {cfg.loss!r}")
    if cfg.objective not in OBJECTIVES:
        raise bad("objective", f"must be one of {OBJECTIVES}, got {cfg.objective!r}")
    if cfg.covariance not in COVARIANCES:
        raise bad("covariance", f"must be one of {COVARIANCES}, got {cfg.covariance!r}")
    if not 0.0 <= cfg.objective_delta <= 1.0:
        raise bad("objective_delta", f"must lie in [0, 1], got {cfg.objective_delta}")
    if not cfg.objective_tau > 0:
        raise bad("objective_tau", f"must be > 0, got {cfg.objective_tau}")
    if cfg.mixed_precision not in PRECISIONS:
        raise bad("mixed_precision", f"must be one of {PRECISIONS}, got {cfg.mixed_precision!r}")
    for key in ("n_ctx", "n_prompts", "n_samples", "batch_size", "steps", "num_views"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"must be ≥ 1, got {getattr(cfg, key)}")
    for key, f in LearnConfig.__dataclass_fields__.items():  # NaN passes every comparison below
        if f.type in ("float", float) and not math.isfinite(getattr(cfg, key)):
            raise bad(key, f"must be a finite number, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise bad("lr", f"must be > 0, got {cfg.lr}")
    position_mode = cfg.position_mode or ("official" if cfg.loss == "official" else "clean")
    name = cfg.name or Path(cfg.images).resolve().name or "dreamdist"
    return LearnConfig(**{**asdict(cfg), "position_mode": position_mode, "name": name})


def backbone_spec(cfg: LearnConfig) -> tuple:
    """(spec for `backbones.load.load_backbone`, the flag it came from): `backbone: mvdream` / `sd21` take their
    path from the `mvdream` / `sd21` keys; anything else (toy, toy:W, mvdream:P, module:function) is a spec itself."""
    if cfg.backbone == "mvdream":
        return f"mvdream:{cfg.mvdream}", "--mvdream"
    if cfg.backbone == "sd21":
        return f"sd21:{cfg.sd21}", "--sd21"
    return cfg.backbone, "--backbone"


def _enable_gradient_checkpointing(unet) -> None:
    for m in (unet, getattr(unet, "unet", None)):
        fn = getattr(m, "enable_gradient_checkpointing", None)
        if fn is not None:
            fn()
            return
    warnings.warn(f"{type(unet).__name__} has no gradient checkpointing; ignoring gradient_checkpointing", stacklevel=2)


class IndexStream:
    """Items in shuffled epochs, concatenated (a shuffling loader that never drops items); state resumes exactly."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def take(self, k: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(self.n, generator=gen), 0
            chunk = self.perm[self.pos : self.pos + k]
            out.append(chunk)
            self.pos += len(chunk)
            k -= len(chunk)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ConfigError(f"the checkpoint was made with {state['n']} reference items, the folder now has {self.n}")
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


def _distributed_setup(device_cfg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and not device_cfg.startswith("cpu")
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _mean_over_processes(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world
    return x.cpu()


def _progress(cfg: LearnConfig, step: int, rank: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=step, desc=f"learn {cfg.name}", unit="step", dynamic_ncols=True,
                disable=not cfg.progress or rank != 0, file=sys.stderr)


def _new_run_dir(cfg: LearnConfig, rank: int, world: int) -> Path:
    path = new_run_dir(cfg.out_dir, "", cfg.name) if rank == 0 else None  # <out_dir>/<name>@<stamp>[-N]/ckpts
    if world > 1:
        box = [str(path) if path else None]
        torch.distributed.broadcast_object_list(box, src=0)
        path = Path(box[0])
    return path


def _write_configs(run_dir: Path, cfg: LearnConfig, raw: Optional[dict], resumed_from: Optional[Path]) -> None:
    from omegaconf import OmegaConf

    folder = run_dir / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    name = "parsed.yaml" if resumed_from is None else f"parsed-resume-{step_of(resumed_from)}.yaml"
    with atomic_path(folder / name) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if raw is not None and resumed_from is None:
        with atomic_path(folder / "raw.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))


def _stop_non_finite(what: str, saved: Optional[Path], bar) -> None:
    bar.close()
    where = (f"The last good state is {saved} (step {step_of(saved)}); resume from it" if saved is not None else
             "No good state was saved; start again")
    raise NonFiniteLossError(f"{what}; stopped. {where} with a lower lr or mixed_precision=no")


@contextlib.contextmanager
def _sigint_held():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it as KeyboardInterrupt when the block ends
    (main thread with Python's default handler only; elsewhere a plain block)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def resume_command(ckpt: Path) -> str:
    """The command line that continues from `ckpt`: this process's own, with its resume argument replaced."""
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
        return " ".join(shlex.quote(a) for a in ["dreamdist3d", *rest, "--resume", str(ckpt)])
    return f"the same settings with resume={shlex.quote(str(ckpt))} (learn(cfg, resume=...))"


# ---------------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "ckpts" / f"step-{step:07d}.pt"


def find_checkpoint(resume: str, cfg: LearnConfig) -> Optional[Path]:
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


def _save_checkpoint(path: Path, step: int, cfg: LearnConfig, fingerprint: dict, ctx: torch.Tensor, opt, rng: torch.Tensor,
                     sampler, history: Dict[str, List[float]], scaler) -> None:
    """sampler: an IndexStream or its state_dict."""
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
    }
    save_checkpoint(state, path)


def _load_checkpoint(path: Path, cfg: LearnConfig, fingerprint: dict, ctx, opt, gen, stream, history, scaler) -> int:
    from dreamdist3d.text import fingerprints_match

    state = load_checkpoint(path, CHECKPOINT_FORMAT, what="learning checkpoint")  # a damaged file names the intact one
    old = json.loads(state["config"])
    for key in RESUME_MUST_MATCH:
        if key in old and old[key] != getattr(cfg, key):
            raise ConfigError(f"resume: config key '{key}' is {getattr(cfg, key)!r} but the run {path.parent.parent} "
                              f"was made with {old[key]!r}; use the same value or start a new run")
    for key in ("seed", "batch_size", "n_samples", "lr", "loss", "flip", "images"):
        if key in old and old[key] != getattr(cfg, key):
            warnings.warn(f"resume: '{key}' changed from {old[key]!r} to {getattr(cfg, key)!r}; the run continues with the "
                          "new value (it will not match an uninterrupted run)", stacklevel=3)
    if not fingerprints_match(json.loads(state["text_encoder"]), fingerprint):
        from dreamdist3d.distribution.file import describe_encoder

        raise ConfigError(f"resume: {path} was learned with text encoder ({describe_encoder(json.loads(state['text_encoder']))}) "
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


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in checkpoints_in(run_dir / "ckpts", "step-*.pt")[:-keep]:
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- outputs
def _write_metrics(run_dir: Path, history: Dict[str, List[float]]) -> None:
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


def _preview(run_dir: Path, step: int, cfg: LearnConfig, backbone: Backbone, learner, multiview: bool, views: int) -> None:
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


__all__ = ["LearnConfig", "LearnResult", "NonFiniteLossError", "backbone_spec", "find_checkpoint", "launch_entry",
           "learn", "resume_command", "write_loss_curve"]
