"""Seconds per object of the feed-forward path: LGM forward (4 views -> Gaussians) + Gaussian render of turntable
views, with the baselines measured in the same run.

    python benchmarks/lgm.py [--device cpu|cuda] [--config big|small|tiny] [--dtype fp32|fp16|bf16]
                             [--input-size S] [--render-size R] [--views V] [--batch B] [--steps N] [--threads T]

Workload:
- Forward: `LGM(LGM_CONFIGS[config])` with PyTorch's default random weights (speed does not depend on them), frozen,
  in `--dtype` (default fp16 on CUDA, as LGM's own inference; fp32 on CPU), on `--batch` objects of 4 random views
  with LGM's default Plücker rays (`lgm_input`, included in the time). `--input-size` shrinks the U-Net input for
  CPU smoke runs (splat size follows; the layers and widths stay the config's).
- Render: `render_gaussians` of `--views` turntable views (azimuths 0..360, elevation 15°, radius 1.5, fovy 49.1°) at
  `--render-size` (default the config's `output_size`: 512 big, 256 small/tiny). The Gaussians are NOT the random
  model's (its scales would be unrealistically large): the same number per object (65,536 for big) on a sphere shell
  of radius 0.5 with LGM-like scales 0.004-0.012 and opacities 0.5-1.0, a fixed seed.
Baselines (ratio baseline/ours in the last column):
- attention: the official `Attention.forward` arithmetic, (q·scale) @ kᵀ -> softmax -> @ v with the (L×L) weights
  materialised (what LGM runs without xformers), swapped in with `LGM.set_attention_fn`; everything else identical.
- render: with gsplat importable on CUDA, `backend="gsplat"` vs our torch backend; otherwise the torch backend alone.
- view scaling (`--views` > 4): the torch backend's seconds per view at 4 of the views against at all of them.
One warm-up, then `--steps` timed repetitions; CUDA times are synchronised; peak memory is CUDA's
`max_memory_allocated` (CPU: not measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.backbones.cameras import c2w_from_spherical  # noqa: E402
from dreamdist3d.backbones.multiview_blocks import sdpa_attention  # noqa: E402
from dreamdist3d.reconstruct import LGM, LGM_CONFIGS, Gaussians, lgm_cameras, lgm_input  # noqa: E402
from dreamdist3d.reconstruct.render import gsplat_available, render_gaussians  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def official_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """LGM's `Attention.forward` core without xformers: the (B,h,L,L) weights are materialised."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def shell_gaussians(n: int, device: torch.device, seed: int = 0) -> Gaussians:
    """n Gaussians on a sphere shell of radius 0.5, LGM-like sizes (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.5
    return Gaussians(means, 0.5 + 0.5 * torch.rand(n, generator=g), 0.004 + 0.008 * torch.rand(n, 3, generator=g),
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, 3, generator=g)).to(device)


def timed(fn, steps: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def peak_mib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--config", default=None, choices=sorted(LGM_CONFIGS), help="default: big on CUDA, tiny on CPU")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--input-size", type=int, default=None, help="U-Net input size (default: the config's, 256)")
    p.add_argument("--render-size", type=int, default=None, help="default: the config's output_size")
    p.add_argument("--views", type=int, default=4, help="turntable views rendered per object")
    p.add_argument("--batch", type=int, default=1, help="objects per forward pass")
    p.add_argument("--steps", type=int, default=None, help="timed repetitions (default 10 on CUDA, 2 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.config or ("tiny" if on_cpu else "big")
    dtype = DTYPES[args.dtype or ("fp32" if on_cpu else "fp16")]
    steps = args.steps or (2 if on_cpu else 10)
    cfg = LGM_CONFIGS[name]
    if args.input_size:
        ratio = 2 ** (len(cfg.up_channels) - 1) / 2 ** (len(cfg.down_channels) - 1)
        cfg = dataclasses.replace(cfg, input_size=args.input_size, splat_size=int(args.input_size * ratio))
    size = args.render_size or cfg.output_size

    torch.manual_seed(0)
    with torch.device(device):
        model = LGM(cfg)
    model = model.to(dtype).eval().requires_grad_(False)
    images = torch.rand(args.batch, 4, 3, cfg.input_size, cfg.input_size, device=device)
    cams = lgm_cameras(0.0, cfg.cam_radius).to(device)

    def forward() -> Gaussians:
        with torch.no_grad():
            return model(lgm_input(images, cams, cfg.input_size, cfg.fovy).to(dtype))

    rows = []
    for label, fn in (("einsum (official arithmetic)", official_attention), ("sdpa (ours)", sdpa_attention)):
        model.set_attention_fn(fn)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = timed(forward, steps, device) / args.batch
        rows.append(("forward", label, sec, peak_mib(device)))
    n = cfg.gaussians_per_object
    gs = shell_gaussians(n, device)
    turntable = torch.linspace(0, 360, args.views + 1)[:-1]
    c2w = c2w_from_spherical(torch.full((args.views,), 15.0), turntable, cfg.cam_radius).to(device)
    backends = ["gsplat", "torch"] if device.type == "cuda" and gsplat_available() else ["torch"]
    for backend in reversed(backends):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = timed(lambda b=backend: render_gaussians(gs, c2w, cfg.fovy, size, size, backend=b), steps, device)
        rows.append(("render", f"{backend}", sec, peak_mib(device)))
    scaling = None
    if args.views > 4:  # a turntable should cost its views × one view's time: 4 of its views are the baseline
        few = c2w[torch.linspace(0, args.views - 1, 4).long()]
        sec4 = timed(lambda: render_gaussians(gs, few, cfg.fovy, size, size, backend="torch"), steps, device)
        scaling = (sec4 / 4, rows[2][2] / args.views)

    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    params = sum(p.numel() for p in model.parameters())
    print(f"LGM '{name}' forward + Gaussian render, {dev}, torch {torch.__version__}, {str(dtype)[6:]} weights")
    print(f"{params / 1e6:.1f} M params, input {cfg.input_size}² × 4 views, {n} Gaussians/object "
          f"({cfg.splat_size}² per view), batch {args.batch}; render {args.views} views at {size}², "
          f"{steps} timed steps after 1 warm-up")
    print("| stage | variant | s/object | peak MiB | baseline/this |")
    print("|---|---|---|---|---|")
    base = {"forward": rows[0][2], "render": rows[2][2]}
    for stage, label, sec, mem in rows:
        print(f"| {stage} | {label} | {sec:.4f} | {mem} | {base[stage] / sec:.2f}× |")
    best_render = min(r[2] for r in rows if r[0] == "render")
    total = rows[1][2] + best_render
    print(f"| total | sdpa forward + fastest render | {total:.4f} | - | {(rows[0][2] + rows[2][2]) / total:.2f}× |")
    print(f"objects per hour at this rate: {3600 / total:.0f}")
    if scaling is not None:
        print(f"torch render per view: {scaling[0]:.4f} s at 4 views, {scaling[1]:.4f} s at {args.views} views: "
              f"{scaling[0] / scaling[1]:.2f}× (about 1: the time grows as the view count, no faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
