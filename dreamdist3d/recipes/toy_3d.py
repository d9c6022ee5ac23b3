"""The toy demo's 3D stage: text-to-3D runs of the toy backbone, their mesh export, and several runs at a time.

`launch_3d` is one run (`configs/toy/toy-3d.yaml` through `recipes.lift3d.run_3d`, the loaded backbone passed in);
`launch_lgm` one feed-forward object in the same folder layout (`recipes.reconstruct.lift_lgm`, the config's
`system.anchor.reconstructor`: the toy reconstructor); `map_forked` runs jobs a few at a time in forked one-thread
worker processes that share the backbone, and `run_3d_seeds` a list of seeds that way (the demo's `lift`: sds = the
3D config's runs, lgm = feed-forward, lgm+sds = runs anchored to the reconstruction); `export_run` writes a finished
run's meshes. `demo_3d_task` and `launch_3d_task` are the same objects as tasks for a runner elsewhere
(`recipes.objects`, `--ray`), with `toy_backbone_call` loading the toy backbone there once.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from dreamdist3d.config import repo_file
from dreamdist3d.recipes.gallery import LIFTS
from dreamdist3d.recipes.objects import Call, ObjectTask

DEFAULT_3D_CONFIG = "configs/toy/toy-3d.yaml"


def _log(msg: str) -> None:
    print(f"[toy-demo] {msg}", file=sys.stderr, flush=True)


def _fresh_run_settings(distribution: Path, out: Path, seed: int) -> List[str]:
    """The folder settings of seed `seed` (`out/runs/seed<seed>/`), after removing a previous demo's object of that
    seed (its turntable would otherwise be picked up when the step counts differ)."""
    import shutil

    previous = Path(out) / "runs" / f"seed{seed}"
    if (previous / "cmd.txt").is_file() or (previous / "reconstruct.json").is_file():
        shutil.rmtree(previous)
    return [f"system.prompt_processor.distribution={distribution}", f"seed={seed}", f"exp_root_dir={out}",
            "name=runs", f"tag=seed{seed}", "use_timestamp=false"]


def launch_3d(backbone, distribution: Path, out: Path, seed: int, config: str = DEFAULT_3D_CONFIG,
              steps: Optional[int] = None, overrides: Sequence[str] = (), progress: bool = True,
              device: str = "cpu") -> Path:
    """One text-to-3D run of the toy backbone with the prompt sample of `seed`: folder `out/runs/seed<seed>/`.
    `steps`: trainer.max_steps (None: the config's, anchor-only steps included)."""
    from dreamdist3d.recipes.lift3d import run_3d

    settings = [*_fresh_run_settings(distribution, out, seed),
                *([f"trainer.max_steps={steps}"] if steps is not None else []),
                f"trainer.enable_progress_bar={str(bool(progress)).lower()}", *overrides]
    res = run_3d(repo_file(config), backbone=backbone, mode="train", overrides=settings,
                 device="cpu" if str(device) == "cpu" else "auto")
    return res.run_dir


def launch_lgm(backbone, distribution: Path, out: Path, seed: int, config: str = DEFAULT_3D_CONFIG,
               overrides: Sequence[str] = (), formats: str = "glb,obj,ply", device: str = "cpu"):
    """One feed-forward object of the prompt sample of `seed` (`recipes.reconstruct.lift_lgm`), in the folder a 3D
    run would have: `out/runs/seed<seed>/`. Returns its `LiftResult`."""
    from dreamdist3d.recipes.reconstruct import lift_lgm

    settings = [*_fresh_run_settings(distribution, out, seed), *overrides]
    return lift_lgm(repo_file(config), backbone, overrides=settings, formats=formats,
                    device="cpu" if str(device) == "cpu" else "auto")


def _one_3d(backbone, cfg, distribution: Path, out: Path, seed: int):
    """3D object + export of one seed -> (run folder, exported files, (run times, export times)); `cfg.lift` says
    how (sds: a run of the 3D config; lgm: feed-forward, meshes included; lgm+sds: a run anchored to it)."""
    w0, c0 = time.perf_counter(), time.process_time()
    span = lambda a, b, c, d: {"wall_s": round(b - a, 2), "cpu_s": round(d - c, 2)}  # noqa: E731
    # γ as the 2D samples; the 4-view sample drawn with the demo's sampler (what previews-4view.png shows)
    overrides = [f"system.prompt_processor.scale={cfg.scale}", f"system.anchor.sampler_steps={cfg.sample_steps}",
                 f"system.anchor.guidance_scale={cfg.guidance}", *cfg.overrides_3d]
    if cfg.lift == "lgm":
        _log(f"feed-forward object seed {seed}")
        res = launch_lgm(backbone, distribution, out, seed, cfg.config_3d, [
            *overrides, f"system.exporter.save_texture={str(bool(cfg.texture)).lower()}",
            f"system.exporter.texture_size={cfg.texture_size}",
            f"system.geometry.isosurface_resolution={cfg.isosurface_resolution}"], cfg.formats, cfg.device)
        meshes = {k: v for k, v in res.files.items() if k in ("glb", "obj", "ply", "json")}
        w1, c1 = time.perf_counter(), time.process_time()
        return res.run_dir, meshes, (span(w0, w1, c0, c1), {"wall_s_within_3d": res.seconds["meshes"]})
    how = ", anchored to the reconstruction" if cfg.lift == "lgm+sds" else ""
    _log(f"3D run seed {seed} ({cfg.steps_3d or 'the 3D config´s'} steps{how})".replace("´", "'"))
    lift = ["system.anchor.source=lgm"] if cfg.lift == "lgm+sds" else []
    run_dir = launch_3d(backbone, distribution, out, seed, cfg.config_3d, cfg.steps_3d, [*lift, *overrides],
                        progress=cfg.progress and cfg.workers_3d <= 1, device=cfg.device)
    w1, c1 = time.perf_counter(), time.process_time()
    exported = export_run(run_dir, cfg.formats, cfg.texture, cfg.texture_size, cfg.isosurface_resolution)
    w2, c2 = time.perf_counter(), time.process_time()
    return run_dir, exported, (span(w0, w1, c0, c1), span(w1, w2, c1, c2))


def toy_backbone_call(weights: str = "", device: str = "cpu") -> Call:
    """Loading the toy backbone (the shipped weights, or the file `weights`) where a runner's worker starts."""
    from dreamdist3d.backbones.toy_weights import load_toy_backbone

    return Call(load_toy_backbone, {"path": weights or None, "device": str(device), "config_key": "weights"},
                files=("path",))


def demo_object(backbone, out: Path, seed: int, *, cfg, distribution: str, config: str):
    """`_one_3d` as a runner's call: the 3D config is read from `config` (where it lies on the worker)."""
    return _one_3d(backbone, dataclasses.replace(cfg, config_3d=str(config)), Path(distribution), out, seed)


def demo_3d_task(cfg, distribution: Path) -> ObjectTask:
    """The demo's 3D runs and exports (`_one_3d`) of a `DemoConfig` as a runner's task."""
    return ObjectTask(
        run=Call(demo_object, {"cfg": cfg, "distribution": str(Path(distribution).resolve()),
                               "config": str(repo_file(cfg.config_3d).resolve())}, files=("distribution", "config")),
        backbone=toy_backbone_call(cfg.weights, cfg.device), name="3D runs")


def launch_3d_task(distribution: Path, config: str, steps: Optional[int], overrides: Sequence[str] = (),
                   weights: str = "") -> ObjectTask:
    """`launch_3d` of each seed (no progress bars) as a runner's task."""
    return ObjectTask(
        run=Call(launch_3d, {"distribution": str(Path(distribution).resolve()),
                             "config": str(repo_file(config).resolve()), "steps": steps,
                             "overrides": list(overrides), "progress": False}, files=("distribution", "config")),
        backbone=toy_backbone_call(weights), name="3D objects")


_WORKER: Dict[str, Any] = {}  # per worker process: the backbone it inherited from the parent at fork time


def _worker_init(backbone) -> None:
    torch.set_num_threads(1)
    _WORKER["backbone"] = backbone


def _worker_call(fn: Callable, args: tuple):
    return fn(_WORKER["backbone"], *args)


def map_forked(backbone, fn: Callable, jobs: Sequence[tuple], workers: int, device: str = "cpu") -> List[Any]:
    """[fn(backbone, *job) for job in jobs], `workers` at a time in forked worker processes with one torch thread
    each that share the loaded backbone (copy-on-write; on a CPU two such runs take about the time of one). Results
    in job order. Without fork (not Linux/macOS), on CUDA or with workers ≤ 1 they run here one after another.
    `fn` must be a module-level function (it is pickled by name)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = min(int(workers), len(jobs))
    if workers <= 1 or str(device) != "cpu" or "fork" not in mp.get_all_start_methods():
        return [fn(backbone, *job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_init,
                             initargs=(backbone,)) as pool:
        futures = [pool.submit(_worker_call, fn, tuple(job)) for job in jobs]
        return [f.result() for f in futures]


def run_3d_seeds(backbone, cfg, distribution: Path, out: Path, seeds: Sequence[int]) -> List[tuple]:
    """The 3D runs (and exports) of `seeds`, `cfg.workers_3d` at a time (`map_forked`). Results in seed order."""
    return map_forked(backbone, _one_3d, [(cfg, distribution, out, s) for s in seeds], cfg.workers_3d, cfg.device)


def export_run(run_dir: Path, formats: str = "glb,obj,ply", texture: bool = False, texture_size: int = 256,
               isosurface_resolution: int = 64) -> Dict[str, Path]:
    """Mesh files of a finished run (`<run>/export/model.{glb,obj,ply,…}`)."""
    from dreamdist3d.export import export_field
    from dreamdist3d.lift3d.system import load_run_field

    fld = load_run_field(run_dir)
    res = export_field(fld, Path(run_dir) / "export", formats=formats, isosurface_resolution=isosurface_resolution,
                       isosurface_threshold=fld.isosurface_threshold, texture=texture, texture_size=texture_size)
    return dict(res.files)


# ----------------------------------------------------------------------------------------------------- the demo


__all__ = ["DEFAULT_3D_CONFIG", "LIFTS", "demo_3d_task", "demo_object", "export_run", "launch_3d", "launch_3d_task",
           "launch_lgm", "map_forked", "run_3d_seeds", "toy_backbone_call"]
