"""Training the toy reconstructor (`dreamdist3d toyworld train-lgm`): LGM's architecture at toy size (`LGM_CONFIGS
["toy"]`) learns to turn 4 views of a toy object into 3D Gaussians, supervised as LGM was: renders of its Gaussians
against renders of the object, RGB and foreground masks, at the input views and at views it was not shown.

Data: a cache rendered once at start (deterministic for the seed, rebuilt identically on resume): `cache_objects`
objects of the whole toy world (`toyworld.objects.sample_objects`, grammar seed `OBJECT_SEED + seed`, used by nothing
else), each from 4 input views 90° apart (a 4-view sample's cameras: `canonical_fraction` of them at the preview's
elevation 15° and MVDream azimuths 0/90/180/270, the rest at a random elevation in `elevation_range` and a random
start azimuth) and `novel_views` other views (random azimuth, elevation in `novel_elevation_range`), all at the toy
framing (distance 3, fovy 40°, 32², white background; `toyworld.render`), RGB and coverage masks as uint8.

One step: `batch` objects; their 4 input views (plus Gaussian pixel noise of std up to `input_noise`: the toy
backbone's 4-view samples, which the reconstructor is used on, are not clean renders) go through
`LGM.forward_scene` (Plücker rays of the input cameras, Gaussians scaled into the scene); the Gaussians are rendered
(`render_gaussians`, differentiable) at the 4 input views and `supervision_views` of the object's novel views; loss =
MSE(RGB) + `mask_weight`·MSE(alpha, mask). AdamW, linear warm-up then cosine decay, gradient clipping, an EMA of the
weights, which is what is saved (`reconstruct.save_lgm`: float16, config in the header, the JSON record with the
command beside it). Checkpoints (atomic) every `ckpt_every` steps and at the end hold model, EMA, optimiser and both
random generators, so `--resume` continues where training stopped (bit-exactly at one thread).
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

from dreamdist3d.backbones.cameras import c2w_from_spherical, threestudio_azimuth
from dreamdist3d.io import check_writable
from dreamdist3d.reconstruct import LGM, lgm_config, render_gaussians, save_lgm
from dreamdist3d.runs import load_checkpoint, save_checkpoint
from dreamdist3d.toyworld.render import CAMERA_DISTANCE, DEFAULT_ELEVATION, FOVY_DEG

PathLike = Union[str, Path]
OBJECT_SEED = 4100  # grammar seed of the training objects (+ the training seed); nothing else draws with it
INPUT_VIEWS = 4
DEFAULT_OUT = "outputs/toyworld/toy-lgm.safetensors"


@dataclass
class LGMTrainConfig:
    """Defaults: the recipe of the shipped toy reconstructor (README, "3D in seconds")."""

    steps: int = 2000
    seed: int = 0
    batch: int = 8  # objects per step
    supervision_views: int = 4  # novel views rendered per object and step, beside its 4 input views
    lr: float = 1e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    mask_weight: float = 1.0
    input_noise: float = 0.03  # max std of the pixel noise added to the input views
    cache_objects: int = 3000
    novel_views: int = 8  # novel views rendered per cached object
    canonical_fraction: float = 0.5  # 4-view inputs at the preview's cameras (elevation 15°, azimuths 0/90/180/270)
    elevation_range: Tuple[float, float] = (0.0, 30.0)
    novel_elevation_range: Tuple[float, float] = (-10.0, 45.0)
    render_aa: int = 2
    tile_size: int = 8  # Gaussian renderer tiles (8 is faster than 16 at 32²)
    ckpt_every: int = 100
    log_every: int = 25

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class ViewCache:
    """Renders of the training objects: views 0-3 the inputs, then the novel views (scene cameras, toy framing)."""

    rgb: torch.Tensor  # (N, V, 3, H, W) uint8
    mask: torch.Tensor  # (N, V, 1, H, W) uint8 coverage
    elevation: torch.Tensor  # (N, V) degrees
    azimuth: torch.Tensor  # (N, V) threestudio degrees
    render_seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def cameras(self, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """(B, K, 4, 4) scene c2w of views `views` (B, K) of objects `idx` (B,)."""
        e, a = self.elevation[idx[:, None], views], self.azimuth[idx[:, None], views]
        return c2w_from_spherical(e.reshape(-1), a.reshape(-1), CAMERA_DISTANCE).reshape(*views.shape, 4, 4)


def view_angles(cfg: LGMTrainConfig, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(elevation, threestudio azimuth) (n, 4 + novel_views) in degrees, by the module docstring's rule."""
    canonical = rng.random(n) < cfg.canonical_fraction
    e_in = np.where(canonical, DEFAULT_ELEVATION, rng.uniform(*cfg.elevation_range, n))
    start = np.where(canonical, 0.0, rng.uniform(0.0, 360.0, n))  # MVDream azimuth of view 0
    a_in = threestudio_azimuth(start[:, None] + 90.0 * np.arange(INPUT_VIEWS)[None])
    e_new = rng.uniform(*cfg.novel_elevation_range, (n, cfg.novel_views))
    a_new = rng.uniform(0.0, 360.0, (n, cfg.novel_views))
    elevation = np.concatenate([np.repeat(e_in[:, None], INPUT_VIEWS, 1), e_new], 1)
    return elevation, np.concatenate([a_in, a_new], 1)


def build_cache(cfg: LGMTrainConfig, progress: bool = False, chunk: int = 100) -> ViewCache:
    from tqdm import tqdm

    from dreamdist3d.toyworld.objects import sample_objects
    from dreamdist3d.toyworld.render import render

    t0 = time.time()
    rng = np.random.default_rng([cfg.seed, 30])
    specs = sample_objects(cfg.cache_objects, OBJECT_SEED + cfg.seed)
    elevation, azimuth = (torch.from_numpy(x).float() for x in view_angles(cfg, len(specs), rng))
    v = elevation.shape[1]
    rgbs, masks = [], []
    for start in tqdm(range(0, len(specs), chunk), desc="rendering toy objects", disable=not progress, unit="chunk"):
        part = slice(start, start + chunk)
        cams = c2w_from_spherical(elevation[part].reshape(-1), azimuth[part].reshape(-1), CAMERA_DISTANCE)
        out = render(specs[part], cams.reshape(-1, v, 16), resolution=32, aa=cfg.render_aa, distance=None)
        rgbs.append((out.image * 255).round().to(torch.uint8).reshape(-1, v, 3, 32, 32))
        masks.append((out.mask * 255).round().to(torch.uint8).reshape(-1, v, 1, 32, 32))
    return ViewCache(torch.cat(rgbs), torch.cat(masks), elevation, azimuth, time.time() - t0)


# ----------------------------------------------------------------------------------------------------- the trainer
def lr_at(step: int, cfg: LGMTrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to lr·final_lr_fraction at `total`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * p)))


class LGMTrainer:
    """The model, its EMA, the optimiser, the view cache and the two random generators."""

    def __init__(self, cfg: LGMTrainConfig, model_config: str = "toy", progress: bool = True) -> None:
        self.cfg = cfg
        self.model_config = lgm_config(model_config)
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.model = LGM(self.model_config).train()
        self.ema = LGM(self.model_config).eval().requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                     weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng([cfg.seed, 31])
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 30)
        self.step = 0
        self.losses: List[float] = []
        self.elapsed = 0.0
        self.cache: Optional[ViewCache] = None

    # -------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        return {"step": self.step, "train_config": self.cfg.to_dict(), "model_config": self.model_config.to_dict(),
                "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.rng.bit_generator.state, "gen": self.gen.get_state(), "losses": list(self.losses),
                "elapsed": self.elapsed}

    def load(self, path: PathLike) -> None:
        st = load_checkpoint(Path(path), what="toy reconstructor training checkpoint")
        if st["train_config"] != self.cfg.to_dict() or st["model_config"] != self.model_config.to_dict():
            diff = sorted(k for k in st["train_config"] if st["train_config"][k] != self.cfg.to_dict().get(k))
            raise ValueError(f"checkpoint {path} was made with other settings ({diff or 'model config'} differ); "
                             "resume with the same arguments, or start fresh without --resume")
        self.step = int(st["step"])
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.rng.bit_generator.state = st["rng"]
        self.gen.set_state(st["gen"])
        self.losses = list(st["losses"])
        self.elapsed = float(st["elapsed"])

    # -------------------------------------------------------------- one step
    def batch_loss(self, idx: torch.Tensor, novel: torch.Tensor, noise: torch.Tensor,
                   model: Optional[LGM] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Loss of objects `idx` (B,) with input-view noise (B,4,3,H,W), supervised at their inputs and novel views
        `novel` (B, K) (indices into the novel views)."""
        model = model or self.model
        cache = self.cache
        views = torch.cat([torch.arange(INPUT_VIEWS).expand(len(idx), -1), INPUT_VIEWS + novel], 1)  # (B, 4+K)
        rgb = cache.rgb[idx[:, None], views].float() / 255  # (B, 4+K, 3, H, W)
        mask = cache.mask[idx[:, None], views].float() / 255
        cams = cache.cameras(idx, views)  # (B, 4+K, 4, 4)
        inputs = (rgb[:, :INPUT_VIEWS] + noise).clamp(0, 1)
        gaussians = model.forward_scene(inputs, cams[:, :INPUT_VIEWS], FOVY_DEG)  # (B, N, …) in the scene
        size = rgb.shape[-1]
        l_rgb, l_mask = 0.0, 0.0
        for b in range(len(idx)):
            out = render_gaussians(gaussians[b], cams[b], FOVY_DEG, size, size, backend="torch",
                                   tile_size=self.cfg.tile_size)
            l_rgb = l_rgb + F.mse_loss(out.rgb, rgb[b].permute(0, 2, 3, 1))
            l_mask = l_mask + F.mse_loss(out.alpha, mask[b].permute(0, 2, 3, 1))
        l_rgb, l_mask = l_rgb / len(idx), l_mask / len(idx)
        return l_rgb + self.cfg.mask_weight * l_mask, {"rgb": float(l_rgb.detach()), "mask": float(l_mask.detach())}

    def draw(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objects (B,), novel views (B,K), input noise (B,4,3,H,W)) of the next step."""
        cfg = self.cfg
        idx = torch.from_numpy(self.rng.choice(len(self.cache), cfg.batch, replace=False))
        novel = torch.from_numpy(np.stack([self.rng.choice(cfg.novel_views, cfg.supervision_views, replace=False)
                                           for _ in range(cfg.batch)]))
        std = torch.rand(cfg.batch, 1, 1, 1, 1, generator=self.gen) * cfg.input_noise
        noise = torch.randn(cfg.batch, INPUT_VIEWS, *self.cache.rgb.shape[2:], generator=self.gen) * std
        return idx, novel, noise

    def train_step(self, total: int) -> Dict[str, float]:
        loss, parts = self.batch_loss(*self.draw())
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg, total)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
            torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], 1 - d)
        self.step += 1
        self.losses.append(float(loss.detach()))
        return {"loss": self.losses[-1], **parts}

    # -------------------------------------------------------------- the loop
    def run(self, checkpoint: Optional[PathLike] = None, until: Optional[int] = None, log=None) -> Dict[str, Any]:
        """Train to `cfg.steps` (or stop, with a checkpoint, at `until`, as an interruption would)."""
        from tqdm import tqdm

        t_start = time.time()
        if self.cache is None:
            self.cache = build_cache(self.cfg, progress=self.progress)
        total, stop = self.cfg.steps, min(until or self.cfg.steps, self.cfg.steps)
        bar = tqdm(total=total, initial=self.step, desc="training toy reconstructor", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
        t_loop, smooth = time.time(), None
        while self.step < stop:
            parts = self.train_step(total)
            smooth = parts["loss"] if smooth is None else 0.98 * smooth + 0.02 * parts["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
            if log is not None and (self.step % self.cfg.log_every == 0 or self.step == stop):
                log(json.dumps({"step": self.step, "loss": round(smooth, 5), "rgb": round(parts["rgb"], 5),
                                "mask": round(parts["mask"], 5), "lr": lr_at(self.step - 1, self.cfg, total),
                                "elapsed_s": round(self.elapsed + time.time() - t_loop, 1)}))
            if checkpoint is not None and (self.step % self.cfg.ckpt_every == 0 or self.step == stop):
                self.elapsed += time.time() - t_loop
                t_loop = time.time()
                save_checkpoint(self.state(), Path(checkpoint))
        bar.close()
        self.elapsed += time.time() - t_loop
        tail = self.losses[-100:]
        return {"steps": self.step, "train_minutes": round(self.elapsed / 60, 2),
                "cache_render_minutes": round(self.cache.render_seconds / 60, 2),
                "wall_minutes_this_run": round((time.time() - t_start) / 60, 2),
                "steps_per_second": round(self.step / max(self.elapsed, 1e-9), 3),
                "first_loss": round(float(np.mean(self.losses[:20])), 5) if self.losses else None,
                "final_loss": round(float(np.mean(tail)), 5) if tail else None,
                "loss_curve": [round(float(np.mean(self.losses[i:i + 100])), 5)
                               for i in range(0, len(self.losses), 100)]}


def train_toy_lgm(cfg: LGMTrainConfig, out: PathLike = DEFAULT_OUT, checkpoint: Optional[PathLike] = None,
                  resume: bool = False, progress: bool = True, command: Optional[str] = None,
                  log_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Train, write `out` (the EMA weights) and `<out stem>.json` (config and training record); returns the JSON."""
    from dreamdist3d.reconstruct.lgm_load import DATA_DIR

    out = Path(out)
    if checkpoint is None:  # beside the weights; never inside the package's data folder (it would ship)
        folder = Path("outputs/toyworld") if out.resolve().parent == DATA_DIR else out.parent
        checkpoint = folder / (out.stem + "-ckpt.pt")
    check_writable(out, "--out")  # before the cache is rendered
    check_writable(Path(checkpoint), "--checkpoint")
    trainer = LGMTrainer(cfg, progress=progress)
    if resume:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint} (start without --resume)")
        trainer.load(checkpoint)
    logf = open(log_path, "a") if log_path else None
    try:
        stats = trainer.run(checkpoint, log=(lambda s: (logf.write(s + "\n"), logf.flush())) if logf else None)
    finally:
        if logf:
            logf.close()
    record = {"command": command or " ".join(["dreamdist3d", *sys.argv[1:]]), "seed": cfg.seed,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "train_config": cfg.to_dict(), **stats,
              "weights": "EMA"}
    return save_lgm(trainer.ema, out, record)


__all__ = ["DEFAULT_OUT", "LGMTrainConfig", "LGMTrainer", "ViewCache", "build_cache", "lr_at", "train_toy_lgm",
           "view_angles"]
