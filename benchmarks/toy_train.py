"""Toy-backbone training speed: the shipped recipe's step against plain float32 and each speed switch, one run.

    python benchmarks/toy_train.py [--threads 2] [--steps 30] [--warmup 6] [--device cpu]

The target: `dreamdist3d toyworld train` (4000 steps + rendering its data) in ≤ 20 minutes on the 2-core development
CPU. Rows, each a fresh `Trainer` on a small cache (the step cost does not depend on the cache size), all at the
shipped batch (12 objects × 4 views + 16 single views per step):
- baseline: every speed switch off (`--float32`): float32, the flash attention kernel, NCHW, the whole 49408-row
  token table in Adam and the EMA — the arithmetic of the earlier (37-minute) weights;
- the baseline with one switch turned on at a time (`bf16`, `cpu_math_attention`, `channels_last`,
  `sparse_token_rows`, `fused_adam`; the same arithmetic up to rounding, except bf16);
- shipped: the `TrainConfig()` defaults, every switch on.
Reported: steps/s over `--steps` timed steps after `--warmup`, and the projected minutes for 4000 steps. What the
shipped recipe's model is worth against the float32 one is not measured here: `dreamdist3d toyworld eval
--caption-check-only --weights …` does that (numbers in the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.recipes.toy_train import FLOAT32, SPEED_SWITCHES, TrainConfig, Trainer, build_cache  # noqa: E402
from dreamdist3d.text import ClipTokenizer  # noqa: E402


def steps_per_second(cfg: TrainConfig, steps: int, warmup: int, device: str, tokenizer: ClipTokenizer) -> float:
    tr = Trainer(cfg, device=device, tokenizer=tokenizer, progress=False)
    tr.cache = build_cache(cfg, tokenizer)
    for _ in range(warmup):
        tr.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = ClipTokenizer.default()
    small = {"cache_objects": 160, "cache_interp": 40}
    rows = [("baseline: every switch off (float32, --float32)", {**small, **FLOAT32})]
    for k in SPEED_SWITCHES:
        rows.append((f"+ {k} only", {**small, **FLOAT32, k: True}))
    rows.append(("shipped recipe: every switch on (the defaults)", dict(small)))
    results = []
    for name, kw in rows:
        rate = steps_per_second(TrainConfig(**kw), args.steps, args.warmup, args.device, tok)
        results.append((name, rate))
        print(f"  measured {name}: {rate:.2f} steps/s", file=sys.stderr, flush=True)
    base = results[0][1]
    steps = TrainConfig().steps
    print(f"\ntoy backbone training step, {args.device}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}\n")
    print(f"| configuration | steps/s | minutes for {steps} steps | speed-up vs baseline |")
    print("|---|---|---|---|")
    for name, rate in results:
        print(f"| {name} | {rate:.2f} | {steps / rate / 60:.1f} | {rate / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
