"""Training the toy backbone from scratch (`dreamdist3d toyworld train`).

One loop, one step = one 4-view batch and one single-view batch, as MVDream trains on 3D and 2D data together:

- 3D: `batch_mv` objects × 4 views, MVDream cameras (`get_camera(4, elevation, azimuth_start)`, a quarter of them at
  the sampler's canonical elevation 15° / azimuth 0, the rest at random elevation in [0, 30]° and azimuth), one
  timestep per object, `num_frames=4`, camera embedded;
- 2D: `batch_2d` single views (a random view of a random cached object), `camera=None`, `num_frames=1`.

Text conditioning, built so that the text space is continuous (learned prompts live between words):
- rich paraphrases: a fresh random paraphrase of the object's caption at every use (`captions.caption(spec, rng)`);
- interpolation: `interp_fraction` of the cached objects are blends `interpolate_specs(A, B, t)` of two objects that
  differ in one attribute (a neighbouring palette colour of the body or the part, small↔large, short↔tall). Their
  conditioning is the token embeddings of A's and B's captions, interpolated with the same t,
  `(1-t)·E[ids_A] + t·E[ids_B]` (the two paraphrases are drawn with the same random choices, so their tokens line up
  position by position; `interp_caption_prob` of the time the blend's own caption is used instead, e.g. "red-orange");
- noise: `noise_fraction` of the captions get Gaussian noise on their word-token embeddings (SOS…EOS exclusive), of
  standard deviation U(0, noise_std) × the RMS of the batch's token embeddings;
- text dropout: `text_dropout` of the captions are replaced by "" (classifier-free guidance);
- an auxiliary loss (`aux_weight`, a linear head that is not shipped) regresses the object's attributes (hue on the
  circle, size, aspect, shape, part hue/shape/placement; blends: the blend's values) from the text states averaged
  over the 77 positions: the toy stand-in for CLIP's pretraining, which is what makes real CLIP states informative
  at every position before a diffusion model ever sees them. It also lays the text space out by attribute, so
  interpolated and learned embeddings mean interpolated attributes.

The loss is the v-prediction MSE over all rows (see `backbone.py` for why v). The JSON log also reports the loss at
high noise (t ≥ 750) of rows with and without a caption: the gap is how much the model uses the text.

Data: a cache rendered once at start (`cache_objects` plain + `cache_interp` blended objects, 4 views each, uint8),
deterministic for the seed, rebuilt identically on resume. The text encoder (all of it, token table included) and
the UNet are trained together with Adam (no weight decay, so token rows that never occur stay exactly at their
seeded initial values and need not be shipped), linear warm-up then cosine decay, gradient clipping, and an EMA of
the weights which is what is saved. Speed switches, all on in the shipped recipe (`python benchmarks/toy_train.py`
measures each; all off is the float32 arithmetic of the earlier, 37-minute weights): bfloat16 autocast (weights,
Adam and the EMA stay float32), channels-last UNet, the math attention kernel on CPU, fused Adam, and
`sparse_token_rows` (only the ~115 rows of the captions' vocabulary in Adam and the EMA, `TokenRows`: the same
optimisation, less memory traffic).
Deterministic for a seed at one thread; at two, runs with channels-last on now and then round differently (1e-7 loss
differences, README), so a rerun is an equally good model, not the same bits. Checkpoints (atomic)
every `ckpt_every` steps and at the end hold the model, EMA, optimiser, both random generators and the loss history,
so `--resume` continues where training stopped (bit-exactly at one thread; tested).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.toy import ToyBackboneConfig, build_toy_backbone
from dreamdist3d.backbones.toy_weights import save_toy_backbone
from dreamdist3d.io import check_writable
from dreamdist3d.runs import load_checkpoint, pick_device, save_checkpoint
from dreamdist3d.text import ClipTokenizer
from dreamdist3d.toyworld.data import (
    ATTRIBUTE_DIM,
    SOS,
    DataCache,
    TokenRows,
    aligned_pair,
    blend_ends,
    build_cache,
    conditioning,
    draw_batch,
    vocabulary_ids,
)

PathLike = Union[str, Path]


@dataclass
class TrainConfig:
    """Defaults: the recipe of the shipped weights (4000 steps, 12×4 + 16 rows, every speed switch on: 17.6 and 18.8
    min in two runs, +0.3 min rendering, on the 2-core development CPU). Switches off: plain float32, about 1.4×
    slower, and its model was no better on the caption check (README)."""

    steps: int = 4000  # total optimiser steps (the LR schedule depends on it)
    seed: int = 0
    batch_mv: int = 12  # objects per step, 4 views each (48 UNet rows, num_frames=4, cameras)
    batch_2d: int = 16  # single views per step (num_frames=1, no camera)
    # speed switches (`python benchmarks/toy_train.py` measures each); all off = plain float32 arithmetic
    bf16: bool = True  # autocast the forward to bfloat16 (weights, optimiser and EMA stay float32)
    channels_last: bool = True  # NHWC UNet weights (faster convolutions on CPU)
    cpu_math_attention: bool = True  # on CPU, PyTorch's math attention kernel instead of flash (faster backward here)
    sparse_token_rows: bool = True  # train only the caption vocabulary's token rows (`TokenRows`), not all 49408
    fused_adam: bool = True  # torch's fused Adam kernel
    lr: float = 1.5e-3
    embedding_lr_scale: float = 0.2  # the token table learns at lr × this
    warmup_steps: int = 150
    final_lr_fraction: float = 0.1  # cosine decay from lr to lr × this
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    text_dropout: float = 0.1
    aux_weight: float = 0.1  # auxiliary attribute regression from the mean-pooled text states (0: off)
    interp_caption_prob: float = 0.3  # for blended objects: the blend's own caption instead of mixed embeddings
    noise_fraction: float = 0.5
    noise_std: float = 0.4  # max relative std of the token-embedding noise
    cache_objects: int = 4000
    cache_interp: int = 1200
    pair_variants: int = 4  # aligned paraphrase pairs stored per blended object
    canonical_view_fraction: float = 0.25  # 4-view sets at the sampler's elevation 15° / azimuth 0
    elevation_range: Tuple[float, float] = (0.0, 30.0)
    render_aa: int = 2
    ckpt_every: int = 200
    log_every: int = 25

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "TrainConfig":
        known = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; expected {sorted(known)}")
        d = dict(d)
        if "elevation_range" in d:
            d["elevation_range"] = tuple(d["elevation_range"])
        return TrainConfig(**d)


SPEED_SWITCHES = ("bf16", "channels_last", "cpu_math_attention", "sparse_token_rows", "fused_adam")
FLOAT32: Dict[str, Any] = {k: False for k in SPEED_SWITCHES}  # every switch off (`--float32`): plain float32 training


# ----------------------------------------------------------------------------------------------------- the trainer
def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to lr·final_lr_fraction at `total`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    f = cfg.final_lr_fraction + (1.0 - cfg.final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * f


def _dense(backbone: Backbone) -> List[torch.nn.Parameter]:
    """Every backbone parameter except the token table (Adam and the EMA hold that as `Trainer.table_param`)."""
    table = backbone.text_encoder.token_embedding.weight
    return [p for p in backbone.text_encoder.parameters() if p is not table] + list(backbone.unet.parameters())


class Trainer:
    """Holds the backbone, its EMA, the optimiser, the data cache and the two random generators."""

    def __init__(self, cfg: TrainConfig, model_config: Optional[ToyBackboneConfig] = None, device: str = "cpu",
                 tokenizer: Optional[ClipTokenizer] = None, progress: bool = True):
        self.cfg = cfg
        self.model_config = model_config or ToyBackboneConfig()
        self.device = device = pick_device(device, key="--device")
        self.progress = progress
        self.tokenizer = tokenizer or ClipTokenizer.default()
        self.backbone = build_toy_backbone(self.model_config, seed=cfg.seed, device=device, tokenizer=self.tokenizer)
        self.backbone.text_encoder.clip.requires_grad_(True)
        self.backbone.unet.train()
        if cfg.channels_last:
            self.backbone.unet.to(memory_format=torch.channels_last)
        self.ema = build_toy_backbone(self.model_config, seed=cfg.seed, device=device, tokenizer=self.tokenizer)
        self.ema.unet.requires_grad_(False)
        table = self.backbone.text_encoder.token_embedding.weight
        ema_table = self.ema.text_encoder.token_embedding.weight
        self.rows: Optional[TokenRows] = None  # sparse: the vocabulary's rows, trained in place of the table
        self.ema_rows: Optional[TokenRows] = None
        if cfg.sparse_token_rows:
            table.requires_grad_(False)
            vocab = vocabulary_ids(self.tokenizer).to(self.device)
            self.rows = TokenRows(table, vocab)
            self.ema_rows = TokenRows(ema_table, vocab).requires_grad_(False)
        # what Adam and the EMA update for the token embeddings: the rows, or the whole table
        self.table_param = self.rows.rows if self.rows is not None else table
        self.ema_table_param = self.ema_rows.rows if self.ema_rows is not None else ema_table
        # the auxiliary head (not part of the backbone, not shipped): text states -> object attributes
        width = int(self.model_config.text["hidden_size"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 17)
            self.aux_head = torch.nn.Linear(width, ATTRIBUTE_DIM).to(self.device)
        others = _dense(self.backbone) + list(self.aux_head.parameters())
        self.opt = torch.optim.Adam(
            [{"params": others, "lr_scale": 1.0}, {"params": [self.table_param], "lr_scale": cfg.embedding_lr_scale}],
            lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, **({"fused": True} if cfg.fused_adam else {}),
        )
        self.rng = np.random.default_rng([cfg.seed, 2])
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7)
        self.step = 0
        self.total_steps = cfg.steps
        self.losses: List[float] = []
        self.diag: Dict[str, list] = {}  # [sum, count] per diagnostic since the last log line (not training state)
        self.elapsed = 0.0  # training seconds (without the cache)
        self.cache: Optional[DataCache] = None

    # -------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        self.sync_tables()
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_config": self.cfg.to_dict(),
            "model_config": self.model_config.to_dict(),
            "unet": self.backbone.unet.state_dict(),
            "text": self.backbone.text_encoder.state_dict(),
            "ema_unet": self.ema.unet.state_dict(),
            "ema_text": self.ema.text_encoder.state_dict(),
            "aux_head": self.aux_head.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
            "losses": list(self.losses),
            "elapsed": self.elapsed,
            "threads": torch.get_num_threads(),
        }

    def save_checkpoint(self, path: PathLike) -> None:
        save_checkpoint(self.state(), Path(path))

    def load_checkpoint(self, path: PathLike) -> None:
        st = load_checkpoint(Path(path), what="toy training checkpoint", map_location=self.device)
        if st["train_config"] != self.cfg.to_dict() or st["model_config"] != self.model_config.to_dict():
            diff = sorted(k for k in st["train_config"] if st["train_config"][k] != self.cfg.to_dict().get(k))
            raise ValueError(
                f"checkpoint {path} was made with other settings (train config keys differing: {diff or 'model'}); "
                "resume with the same arguments or start fresh without --resume"
            )
        self.step = int(st["step"])
        self.total_steps = int(st["total_steps"])
        self.backbone.unet.load_state_dict(st["unet"])
        self.backbone.text_encoder.load_state_dict(st["text"])
        self.ema.unet.load_state_dict(st["ema_unet"])
        self.ema.text_encoder.load_state_dict(st["ema_text"])
        if self.rows is not None:
            with torch.no_grad():
                self.rows.rows.copy_(self.backbone.text_encoder.token_embedding.weight[self.rows.ids])
                self.ema_rows.rows.copy_(self.ema.text_encoder.token_embedding.weight[self.ema_rows.ids])
        self.aux_head.load_state_dict(st["aux_head"])
        self.opt.load_state_dict(st["opt"])
        self.rng.bit_generator.state = st["rng"]
        self.gen.set_state(st["gen"])
        self.losses = list(st["losses"])
        self.elapsed = float(st["elapsed"])

    def sync_tables(self) -> None:
        """Write the trained token rows (and their EMA) into the two backbones' tables (sparse rows only)."""
        if self.rows is not None:
            self.rows.write_into(self.backbone.text_encoder.token_embedding.weight)
            self.ema_rows.write_into(self.ema.text_encoder.token_embedding.weight)

    # -------------------------------------------------------------- one step
    def train_step(self) -> float:
        """One optimiser step, in bfloat16 autocast with `bf16`; with `cpu_math_attention` on CPU, attention uses
        PyTorch's math kernel: the flash kernel's CPU backward is several times slower on these small shapes (64
        queries × 77 keys). `python benchmarks/toy_train.py` measures each switch."""
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        math = self.device.type == "cpu" and self.cfg.cpu_math_attention
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16), \
                (sdpa_kernel([SDPBackend.MATH]) if math else nullcontext()):
            return self._step()

    def _step(self) -> float:
        cfg, bb = self.cfg, self.backbone
        batch = draw_batch(self.cache, cfg, self.rng, self.tokenizer)
        n_mv = cfg.batch_mv * 4
        x0 = batch.x0.to(self.device)
        t_obj = torch.randint(0, bb.schedule.num_train_timesteps, (cfg.batch_mv + cfg.batch_2d,), generator=self.gen)
        t = torch.cat([t_obj[: cfg.batch_mv].repeat_interleave(4), t_obj[cfg.batch_mv:]]).to(self.device)
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        x_t = bb.schedule.add_noise(x0, noise, t)
        embed = None if self.rows is None else (lambda ids: self.rows(bb.text_encoder.token_embedding.weight, ids))
        ctx = conditioning(bb, batch, self.gen, cfg.noise_std, embed=embed)  # (B,77,D)
        ctx_mv = ctx[: cfg.batch_mv].repeat_interleave(4, dim=0)
        out_mv = bb.unet(x_t[:n_mv], t[:n_mv], ctx_mv, camera=batch.cameras.to(self.device), num_frames=4)
        out_2d = bb.unet(x_t[n_mv:], t[n_mv:], ctx[cfg.batch_mv:], camera=None, num_frames=1)
        target = bb.schedule.target(x0, noise, t)
        per_row = (torch.cat([out_mv, out_2d]) - target).pow(2).mean(dim=(1, 2, 3))  # (R,)
        loss = per_row.mean()
        diffusion_loss = loss.detach()
        # diagnostic: loss at high noise (t ≥ 3/4 T, where only the text tells the object) with and without a caption
        caption_row = torch.cat([batch.has_text[: cfg.batch_mv].repeat_interleave(4), batch.has_text[cfg.batch_mv:]])
        high = (t >= 3 * bb.schedule.num_train_timesteps // 4).cpu()
        for key, sel in (("high_t_with_text", high & caption_row), ("high_t_without_text", high & ~caption_row)):
            if bool(sel.any()):
                acc = self.diag.setdefault(key, [0.0, 0])
                acc[0] += float(per_row.detach().cpu()[sel].sum())
                acc[1] += int(sel.sum())
        if cfg.aux_weight > 0 and bool(batch.has_text.any()):
            pred = self.aux_head(ctx.mean(dim=1))  # (B, ATTRIBUTE_DIM) from the mean over the 77 positions
            keep = batch.has_text.to(self.device)
            aux = F.mse_loss(pred[keep], batch.attributes.to(self.device)[keep])
            loss = loss + cfg.aux_weight * aux

        lr = lr_at(self.step, cfg, self.total_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(_dense(bb) + [self.table_param] + list(self.aux_head.parameters()),
                                       cfg.grad_clip)
        self.opt.step()
        self._update_ema()
        self.step += 1
        value = float(diffusion_loss)
        self.losses.append(value)
        return value

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        src = [p.detach() for p in _dense(self.backbone) + [self.table_param]]
        torch._foreach_lerp_(_dense(self.ema) + [self.ema_table_param], src, 1.0 - d)  # rows with p == q stay put

    # -------------------------------------------------------------- the loop
    def run(self, checkpoint: Optional[PathLike] = None, minutes: Optional[float] = None,
            log=None, until: Optional[int] = None) -> Dict[str, Any]:
        """Train to `total_steps` (or, with `minutes` and steps fixed from the measured speed, for that long).
        `until`: stop (and checkpoint) at that step instead, as an interruption would; `total_steps` is unchanged."""
        from tqdm import tqdm

        t_start = time.time()
        if self.cache is None:
            self.cache = build_cache(self.cfg, self.tokenizer, progress=self.progress)
        cache_seconds = self.cache.render_seconds
        budget_end = t_start + 60.0 * minutes if minutes else None
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training toy backbone", unit="step",
                   dynamic_ncols=True, disable=not self.progress, mininterval=1.0)
        smooth = None
        t_loop = time.time()
        step0 = self.step
        stop = self.total_steps if until is None else min(until, self.total_steps)
        while self.step < stop:
            loss = self.train_step()
            smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{lr_at(self.step - 1, self.cfg, self.total_steps):.1e}",
                            refresh=False)
            now = time.time()
            if budget_end is not None and self.step - step0 == 20 and self.step < self.total_steps:
                # with a time budget, fix the total from the speed measured over the first 20 steps
                rate = 20.0 / (now - t_loop)
                self.total_steps = min(self.total_steps, self.step + int(rate * max(0.0, budget_end - now)))
                bar.total = self.total_steps
            if log is not None and (self.step % self.cfg.log_every == 0 or self.step == self.total_steps):
                log(json.dumps({"step": self.step, "loss": round(smooth, 5), "lr": lr_at(self.step - 1, self.cfg,
                                                                                         self.total_steps),
                                **{k: round(v[0] / max(v[1], 1), 4) for k, v in self.diag.items()},
                                "elapsed_s": round(self.elapsed + now - t_loop, 1)}))
                self.diag = {}
            if budget_end is not None and until is None:
                stop = self.total_steps
            if checkpoint is not None and (self.step % self.cfg.ckpt_every == 0 or self.step in (stop,
                                                                                                 self.total_steps)):
                self.elapsed += time.time() - t_loop
                t_loop = time.time()
                self.save_checkpoint(checkpoint)
        bar.close()
        self.elapsed += time.time() - t_loop
        self.sync_tables()
        tail = self.losses[-100:]
        return {
            "steps": self.step,
            "train_minutes": round(self.elapsed / 60.0, 2),
            "cache_render_minutes": round(cache_seconds / 60.0, 2),
            "wall_minutes_this_run": round((time.time() - t_start) / 60.0, 2),
            "steps_per_second": round(self.step / max(self.elapsed, 1e-9), 3),
            "final_loss": round(float(np.mean(tail)), 5) if tail else None,
            "first_loss": round(float(np.mean(self.losses[:20])), 5) if self.losses else None,
            "loss_curve": [round(float(np.mean(self.losses[i:i + 100])), 5) for i in range(0, len(self.losses), 100)],
        }


def train_toy_backbone(
    cfg: TrainConfig,
    out: PathLike,
    model_config: Optional[ToyBackboneConfig] = None,
    checkpoint: Optional[PathLike] = None,
    resume: bool = False,
    minutes: Optional[float] = None,
    device: str = "cpu",
    progress: bool = True,
    command: Optional[str] = None,
    log_path: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Train, write `out` (EMA weights, safetensors) and `out`.json (config + training record). Returns the record."""
    out = Path(out)
    if checkpoint is None:  # beside the weights; never inside the package's data folder (it would ship)
        from dreamdist3d.backbones.toy_weights import DATA_DIR

        folder = Path("outputs/toyworld") if out.resolve().parent == DATA_DIR else out.parent
        checkpoint = folder / (out.stem + "-ckpt.pt")
    checkpoint = Path(checkpoint)
    check_writable(out, "--out")  # before the cache is rendered and training starts
    check_writable(checkpoint, "--checkpoint")
    trainer = Trainer(cfg, model_config, device=device, progress=progress)
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        trainer.load_checkpoint(checkpoint)
    logf = open(log_path, "a") if log_path else None
    try:
        stats = trainer.run(checkpoint=checkpoint, minutes=minutes,
                            log=(lambda s: (logf.write(s + "\n"), logf.flush())) if logf else None)
    finally:
        if logf:
            logf.close()
    record = {
        "command": command or " ".join(["dreamdist3d"] + sys.argv[1:]),
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "train_config": cfg.to_dict(),
        **stats,
        "weights": "EMA",
    }
    save_toy_backbone(trainer.ema, out, record)
    return record


__all__ = [
    "TrainConfig",
    "SPEED_SWITCHES",
    "FLOAT32",
    "Trainer",
    "DataCache",
    "build_cache",
    "draw_batch",
    "blend_ends",
    "aligned_pair",
    "conditioning",
    "TokenRows",
    "vocabulary_ids",
    "SOS",
    "lr_at",
    "train_toy_backbone",
]
