"""Objects per hour on a Ray cluster: toy gallery objects with 1 worker against 2 workers, one run.

    python benchmarks/cluster.py [--objects 4] [--steps 100] [--cpus 2] [--address auto]

Each row is `dreamdist3d.cluster.RayRunner` making `--objects` toy objects (`configs/toy/toy-3d.yaml` through the
gallery's run, `--steps` SDS steps each and the config's 120-frame turntable; a K=4 distribution of four captions,
seeds 0..N-1) with that many workers of one CPU each, on a local Ray cluster of `--cpus` CPUs (or the cluster at
`--address`). The workers are started and have loaded the backbone before the clock starts (one warm-up object
each, not counted): what is timed is the steady rate of a resident pool, from the first object handed out to the
last run written back. Baseline: 1 worker. Ratio: objects per hour of the row / of the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamdist3d.cluster import ClusterConfig, RayRunner  # noqa: E402
from dreamdist3d.recipes.gallery import gallery_task  # noqa: E402

CAPTIONS = ["a large red sphere", "a large blue cube", "a small green cone", "a small yellow cylinder"]


def caption_distribution(path: Path) -> Path:
    from dreamdist3d.backbones.toy_weights import load_toy_backbone
    from dreamdist3d.distribution import PromptDistribution

    bb = load_toy_backbone()
    ds = [PromptDistribution.from_caption(c, bb.text_encoder, bb.tokenizer, backbone="toy") for c in CAPTIONS]
    meta = dataclasses.replace(ds[0].meta, n_prompts=len(ds), source="four captions")
    return PromptDistribution(torch.cat([d.ctx for d in ds]), meta).save(path)


def objects_per_hour(address: str, actors: int, dist: Path, out: Path, n: int, steps: int) -> dict:
    overrides = [f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false"]
    task = gallery_task(str(ROOT / "configs" / "toy" / "toy-3d.yaml"), str(dist), out, 0, overrides, device="cpu")
    with RayRunner(ClusterConfig(address=address, actors=actors, cpu=True, progress=False)) as runner:
        runner(task, out / "warm-up", range(1000, 1000 + actors))  # start the pool: each worker loads the backbone
        t0 = time.perf_counter()
        res = runner(task, out / "timed", range(n))
        wall = time.perf_counter() - t0
    if res.failed:
        raise SystemExit(f"objects failed: {res.failed}")
    return {"actors": actors, "objects": n, "wall_s": wall, "per_hour": 3600 * n / wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", type=int, default=4, help="timed objects per row (default 4)")
    p.add_argument("--steps", type=int, default=100, help="SDS steps per object (default 100)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--address", default="", help="an existing cluster instead of a local one")
    args = p.parse_args(argv)
    import ray

    if args.address:
        address = args.address
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        address = "auto"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dist = caption_distribution(Path(tmp) / "four.safetensors")
        for actors in (1, 2):
            rows.append(objects_per_hour(address, actors, dist, Path(tmp) / f"a{actors}", args.objects, args.steps))
    base = rows[0]["per_hour"]
    print(f"toy objects on a Ray cluster ({'local, ' + str(args.cpus) + ' CPUs' if not args.address else address}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"ray {ray.__version__}")
    print(f"{args.objects} objects per row, {args.steps} SDS steps + 120-frame turntable each, 1 CPU (1 torch thread) "
          "per worker, pool warm before timing")
    print("| workers | objects | wall s | objects/hour | ratio vs 1 worker |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['actors']} | {r['objects']} | {r['wall_s']:.1f} | {r['per_hour']:.0f} | "
              f"{r['per_hour'] / base:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
