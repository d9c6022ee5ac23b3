"""`dreamdist3d inspect FILE [--text-encoder SRC]`: what a distribution file holds, and what γ does."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from dreamdist3d.distribution.gaussian import COVARIANCES

NAME = "inspect"
HELP = ("print a distribution file's metadata and learned-context summary; with --text-encoder also its "
        "interpretation and a γ scatter PNG")

GAMMAS = (0.0, 0.5, 1.0, 2.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file",
                   help="a dreamdist3d distribution (.safetensors) or an official prompt_learner.pt / final-N.pt")
    p.add_argument("--class-index", type=int, default=0,
                   help="class to read from a multi-class official file (default 0)")
    p.add_argument("--text-encoder", metavar="SRC",
                   help="diffusers SD 2.1 folder or MVDream .pt: adds the interpretation and the scatter")
    p.add_argument("--prefix", default=None, help="re-encode with this prefix (edit) before fitting")
    p.add_argument("--suffix", default=None, help="re-encode with this suffix (edit) before fitting")
    p.add_argument("--covariance", default=None, choices=COVARIANCES,
                   help="sampling mode of the γ scatter (default: what the file records)")
    p.add_argument("--n", type=int, default=64, help="samples per γ in the scatter (default 64)")
    p.add_argument("--seed", type=int, default=0, help="scatter sample i uses prompt sample seed+i (default 0)")
    p.add_argument("--plot", metavar="PNG", help="scatter output path (default: <file>.scatter.png)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def context_summary(ctx: torch.Tensor) -> dict:
    """Shape, norms and the spread across the K prompts of a learned context (K, L, D)."""
    k, length, d = ctx.shape
    ctx = ctx.double()  # a context far out of range must not print as "inf"
    norms = ctx.norm(dim=-1)  # (K, L)
    flat = torch.nn.functional.normalize(ctx.reshape(k, -1), dim=-1)
    cos = flat @ flat.T
    off = (cos.sum() - cos.diagonal().sum()) / max(1, k * (k - 1))
    return {
        "shape": [k, length, d],
        "token_norm_mean": round(float(norms.mean()), 6),
        "token_norm_per_slot": [round(float(v), 6) for v in norms.mean(0)],
        "spread_std_over_prompts": round(float(ctx.std(0).mean()) if k > 1 else 0.0, 6),
        "mean_pairwise_cosine": round(float(off), 6) if k > 1 else None,
    }


def scatter_pca(gaussian, n: int, seed: int, path: Path, title: str) -> dict:
    """2-D PCA of samples 0…n−1 of `seed` at each γ in GAMMAS (same noise across γ), saved as a PNG. Returns the
    spread per γ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = gaussian.noise(n, seed)
    samples = {g: gaussian.sample(n, scale=g, eps=eps).reshape(n, -1).float() for g in GAMMAS}
    allx = torch.cat(list(samples.values()))
    center = allx.mean(0)
    _, _, v = torch.linalg.svd(allx - center, full_matrices=False)
    basis = v[:2].T  # (77·D, 2)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    spread = {}
    for g, x in samples.items():
        xy = (x - center) @ basis
        spread[str(g)] = round(float(xy.std(0).mean()) if n > 1 else 0.0, 6)
        ax.scatter(xy[:, 0], xy[:, 1], s=12 if g else 60, marker="*" if g == 0 else "o", alpha=0.7, label=f"γ = {g}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend()
    fig.tight_layout()
    from dreamdist3d.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return spread


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dreamdist3d.distribution import PromptDistribution
    from dreamdist3d.distribution.file import DistributionRangeWarning, context_range_problem, describe_encoder

    path = Path(args.file)
    if args.plot:
        from dreamdist3d.io import check_writable

        check_writable(args.plot, "--plot", suffix=".png")  # before the text encoder loads
    dist = PromptDistribution.load(path, class_index=args.class_index)
    problem = context_range_problem(dist.ctx)  # with --text-encoder, `fit` below checks against that encoder too
    if problem:
        warnings.warn(f"{path}: {problem} (a damaged file, or a diverged run?)", DistributionRangeWarning,
                      stacklevel=2)
    report = {"file": str(path), "metadata": asdict(dist.meta), "context": context_summary(dist.ctx)}
    if args.text_encoder:
        from dreamdist3d.backbones.load import load_text_side

        tok, enc = load_text_side(args.text_encoder)
        from dreamdist3d.distribution import DistributionSpec, fit

        spec = DistributionSpec.from_lists([path], class_indices=[args.class_index], prefix=args.prefix,
                                           suffix=args.suffix, covariance=args.covariance, key="file")
        g = fit(spec, enc, tok, [dist]).law()
        learner = dist.learner(enc, tok, source=str(path))  # for the token layout and the nearest-token reading
        lay = learner.layout(args.prefix, args.suffix)
        report["interpretation"] = {
            "mean_context": learner.interpret(),
            "with_prefix_suffix": " ".join(
                s for s in (learner.prefix if args.prefix is None else args.prefix, learner.interpret(),
                            learner.suffix if args.suffix is None else args.suffix) if s
            ),
        }
        report["gaussian"] = {
            "covariance": g.covariance,
            "std_mean": round(float(g.std.mean()), 6),
            "std_at_context_slots": round(float(g.std[lay.ctx_start : lay.ctx_start + learner.n_ctx].mean()), 6),
            "std_at_eos": round(float(g.std[lay.eos_index].mean()), 6),
        }
        plot = Path(args.plot) if args.plot else path.with_name(path.name + ".scatter.png")
        report["scatter"] = {"png": str(plot), "pc_spread_per_gamma": scatter_pca(g, args.n, args.seed, plot,
                                                                                  f"{path.name}: samples by γ (2-D "
                                                                                  "PCA)")}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["metadata"]
    c = report["context"]
    print(f"{path}")
    print(f"  format            {m['format']} v{m['format_version']}  ({m['source'] or 'unknown source'})")
    print(f"  prompts × tokens  K={m['n_prompts']} × L={m['n_ctx']} × D={c['shape'][2]}   position mode: "
          f"{m['position_mode']}")
    print(f"  training text     prefix={m['prefix']!r} suffix={m['suffix']!r}")
    run = (f"steps={m['steps']} images={m['n_images']}" if m["steps"] or m["n_images"]
           else "steps and images not recorded")  # (an official file keeps neither)
    print(f"  learned against   {m['backbone'] or 'unknown'}  {run}")
    extra = m.get("extra") or {}
    objective = extra.get("objective", "official (not recorded)")
    lowpass = f"   lowpass weight: {extra['lowpass_weight']:g}" if extra.get("lowpass_weight") else ""
    print(f"  sampling law      {m['covariance']}   objective: {objective}{lowpass}")
    fp = m["text_encoder"]
    print("  text encoder      " + (describe_encoder(fp) if fp else "not recorded (official file)"))
    print(f"  context           mean token norm {c['token_norm_mean']:.4g}; per slot {c['token_norm_per_slot']}")
    print(f"  spread over K     std {c['spread_std_over_prompts']:.4f}; mean pairwise cosine "
          f"{c['mean_pairwise_cosine']}")
    if "interpretation" in report:
        i, gs = report["interpretation"], report["gaussian"]
        print(f"  nearest tokens    {i['mean_context']!r}   (as a prompt: {i['with_prefix_suffix']!r})")
        print(f"  sampling          covariance {gs['covariance']} (learned with {m['covariance']})")
        print(f"  fitted std        mean {gs['std_mean']:.4f}; context slots {gs['std_at_context_slots']:.4f}; EOS "
              f"{gs['std_at_eos']:.4f}")
        sp = report["scatter"]["pc_spread_per_gamma"]
        print(f"  γ scatter         {report['scatter']['png']}  (PC spread " + ", ".join(f"γ={k}: {v:.4f}" for k,
                                                                                         v in sp.items()) + ")")
    return 0
