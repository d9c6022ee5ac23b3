"""The toy-world demo: the whole method end to end on a CPU in minutes.

`python launch.py --config configs/toy/dreamdist-toy.yaml` and `dreamdist3d toyworld demo` run `run_demo`:

1. render a toy reference set (`REFSETS`, 8-16 single front views) to PNGs (`reference/`, `reference.png`);
2. learn a prompt distribution from them with the learning recipe (`dreamdist3d.recipes.learn.learn`, K=32, n_ctx 4,
   the official optimiser settings, few steps) against the toy backbone (`learn/…/distribution.safetensors`);
3. draw fresh prompt samples from it and write 2D samples (`samples-2d.png`) and 4-view previews
   (`previews-4view.png`: the samples step 4 lifts first) with the toy DDIM sampler;
4. N text-to-3D runs through the real lift3d system (`configs/toy/toy-3d.yaml`: SDS in pixel space, 32 px
   renders; `lift: lgm`: feed-forward objects of the toy reconstructor instead, `lift: lgm+sds`: runs anchored to
   them), one prompt sample each: by default the sample seeds of the N most different 2D samples of step 3
   (`pick_3d: different`, `dreamdist3d.sample2d.pick`), else seeds 0..N-1 (`pick_3d: first`); each exported to
   GLB/OBJ/PLY with a 120-frame turntable MP4 (`3d/runs/seed<i>/`);
5. a gallery (`3d/gallery.png`, `3d/gallery.html`) and `summary.json` listing every file with wall and CPU times.

Everything shares one loaded toy backbone (one process; on 2 cores two torch processes at once run many times
slower). `DemoConfig` is strict: unknown keys are errors naming the key.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dreamdist3d.backbones.load import load_backbone
from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE, DEFAULT_LEARN_STEPS
from dreamdist3d.config import ConfigError
from dreamdist3d.distribution.gaussian import LATENT_SEED_OFFSET
from dreamdist3d.io import atomic_write_text
from dreamdist3d.recipes.objects import Runner
from dreamdist3d.recipes.toy_3d import DEFAULT_3D_CONFIG, LIFTS, demo_3d_task, run_3d_seeds
from dreamdist3d.sample2d.mvdream_preview import preview_sampler_for, preview_views
from dreamdist3d.sample2d.pick import FEATURES as PICK_FEATURES
from dreamdist3d.sample2d.pick import pick_seeds


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class DemoConfig:
    """Every knob of the demo (launch.py key=value overrides and the CLI flags map onto these)."""

    recipe: str = "toy-demo"
    refset: str = "warm-cones-cylinders"  # a name in dreamdist3d.toyworld.refsets.REFSETS
    out: str = ""  # output folder; "" = outputs/toyworld/demo/<refset>. One holding an earlier demo is refused
    overwrite: bool = False  # ... unless this is true: then that earlier demo's results are replaced
    weights: str = ""  # toy backbone weights; "" = the shipped ones
    seed: int = 0
    threads: int = 2  # torch CPU threads of learning and sampling (each 3D run has one); 0 = torch's default
    device: str = "cpu"
    progress: bool = True
    # learning (the official recipe's optimiser settings, few steps)
    n_prompts: int = 32  # K
    n_ctx: int = 4
    steps: int = DEFAULT_LEARN_STEPS
    lr: float = 1e-3
    batch_size: int = 4
    n_samples: int = 4
    prefix: str = ""
    objective: str = "assign"  # the learning default (README, "The toy world"); the paper: official
    covariance: str = "kernel"  # the learning default; the paper: diag
    # 2D samples and 4-view previews from the learned distribution
    n_2d: int = 16
    n_4view: int = 4
    sample_steps: int = 25  # DDIM steps
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance scale of the toy sampler (see backbone.py)
    scale: float = 1.0  # γ: spread of the prompt samples
    # 3D
    n_3d: int = 4  # 3D runs, one prompt sample (seed) each
    # which sample seeds the 3D runs lift: "different" = those of the n_3d most different of the n_2d 2D samples
    # (foreground colour histograms, dreamdist3d.sample2d.pick); "first" = seed..seed+n_3d-1
    pick_3d: str = "different"
    # what "different" compares (dreamdist3d.sample2d.pick): colour | form (silhouettes) | colour+form
    pick_features: str = "colour"
    workers_3d: int = 2  # 3D runs at a time, each in its own process with one torch thread (1 = one after another)
    # how a sample becomes 3D: sds = a run of config_3d (anchored to its 4-view sample); lgm = feed-forward (the toy
    # reconstructor, seconds per object); lgm+sds = a run anchored to that reconstruction
    lift: str = "sds"
    config_3d: str = DEFAULT_3D_CONFIG
    steps_3d: Optional[int] = None  # steps per 3D run (None: configs/toy/toy-3d.yaml's, anchored)
    overrides_3d: List[str] = field(default_factory=list)  # extra key=value for every 3D run
    formats: str = "glb,obj,ply"
    texture: bool = False  # False: vertex colours (fast); True: baked UV texture
    texture_size: int = 256
    isosurface_resolution: int = 64
    gallery_frames: int = 6


PICKS = ("different", "first")
FAST = {"steps": 40, "n_2d": 8, "n_4view": 2, "sample_steps": 10, "steps_3d": 40, "isosurface_resolution": 32}
DEFAULT_OUT_ROOT = "outputs/toyworld/demo"
EARLIER_RUN_NAMES = ("summary.json", "reference", "reference.png", "learn", "distribution.safetensors",
                     "samples-2d.png", "previews-4view.png", "3d")


def fast_config(cfg: DemoConfig, keep: Sequence[str] = ()) -> DemoConfig:
    """The smoke version (under a minute on one core): few learning/SDS steps, fewer samples, the same files.
    Keys in `keep` (those the user set explicitly) keep their values."""
    return DemoConfig(**{**asdict(cfg), **{k: v for k, v in FAST.items() if k not in set(keep)}})


def default_out(refset: str) -> str:
    """The demo's output folder for a reference set when `out` is not set: one folder per set."""
    return f"{DEFAULT_OUT_ROOT}/{refset}"


def earlier_run(out: Path) -> List[Path]:
    """What of an earlier demo run the folder `out` holds (its files and folders at the top level)."""
    return [out / n for n in EARLIER_RUN_NAMES if (out / n).exists()] if out.is_dir() else []


def check_config(cfg: DemoConfig) -> DemoConfig:
    from dreamdist3d.distribution import COVARIANCES
    from dreamdist3d.learn.loss import OBJECTIVES
    from dreamdist3d.toyworld.refsets import REFSETS

    def bad(key, msg):
        return ConfigError(f"config key '{key}': {msg}")

    if cfg.recipe != "toy-demo":
        raise bad("recipe", f"must be 'toy-demo', got {cfg.recipe!r}")
    if cfg.refset not in REFSETS:
        raise bad("refset", f"unknown reference set {cfg.refset!r}; known: {sorted(REFSETS)}")
    if cfg.objective not in OBJECTIVES:
        raise bad("objective", f"must be one of {OBJECTIVES}, got {cfg.objective!r}")
    if cfg.covariance not in COVARIANCES:
        raise bad("covariance", f"must be one of {COVARIANCES}, got {cfg.covariance!r}")
    for k in ("n_prompts", "n_ctx", "steps", "batch_size", "n_samples", "sample_steps", "steps_3d"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            raise bad(k, f"must be ≥ 1, got {getattr(cfg, k)}")
    for k in ("n_2d", "n_4view", "n_3d"):
        if getattr(cfg, k) < 0:
            raise bad(k, f"must be ≥ 0, got {getattr(cfg, k)}")
    if cfg.pick_3d not in PICKS:
        raise bad("pick_3d", f"must be one of {PICKS}, got {cfg.pick_3d!r}")
    if cfg.pick_features not in PICK_FEATURES:
        raise bad("pick_features", f"must be one of {PICK_FEATURES}, got {cfg.pick_features!r}")
    if cfg.lift not in LIFTS:
        raise bad("lift", f"must be one of {LIFTS}, got {cfg.lift!r}")
    if cfg.pick_3d == "different" and cfg.n_2d < cfg.n_3d:
        raise bad("pick_3d", f"'different' picks the n_3d={cfg.n_3d} 3D seeds among the n_2d={cfg.n_2d} 2D samples: "
                             "set n_2d ≥ n_3d, or pick_3d=first")
    for k in ("lr", "guidance", "scale"):  # NaN passes every comparison and gives black images
        if not math.isfinite(getattr(cfg, k)):
            raise bad(k, f"must be a finite number, got {getattr(cfg, k)}")
    if cfg.lr <= 0 or cfg.scale < 0:
        raise bad("lr" if cfg.lr <= 0 else "scale", f"must be {'> 0' if cfg.lr <= 0 else '≥ 0'}, got "
                  f"{cfg.lr if cfg.lr <= 0 else cfg.scale}")
    bad_over = [o for o in cfg.overrides_3d if "=" not in o]
    if bad_over:
        raise bad("overrides_3d", f"entries must be key=value, got {bad_over}")
    if not cfg.out:
        cfg = DemoConfig(**{**asdict(cfg), "out": default_out(cfg.refset)})
    return cfg


# ----------------------------------------------------------------------------------------------------- pieces
def save_grid(path: Path, images: torch.Tensor, upscale: int = 4, pad: int = 2) -> Path:
    """images (rows, cols, 3, H, W) in [0,1] -> one PNG grid (white gaps), nearest-upscaled."""
    from dreamdist3d.images import save_png, tile_grid, to_uint8

    rows, cols = images.shape[:2]
    tiles = list(to_uint8(images, channels_first=True).reshape(rows * cols, *images.shape[-2:], 3))
    return save_png(tile_grid(tiles, cols=cols, pad=pad, outer=True), path, upscale=upscale)


def render_references(refset_name: str, folder: Path) -> Tuple[torch.Tensor, List[Path]]:
    """Render a reference set's single front views to `folder/NN.png`; returns (images (n,3,32,32), paths)."""
    from dreamdist3d.images import save_png, to_uint8
    from dreamdist3d.toyworld.refsets import get_refset

    rs = get_refset(refset_name)
    out, _ = rs.render(num_views=1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a previous run's set (possibly larger) must not leak into this one
        old.unlink()
    paths = []
    for i, im in enumerate(to_uint8(out.image, channels_first=True)):
        paths.append(save_png(im, folder / f"{i:02d}.png"))
    return out.image, paths


def learn_distribution(backbone, images_dir: Path, out_dir: Path, name: str, n_prompts: int = 32, n_ctx: int = 4,
                       steps: int = DEFAULT_LEARN_STEPS, lr: float = 1e-3, batch_size: int = 4, n_samples: int = 4,
                       seed: int = 0, prefix: str = "", progress: bool = True, device: str = "cpu",
                       objective: str = "assign", covariance: str = "kernel", ctx_init: str = "", **learn_keys):
    """The learning recipe on a folder of toy references (2D mode, no mirroring, no previews) -> LearnResult;
    `learn_keys`: any other `LearnConfig` key."""
    from dreamdist3d.recipes.learn import LearnConfig, learn

    cfg = LearnConfig(
        name=name, images=str(images_dir), mode="2d", backbone="toy",
        flip=False, n_ctx=n_ctx, n_prompts=n_prompts, prefix=prefix, n_samples=n_samples, batch_size=batch_size,
        steps=steps, lr=lr, seed=seed, device=device, checkpoint_every=steps, keep_checkpoints=1, preview_every=0,
        out_dir=str(out_dir), progress=progress, objective=objective, covariance=covariance, ctx_init=ctx_init,
        **learn_keys,
    )
    return learn(cfg, backbone=backbone)


@torch.no_grad()
def prompt_samples(backbone, distribution_path: Path, n: int, seed: int, scale: float = 1.0,
                   covariance=None) -> torch.Tensor:
    """Prompt samples 0…n−1 of `seed` (n,77,D) of the learned distribution (the distribution seed rule: sample i is
    also what a 3D run with seed `seed + i` draws)."""
    from dreamdist3d.distribution import DistributionSpec, fit

    spec = DistributionSpec.from_lists([distribution_path], scales=[scale], covariance=covariance)
    return fit(spec, backbone.text_encoder, backbone.tokenizer).sample(n, seed).float()


@torch.no_grad()
def sample_images(backbone, context: torch.Tensor, num_frames: int, seed: int, steps: int = 25,
                  guidance: float = DEFAULT_GUIDANCE, progress: bool = False, desc: str = "sampling",
                  chunk: int = 8) -> torch.Tensor:
    """Toy DDIM samples of conditioning `context` (n,77,D) -> (n, F, 3, 32, 32) in [0,1]; chunks for a progress bar
    (each chunk's initial noise comes from its own seed: seed·100003 + index of its first sample)."""
    from tqdm.auto import tqdm

    from dreamdist3d.backbones.toy import sample_toy

    uncond = backbone.encode_text([""])
    outs = []
    n = context.shape[0]
    for start in tqdm(range(0, n, chunk), desc=desc, disable=not progress, unit="batch"):
        ctx = context[start:start + chunk]
        outs.append(sample_toy(backbone, ctx, uncond, steps=steps, cfg=guidance, num_frames=num_frames,
                               seed=seed * 100003 + start, max_batch=ctx.shape[0]))
    return torch.cat(outs)


class _Clock:
    """Wall and process CPU seconds per stage (CPU time counts every thread of this process)."""

    def __init__(self) -> None:
        self.stages: Dict[str, Dict[str, float]] = {}
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def stage(self, name: str):
        clock = self

        class _S:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.stages[name] = {"wall_s": round(time.perf_counter() - self.w, 2),
                                      "cpu_s": round(time.process_time() - self.c, 2)}
                return False

        return _S()

    def total(self) -> Dict[str, float]:
        return {"wall_s": round(time.perf_counter() - self._w0, 2), "cpu_s": round(time.process_time() - self._c0, 2)}


def _log(msg: str) -> None:
    print(f"[toy-demo] {msg}", file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig, backbone=None, runner: Optional[Runner] = None) -> Dict[str, Any]:
    """Run the demo (see the module docstring); returns the summary (also written to `<out>/summary.json`).
    `runner`: the 3D stage's objects go to it (`recipes.objects.Runner`, e.g. a Ray cluster) instead of
    `workers_3d` forked processes here; seeds that failed there are in the summary's `failed_3d`, the gallery shows
    the others."""
    from dreamdist3d.lift3d.gallery import build_gallery, find_turntable
    from dreamdist3d.toyworld.refsets import get_refset

    cfg = check_config(cfg)
    out = Path(cfg.out)
    found = earlier_run(out)
    if found and not cfg.overwrite:  # before anything is loaded or written
        raise ConfigError(
            f"{out} holds an earlier demo run ({', '.join(p.name for p in found)}); a re-run would replace its "
            "results. Pass a new --out (out=DIR), or --overwrite (overwrite=true) to replace them"
        )
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    clock = _Clock()
    files: Dict[str, Any] = {}
    rs = get_refset(cfg.refset)

    with clock.stage("load_backbone"):
        if backbone is None:
            backbone = load_backbone(f"toy:{cfg.weights}", device=cfg.device, config_key="weights")
    for old in found:  # overwrite=true: the earlier demo's results go as a whole (no seed runs of it left beside ours)
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    out.mkdir(parents=True, exist_ok=True)  # only once the weights loaded (a failed start leaves nothing)
    with clock.stage("references"):
        ref_images, ref_paths = render_references(cfg.refset, out / "reference")
        files["reference_images"] = ref_paths
        files["reference_grid"] = save_grid(out / "reference.png", ref_images[None])
    _log(f"reference set '{rs.name}' ({rs.description}): {len(ref_paths)} images in {out / 'reference'}")

    with clock.stage("learn"):
        res = learn_distribution(backbone, out / "reference", out / "learn", name=rs.name, n_prompts=cfg.n_prompts,
                                 n_ctx=cfg.n_ctx, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                                 n_samples=cfg.n_samples, seed=cfg.seed, prefix=cfg.prefix, progress=cfg.progress,
                                 device=cfg.device, objective=cfg.objective, covariance=cfg.covariance)
    dist_path = out / "distribution.safetensors"
    dist_path.write_bytes(Path(res.distribution).read_bytes())
    files["distribution"] = dist_path
    files["learn_run"] = res.run_dir
    loss = res.history.get("loss", [])
    _log(f"learned K={cfg.n_prompts} prompts in {cfg.steps} steps "
         f"(loss {_mean(loss[:20]):.4f} -> {_mean(loss[-20:]):.4f})")

    seeds = list(range(cfg.seed, cfg.seed + cfg.n_3d))
    seeds_4view: List[int] = []
    with clock.stage("samples_2d"):
        # prompt samples 0…n−1 of seed `cfg.seed` (sample i is what seed cfg.seed+i draws): enough for the 2D samples
        # and for the previews, which show the lifted seeds and then the next ones
        n_draw = max(cfg.n_2d, cfg.n_3d + cfg.n_4view)
        ctx = prompt_samples(backbone, dist_path, n_draw, seed=cfg.seed, scale=cfg.scale) if n_draw else None
        if cfg.n_2d:
            imgs = sample_images(backbone, ctx[:cfg.n_2d], 1, seed=cfg.seed + LATENT_SEED_OFFSET,
                                 steps=cfg.sample_steps, guidance=cfg.guidance, progress=cfg.progress,
                                 desc="2D samples")
            cols = 8 if cfg.n_2d >= 8 else cfg.n_2d
            rows = (cfg.n_2d + cols - 1) // cols
            if cfg.pick_3d == "different" and cfg.n_3d:
                seeds = pick_seeds(imgs, cfg.n_3d, cfg.seed, cfg.pick_features)
                _log(f"lifting the {cfg.n_3d} most different of the {cfg.n_2d} 2D samples ({cfg.pick_features}): "
                     f"seeds {', '.join(map(str, seeds))} (framed in samples-2d.png)")
            shown = imgs[:, 0].clone()
            for i in [s - cfg.seed for s in seeds if s - cfg.seed < cfg.n_2d]:  # a dark frame: lifted to 3D
                shown[i, :, [0, -1], :] = 0.1
                shown[i, :, :, [0, -1]] = 0.1
            flat = torch.cat([shown, torch.ones(rows * cols - cfg.n_2d, *imgs.shape[2:])])
            files["samples_2d"] = save_grid(out / "samples-2d.png", flat.reshape(rows, cols, *imgs.shape[2:]))
    with clock.stage("previews_4view"):
        if cfg.n_4view:
            # the samples lifted to 3D first (in seed order), then the next seeds: the 4-view samples of their seeds
            # (`preview_views`, as `dreamdist3d preview` draws them), i.e. exactly the views an anchored run fits
            rest = (s for s in range(cfg.seed, cfg.seed + cfg.n_4view + len(seeds)) if s not in seeds)
            seeds_4view = [*seeds, *rest][:cfg.n_4view]
            imgs = preview_views(backbone, ctx[[s - cfg.seed for s in seeds_4view]], seeds_4view,
                                 preview_sampler_for(backbone, steps=cfg.sample_steps, guidance_scale=cfg.guidance))
            files["previews_4view"] = save_grid(out / "previews-4view.png", imgs)

    runs: List[Dict[str, Any]] = []
    failed_3d: Dict[int, str] = {}
    with clock.stage("3d"):
        if runner is None:
            done = dict(zip(seeds, run_3d_seeds(backbone, cfg, dist_path.resolve(), out / "3d", seeds)))
        else:  # each seed a task elsewhere (`--ray`: dreamdist3d.cluster), the same run and export
            made = runner(demo_3d_task(cfg, dist_path), out / "3d", seeds)
            done, failed_3d = made.values, made.failed
    lifted = [s for s in seeds if s in done]  # all of them, unless a runner's seed failed
    for s in lifted:
        run_dir, exported, times = done[s]
        clock.stages[f"3d_seed{s}"], clock.stages[f"export_seed{s}"] = times
        tt = find_turntable(run_dir)
        anchor = run_dir / "anchor" / "anchor.png"
        runs.append({"seed": s, "run_dir": run_dir, "turntable": tt["video"] if tt else None,
                     "prompt_sample": run_dir / "prompt_sample.safetensors", "mesh": exported,
                     "anchor": anchor if anchor.is_file() else None})
    if lifted:
        with clock.stage("gallery"):
            gal = build_gallery(out / "3d", lifted, cfg.gallery_frames,
                                title=f"toy world: {rs.name} — {len(lifted)} objects from one learned distribution",
                                references=out / "reference")
            _upscale_png(gal["png"], 4)  # 32 px turntable frames: nearest ×4 so the grid is legible
        files["gallery_png"], files["gallery_html"] = gal["png"], gal["html"]
    files["runs_3d"] = runs

    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "config": asdict(cfg),
        "refset": {"name": rs.name, "description": rs.description, "n": rs.n, "held_out": rs.held_out},
        "backbone": {"source": str(backbone.source), "name": backbone.name},
        "learn": {"steps": int(res.step), "loss_first20": _mean(loss[:20]), "loss_last20": _mean(loss[-20:])},
        "seeds_3d": seeds,
        "failed_3d": {str(k): v for k, v in failed_3d.items()},
        "seeds_4view": seeds_4view,
        "torch_threads": torch.get_num_threads(),
        "times": {"stages": clock.stages, "total": clock.total()},
        "files": _jsonable(files),
    }
    other_learn_runs = [d for d in (out / "learn").iterdir() if d.is_dir() and d != Path(res.run_dir)]
    summary["all_files"] = sorted(str(p) for p in out.rglob("*") if p.is_file()
                                  and not any(d in p.parents for d in other_learn_runs)  # this run's files only
                                  and p.name != "summary.json") + [str(out / "summary.json")]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    t = summary["times"]["total"]
    _log(f"done in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} s CPU: {out / 'summary.json'}"
         + (f", gallery {files.get('gallery_html')}" if lifted else ""))
    if lifted:
        from dreamdist3d.web.serve import view_hint

        _log(f"view it: {view_hint(files['gallery_html'])}")
    return summary


def _upscale_png(path: Path, factor: int) -> None:
    from PIL import Image

    from dreamdist3d.images import save_png

    save_png(Image.open(path).convert("RGB"), path, upscale=factor)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


# ----------------------------------------------------------------------------------------------------- entry points
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p.add_argument("--refset", default=d.refset,
                   help=f"reference set (default {d.refset}; see dreamdist3d.toyworld.refsets)")
    p.add_argument("--out", default=d.out, help=f"output folder (default {default_out('<refset>')}); one holding "
                                                 "an earlier demo run is refused without --overwrite")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the results of an earlier demo run in --out")
    p.add_argument("--n-3d", type=int, default=d.n_3d,
                   help=f"3D runs (default {d.n_3d}): the N most different of the 2D samples "
                        "(pick_3d=first: seeds 0..N-1)")
    p.add_argument("--lift", choices=LIFTS, default=None,
                   help="how the samples become 3D (default sds: runs of the 3D config; lgm: feed-forward, the toy "
                        "reconstructor; lgm+sds: runs anchored to its reconstruction)")
    p.add_argument("--steps", type=int, default=None, help=f"learning steps (default {d.steps})")
    p.add_argument("--steps-3d", type=int, default=None,
                   help="steps per 3D run, anchor-only steps included (default: those of the 3D config)")
    p.add_argument("--weights", default="", help="toy backbone weights (default: the shipped ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads of learning and sampling (default 2; each 3D run uses one; 0 = torch's "
                        "choice)")
    p.add_argument("--fast", action="store_true", help="~2-minute smoke version (few steps, fewer samples)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("overrides", nargs="*", help="DemoConfig key=value overrides (e.g. n_prompts=8 guidance=5)")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    from dreamdist3d.config import load_yaml, parse_structured

    base = {"refset": args.refset, "out": args.out, "n_3d": args.n_3d, "weights": args.weights, "seed": args.seed,
            "threads": args.threads, "progress": not args.quiet}
    if args.overwrite:
        base["overwrite"] = True
    if args.lift:
        base["lift"] = args.lift
    cfg = parse_structured(DemoConfig, load_yaml(None, args.overrides, base=base), where="")
    if args.fast:  # --fast never overrides what was set explicitly (key=value, --steps, --steps-3d)
        explicit = {o.split("=", 1)[0].strip() for o in args.overrides}
        explicit |= {k for k, v in (("steps", args.steps), ("steps_3d", args.steps_3d)) if v is not None}
        cfg = fast_config(cfg, keep=explicit)
    if args.steps is not None:
        cfg.steps = int(args.steps)
    if args.steps_3d is not None:
        cfg.steps_3d = int(args.steps_3d)
    return cfg


def cli_run(args: argparse.Namespace, runner: Optional[Runner] = None) -> int:
    cfg = config_from_args(args)
    summary = run_demo(cfg, runner=runner)
    if summary["failed_3d"]:
        failed = ", ".join(f"seed {k}: {v}" for k, v in summary["failed_3d"].items())
        _log(f"3D runs failed ({failed}); the gallery shows the others. Run the demo again with --overwrite "
             "to redo them")
        return 1
    return 0


def launch_entry(config_path: str, extras: Sequence[str]) -> int:
    """`python launch.py --config configs/toy/dreamdist-toy.yaml [--train] [key=value ...]` (recipe: toy-demo).
    `fast: true` in the config or on the command line selects the smoke version."""
    from dreamdist3d.config import load_yaml, parse_structured

    raw = load_yaml(config_path, extras)
    fast = bool(raw.pop("fast", False))
    cfg = parse_structured(DemoConfig, raw, where="")
    if fast:  # the smoke preset replaces the config file's values, never a key=value given on the command line
        cfg = fast_config(cfg, keep={e.split("=", 1)[0].strip().lstrip("+") for e in extras if "=" in e})
    run_demo(cfg)
    return 0


__all__ = ["DemoConfig", "default_out", "fast_config", "run_demo", "render_references", "learn_distribution",
           "prompt_samples", "sample_images", "save_grid"]
