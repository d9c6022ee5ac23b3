"""Which learning objective and covariance mode cover a reference set? (`dreamdist3d toyworld arms`)

For each reference set, learning seed and arm (objective × covariance, K=1, caption, and the calibration rows "the
references' own captions as the K prompts" sampled diag / lowrank), with the toy backbone and the one distribution
path (`dreamdist3d.distribution.fit`, sample i of seed s from generator s+i):

1. learn (the recipe, `steps` steps, K=32) → distribution file; its K learned prompts and μ are kept too;
2. draw `n` prompt samples, generate single front views (DDIM `sample_steps`, CFG 2) and read them;
3. decode each learned prompt h_k on its own and μ (4 noise seeds) and read their colours.

Scores per run: the evaluator's (`score_readings`: reject, in-distribution rate, coverage/density/precision/recall
against 64 fresh objects of the set's grammar, diversity), plus colour measures that say directly whether samples
collapse to the mean: `colour_tv` (total-variation distance between the read colours of accepted samples and the
set's grammar, uniform over its colours), `colours_hit2` (how many of the set's colours at least two samples have),
`batch4` (the share of runs of 4 consecutive sample seeds, as the demo's four 3D runs with `pick_3d: first`, whose
accepted samples show min(3, number of the set's colours) of the set's colours), `pick4` (the same share for the 4
most different of 16 samples, as the demo's default `pick_3d: different`: picked on one decode, judged on another,
since a 3D run is a new realisation of its prompt sample; `pick4_shapes` whether they show min(3, number of the set's
body shapes) of its shapes, `pick4_in_dist` their in-distribution rate; `form_pick4…` the same for the pick by colour
and silhouette, `colour+form`), the same two measures for body shapes (`shape_tv`, `shapes_hit2`: the form a set
varies), `prompt_colours` (colour histogram of the K prompts decoded one by one) and `mean_colour` (of μ, majority
of 4).

With `--n-3d N`, each learned arm and seed then gets N text-to-3D runs (`configs/toy/toy-3d.yaml`, one prompt sample
each), each object read on 4 turntable views and scored the same way (rows "<arm> (3D)"; with `--pick-3d` the N most
different of 16 candidates, as the demo lifts them: rows "<arm> (3D, picked)").

Every finished run is cached as `<out>/runs/<set>/<arm>/seed<s>.json` (3D: `runs3d/`, `runs3d-picked/`), so an
interrupted sweep resumes and a table can be made from whatever finished (`--table-only`); `--resample` scores the
cached runs again from their learned files without learning (after a change to a sampling law or a score). The table
reports mean ± std over learning seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE, DEFAULT_LEARN_STEPS
from dreamdist3d.distribution.gaussian import LATENT_SEED_OFFSET, PromptGaussian
from dreamdist3d.io import atomic_write_text
from dreamdist3d.recipes.objects import ObjectsFailedError

# arm -> learning settings (None: not learned)
ARMS: Dict[str, Optional[Dict[str, Any]]] = {
    "official+diag": {"objective": "official", "covariance": "diag"},
    "official+lowrank": {"objective": "official", "covariance": "lowrank"},
    "wta+diag": {"objective": "wta", "covariance": "diag"},
    "wta+lowrank": {"objective": "wta", "covariance": "lowrank"},
    "softmin+lowrank": {"objective": "softmin", "covariance": "lowrank"},
    "assign+lowrank": {"objective": "assign", "covariance": "lowrank"},
    "assign+kernel": {"objective": "assign", "covariance": "kernel"},
    # #28: the error's low frequencies (a body's colour) weighed again (LearnConfig.lowpass_weight; an option)
    "assign-lowpass4+kernel": {"objective": "assign", "covariance": "kernel", "lowpass_weight": 4.0},
    "K=1": {"objective": "official", "covariance": "diag", "n_prompts": 1},
    "captions+diag": None,  # calibration: the references' exact captions as the K prompts
    "captions+lowrank": None,
    "caption": None,  # the medoid caption, one prompt
}
OPTION_ARMS = ("assign-lowpass4+kernel",)  # measured options, not comparisons: run only when named with --arm
DEFAULT_ARMS = [a for a in ARMS if a not in OPTION_ARMS]
SCORES = ("reject", "in_dist", "coverage", "precision", "diversity", "colour_tv", "colours_hit2", "shape_tv",
          "shapes_hit2", "batch4", "pick4", "pick4_shapes", "pick4_in_dist", "form_pick4", "form_pick4_shapes",
          "form_pick4_in_dist")
BATCH = 4  # the demo's 3D runs: how many consecutive draws `batch4` looks at
PICK_FROM = 16  # `pick4`: candidates per block (the demo's 2D samples), of which BATCH are picked
PICKS = {"": "colour", "form_": "colour+form"}  # record-key prefix -> the pick's features (`sample2d.pick`)


@dataclass
class ArmsConfig:
    refsets: List[str] = field(default_factory=lambda: ["large-tall-greens", "jewel-boxes-spheres",
                                                         "tricolour-tori-cones", "red-forms", "warm-cones-cylinders",
                                                         "cool-round-topped", "far-hues-spheres-cylinders",
                                                         "orange-forms", "teal-purple-forms"])
    arms: List[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "outputs/toyworld/arms"
    weights: str = ""
    reader: str = "outputs/toyworld/attribute-reader.safetensors"
    n: int = 32
    steps: int = DEFAULT_LEARN_STEPS  # learning steps, every arm
    n_prompts: int = 32
    n_ctx: int = 4
    ctx_init: str = ""  # learned arms start every prompt from this text (the learning config's ctx_init)
    lr: float = 1e-3
    batch_size: int = 4
    n_samples: int = 4
    sample_steps: int = 25
    guidance: float = DEFAULT_GUIDANCE
    k: int = 5
    n_real: int = 64
    pick_blocks: int = 6  # `pick4`: blocks of PICK_FROM fresh samples, each decoded twice
    # γ: every law sampled (samples and picks) at this scale; records of γ ≠ 1 are kept apart (`runs-scale<γ>/`)
    # and a learned arm's record is scored from the learned file of its γ 1 run when there is one (nothing learned
    # again)
    scale: float = 1.0
    progress: bool = False
    n_3d: int = 0  # 3D runs per (set, arm, learning seed) after the 2D pass, read on 4 turntable views; 0 = none
    pick_3d: bool = False  # 3D pass: lift the n_3d most different of PICK_FROM candidates (the demo's default)
    steps_3d: Optional[int] = None  # steps per 3D run (None: configs/toy/toy-3d.yaml's, anchored)
    config_3d: str = "configs/toy/toy-3d.yaml"
    overrides_3d: List[str] = field(default_factory=list)  # extra key=value for every 3D run (as the demo's)

    def __post_init__(self):  # a bad override would otherwise surface at the first 3D run, after the 2D pass
        bad = [o for o in self.overrides_3d if "=" not in o]
        if bad:
            raise ValueError(f"--override-3d takes KEY=VALUE (ArmsConfig.overrides_3d: keys of {self.config_3d}), "
                             f"got {bad}")


# ----------------------------------------------------------------------------------------------------- colour measures
def colour_scores(readings: Sequence[Any], colours: Sequence[str]) -> Dict[str, Any]:
    """Histogram of the read colours of accepted images; TV distance to uniform over `colours`; colours hit ≥ 2;
    `batch4`: of the windows of `BATCH` consecutive readings (in seed order), the share whose accepted readings show
    min(3, len(colours)) of `colours` (None when there are fewer readings than `BATCH`)."""
    got = Counter(r.colour for r in readings if r.ok)
    hist = {c: got.get(c, 0) for c in sorted(set(got) | set(colours))}
    windows = [readings[i:i + BATCH] for i in range(len(readings) - BATCH + 1)]
    return {"colour_hist": hist, "colour_tv": tv_to_uniform(got, colours),
            "colours_hit2": sum(1 for c in colours if got.get(c, 0) >= 2),
            "batch4": statistics.fmean(shows_set_colours(w, colours) for w in windows) if windows else None}


def tv_to_uniform(got: Counter, support: Sequence[str]) -> float:
    """Total-variation distance between the label counts `got` and the uniform law over `support` (1 when empty)."""
    total = sum(got.values())
    if total == 0:
        return 1.0
    return 0.5 * sum(abs(got.get(c, 0) / total - (1.0 / len(support) if c in support else 0.0))
                     for c in set(got) | set(support))


def shape_scores(readings: Sequence[Any], shapes: Sequence[str]) -> Dict[str, Any]:
    """The colour measures for body shapes: `shape_tv` (read shapes of accepted images against uniform over the
    set's `shapes`), `shapes_hit2` (the set's shapes at least two accepted images show)."""
    got = Counter(r.shape for r in readings if r.ok)
    return {"shape_tv": tv_to_uniform(got, shapes), "shapes_hit2": sum(1 for c in shapes if got.get(c, 0) >= 2)}


def shows_set_colours(readings: Sequence[Any], colours: Sequence[str]) -> bool:
    """Whether the accepted `readings` show min(3, len(colours)) of the set's `colours` (the demo's goal)."""
    return len({r.colour for r in readings if r.ok and r.colour in colours}) >= min(3, len(colours))


def shows_set_shapes(readings: Sequence[Any], shapes: Sequence[str]) -> bool:
    """Whether the accepted `readings` show min(3, len(shapes)) of the set's body `shapes`."""
    return len({r.shape for r in readings if r.ok and r.shape in shapes}) >= min(3, len(shapes))


def majority(readings: Sequence[Any]) -> str:
    got = Counter(r.colour for r in readings if r.ok)
    return got.most_common(1)[0][0] if got else "rejected"


# ----------------------------------------------------------------------------------------------------- one run
@torch.no_grad()
def _images(backbone, context: torch.Tensor, cfg: ArmsConfig, seed: int) -> torch.Tensor:
    from dreamdist3d.recipes.toy_demo import sample_images

    return sample_images(backbone, context, 1, seed=seed + LATENT_SEED_OFFSET, steps=cfg.sample_steps,
                         guidance=cfg.guidance)[:, 0]


def encode_captions(backbone, captions: Sequence[str]) -> torch.Tensor:
    """(K, 77, D) float32: the captions encoded, to stand in for K learned prompts."""
    return torch.cat([backbone.encode_text([c]) for c in captions]).float()


def run_one(cfg: ArmsConfig, backbone, reader, refset: str, arm: str, seed: int, folder: Path,
            real: torch.Tensor) -> Dict[str, Any]:
    from dreamdist3d.recipes.toy_demo import learn_distribution, render_references
    from dreamdist3d.recipes.toy_eval import medoid_caption
    from dreamdist3d.toyworld.refsets import get_refset

    rs = get_refset(refset)
    t0 = time.perf_counter()
    refs = folder / "reference"
    if not refs.is_dir():
        render_references(refset, refs)
    record: Dict[str, Any] = {"refset": refset, "arm": arm, "seed": seed}
    points: Optional[torch.Tensor] = None  # (K, 77, D) the prompts themselves
    settings = ARMS[arm]
    if settings is not None:
        keys = {"n_prompts": cfg.n_prompts, "n_ctx": cfg.n_ctx, **settings}  # an arm's settings override the sweep's
        name = f"{arm}-s{seed}".replace("+", "_").replace("=", "")
        res = learn_distribution(backbone, refs, folder / "learn", name=name,
                                 steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, n_samples=cfg.n_samples,
                                 seed=seed, progress=cfg.progress, ctx_init=cfg.ctx_init, **keys)
        record["ctx_init"] = cfg.ctx_init
        record["loss_last20"] = statistics.fmean(res.history["loss"][-20:])
        record["distribution"] = str(res.distribution)
        law, points = learned_law(backbone, res.distribution, settings["covariance"])
    elif arm.startswith("captions+"):
        points = encode_captions(backbone, rs.captions())
        law = PromptGaussian.from_points(points, arm.split("+")[1])
    else:  # caption
        cap = medoid_caption(rs)
        record["caption"] = cap
        law = PromptGaussian.from_points(encode_captions(backbone, [cap]))
    record.update(score_law(cfg, backbone, reader, refset, law, points, seed, real))
    record["time_s"] = round(time.perf_counter() - t0, 1)
    return record


def learned_law(backbone, distribution: str, covariance: str):
    """A learned file's law (sampled with `covariance`, the arm's) and its K prompts (K, 77, D)."""
    from dreamdist3d.distribution import DistributionSpec, fit

    spec = DistributionSpec.from_lists([distribution], covariance=covariance)
    law = fit(spec, backbone.text_encoder, backbone.tokenizer).law()
    # one file at γ 1: factor_k = (h_k − μ)/√(K−1), so the prompts are μ + √(K−1)·factor_k (no second
    # encoding)
    return law, law.mean + law.factor * math.sqrt(max(law.factor.shape[0] - 1, 1))


def score_law(cfg: ArmsConfig, backbone, reader, refset: str, law: PromptGaussian, points: Optional[torch.Tensor],
              seed: int, real: torch.Tensor) -> Dict[str, Any]:
    """The 2D scores of one law at γ `cfg.scale`: `cfg.n` samples of seed `seed`, its K prompts (`points`, unscaled)
    decoded one by one, and μ."""
    from dreamdist3d.recipes.toy_eval import score_readings
    from dreamdist3d.toyworld.refsets import get_refset

    law = law.scaled(cfg.scale)
    rs = get_refset(refset)
    colours = list(rs.grammar.colours)
    samples = law.sample(cfg.n, seed=seed)
    images = _images(backbone, samples, cfg, seed)
    readings = reader.read(images)
    record = {"scale": cfg.scale, **score_readings(readings, rs.support, real, images, k=cfg.k),
              **colour_scores(readings, colours),
              **shape_scores(readings, list(rs.grammar.shapes))}
    if points is not None and points.shape[0] > 1:
        pr = reader.read(_images(backbone, points, cfg, seed + 1))
        record["prompt_colours"] = dict(Counter(r.colour if r.ok else "rejected" for r in pr))
        record["prompts_colour_tv"] = colour_scores(pr, colours)["colour_tv"]
    mr = reader.read(_images(backbone, law.mean[None].expand(4, -1, -1).contiguous(), cfg, seed + 2))
    record["mean_colour"] = majority(mr)
    record.update(pick_scores(cfg, backbone, reader, rs, law, seed))
    return record


def pick_scores(cfg: ArmsConfig, backbone, reader, rs, law: PromptGaussian, seed: int) -> Dict[str, Any]:
    """For each pick of PICKS (key prefix "" the colour pick, "form_" colour+form), over `cfg.pick_blocks` blocks of
    PICK_FROM samples (seed `seed` + 1000), the BATCH picked by `pick_previews` on one decode and read on an
    independent decode (other initial noise): `pick4` (they show the set's colours, as `batch4`), `pick4_shapes` (they
    show min(3, #shapes) of the set's body shapes), `pick4_in_dist` (their in-distribution rate)."""
    from dreamdist3d.sample2d.pick import pick_previews

    if cfg.pick_blocks < 1:
        return {f"{pre}{key}": None for pre in PICKS for key in ("pick4", "pick4_shapes", "pick4_in_dist")}
    colours, shapes = list(rs.grammar.colours), list(rs.grammar.shapes)
    candidates = law.sample(PICK_FROM * cfg.pick_blocks, seed=seed + 1000)
    seen = _images(backbone, candidates, cfg, seed + 3)  # what the pick looks at (the demo's 2D samples)
    judged = reader.read(_images(backbone, candidates, cfg, seed + 4))  # what the lifted objects turn out to be
    out: Dict[str, Any] = {}
    for pre, features in PICKS.items():
        hits, forms, in_dist = [], [], []
        for b in range(cfg.pick_blocks):
            block = range(PICK_FROM * b, PICK_FROM * (b + 1))
            picked = [judged[block[i]] for i in pick_previews(seen[block.start:block.stop], BATCH, features)]
            hits.append(shows_set_colours(picked, colours))
            forms.append(shows_set_shapes(picked, shapes))
            in_dist.extend(bool(r.ok and rs.support.contains(r.labels())) for r in picked)
        out.update({f"{pre}pick4": statistics.fmean(hits), f"{pre}pick4_shapes": statistics.fmean(forms),
                    f"{pre}pick4_in_dist": statistics.fmean(in_dist)})
    return out


# ----------------------------------------------------------------------------------------------------- the sweep
def runs_folder(scale: float) -> str:
    """Where the 2D records of γ `scale` are cached, under the sweep's `out`."""
    return "runs" if scale == 1.0 else f"runs-scale{scale:g}"


def run_arms(cfg: ArmsConfig, backbone=None, reader=None, resample: bool = False) -> List[Dict[str, Any]]:
    """Every (refset, arm, seed) not yet cached; returns all cached records of the config. `resample`: cached runs
    are scored again, a learned arm from its learned file (nothing is learned again)."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.toy_eval import get_reader, real_features
    from dreamdist3d.toyworld.refsets import get_refset

    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; known: {list(ARMS)}")
    out = Path(cfg.out)
    records = []
    for refset in cfg.refsets:
        real = None
        for seed in cfg.seeds:
            for arm in cfg.arms:
                path = out / runs_folder(cfg.scale) / refset / arm / f"seed{seed}.json"
                cached = json.loads(path.read_text()) if path.is_file() else None
                if cached is not None and not resample:
                    records.append(cached)
                    continue
                # γ ≠ 1: the γ 1 run's learned file
                base = out / runs_folder(1.0) / refset / arm / f"seed{seed}.json"
                source = cached if cached is not None or not base.is_file() else json.loads(base.read_text())
                backbone = backbone or load_backbone(f"toy:{cfg.weights}", config_key="weights")
                reader = reader or get_reader(cfg.reader)
                if real is None:
                    real = real_features(reader, get_refset(refset), cfg.n_real, 0)
                if source is not None and source.get("distribution"):
                    t0 = time.perf_counter()
                    law, points = learned_law(backbone, source["distribution"], ARMS[arm]["covariance"])
                    rec = {**source, **score_law(cfg, backbone, reader, refset, law, points, seed, real),
                           "rescore_s": round(time.perf_counter() - t0, 1)}
                else:
                    rec = run_one(cfg, backbone, reader, refset, arm, seed, out / "work" / refset, real)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(rec, indent=1, default=str))  # (--resample replaces records)
                records.append(rec)
                print(f"[arms] {refset} {arm} seed {seed}: in-dist {rec['in_dist']:.2f} coverage {rec['coverage']:.2f} "
                      f"colour TV {rec['colour_tv']:.2f} colours≥2 {rec['colours_hit2']} μ {rec['mean_colour']} "
                      f"batch4 {'–' if rec['batch4'] is None else format(rec['batch4'], '.2f')} "
                      f"pick4 {'–' if rec.get('pick4') is None else format(rec['pick4'], '.2f')} "
                      + (f"(rescored in {rec['rescore_s']} s)" if "rescore_s" in rec else f"({rec['time_s']} s)"),
                      file=sys.stderr, flush=True)
    return records


def run_arms_3d(cfg: ArmsConfig, backbone=None, reader=None, runner=None) -> List[Dict[str, Any]]:
    """For every cached 2D record of a learned arm: `n_3d` text-to-3D runs (seeds 100·s … 100·s + n_3d − 1, or with
    `pick_3d` the n_3d most different of the PICK_FROM seeds from 100·s on, by their 2D samples as the demo picks; one
    prompt sample each, drawn with the arm's covariance), each object read on 4 turntable views (one aggregated
    reading), scored like the 2D rows. Cached as `<out>/runs3d[-picked]/<set>/<arm>/seed<s>.json`; returns all cached
    3D records of the config. `runner` (`recipes.objects.Runner`, `--ray`): the objects are made there; a record
    whose objects failed there is left out and, once every other record is done, `ObjectsFailedError` names them."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.toy_eval import get_reader, objects_3d, real_features, score_readings
    from dreamdist3d.sample2d.pick import pick_seeds
    from dreamdist3d.toyworld.refsets import get_refset

    if cfg.scale != 1.0:
        raise ValueError(f"the 3D pass draws its objects at γ 1; got scale {cfg.scale:g}: run --n-3d without --scale")
    out = Path(cfg.out)
    kind, runs_dir, work_dir = (("3D, picked", "runs3d-picked", "work3d-picked") if cfg.pick_3d
                                else ("3D", "runs3d", "work3d"))
    records, failed = [], {}
    for refset in cfg.refsets:
        rs, real = get_refset(refset), None
        for seed in cfg.seeds:
            for arm in cfg.arms:
                src = out / runs_folder(1.0) / refset / arm / f"seed{seed}.json"
                path = out / runs_dir / refset / arm / f"seed{seed}.json"
                if ARMS.get(arm) is None or not src.is_file():
                    continue
                if path.is_file():
                    records.append(json.loads(path.read_text()))
                    continue
                dist = json.loads(src.read_text()).get("distribution")
                if dist is None:  # records written before the path was kept: find the learning run
                    slug = f"{arm}-s{seed}".replace("+", "_").replace("=", "")
                    found = sorted((out / "work" / refset / "learn").glob(f"{slug}@*/distribution.safetensors"))
                    dist = str(found[-1]) if found else None
                if dist is None:
                    continue
                backbone = backbone or load_backbone(f"toy:{cfg.weights}", config_key="weights")
                reader = reader or get_reader(cfg.reader)
                real = real if real is not None else real_features(reader, rs, cfg.n_real, 0)
                t0 = time.perf_counter()
                covariance = ARMS[arm]["covariance"]
                seeds = list(range(100 * seed, 100 * seed + cfg.n_3d))
                if cfg.pick_3d:
                    law, _ = learned_law(backbone, dist, covariance)
                    seen = _images(backbone, law.sample(PICK_FROM, seed=100 * seed), cfg, 100 * seed)
                    seeds = pick_seeds(seen, cfg.n_3d, 100 * seed)
                try:
                    overrides = [f"system.prompt_processor.covariance={covariance}", *cfg.overrides_3d]
                    views = objects_3d(backbone, dist, out / work_dir / refset / arm.replace("+", "_"), seeds,
                                       cfg.config_3d, cfg.steps_3d, overrides=overrides, runner=runner,
                                       weights=cfg.weights)
                except ObjectsFailedError as e:  # the other records still run; this one is retried by a rerun
                    failed.update(e.failed)
                    continue
                readings = reader.read_views(views.flatten(0, 1), 4)
                rec = {"refset": refset, "arm": f"{arm} ({kind})", "seed": seed, "n_3d": cfg.n_3d, "seeds_3d": seeds,
                       **score_readings(readings, rs.support, real, views[:, 0], k=cfg.k),
                       **colour_scores(readings, list(rs.grammar.colours)),
                       **shape_scores(readings, list(rs.grammar.shapes)),
                       "object_colours": [r.colour if r.ok else "rejected" for r in readings],
                       "time_s": round(time.perf_counter() - t0, 1)}
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rec, indent=1, default=str))
                records.append(rec)
                print(f"[arms {kind}] {refset} {arm} seed {seed}: objects {rec['object_colours']} in-dist "
                      f"{rec['in_dist']:.2f} coverage {rec['coverage']:.2f} ({rec['time_s']} s)", file=sys.stderr,
                      flush=True)
    if failed:
        raise ObjectsFailedError(failed, "rerun the same command to retry them (finished objects and records are "
                                         "kept)")
    return records


def table(records: Sequence[Dict[str, Any]]) -> str:
    """Markdown: one row per (refset, arm), mean ± std over seeds, plus μ's colours and the prompts' colours."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in records:  # γ ≠ 1 rows are their own: "<arm> (γ 0.8)"
        groups.setdefault((r["refset"], r["arm"], float(r.get("scale", 1.0))), []).append(r)
    cols = ("refset", "arm", "seeds", *SCORES, "μ colour", "decoded prompts (seed 0)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    order = {a: i for i, a in enumerate(ARMS)}
    order.update({f"{a} (3D)": 100 + i for i, a in enumerate(ARMS)})
    order.update({f"{a} (3D, picked)": 200 + i for i, a in enumerate(ARMS)})
    for (refset, arm, scale), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99),
                                                                           kv[0][2] != 1.0, kv[0][2])):
        cells = [refset, arm + ("" if scale == 1.0 else f" (γ {scale:g})"), str(len(rs))]
        for key in SCORES:
            vals = [float(r[key]) for r in rs if r.get(key) is not None and not math.isnan(float(r[key]))]
            if not vals:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.2f}")
            else:
                cells.append(f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}")
        cells.append(", ".join(str(r.get("mean_colour")) for r in rs))
        pc = rs[0].get("prompt_colours")
        if pc is None and rs[0].get("object_colours"):  # 3D rows: each object's colour, per learning seed
            cells[-1] = "–"
            cells.append("; ".join(" ".join(r["object_colours"]) for r in rs))
        else:
            cells.append(" ".join(f"{k} {v}" for k, v in sorted(pc.items(), key=lambda kv: -kv[1])) if pc else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ArmsConfig()
    p.add_argument("--refset", action="append", default=None, help=f"reference set, repeatable (default {d.refsets})")
    p.add_argument("--arm", action="append", default=None,
                   help=f"arm, repeatable (default: {DEFAULT_ARMS}; also {list(OPTION_ARMS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="learning seeds (default 0 1 2)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--steps", type=int, default=d.steps, help=f"learning steps per arm (default {d.steps})")
    p.add_argument("--n-prompts", type=int, default=d.n_prompts,
                   help=f"K, learned prompts per distribution (default {d.n_prompts}; the K=1 arm keeps 1)")
    p.add_argument("--ctx-init", default=d.ctx_init,
                   help="learned arms start every prompt from this text (default: the official random start); "
                        "cached runs are not checked against it: give each value its own --out")
    p.add_argument("--n", type=int, default=d.n, help=f"samples per run (default {d.n})")
    p.add_argument("--n-3d", type=int, default=0,
                   help="after the 2D pass: N text-to-3D runs per learned arm and seed, read on turntable views")
    p.add_argument("--pick-3d", action="store_true",
                   help="with --n-3d: lift the N most different of 16 candidate samples (the demo's default), rows "
                        "'<arm> (3D, picked)'")
    p.add_argument("--steps-3d", type=int, default=d.steps_3d,
                   help="steps per 3D run, anchor-only steps included (default: those of the 3D config)")
    p.add_argument("--override-3d", action="append", default=[], metavar="KEY=VALUE",
                   help="with --n-3d: a key=value of the 3D config for every run, repeatable (cached runs are not "
                        "checked against it: give each value its own --out)")
    p.add_argument("--scale", type=float, default=d.scale,
                   help="γ: sample every arm at this scale (default 1); rows '<arm> (γ G)', learned arms scored from "
                        "the learned files of their γ 1 runs where cached (2D scores only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--table-only", action="store_true", help="print the table of the cached runs and stop")
    p.add_argument("--resample", action="store_true",
                   help="score the cached 2D runs again from their learned files (no learning), e.g. after a change "
                        "to a sampling law or a score")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def cli_run(args: argparse.Namespace, runner=None) -> int:
    """`runner`: where the 3D objects are made (`--ray`); None: here, one after another."""
    from dreamdist3d.distribution.gaussian import check_scale

    check_scale(args.scale, "--scale γ")  # before anything loads
    if args.threads:
        torch.set_num_threads(int(args.threads))
    d = ArmsConfig()
    cfg = ArmsConfig(refsets=args.refset or d.refsets, arms=args.arm or d.arms, seeds=list(args.seeds), out=args.out,
                     steps=args.steps, n_prompts=args.n_prompts, ctx_init=args.ctx_init, n=args.n, n_3d=args.n_3d,
                     steps_3d=args.steps_3d, pick_3d=args.pick_3d, scale=args.scale,
                     overrides_3d=list(args.override_3d))
    rc, cached = 0, lambda: [json.loads(p.read_text()) for p in sorted(Path(cfg.out).glob("runs*/*/*/seed*.json"))]
    if args.table_only:
        recs = cached()
        if not recs:
            raise FileNotFoundError(f"--table-only: no finished runs under {cfg.out}; run the same command without "
                                    "--table-only to make them")
    else:
        try:
            recs = run_arms(cfg, resample=args.resample) + (run_arms_3d(cfg, runner=runner) if cfg.n_3d > 0 else [])
        except ObjectsFailedError as e:  # the table of what finished, then the error
            print(f"[arms] {e}", file=sys.stderr)
            recs, rc = cached(), 1
    text = table(recs)
    print(text)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(cfg.out) / "table.md", text + "\n")
    if not args.table_only:  # (the config of the sweep that made the runs stays)
        atomic_write_text(Path(cfg.out) / "config.json", json.dumps(asdict(cfg), indent=1))
    return rc


__all__ = ["ARMS", "ArmsConfig", "PICKS", "encode_captions", "colour_scores", "learned_law", "run_arms", "run_arms_3d",
           "run_one", "pick_scores", "runs_folder", "score_law", "shape_scores", "table"]
