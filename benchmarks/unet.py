"""MVDream UNet forward+backward: our SDPA attention vs. the official einsum attention, fp32 and bf16.

    python benchmarks/unet.py [--device cpu|cuda] [--dtype fp32|bf16|both] [--width-scale S] [--steps N]

Workload (what SDS guidance and prompt learning run): the full MVDream sd-v2.1-base-4view UNet topology (4 levels,
2 ResBlocks per level, transformers at ×1/×2/×4, 4·mc embeddings, context width 1024) with random weights; a batch
of `--batch` rows (default 8 = [cond, uncond] × 4 views, `num_frames=4`) of 4×32×32 latents (256² images); frozen
weights; loss = mean(out²) backpropagated to the latents and to the text context (the gradients SDS and prompt
learning need). One warm-up iteration, then `--steps` timed iterations.

Width: on CUDA the real width (model_channels 320). On CPU the default `--width-scale 0.2` gives model_channels 64
(model_channels is rounded to a multiple of 64 so GroupNorm's 32 groups and the 64-channel heads still divide); the
depth, resolutions, head size and token counts are those of the real model, so attention is the same shape.

Baseline: `official_einsum_attention` below, written here the way MVDream's `CrossAttention` computes with its default
`ATTN_PRECISION=fp32`: q,k in float32, sim = einsum(q,kᵀ)·scale, softmax, einsum(sim, v) (sim cast to v's dtype). It is
swapped into our model with `MultiViewUNet.set_attention_fn`, so only the attention kernel differs.

Peak memory: CUDA — `torch.cuda.max_memory_allocated()` during the timed iterations minus the allocation before them
(weights and inputs excluded). CPU — each variant runs in a fresh subprocess and reports the growth of its
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak resident set) from just before the warm-up to the end, so one
variant's peak never hides another's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG, MultiViewUNet, sdpa_attention  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def official_einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """MVDream's CrossAttention core (ATTN_PRECISION=fp32): (B,h,Lq,d),(B,h,Lk,d),(B,h,Lk,d) -> (B,h,Lq,d)."""
    scale = q.shape[-1] ** -0.5
    sim = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * scale  # (B,h,Lq,Lk), materialised
    sim = sim.softmax(dim=-1).to(v.dtype)
    return torch.einsum("bhij,bhjd->bhid", sim, v)


ATTENTION = {"einsum (official-style)": official_einsum_attention, "sdpa (ours)": sdpa_attention}


def scaled_config(width_scale: float) -> dict:
    cfg = dict(MVDREAM_SD21_CONFIG, use_checkpoint=False)
    mc = max(64, int(round(MVDREAM_SD21_CONFIG["model_channels"] * width_scale / 64)) * 64)
    cfg["model_channels"] = mc
    return cfg


def worker(args: argparse.Namespace) -> dict:
    """Time one (dtype, attention) variant in this process; returns a result row."""
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = scaled_config(args.width_scale)
    model = MultiViewUNet(**cfg).to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.set_attention_fn(ATTENTION[args.attention])
    n, f = args.batch, 4
    x = torch.randn(n, 4, 32, 32, device=device, dtype=dtype, requires_grad=True)
    t = torch.randint(0, 1000, (n,), device=device)
    ctx = torch.randn(n, 77, cfg["context_dim"], device=device, dtype=dtype, requires_grad=True)
    cam = torch.randn(n, cfg["camera_dim"], device=device, dtype=dtype)

    def step() -> None:
        x.grad = ctx.grad = None
        out = model(x, t, ctx, camera=cam, num_frames=f)
        out.float().square().mean().backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    sec = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    params = sum(p.numel() for p in model.parameters())
    return dict(dtype=args.dtype, attention=args.attention, sec=sec, peak_mb=peak_mb,
                model_channels=cfg["model_channels"], params=params)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="both", choices=["fp32", "bf16", "both"])
    p.add_argument("--width-scale", type=float, default=None,
                   help="model_channels = 320·S rounded to 64 (CPU default 0.2, CUDA 1.0)")
    p.add_argument("--steps", type=int, default=None, help="timed iterations (CPU default 3, CUDA 10)")
    p.add_argument("--batch", type=int, default=8, help="rows = objects × 4 views (8 = [cond, uncond] × 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--attention", default=None, help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args(argv)
    if args.batch % 4:
        p.error("--batch must be a multiple of 4 (4 views per object)")
    on_cpu = args.device == "cpu"
    args.width_scale = args.width_scale if args.width_scale is not None else (0.2 if on_cpu else 1.0)
    args.steps = args.steps if args.steps is not None else (3 if on_cpu else 10)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.attention is not None:  # a worker: one variant, one JSON line
        print(json.dumps(worker(args)))
        return 0

    rows = []
    for dt in (["fp32", "bf16"] if args.dtype == "both" else [args.dtype]):
        for name in ATTENTION:
            cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--dtype", dt, "--attention",
                   name,
                   "--width-scale", str(args.width_scale), "--steps", str(args.steps), "--batch", str(args.batch)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  done {dt} {name}: {rows[-1]['sec']:.3f} s/iter", file=sys.stderr)

    r0 = rows[0]
    dev = (torch.cuda.get_device_name() if args.device == "cuda"
           else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    print(f"MVDream UNet fwd+bwd, {dev}, torch {torch.__version__}")
    print(f"model_channels={r0['model_channels']} (width-scale {args.width_scale}), {r0['params'] / 1e6:.1f} M params, "
          f"batch {args.batch} = {args.batch // 4} × 4 views, latents 4×32×32, {args.steps} timed steps after 1 "
          "warm-up")
    mem = "peak alloc MiB" if args.device == "cuda" else "peak RSS Δ MiB"
    print(f"| dtype | attention | s/iter | {mem} | time baseline/ours | mem baseline/ours |")
    print("|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        base, ours = rows[i], rows[i + 1]
        for r in (base, ours):
            tr = base["sec"] / ours["sec"] if r is ours else 1.0
            mr = base["peak_mb"] / max(ours["peak_mb"], 1e-9) if r is ours else 1.0
            print(f"| {r['dtype']} | {r['attention']} | {r['sec']:.3f} | {r['peak_mb']:.0f} | {tr:.2f}× | {mr:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
