"""Is the 3D object the 4-view sample it was lifted from? (`dreamdist3d toyworld lift`)

Evidence, in the toy world, for how a prompt sample becomes a 3D object. Arms (how the object is made; every arm runs
`configs/toy/toy-3d.yaml` with these settings over it):
- `sds<N>`: SDS only, N steps (`system.anchor.source=none`): the object is a new realisation of the prompt sample;
- `anchor<A>+<S>`: anchored (`system.anchor.source=preview`): A steps fitting the 4-view sample of the prompt sample
  alone, then S steps of SDS beside the fit (the config's anchor weights and schedules);
- `lgm`: feed-forward, no run: the 4-view sample through the toy reconstructor (`recipes.reconstruct.lift_lgm`), the
  object is its Gaussians;
- `lgm<A>+<S>`: `system.anchor.source=lgm`: A steps fitting renders of that reconstruction alone, then S of SDS;
- `hybrid<A>+<S>`: `system.anchor.source=preview+lgm`: the 4-view sample at its own views and the reconstruction's
  renders at the others.

Prompt samples:
- `captions`: `n_captions` objects of the toy world drawn with grammar seed `caption_seed` (2027: no trainer,
  evaluator or reference set draws objects with it), one caption each, as a K=1 distribution
  (`PromptDistribution.from_caption`: every sample is the caption). Run seed of caption i, seed r: 1000·r + i.
- `learned`: distributions learned (the defaults: `assign` + `kernel`, the toy learning steps, learning seed r) from
  each of `refsets` (the three held-out sets), `samples_per_set` prompt samples each (run seeds 0, 1, …).
Each (item, seed) has its 4-view sample (`sample2d.mvdream_preview.preview_views`: the images `preview` shows and an
anchored run fits) and one object per arm; the attribute reader reads the 4-view sample on its 4 views and the
object on its turntable (9 test views, 45° apart), once at the 4 views' own azimuths (`seen`) and once at the 4
azimuths halfway between them (`novel`: views no anchor shows).

Scores (`recipes.toy_lift_scores`) per arm, mean ± std over seeds: caption fidelity (read colour, shape, part
presence, colour and shape as the caption says) of the objects beside that of the 4-view samples; agreement of each
object with its own 4-view sample (colour and shape read alike: `agree`; `parts kept`: of the 4-view samples that
show a part, the share whose object shows one; `captions: parts kept`: the same for the parts a caption names and
its 4-view sample shows, where the part is known to be real); `own sample nearest`: of the learned 4-view samples of
the object's set and seed, its own is the nearest to its renders at the sample's cameras, pixel for pixel
(`image_readings`: a reading that does not rest on the reader's labels; on the 4-view samples' row `agree` is the
sample against itself mirrored, how far the reader's labels repeat); SDS steps, steps in all and wall seconds per
object (one core).

Every object is cached as `<out>/objects/<arm>/<part>/<item>/seed<r>.json` (written by the worker that made it, so
an interrupted sweep resumes where it stopped), the 4-view readings as `<out>/views/…`; runs go two at a time in
forked one-thread workers (`recipes.toy_3d.map_forked`); `--table-only` prints the table of whatever finished.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dreamdist3d.backbones.toy import DEFAULT_LEARN_STEPS
from dreamdist3d.io import atomic_write_text
from dreamdist3d.recipes.toy_lift_scores import (
    CLEAR_PART_VIEWS,
    NOVEL,
    SEEN,
    TEST_VIEWS,
    image_readings,
    object_path,
    shows_clear_part,
    split_key,
    table,
    views_path,
)

HELD_OUT = ["large-tall-greens", "jewel-boxes-spheres", "tricolour-tori-cones"]
CAPTION_SEED = 2027  # grammar seed of the caption objects: used by nothing else (trainer, evaluator, reference sets)
ARM = re.compile(r"^(?:sds(?P<sds>\d+)|(?P<src>anchor|lgm|hybrid)(?P<a>\d+)\+(?P<s>\d+)|(?P<ff>lgm))$")
SOURCE = {"anchor": "preview", "lgm": "lgm", "hybrid": "preview+lgm"}  # arm prefix -> system.anchor.source


@dataclass
class LiftConfig:
    out: str = "outputs/toyworld/lift"
    weights: str = ""  # toy backbone weights; "" = the shipped ones
    reader: str = "outputs/toyworld/attribute-reader.safetensors"
    arms: List[str] = field(default_factory=lambda: ["sds300", "sds600", "sds1200", "anchor60+0", "anchor100+0",
                                                      "anchor100+50"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    parts: List[str] = field(default_factory=lambda: ["captions", "learned"])
    n_captions: int = 32
    caption_seed: int = CAPTION_SEED
    refsets: List[str] = field(default_factory=lambda: list(HELD_OUT))
    samples_per_set: int = 6
    # learned part: lift only the prompt samples whose 4-view sample shows a clear part (another colour than the body,
    # in ≥ CLEAR_PART_VIEWS of the 4 views): parts kept measured on many samples without lifting the part-less majority
    clear_parts_only: bool = False
    learn_steps: int = DEFAULT_LEARN_STEPS
    config_3d: str = "configs/toy/toy-3d.yaml"
    overrides: List[str] = field(default_factory=list)  # key=value over every arm's 3D config
    workers: int = 2
    keep_runs: bool = False  # keep each run's folder (checkpoint, turntable); by default only the readings stay


# ----------------------------------------------------------------------------------------------------- arms
def arm_settings(arm: str) -> Tuple[int, int, List[str]]:
    """(anchor-only steps, SDS steps, key=value overrides) of an arm name: `sds300`, `anchor40+110`, `lgm`,
    `lgm40+20`, optionally followed by `~key=value` settings of its own
    (`anchor200+50~system.anchor.rays_per_step=1024`)."""
    base, *extra = arm.split("~")
    m = ARM.match(base)
    if m is None or any("=" not in e for e in extra):
        raise ValueError(f"arm {arm!r}: expected sds<N> or anchor<A>+<S> (or lgm, lgm<A>+<S>, hybrid<A>+<S>), then "
                         "optionally ~key=value settings (e.g. sds300, anchor40+110, "
                         "anchor200+50~system.anchor.rays_per_step=1024)")
    if m["ff"] is not None:
        return 0, 0, list(extra)
    if m["sds"] is not None:
        n = int(m["sds"])
        return 0, n, ["system.anchor.source=none", "system.loss.lambda_anchor_rgb=0",
                      "system.loss.lambda_anchor_mask=0", f"trainer.max_steps={n}", *extra]
    a, s = int(m["a"]), int(m["s"])
    source = SOURCE[m["src"]]
    return a, s, [f"system.anchor.source={source}", f"system.anchor.steps={a}", f"trainer.max_steps={a + s}", *extra]


def make_object(backbone, cfg: LiftConfig, arm: str, item: "Item", work: Path, overrides: Sequence[str]) -> Path:
    """The folder of `arm`'s object for `item`: a 3D run of the arm's settings, or (`lgm`) the reconstruction."""
    from dreamdist3d.recipes.toy_3d import launch_3d, launch_lgm

    distribution = Path(item.distribution).resolve()
    if ARM.match(arm.split("~")[0])["ff"] is not None:
        return launch_lgm(backbone, distribution, work, item.seed, cfg.config_3d, overrides, formats="").run_dir
    return launch_3d(backbone, distribution, work, item.seed, cfg.config_3d, overrides=overrides, progress=False)


# ----------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    """One prompt sample: a distribution file and the run seed that draws it."""

    part: str  # captions | learned
    key: str  # c07, large-tall-greens-3
    distribution: str
    seed: int  # run seed (prompt sample, image noise, SDS randomness)
    caption: Optional[str] = None  # captions: what the object should be
    spec: Optional[Dict[str, Any]] = None  # captions: the object's labels


def caption_items(cfg: LiftConfig, backbone, rep: int) -> List[Item]:
    from dreamdist3d.distribution import PromptDistribution
    from dreamdist3d.toyworld.objects import sample_objects

    folder = Path(cfg.out) / "captions"
    items = []
    for i, spec in enumerate(sample_objects(cfg.n_captions, cfg.caption_seed)):
        caption = spec.caption()
        path = folder / f"c{i:02d}.safetensors"
        if not path.is_file():
            PromptDistribution.from_caption(caption, backbone.text_encoder, backbone.tokenizer,
                                            backbone=backbone.name).save(path)
        items.append(Item("captions", f"c{i:02d}", str(path), 1000 * rep + i, caption,
                          {"colour": spec.colour, "shape": spec.shape, "has_part": spec.part is not None}))
    return items


def _learn(backbone, refset: str, folder: Path, seed: int, steps: int) -> str:
    from dreamdist3d.recipes.toy_demo import learn_distribution, render_references

    refs = folder / "reference"
    if not refs.is_dir():
        render_references(refset, refs)
    res = learn_distribution(backbone, refs, folder / "learn", name=f"{refset}-s{seed}", steps=steps, seed=seed,
                             progress=False)
    final = folder / "distribution.safetensors"
    shutil.copyfile(res.distribution, final)
    return str(final)


def learned_items(cfg: LiftConfig, backbone, reps: Sequence[int]) -> Dict[int, List[Item]]:
    """The learned files of every (refset, seed), learned `cfg.workers` at a time where missing."""
    from dreamdist3d.recipes.toy_3d import map_forked

    out = Path(cfg.out) / "learned"
    jobs = [(rs, out / rs / f"seed{r}", r, cfg.learn_steps) for r in reps for rs in cfg.refsets
            if not (out / rs / f"seed{r}" / "distribution.safetensors").is_file()]
    if jobs:
        _log(f"learning {len(jobs)} distribution(s) ({cfg.learn_steps} steps each, {cfg.workers} at a time)")
        map_forked(backbone, _learn, jobs, cfg.workers)
    return {r: [Item("learned", f"{rs}-{j}", str(out / rs / f"seed{r}" / "distribution.safetensors"), j)
                for rs in cfg.refsets for j in range(cfg.samples_per_set)] for r in reps}


# ----------------------------------------------------------------------------------------------------- readings
def reading_dict(r) -> Dict[str, Any]:
    return {"ok": bool(r.ok), "colour": r.colour if r.ok else None, "shape": r.shape if r.ok else None,
            "has_part": bool(r.has_part) if r.ok else None}


def turntable_frames(run: Path, frames: Sequence[int]) -> torch.Tensor:
    """(len(frames), 3, H, W) in [0,1]: the RGB panels of test frames `frames` of a finished run."""
    from dreamdist3d.images import read_rgb
    from dreamdist3d.lift3d.gallery import find_turntable

    tt = find_turntable(Path(run))
    if tt is None:
        raise FileNotFoundError(f"no turntable in {run}/save")
    out = []
    for i in frames:
        arr = read_rgb(Path(tt["frames"]) / f"{i}.png")
        out.append(torch.from_numpy(arr[:, :arr.shape[0]].copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def views_record(cfg: LiftConfig, backbone, reader, item: Item, rep: int) -> Dict[str, Any]:
    """The 4-view sample of `item` read on its 4 views (cached)."""
    path = views_path(cfg.out, item.part, item.key, rep)
    if path.is_file():
        rec = json.loads(path.read_text())
        if "distinct_part_views" in rec:
            return rec
    from dreamdist3d.recipes.toy_demo import prompt_samples
    from dreamdist3d.sample2d.mvdream_preview import image_grid, preview_sampler_for, preview_views

    ctx = prompt_samples(backbone, Path(item.distribution), 1, seed=item.seed)
    views = preview_views(backbone, ctx, [item.seed], preview_sampler_for(backbone))[0]  # (4, 3, H, W)
    per_view = reader.read(views)
    rec = {"part": item.part, "item": item.key, "seed": rep, "run_seed": item.seed, "caption": item.caption,
           "spec": item.spec, "reading": reading_dict(reader.read_views(views, 4)[0]),
           "part_views": sum(bool(r.ok and r.has_part) for r in per_view),
           "distinct_part_views": sum(bool(r.ok and r.has_part and r.part_colour != r.colour) for r in per_view)}
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(views[None]).save(path.with_suffix(".png"))
    atomic_write_text(path, json.dumps(rec, indent=1))
    return rec


def lift_one(backbone, cfg: LiftConfig, arm: str, item: Item, rep: int) -> Dict[str, Any]:
    """One 3D object of `arm` for `item`, read on its turntable; the record is written here (resumable sweeps)."""
    from dreamdist3d.recipes.toy_checks import get_reader

    anchor_steps, sds_steps, overrides = arm_settings(arm)
    work = Path(cfg.out) / "work" / arm / item.part / item.key / f"rep{rep}"
    w0, c0 = time.perf_counter(), time.process_time()
    run = make_object(backbone, cfg, arm, item, work, [*overrides, f"data.n_test_views={TEST_VIEWS}", *cfg.overrides])
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    reader = get_reader(cfg.reader)
    seen = reader.read_views(turntable_frames(run, SEEN), 4)[0]
    novel = reader.read_views(turntable_frames(run, NOVEL), 4)[0]
    rec = {"arm": arm, "part": item.part, "item": item.key, "seed": rep, "run_seed": item.seed,
           "anchor_steps": anchor_steps, "sds_steps": sds_steps, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
           "seen": reading_dict(seen), "novel": reading_dict(novel)}
    path = object_path(cfg.out, arm, item.part, item.key, rep)
    path.parent.mkdir(parents=True, exist_ok=True)
    from dreamdist3d.images import save_png, tile_grid, to_uint8

    frames = turntable_frames(run, [*SEEN, *NOVEL])
    save_png(tile_grid(list(to_uint8(frames, channels_first=True)), cols=4), path.with_suffix(".png"))
    atomic_write_text(path, json.dumps(rec, indent=1))
    if not cfg.keep_runs:
        shutil.rmtree(work, ignore_errors=True)
    _log(f"{arm} {item.part} {item.key} seed {rep}: seen {_short(rec['seen'])} novel {_short(rec['novel'])} "
         f"({rec['wall_s']} s)")
    return rec


def _short(r: Dict[str, Any]) -> str:
    return f"{r['colour']} {r['shape']}{' +part' if r['has_part'] else ''}" if r["ok"] else "unreadable"


# ----------------------------------------------------------------------------------------------------- the sweep
def run_lift(cfg: LiftConfig, backbone=None, reader=None) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Every (arm, item, seed) not yet cached; returns (4-view records, object records) of the config."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.toy_3d import map_forked
    from dreamdist3d.recipes.toy_checks import get_reader

    for arm in cfg.arms:
        arm_settings(arm)  # a bad name fails before anything runs
    backbone = backbone or load_backbone(f"toy:{cfg.weights}", config_key="weights")
    reader = reader or get_reader(cfg.reader)
    items: Dict[int, List[Item]] = {r: [] for r in cfg.seeds}
    if "captions" in cfg.parts:
        for r in cfg.seeds:
            items[r] += caption_items(cfg, backbone, r)
    if "learned" in cfg.parts:
        for r, its in learned_items(cfg, backbone, cfg.seeds).items():
            items[r] += its
    views = [views_record(cfg, backbone, reader, it, r) for r in cfg.seeds for it in items[r]]
    if cfg.clear_parts_only:
        views, items = keep_clear_parts(views, items)
    jobs = [(cfg, arm, it, r) for r in cfg.seeds for it in items[r] for arm in cfg.arms
            if not object_path(cfg.out, arm, it.part, it.key, r).is_file()]
    if jobs:
        _log(f"{len(jobs)} objects to make ({cfg.workers} at a time); cached ones are skipped")
        map_forked(backbone, lift_one, jobs, cfg.workers)
    paths = [object_path(cfg.out, arm, it.part, it.key, r) for r in cfg.seeds for it in items[r] for arm in cfg.arms]
    objects = [json.loads(path.read_text()) for path in paths if path.is_file()]
    return views, objects


def keep_clear_parts(views: List[Dict[str, Any]], items: Dict[int, List[Item]]
                     ) -> Tuple[List[Dict[str, Any]], Dict[int, List[Item]]]:
    """`--clear-parts-only`: the captions, and the learned samples whose 4-view sample shows a clear part."""
    keep = {(v["item"], v["seed"]) for v in views if v["part"] != "learned" or shows_clear_part(v)}
    return ([v for v in views if (v["item"], v["seed"]) in keep],
            {r: [it for it in its if (it.key, r) in keep] for r, its in items.items()})


def _log(msg: str) -> None:
    print(f"[lift] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LiftConfig()
    p.add_argument("--out", default=d.out, help=f"folder of cached records and runs (default {d.out})")
    p.add_argument("--arm", dest="arms", action="append", default=None, metavar="ARM",
                   help="sds<N> or anchor<A>+<S>, optionally with ~key=value settings of its own; repeatable "
                        f"(default: {' '.join(d.arms)})")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="seeds (default 0 1 2)")
    p.add_argument("--part", dest="parts", action="append", choices=["captions", "learned"], default=None,
                   help="which prompt samples (default both)")
    p.add_argument("--n-captions", type=int, default=d.n_captions)
    p.add_argument("--caption-seed", type=int, default=d.caption_seed,
                   help=f"grammar seed of the caption objects (default {d.caption_seed}, used by nothing else)")
    p.add_argument("--refset", dest="refsets", action="append", default=None,
                   help=f"learned part: reference sets (default the held-out ones: {', '.join(HELD_OUT)})")
    p.add_argument("--samples-per-set", type=int, default=d.samples_per_set)
    p.add_argument("--clear-parts-only", action="store_true",
                   help="learned part: lift only the samples whose 4-view sample shows a part of another colour in "
                        f"≥ {CLEAR_PART_VIEWS} views (to measure parts kept on many samples)")
    p.add_argument("--learn-steps", type=int, default=d.learn_steps,
                   help=f"learning steps of the learned part (default {d.learn_steps}, the toy recipes')")
    p.add_argument("--config-3d", default=d.config_3d)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of every arm's 3D config (repeatable)")
    p.add_argument("--workers", type=int, default=d.workers, help="runs at a time, one core each (default 2)")
    p.add_argument("--weights", default=d.weights)
    p.add_argument("--reader", default=d.reader)
    p.add_argument("--keep-runs", action="store_true", help="keep every run folder (default: only the readings)")
    p.add_argument("--table-only", action="store_true", help="print the table of the cached records, run nothing")


def selected(cfg: LiftConfig, rec: Dict[str, Any]) -> bool:
    """Is a cached record (4-view sample or object) one of the config's parts, reference sets and samples?"""
    if rec["part"] not in cfg.parts:
        return False
    if rec["part"] != "learned":
        return int(rec["item"][1:]) < cfg.n_captions
    refset, j = split_key(rec["item"])
    return refset in cfg.refsets and j < cfg.samples_per_set


def cli_run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    cfg = LiftConfig(out=args.out, arms=args.arms or LiftConfig().arms, seeds=list(args.seeds),
                     parts=args.parts or LiftConfig().parts, n_captions=args.n_captions,
                     caption_seed=args.caption_seed, refsets=args.refsets or list(HELD_OUT),
                     samples_per_set=args.samples_per_set, clear_parts_only=args.clear_parts_only,
                     learn_steps=args.learn_steps, config_3d=args.config_3d,
                     overrides=list(args.overrides),
                     workers=args.workers, weights=args.weights, reader=args.reader, keep_runs=args.keep_runs)
    out = Path(cfg.out)
    if args.table_only:
        views = [json.loads(p.read_text()) for p in sorted((out / "views").rglob("seed*.json"))]
        objects = [json.loads(p.read_text()) for p in sorted((out / "objects").rglob("seed*.json"))]
        views = [v for v in views if v["seed"] in cfg.seeds and selected(cfg, v)]
        objects = [o for o in objects if o["arm"] in cfg.arms and o["seed"] in cfg.seeds and selected(cfg, o)]
        if not views and not objects:
            raise FileNotFoundError(f"--table-only: no finished records under {out} for these arms, seeds and parts; "
                                    "run the same command without --table-only to make them")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=1))
        views, objects = run_lift(cfg)
    from dreamdist3d.recipes.toy_checks import get_reader

    views, objects = image_readings(out, views, objects, get_reader(cfg.reader))
    text = table(views, objects)
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    return 0


__all__ = ["HELD_OUT", "Item", "LiftConfig", "arm_settings", "keep_clear_parts", "learned_items", "run_lift",
           "selected"]
