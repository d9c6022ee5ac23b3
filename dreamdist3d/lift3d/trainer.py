"""A plain training loop honouring threestudio's `trainer:` and `checkpoint:` keys (no Lightning).

Per step s (0-based, s = number of finished optimizer steps): `update_step` hooks (datamodule resolution, occupancy
grid, guidance t-range) → one batch → loss → backward → optimizer (and scheduler) step; then validation images every
`val_check_interval` steps and checkpoints every `checkpoint.every_n_train_steps` (`epoch=0-step=N.ckpt`), with
`last.ckpt` refreshed at every validation, checkpoint and at the end. Checkpoints are written atomically (temp file
+ os.replace) and hold the trainable state, optimizer, scheduler, RNG states and the prompt sample, so
`resume=<ckpt>` continues at the same step with the same random stream (bitwise on CPU).

Ctrl-C once stops training cleanly, as threestudio does: it takes effect when the step in progress is whole (its
update, log row, validation and checkpoints; `runs.interrupts_held`), then last.ckpt is written and the caller runs the
test stage and exits with code 130. The checkpoint is therefore a state the uninterrupted run also passes through —
weights, optimizer and random stream alike — and `resume=latest` ends with the same object, bit for bit on CPU.
A SIGTERM (`errors.Terminated`: preemption, `kill`) stops training the same way, but the caller skips the test stage
and exits with 143: a scheduler's grace period is spent on the checkpoint alone.
"""

from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from tqdm import tqdm

from dreamdist3d.config import ConfigError
from dreamdist3d.errors import Terminated
from dreamdist3d.io import atomic_path
from dreamdist3d.runs import interrupts_held, save_checkpoint
from dreamdist3d.runs import load_checkpoint as _load_run_checkpoint

CKPT_FORMAT = "dreamdist3d.lift3d-checkpoint"


@dataclass
class TrainerConfig:
    max_steps: int = 10000
    log_every_n_steps: int = 1
    num_sanity_val_steps: int = 0
    val_check_interval: Any = 200  # steps (int); 0/null: no validation during training
    enable_progress_bar: bool = True
    precision: Any = 32  # 32 | "16-mixed" | "bf16-mixed" (mixed precision only on CUDA)
    gradient_clip_val: Optional[float] = None
    accelerator: Optional[str] = None  # accepted for threestudio configs; the device comes from --gpu
    devices: Optional[Any] = None
    strategy: Optional[str] = None
    limit_test_batches: Optional[Any] = None  # int: render only this many test views


@dataclass
class CheckpointConfig:
    save_last: bool = True
    save_top_k: int = -1
    every_n_train_steps: Optional[int] = None
    dirpath: Optional[str] = None
    filename: Optional[str] = None


def move_batch(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_checkpoint(path) -> Dict[str, Any]:
    """A 3D checkpoint (`runs.load_checkpoint`: a truncated or foreign file is an error naming an intact one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: checkpoint {path} does not exist (resume=<path to .ckpt> or resume=latest)")
    return _load_run_checkpoint(path, CKPT_FORMAT, what="3D checkpoint")


def _open_metrics(path: Path, resume_step: Optional[int]):
    """`csv_logs/metrics.csv` opened for appending rows: (file, DictWriter or None).

    A new run starts an empty file (the header comes with the first row). A resumed run keeps the header and the
    rows up to the checkpoint's step (later rows were logged after that checkpoint and are logged again) and returns
    a writer with the old columns, so rows stay aligned under their header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: list = []
    if resume_step is not None and path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows and rows[0] and rows[0][0] == "step":
            kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]
    with atomic_path(path) as tmp:  # the trimmed log replaces the old one in one step
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)
    f = open(path, "a", newline="")
    writer = csv.DictWriter(f, fieldnames=kept[0], extrasaction="ignore") if kept else None
    return f, writer


def _log_row(path: Path, log_file, writer, row: Dict[str, Any]):
    """Append `row` to metrics.csv -> (file, writer). The header is the first row's keys; a row with new keys (an
    anchored run's SDS terms start after its anchor-only steps) widens it: the file is rewritten in one step with the
    new columns, earlier rows empty there."""
    if writer is None:
        writer = csv.DictWriter(log_file, fieldnames=list(row), extrasaction="ignore")
        writer.writeheader()
    elif any(k not in writer.fieldnames for k in row):
        fields = list(writer.fieldnames) + [k for k in row if k not in writer.fieldnames]
        log_file.close()
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        log_file = open(path, "a", newline="")
        writer = csv.DictWriter(log_file, fieldnames=fields, extrasaction="ignore")
    writer.writerow({k: row.get(k, "") for k in writer.fieldnames})
    log_file.flush()  # a killed run keeps every logged row
    return log_file, writer


class Trainer:
    def __init__(self, cfg: TrainerConfig, ckpt_cfg: CheckpointConfig, trial_dir: Path, device: torch.device) -> None:
        self.cfg, self.ckpt_cfg = cfg, ckpt_cfg
        self.trial_dir = Path(trial_dir)
        self.ckpt_dir = Path(ckpt_cfg.dirpath) if ckpt_cfg.dirpath else self.trial_dir / "ckpts"
        self.device = device
        self.interrupted = False
        self.terminated = False  # the interruption was a SIGTERM (`errors.Terminated`)
        if cfg.val_check_interval is not None and not isinstance(cfg.val_check_interval, int):
            raise ConfigError("trainer.val_check_interval must be a number of steps (int) here")
        prec = str(cfg.precision)
        if prec not in ("32", "32-true", "16-mixed", "bf16-mixed", "16", "bf16"):
            raise ConfigError(f"trainer.precision {cfg.precision!r}: use 32, 16-mixed or bf16-mixed")
        self.amp_dtype = None
        if device.type == "cuda" and prec in ("16-mixed", "16"):
            self.amp_dtype = torch.float16
        elif device.type == "cuda" and prec in ("bf16-mixed", "bf16"):
            self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    def save(self, system, optim, sched, step: int, name: str) -> Path:
        state = {
            "format": CKPT_FORMAT,
            "epoch": 0,
            "global_step": step,
            "state_dict": system.trainable_state_dict(),
            "optimizer": optim.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "prompt_sample": system.prompt_processor.state() if system.prompt_processor is not None else None,
        }
        return save_checkpoint(state, self.ckpt_dir / name)

    # ------------------------------------------------------------------ loops
    def fit(self, system, datamodule, resume: Optional[Dict[str, Any]] = None) -> int:
        """Train until trainer.max_steps; returns the final step. Ctrl-C or SIGTERM stops early (self.interrupted;
        self.terminated for SIGTERM)."""
        cfg = self.cfg
        optim, sched = system.configure_optimizers()
        step = 0
        if resume is not None:
            system.load_trainable_state_dict(resume["state_dict"])
            optim.load_state_dict(resume["optimizer"])
            if sched is not None and resume.get("scheduler") is not None:
                sched.load_state_dict(resume["scheduler"])
            if self.scaler is not None and resume.get("scaler") is not None:
                self.scaler.load_state_dict(resume["scaler"])
            set_rng_state(resume["rng"])
            step = int(resume["global_step"])
        system.train()
        log_path = self.trial_dir / "csv_logs" / "metrics.csv"
        log_file, writer = _open_metrics(log_path, step if resume is not None else None)
        bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.enable_progress_bar, dynamic_ncols=True,
                   desc="train", unit="it")
        every_val = int(cfg.val_check_interval or 0)
        every_ckpt = int(self.ckpt_cfg.every_n_train_steps or 0)
        t0 = time.time()
        try:
            while step < cfg.max_steps:
                with interrupts_held():  # Ctrl-C / SIGTERM take effect between steps (see the module docstring)
                    out, loss = self._step(system, datamodule, optim, sched, step)
                    step += 1
                    if cfg.log_every_n_steps and step % cfg.log_every_n_steps == 0:
                        row = {"step": step, "time": round(time.time() - t0, 4)}
                        row.update({k.split("/", 1)[-1]: float(v) for k, v in out["logs"].items()})
                        log_file, writer = _log_row(log_path, log_file, writer, row)
                        bar.set_postfix(loss=f"{float(loss.detach()):.4g}", refresh=False)
                    bar.update(1)
                    if every_val and step % every_val == 0:
                        self.validate(system, datamodule, step)
                        system.train()
                    if every_ckpt and step % every_ckpt == 0:
                        self.save(system, optim, sched, step, f"epoch=0-step={step}.ckpt")
                    due = (every_val and step % every_val == 0) or (every_ckpt and step % every_ckpt == 0)
                    if self.ckpt_cfg.save_last and due:
                        self.save(system, optim, sched, step, "last.ckpt")
        except KeyboardInterrupt as e:
            self.interrupted, self.terminated = True, isinstance(e, Terminated)
            bar.write(f"terminated (SIGTERM) at step {step}: writing last.ckpt" if self.terminated else
                      f"interrupted at step {step}: writing last.ckpt, then the test stage (Ctrl-C again to abort)")
        finally:
            bar.close()
            log_file.close()
        if self.ckpt_cfg.save_last:
            self.save(system, optim, sched, step, "last.ckpt")
        system.global_step = step
        return step

    def _step(self, system, datamodule, optim, sched, step: int):
        """One optimizer step at `step` (0-based): update hooks, batch, loss, backward, optimizer and scheduler."""
        system.do_update_step(0, step)
        datamodule.do_update_step(0, step)
        batch = move_batch(datamodule.train_batch(), self.device)
        with self.autocast():
            out = system.training_step(batch)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()):
            why = out.get("non_finite") or "lower the learning rates in system.optimizer"
            raise FloatingPointError(f"loss became {float(loss.detach())} at step {step}: {why}")
        optim.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optim)
        else:
            loss.backward()
        if self.cfg.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(system.parameters(), self.cfg.gradient_clip_val)
        if self.scaler is not None:
            self.scaler.step(optim)
            self.scaler.update()
        else:
            optim.step()
        if sched is not None:
            sched.step()
        return out, loss

    @torch.no_grad()
    def validate(self, system, datamodule, step: int) -> None:
        system.eval()
        for batch in datamodule.val_batches():
            with self.autocast():
                system.validation_step(move_batch(batch, self.device), step)

    @torch.no_grad()
    def test(self, system, datamodule, step: int) -> Dict[str, Path]:
        system.eval()
        n = datamodule.n_test_views
        limit = self.cfg.limit_test_batches
        batches = datamodule.test_batches()
        if isinstance(limit, int) and limit > 0:
            n = min(n, limit)
            batches = (b for i, b in zip(range(n), batches))
        bar = tqdm(total=n, disable=not self.cfg.enable_progress_bar, dynamic_ncols=True, desc="test", unit="view")
        try:
            with self.autocast():
                return system.test((move_batch(b, self.device) for b in batches), step, progress=lambda: bar.update(1))
        finally:
            bar.close()
