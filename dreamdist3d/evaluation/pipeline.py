"""`dreamdist3d eval` as a function: read the folders, embed (cached), score each sample set against the references,
write the report. `run_eval(EvalSpec(...))` is callable from Python; the command only parses argv into an EvalSpec.

Per sample set (metric names as in report.json):
- `fd_dinov2`: Fréchet distance of DINOv2 features (FD-DINOv2); `kd_dinov2` ± `kd_dinov2_std`: KID (unbiased,
  cubic kernel) on DINOv2 features, mean and std over `kid_subsets` random subsets;
- `precision`, `recall`, `density`, `coverage`: Naeem et al. 2020, k-NN balls (k=5) on DINOv2 features;
- `diversity`: mean pairwise 1 − cos of the set's DINOv2 features (the references' own is in the reference row);
- `clip_i` / `dino_i`: mean cosine of every (sample, reference) pair of CLIP image / DINO ViT CLS embeddings;
- `clip_t`: mean cosine of the samples' CLIP image embeddings to the `--prompt` text embedding;
- per image: the nearest reference by DINOv2 cosine, and that cosine.
A metric a set is too small for (FD and KID need 2 images per side, P/R/D/C more than k references, recall more
than k samples) is null, with a note saying why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from dreamdist3d.evaluation import metrics as M

METRICS = ("n", "fd_dinov2", "kd_dinov2", "kd_dinov2_std", "precision", "recall", "density", "coverage", "diversity",
           "clip_i", "dino_i", "clip_t")
CACHE_NAME = "feature-cache.safetensors"


@dataclass
class EvalSpec:
    refs: str
    samples: List[str]
    dinov2: str
    clip: str
    dino: Optional[str] = None
    prompt: Optional[str] = None
    out: str = "outputs/eval"
    views: int = 8  # turntable frames per 3D run
    device: Optional[str] = None  # None/"auto": cuda if available, else cpu
    batch_size: int = 32
    k: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    progress: bool = True
    names: List[str] = field(default_factory=list)  # display names of the sample sets (default: folder names)


def _unique_names(names: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def score_set(feats: Dict[str, np.ndarray], refs: Dict[str, np.ndarray], text: Optional[np.ndarray], spec: EvalSpec,
              notes: List[str], name: str) -> Dict[str, Any]:
    """The metrics of one sample set from its features (`feats[kind]`, `refs[kind]`: (N, D) arrays)."""
    d, r = feats["dinov2"], refs["dinov2"]
    n, nr, k = d.shape[0], r.shape[0], spec.k
    m: Dict[str, Any] = {key: None for key in METRICS}
    m["n"] = n
    if n >= 2 and nr >= 2:
        m["fd_dinov2"] = M.frechet_distance(d, r)
        m["kd_dinov2"], m["kd_dinov2_std"] = M.kernel_distance(d, r, spec.kid_subsets, spec.kid_subset_size, spec.seed)
    else:
        notes.append(f"{name}: FD and KID need at least 2 images on each side ({n} samples, {nr} references)")
    if nr > k:
        m.update(M.prdc(r, d, k=k))
        if n <= k:
            notes.append(f"{name}: recall needs more than k={k} samples (has {n})")
    else:
        notes.append(f"{name}: precision/recall/density/coverage need more than k={k} references (have {nr})")
    m["diversity"] = M.diversity(d)
    m["clip_i"] = M.mean_cosine(feats["clip"], refs["clip"])
    if "dino" in feats:
        m["dino_i"] = M.mean_cosine(feats["dino"], refs["dino"])
    if text is not None:
        m["clip_t"] = M.mean_cosine(feats["clip"], text)
    return {key: (M.finite_or_none(v) if isinstance(v, float) else v) for key, v in m.items()}


def run_eval(spec: EvalSpec) -> Dict[str, Any]:
    """Evaluate every sample folder against the reference folder; writes report.json/.md/.html under spec.out."""
    from dreamdist3d.evaluation.features import FeatureCache, embed_items, load_encoder
    from dreamdist3d.evaluation.report import write_report
    from dreamdist3d.evaluation.sources import read_folder, read_sweep

    t0 = time.perf_counter()
    if not spec.samples:
        raise ValueError("--samples: give at least one sample folder")
    refs = read_folder(spec.refs, flag="--refs")
    names = _unique_names(spec.names or [Path(s).name for s in spec.samples])
    sets = []
    for folder, nm in zip(spec.samples, names):  # a sweep folder gives one set per row (γ or w)
        if Path(folder).is_dir() and any(Path(folder).glob("sweep-*.json")):
            sets += read_sweep(folder)
        else:
            sets.append(read_folder(folder, views=spec.views, name=nm))
    folders = {"dinov2": spec.dinov2, "clip": spec.clip, **({"dino": spec.dino} if spec.dino else {})}
    encoders = {kind: load_encoder(kind, f, spec.device) for kind, f in folders.items()}  # all errors before any work
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(out / CACHE_NAME)

    new, total = 0, 0
    ref_feats: Dict[str, np.ndarray] = {}
    set_feats: List[Dict[str, np.ndarray]] = [{} for _ in sets]
    for kind, enc in encoders.items():
        ref_feats[kind], n_new = embed_items(enc, refs.items, cache, spec.batch_size, spec.progress, f"{kind} refs")
        new, total = new + n_new, total + len(refs.items)
        for s, f in zip(sets, set_feats):
            f[kind], n_new = embed_items(enc, s.items, cache, spec.batch_size, spec.progress, f"{kind} {s.name}")
            new, total = new + n_new, total + len(s.items)
    text = encoders["clip"].embed_text(spec.prompt) if spec.prompt else None

    notes: List[str] = []
    rows = []
    for s, f in zip(sets, set_feats):
        metrics = score_set(f, ref_feats, text, spec, notes, s.name)
        idx, cos = M.nearest(f["dinov2"], ref_feats["dinov2"])
        images = [{"name": it.name, "nearest_ref": refs.items[int(i)].name, "nearest_cos": float(c)}
                  for it, i, c in zip(s.items, idx, cos)]
        rows.append({"name": s.name, "folder": str(s.folder), "kind": s.kind, "objects": s.objects,
                     "views": spec.views if s.kind == "3d" else None, "sweep": s.sweep, "metrics": metrics,
                     "images": images})
    ref_row = {"n": len(refs.items), "diversity": M.finite_or_none(M.diversity(ref_feats["dinov2"])),
               "clip_t": M.finite_or_none(M.mean_cosine(ref_feats["clip"], text)) if text is not None else None}
    report = {
        "format": "dreamdist3d-eval-1",
        "refs": {"folder": str(refs.folder), "n": len(refs.items), "images": [{"name": it.name} for it in refs.items],
                 "metrics": ref_row},
        "sets": rows,
        "prompt": spec.prompt,
        "models": {kind: {"folder": str(e.folder), "fingerprint": e.fingerprint,
                          "dim": int(ref_feats[kind].shape[1])} for kind, e in encoders.items()},
        "device": str(next(iter(encoders.values())).device),
        "settings": {k: v for k, v in asdict(spec).items() if k in ("views", "k", "kid_subsets", "kid_subset_size",
                                                                    "seed",
                                                                    "batch_size")},
        "cache": {"file": CACHE_NAME, "embedded": new, "from_cache": total - new},
        "notes": notes,
    }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(report, out, refs, sets)
    return report


__all__ = ["EvalSpec", "METRICS", "run_eval", "score_set"]
