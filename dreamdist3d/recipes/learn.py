"""The learning recipe: a folder of reference images in, a `PromptDistribution` file out.

`learn()` is one loop, top to bottom: config → backbone → reference latents (encoded once) → prompt learner and
AdamW → [resume] → for each step: draw a batch, noise, timesteps and reparameterisation ε from one seeded CPU
generator; the loss of `learn/loss.py` (K prompts encoded once, B·R UNet rows — under `assign` each distinct
image-prompt row once —, min-SNR γ=5 without +1, orthogonal term 0.001); backward; clip 1.0; AdamW; log /
checkpoint / preview → final distribution file.

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
import math
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
from dreamdist3d.io import check_writable
from dreamdist3d.learn.data import LatentCache, is_multiview_folder, load_references
from dreamdist3d.learn.loop_parts import (
    IndexStream,
    distributed_setup,
    enable_gradient_checkpointing,
    mean_over_processes,
    progress_bar,
)
from dreamdist3d.learn.loss import LOSS_MODES, OBJECTIVES, assigned_prompts, distribution_loss
from dreamdist3d.learn.run_files import CHECKPOINT_FORMAT as CHECKPOINT_FORMAT  # re-exported (were defined here)
from dreamdist3d.learn.run_files import CHECKPOINT_VERSION as CHECKPOINT_VERSION
from dreamdist3d.learn.run_files import RESUME_MUST_MATCH as RESUME_MUST_MATCH
from dreamdist3d.learn.run_files import (
    checkpoint_path,
    find_checkpoint,
    load_learn_checkpoint,
    make_run_dir,
    prune_checkpoints,
    resume_command,
    save_learn_checkpoint,
    write_configs,
    write_loss_curve,
    write_metrics,
    write_step_preview,
)
from dreamdist3d.runs import interrupts_held, pick_device, step_of

MODES = ("auto", "2d", "4view")
PRECISIONS = ("no", "fp16", "bf16")


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
    ctx_init: str = ""  # start every prompt from this text's token embeddings (≤ n_ctx tokens); "" = official init
    n_samples: int = 4  # R reparameterised samples per image
    # assign + kernel won on the held-out toy sets (README, "The toy world"); the paper: official + diag
    objective: str = "assign"  # assign | official (the paper) | wta | softmin (see learn/loss.py)
    covariance: str = "kernel"  # sampling law recorded in the file: kernel | lowrank | diag (the paper)
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
    # > 0: the error averaged over lowpass_pool² blocks of the latent counts again, × this: a body's colour weighs
    # more (README, "Sets that vary in form": keeps a one-colour set's samples in its colour; not the default)
    lowpass_weight: float = 0.0
    lowpass_pool: int = 4
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
    rank, world = distributed_setup(cfg.device)
    device = pick_device(cfg.device)
    if rank == 0:  # every output location is checked before the backbone is loaded
        check_writable(cfg.out_dir, "out_dir (--out-dir)", is_dir=True)
        if cfg.out:
            check_writable(cfg.out, "out (--out)", suffix=".safetensors")  # what sample/preview/gallery read
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
        enable_gradient_checkpointing(backbone.unet)
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
                            prefix=cfg.prefix, suffix=cfg.suffix, position_mode=cfg.position_mode, generator=gen,
                            init_text=cfg.ctx_init)
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
        step = load_learn_checkpoint(ckpt_path, cfg, fingerprint, ctx, opt, gen, stream, history, scaler, world)

    # ---------------------------------------------------------------- run folder (only once the inputs are good)
    run_dir = ckpt_path.parent.parent if ckpt_path else make_run_dir(cfg, rank, world)
    if rank == 0:
        write_configs(run_dir, cfg, raw, resumed_from=ckpt_path)
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
    bar = progress_bar(cfg, step, rank)
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
        path = checkpoint_path(run_dir, step)
        if not path.exists():
            rng, sampler = (rng_before, stream_before) if pending else (gen.get_state(), stream)
            save_learn_checkpoint(path, step, cfg, fingerprint, ctx, opt, rng, sampler, history, scaler, world)
        write_metrics(run_dir, history)
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
        else:  # lowrank (and kernel, which learns as lowrank): one coefficient per prompt
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
                                    objective_tau=cfg.objective_tau, lowpass_weight=cfg.lowpass_weight,
                                    lowpass_pool=cfg.lowpass_pool)
        loss_value = mean_over_processes(out.total.detach().float(), world)
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
            _stop_non_finite(f"the gradient became {float(grad_norm)} at step {step + 1} "
                             f"(loss {loss_value.item():.4g}, precision {precision})", keep_good_state(), bar)
        with interrupts_held():  # a Ctrl-C or SIGTERM here would leave ctx and the AdamW moments half-updated
            scaler.step(opt)
            scaler.update()
            step += 1
            pending = False
            for k, v in (("step", step), ("loss", loss_value.item()), ("mse", out.mse.item()),
                         ("ortho", out.ortho.item()), ("grad_norm", float(grad_norm)),
                         ("time", time.perf_counter() - t_start)):
                history[k].append(v)
        if not bool(torch.isfinite(ctx.detach()).all()):  # finite gradient, non-finite update (lr far too high)
            _stop_non_finite(f"the learned context became NaN/Inf in the update of step {step} (gradient norm "
                             f"{float(grad_norm):.4g}, lr {cfg.lr})", keep_good_state(), bar)

        # ------------------------------------------------------------ log, checkpoint, preview
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value.item():.4f}", ortho=f"{out.ortho.item():.3f}")
        if rank == 0 and (step % max(1, cfg.checkpoint_every) == 0 or step == stop):
            last_ckpt = checkpoint_path(run_dir, step)
            save_learn_checkpoint(last_ckpt, step, cfg, fingerprint, ctx, opt, gen.get_state(), stream, history, scaler,
                                  world)
            prune_checkpoints(run_dir, cfg.keep_checkpoints)
            write_metrics(run_dir, history)
            write_loss_curve(run_dir / "loss.png", history)
        if rank == 0 and cfg.preview_every > 0 and (step % cfg.preview_every == 0 or step == cfg.steps):
            write_step_preview(run_dir, step, cfg, backbone, learner, multiview, views)
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
            **({"lowpass_weight": cfg.lowpass_weight} if cfg.lowpass_weight else {}),  # recorded only when used
        )
        dist.save(dist_path)
        if cfg.out:
            dist.save(cfg.out)
        write_metrics(run_dir, history)
        write_loss_curve(run_dir / "loss.png", history)
        state = "done" if step >= cfg.steps else f"paused at step {step}/{cfg.steps} (resume=latest continues)"
        print(f"[learn] {state}; distribution {cfg.out or dist_path}", file=sys.stderr)
    if world > 1:
        torch.distributed.barrier()
    return LearnResult(run_dir, step, Path(cfg.out) if cfg.out else dist_path, ctx.detach().float().cpu().clone(),
                       history)


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
    if cfg.lowpass_weight < 0:
        raise bad("lowpass_weight", f"must be ≥ 0 (0: the plain noise-prediction loss), got {cfg.lowpass_weight}")
    if cfg.lowpass_pool < 1:
        raise bad("lowpass_pool", f"must be ≥ 1, got {cfg.lowpass_pool}")
    if cfg.ctx_init:  # every backbone here reads the same CLIP BPE: count now, before a checkpoint loads
        from dreamdist3d.text import ClipTokenizer

        n = len(ClipTokenizer.default().encode(cfg.ctx_init))
        if n > cfg.n_ctx:
            raise bad("ctx_init", f"{cfg.ctx_init!r} is {n} tokens, more than n_ctx={cfg.n_ctx} context tokens per "
                      "prompt: shorten it or raise n_ctx")
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


def _stop_non_finite(what: str, saved: Optional[Path], bar) -> None:
    bar.close()
    where = (f"The last good state is {saved} (step {step_of(saved)}); resume from it" if saved is not None else
             "No good state was saved; start again")
    raise NonFiniteLossError(f"{what}; stopped. {where} with a lower lr or mixed_precision=no")


__all__ = ["LearnConfig", "LearnResult", "NonFiniteLossError", "backbone_spec", "find_checkpoint", "launch_entry",
           "learn", "resume_command", "write_loss_curve"]
