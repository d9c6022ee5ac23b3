"""The toy-world evaluator: does a learned prompt distribution cover a reference set's variety better than a single
learned prompt, while staying in distribution? (`dreamdist3d toyworld eval`)

For each reference set (`REFSETS`), with the toy backbone:
- **K=32**: a DreamDistribution prompt distribution (K=32 prompts, n_ctx 4, the learning recipe), N fresh prompt
  samples `mean + ε·std`;
- **K=1**: a single learned prompt (K=1: std 0, i.e. textual-inversion-like), same steps and settings, N samples that
  differ only by the diffusion noise;
- **caption**: the plain caption baseline, N samples of one caption — the reference object nearest to the set's mean
  attribute feature (its "medoid caption": the best single caption naming part of the set);
- **reference**: the reference renders themselves read back: the reader's own reject and in-distribution rates on
  clean renders, and how much of the set's distribution 12 draws of it cover.
All generated samples are single front views (2D mode, DDIM 25 steps, CFG `DEFAULT_GUIDANCE` = 2, the same seeds for
every method). First, a caption check (`caption_match`: seen-world captions generated and read back) and an
interpolation readout (`interpolation_readout`: hues along "a red box" -> "a yellow box" in embedding space) say how far
the backbone itself can be trusted.
With `n_3d > 0`, every method also gets N text-to-3D runs (`configs/toy/toy-3d.yaml`, seeds 0..N-1: a fresh
prompt sample each for K=32; K=1 and the caption, whose one prompt is saved as a K=1 distribution with
`PromptDistribution.from_caption`, differ only by the run's seed); each object is read on 4 turntable views (one
aggregated reading: `AttributeReader.read_views`) and scored the same way (rows "K=32 (3D)", "K=1 (3D)",
"caption (3D)").

Each image is read by the `AttributeReader` (reject for out-of-world images) and scored:
- `reject`: fraction of images the reader rejects;
- `in_dist`: fraction of ALL images that are accepted and inside the reference set's attribute support
  (`AttributeSupport.contains`); `in_dist_acc`: the same among accepted images;
- `coverage`, `density`, `precision`, `recall` (Naeem et al. 2020, k=5) on attribute features (`Reading.feature`),
  real = `n_real` (64) fresh objects of the reference set's own grammar (front views read by the same reader: the
  distribution the references were drawn from; the 12 references alone make k=5 balls so wide that any spread
  covers them all), fake = the accepted samples;
- `diversity`: mean pairwise L2 distance between attribute features of accepted samples; `pix_div`: mean pairwise
  RMS pixel distance over all samples.
Calibration rows (`oracles`, exact renders, no model): a perfect distribution (new objects of the set's own grammar),
a perfect single prompt (one reference object n times) and the whole toy world: e.g. on warm-cones-cylinders they
score in-dist 1.00 / coverage 1.00, in-dist 1.00 / coverage 0.25, and in-dist 0.22 / coverage 0.92 — coverage alone
rewards spread (read it with the in-distribution rate), the in-distribution rate alone rewards collapse.

Writes `<out>/report.json`, `<out>/report.md` (the table) and `<out>/sheet-<refset>.png` (every image beside the
scores, bordered green = in distribution, orange = accepted but outside, red = rejected).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE, DEFAULT_LEARN_STEPS
from dreamdist3d.evaluation.toy_scores import (  # noqa: F401 (re-exported)
    METRICS,
    claim_check,
    format_caption_match,
    format_table,
    medoid_caption,
    pairwise_mean_distance,
    score_readings,
    verdicts,
)
from dreamdist3d.recipes.toy_checks import caption_match, get_reader, interpolation_check, interpolation_readout

METHODS = ("K=32", "K=1", "caption")
DEFAULT_READER = "outputs/toyworld/attribute-reader.safetensors"


@dataclass
class EvalConfig:
    refsets: List[str] = field(default_factory=lambda: ["warm-cones-cylinders", "large-tall-greens"])
    out: str = "outputs/toyworld/eval"
    weights: str = ""  # toy backbone weights; "" = the shipped ones
    reader: str = DEFAULT_READER  # attribute reader file: loaded if present, else fitted (~15-30 s) and saved there
    reader_train: int = 4000  # renders to fit the reader on when it is fitted
    n: int = 32  # generated samples per method
    n_prompts: int = 32  # K of the distribution
    n_ctx: int = 4
    steps: int = DEFAULT_LEARN_STEPS  # learning steps (both K=32 and K=1)
    lr: float = 1e-3
    batch_size: int = 4
    n_samples: int = 4
    sample_steps: int = 25
    guidance: float = DEFAULT_GUIDANCE
    scale: float = 1.0
    k: int = 5  # k of the k-NN balls of coverage/density
    # objects of the set's grammar that stand for its distribution in coverage/density/precision/recall
    n_real: int = 64
    seed: int = 0
    progress: bool = True
    n_3d: int = 0  # 3D runs per distribution (K=32 and K=1), read on 4 turntable views each; 0 = 2D only
    steps_3d: Optional[int] = None  # steps per 3D run (None: configs/toy/toy-3d.yaml's, anchored)
    config_3d: str = "configs/toy/toy-3d.yaml"
    oracles: bool = True  # calibration rows from exact renders of ideal generators (seconds)
    caption_check: int = 64  # seen-world captions generated and read back first (`caption_match`); 0 = skip
    caption_check_only: bool = False  # stop after the caption check (no reference sets)


# ----------------------------------------------------------------------------------------------------- sheet
def write_sheet(path: Path, blocks: Sequence[Dict[str, Any]], upscale: int = 2) -> Path:
    """PNG: one row per method, its images bordered by verdict, the scores written at the left."""
    from PIL import Image, ImageDraw

    from dreamdist3d.images import save_png, to_uint8

    colours = {"in": (40, 170, 60), "out": (240, 150, 20), "reject": (210, 30, 30)}
    label_w, b = 260, 2
    h = 32 * upscale + 2 * b
    max_n = max(len(bl["images"]) for bl in blocks)
    cols = min(max_n, 16)
    rows_per = [max(1, math.ceil(len(bl["images"]) / cols)) for bl in blocks]
    H = sum(r * (h + 2) for r in rows_per) + 4 * len(blocks)
    W = label_w + cols * (h + 2)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for bl, nrows in zip(blocks, rows_per):
        s = bl["scores"]
        text = (f"{bl['name']}\nreject {s['reject']:.2f}  in-dist {s['in_dist']:.2f}\n"
                f"coverage {s['coverage']:.2f}  density {s['density']:.2f}\ndiversity {s['diversity']:.2f}")
        draw.multiline_text((4, y + 2), text, fill=(0, 0, 0))
        arr = to_uint8(bl["images"], channels_first=True)
        for i, (im, verdict) in enumerate(zip(arr, bl["verdicts"])):
            r, c = divmod(i, cols)
            tile = Image.fromarray(im).resize((32 * upscale, 32 * upscale), Image.NEAREST)
            x0, y0 = label_w + c * (h + 2), y + r * (h + 2)
            draw.rectangle([x0, y0, x0 + h - 1, y0 + h - 1], fill=colours[verdict])
            canvas.paste(tile, (x0 + b, y0 + b))
        y += nrows * (h + 2) + 4
    return save_png(canvas, path)


def objects_3d(backbone, distribution: Path, out: Path, seeds: Sequence[int], config: str, steps: Optional[int],
               progress: bool = False, overrides: Sequence[str] = (), runner=None, weights: str = "") -> torch.Tensor:
    """One text-to-3D run per seed (`out/runs/seed<s>/`, the prompt sample of that seed), each read back as 4
    evenly spaced turntable views: (len(seeds), 4, 3, H, W) in [0,1].

    `runner` (`recipes.objects.Runner`): the runs go to it, guided by the toy backbone of `weights` loaded there;
    seeds that already have a finished run are kept (an interrupted sweep resumes), and seeds that failed there
    raise `ObjectsFailedError` once the others have finished."""
    from dreamdist3d.lift3d.gallery import find_turntable, run_dir
    from dreamdist3d.recipes.objects import ObjectsFailedError
    from dreamdist3d.recipes.toy_3d import launch_3d, launch_3d_task

    if runner is None:
        runs = [launch_3d(backbone, Path(distribution).resolve(), out, s, config, steps, overrides=overrides,
                          progress=progress) for s in seeds]
    else:
        todo = [s for s in seeds if find_turntable(run_dir(Path(out), s)) is None]
        res = runner(launch_3d_task(distribution, config, steps, overrides, weights), Path(out), todo)
        if res.failed:
            raise ObjectsFailedError({f"{out} seed {s}": e for s, e in res.failed.items()})
        runs = [run_dir(Path(out), s) for s in seeds]
    return torch.stack([turntable_views(run, 4) for run in runs])


def turntable_views(run_dir: Path, n_views: int = 4) -> torch.Tensor:
    """(n_views, 3, H, W) in [0,1]: evenly spaced frames of a finished run's test turntable (the RGB panel)."""
    import numpy as np

    from dreamdist3d.images import read_rgb
    from dreamdist3d.lift3d.gallery import find_turntable
    from dreamdist3d.lift3d.saving import sorted_frames

    tt = find_turntable(Path(run_dir))
    if tt is None:
        raise FileNotFoundError(f"no turntable in {run_dir}/save")
    frames = sorted_frames(tt["frames"])
    pick = [frames[i] for i in np.linspace(0, len(frames), n_views, endpoint=False).astype(int)]
    out = []
    for f in pick:
        arr = read_rgb(f)
        h = arr.shape[0]
        out.append(torch.from_numpy(arr[:, :h].copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def real_features(reader, refset, n: int, seed: int = 0) -> torch.Tensor:
    """(M, D) attribute features of n fresh objects of the set's grammar (front views; M ≤ n: the accepted ones), the
    "real" distribution of coverage and density. Seeded apart from the references and the oracle rows."""
    from dreamdist3d.toyworld.render import render_specs

    return reader.features(reader.read(render_specs(refset.grammar.sample_many(n, seed + 5000)).image))


def oracle_scores(reader, refset, real: torch.Tensor, n: int = 32, seed: int = 0, k: int = 5) -> List[Dict[str, Any]]:
    """The evaluator's calibration: exact renders (front view) of ideal generators, scored like the methods.
    "oracle: set grammar" = n new objects of the set's own grammar (a perfect distribution); "oracle: one object" =
    one reference object n times (a perfect single prompt); "oracle: whole world" = n objects of the whole toy world
    (varied but not in the set)."""
    from dreamdist3d.toyworld.objects import WORLD
    from dreamdist3d.toyworld.render import render_specs

    out = []
    for method, specs in (("oracle: set grammar", refset.grammar.sample_many(n, seed + 999)),
                          ("oracle: one object", [refset.specs()[0]] * n),
                          ("oracle: whole world", WORLD.sample_many(n, seed + 7))):
        images = render_specs(specs).image
        out.append({"method": method, **score_readings(reader.read(images), refset.support, real, images, k=k)})
    return out


# ----------------------------------------------------------------------------------------------------- evaluation
def evaluate_refset(cfg: EvalConfig, backbone, reader, name: str, out: Path) -> Dict[str, Any]:
    """All methods on one reference set -> {"rows": [...], "sheet": path, "captions": ..., "times": ...}."""
    from dreamdist3d.recipes.toy_demo import learn_distribution, prompt_samples, render_references, sample_images
    from dreamdist3d.toyworld.refsets import get_refset

    rs = get_refset(name)
    support = rs.support
    folder = out / name
    ref_images, _ = render_references(name, folder / "reference")
    ref_read = reader.read(ref_images)
    real = real_features(reader, rs, cfg.n_real, cfg.seed)
    if real.shape[0] <= cfg.k:
        raise RuntimeError(f"the reader accepted only {real.shape[0]} of {cfg.n_real} renders of {name}'s grammar; "
                           f"coverage needs more than k={cfg.k}")
    times: Dict[str, float] = {}
    samples: Dict[str, torch.Tensor] = {}
    dists: Dict[str, str] = {}
    for method, K in (("K=32", cfg.n_prompts), ("K=1", 1)):
        t0 = time.perf_counter()
        res = learn_distribution(backbone, folder / "reference", folder / "learn", name=f"{name}-K{K}", n_prompts=K,
                                 n_ctx=cfg.n_ctx, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                                 n_samples=cfg.n_samples, seed=cfg.seed, progress=cfg.progress)
        dists[method] = str(res.distribution)
        ctx = prompt_samples(backbone, res.distribution, cfg.n, seed=cfg.seed + 1000, scale=cfg.scale)
        samples[method] = sample_images(backbone, ctx, 1, seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance,
                                        progress=cfg.progress, desc=f"{name} {method}")[:, 0]
        times[method] = round(time.perf_counter() - t0, 1)
    caption = medoid_caption(rs)
    from dreamdist3d.distribution import PromptDistribution

    dists["caption"] = str(PromptDistribution.from_caption(
        caption, backbone.text_encoder, backbone.tokenizer, backbone=backbone.name
    ).save(folder / "learn" / f"{name}-caption.safetensors"))
    t0 = time.perf_counter()
    ctx = backbone.encode_text([caption]).expand(cfg.n, -1, -1)
    samples["caption"] = sample_images(backbone, ctx, 1, seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance,
                                       progress=cfg.progress, desc=f"{name} caption")[:, 0]
    times["caption"] = round(time.perf_counter() - t0, 1)

    oracle_rows = oracle_scores(reader, rs, real, n=cfg.n, seed=cfg.seed, k=cfg.k) if cfg.oracles else []
    views_3d: Dict[str, torch.Tensor] = {}
    if cfg.n_3d > 0:  # 3D runs of both learned distributions, read on 4 turntable views per object
        for method in METHODS:
            t0 = time.perf_counter()
            views_3d[method] = objects_3d(backbone, dists[method], folder / "3d" / method.replace("=", ""),
                                          range(cfg.seed, cfg.seed + cfg.n_3d), cfg.config_3d, cfg.steps_3d,
                                          cfg.progress)  # (n_3d, 4, 3, H, W)
            times[f"{method} (3D)"] = round(time.perf_counter() - t0, 1)

    rows, blocks = [], []
    ref_scores = score_readings(ref_read, support, real, ref_images, k=cfg.k)
    rows.append({"refset": name, "method": "reference", **ref_scores})
    blocks.append({"name": f"reference ({len(ref_read)})", "images": ref_images, "scores": ref_scores,
                   "verdicts": verdicts(ref_read, support)})
    rows += [{"refset": name, **r} for r in oracle_rows]
    for method in METHODS:
        imgs = samples[method]
        readings = reader.read(imgs)
        s = score_readings(readings, support, real, imgs, k=cfg.k)
        rows.append({"refset": name, "method": method, **s})
        label = method if method != "caption" else f'caption "{caption}"'
        blocks.append({"name": label, "images": imgs, "scores": s, "verdicts": verdicts(readings, support)})
        rejects: Dict[str, int] = {}
        for r in readings:
            if not r.ok:
                key = (r.reason or "?").split(":")[0].split("(")[0].strip()
                rejects[key] = rejects.get(key, 0) + 1
        rows[-1]["reject_reasons"] = rejects
    for method, views in views_3d.items():  # one aggregated reading per 3D object (majority of its 4 views)
        flat = views.reshape(-1, *views.shape[2:])
        readings = reader.read_views(flat, 4)
        s = score_readings(readings, support, real, views[:, 0], k=cfg.k)
        rows.append({"refset": name, "method": f"{method} (3D)", **s})
        blocks.append({"name": f"{method} 3D (view 1 of 4)", "images": views[:, 0], "scores": s,
                       "verdicts": verdicts(readings, support)})
    sheet = write_sheet(out / f"sheet-{name}.png", blocks)
    return {"rows": rows, "sheet": str(sheet), "caption": caption, "distributions": dists, "times_s": times,
            "description": rs.description, "held_out": rs.held_out}


def evaluate(cfg: EvalConfig, backbone=None, reader=None) -> Dict[str, Any]:
    """Run the evaluation for every reference set of `cfg`; writes report.json / report.md / sheets."""
    from dreamdist3d.backbones.load import load_backbone

    t_wall, t_cpu = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = backbone or load_backbone(f"toy:{cfg.weights}", config_key="weights")
    reader = reader or get_reader(cfg.reader, cfg.reader_train, cfg.seed)
    check = None
    if cfg.caption_check:
        check = caption_match(backbone, reader, n=cfg.caption_check, steps=cfg.sample_steps, guidance=cfg.guidance)
        check["four_view"] = caption_match(backbone, reader, n=cfg.caption_check, steps=cfg.sample_steps,
                                           guidance=cfg.guidance, num_frames=4)
        check["interpolation"] = interpolation_readout(backbone, reader, guidance=cfg.guidance)
        print(format_caption_match(check))
    if cfg.caption_check_only:
        (out / "caption-check.json").write_text(json.dumps(check, indent=1))
        return {"caption_check": check}
    per_set = {name: evaluate_refset(cfg, backbone, reader, name, out) for name in cfg.refsets}
    rows = [r for v in per_set.values() for r in v["rows"]]
    table = format_table(rows)
    report = {
        "config": asdict(cfg),
        "backbone": str(backbone.source),
        "reader": {"path": cfg.reader, **{k: v for k, v in reader.meta.items() if not isinstance(v, (list, dict))}},
        "caption_check": check,
        "refsets": per_set,
        "table": rows,
        "claim": claim_check(rows),
        "times": {"wall_s": round(time.perf_counter() - t_wall, 1), "cpu_s": round(time.process_time() - t_cpu, 1)},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    md = ["# Toy-world evaluation\n", f"backbone: `{backbone.source}`; {cfg.n} samples per method; learning "
          f"{cfg.steps} steps (K={cfg.n_prompts} and K=1, n_ctx {cfg.n_ctx}, lr {cfg.lr}); DDIM {cfg.sample_steps} "
          f"steps, CFG {cfg.guidance}.\n", *([format_caption_match(check), ""] if check else []), table, "",
          "Captions of the caption baseline (medoid of each set): "
          + "; ".join(f"{k}: \"{v['caption']}\"" for k, v in per_set.items()), "", "Claim (K=32 coverage > K=1 at an "
          "in-distribution rate at most 0.15 below K=1's): " + "; ".join(f"{k}: {v}" for k,
                                                                         v in report["claim"].items()), "",
          *[f"![{k}](sheet-{k}.png)" for k in per_set]]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print(table)
    print(f"[toy-eval] report: {out / 'report.md'} ({report['times']['wall_s']} s wall, {report['times']['cpu_s']} s "
          "CPU)",
          file=sys.stderr)
    return report


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    p.add_argument("--refset", action="append", default=None,
                   help=f"reference set (repeat for several; default: {' '.join(d.refsets)}; 'all' for every set)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--weights", default="", help="toy backbone weights (default: the shipped ones)")
    p.add_argument("--reader", default=d.reader, help="attribute reader file (fitted and saved there if missing)")
    p.add_argument("--n", type=int, default=d.n, help=f"samples per method (default {d.n})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"learning steps for K=32 and K=1 (default {d.steps})")
    p.add_argument("--n-3d", type=int, default=d.n_3d,
                   help="also N 3D runs per learned distribution, read on 4 turntable views each (default 0: 2D only)")
    p.add_argument("--steps-3d", type=int, default=d.steps_3d,
                   help="steps per 3D run, anchor-only steps included (default: those of the 3D config)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--caption-check", type=int, default=d.caption_check,
                   help=f"first generate this many seen-world captions and report how many the reader reads back "
                        f"as captioned (default {d.caption_check}; 0 = skip)")
    p.add_argument("--caption-check-only", action="store_true", help="stop after the caption check")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def cli_run(args: argparse.Namespace) -> int:
    from dreamdist3d.toyworld.refsets import REFSETS

    if args.threads:
        torch.set_num_threads(int(args.threads))
    refsets = args.refset or EvalConfig().refsets
    if "all" in refsets:
        refsets = list(REFSETS)
    unknown = [r for r in refsets if r not in REFSETS]
    if unknown:
        raise ValueError(f"--refset: unknown reference set(s) {unknown}; known: {sorted(REFSETS)}")
    cfg = EvalConfig(refsets=refsets, out=args.out, weights=args.weights, reader=args.reader, n=args.n,
                     steps=args.steps, seed=args.seed, progress=not args.quiet, n_3d=args.n_3d,
                     steps_3d=args.steps_3d, caption_check=args.caption_check,
                     caption_check_only=args.caption_check_only)
    evaluate(cfg)
    return 0


__all__ = ["EvalConfig", "evaluate", "evaluate_refset", "score_readings", "format_table", "medoid_caption",
           "get_reader", "claim_check", "caption_match", "interpolation_check", "interpolation_readout",
           "format_caption_match", "pairwise_mean_distance", "METHODS", "METRICS"]
