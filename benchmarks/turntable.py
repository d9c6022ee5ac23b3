"""Seconds to write one object's test turntable (threestudio's layout: `it<step>-test/<i>.png` frames, the mp4 and
the grid), ours against the earlier serial writer, measured in the same run.

    python benchmarks/turntable.py [--views 120] [--size 512] [--threads T]

Workload: `--views` frames of `--size`² (RGB | opacity PNGs, 2·size × size), made by rolling one smooth synthetic
object image around (a disc with a shaded band and a little grain on a white background: it compresses about
as a feed-forward object's render does), written by
`dreamdist3d.lift3d.saving.write_turntable` into a temporary folder. Baseline: the same frames with each PNG
written in turn at PIL's default zlib level 6 before the video, as `write_turntable` did before. The frames are
in memory (the renderer's time is not part of either). One warm-up, then the median of 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.images import save_png  # noqa: E402
from dreamdist3d.lift3d import saving  # noqa: E402


def synthetic_renders(views: int, size: int):
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((x**2 + y**2) < 0.5).float()
    shade = 0.5 + 0.5 * torch.sin(6 * x)
    texture = 0.05 * torch.randn(size, size, 3, generator=torch.Generator().manual_seed(0))  # a render's grain
    rgb = (torch.stack([0.9 * shade, 0.4 + 0.2 * y, 0.3 * torch.ones_like(x)], -1) + texture) * disc[..., None] + (
        1 - disc[..., None])
    return [(i, {"comp_rgb": torch.roll(rgb, i * size // views, 1)[None].clamp(0, 1),
                 "opacity": torch.roll(disc, i * size // views, 1)[None, ..., None]}) for i in range(views)]


def serial_level6(save_dir: str, renders) -> None:
    """The earlier writer: each frame PNG in turn at zlib level 6, then the video and the grid."""
    frames = []
    for index, out in renders:
        save_png(saving.eval_image(out), os.path.join(save_dir, "it0-test", f"{index}.png"))
        frames.append(saving.to_uint8(out["comp_rgb"][0], rgb=True))
    saving.write_video(os.path.join(save_dir, "it0-test.mp4"), frames)
    save_png(saving.frame_grid(frames, n=8), os.path.join(save_dir, "it0-test-grid.png"))


def timed(fn, renders) -> float:
    times = []
    for i in range(4):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            fn(d, renders)
            if i:  # the first is the warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, default=120)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    renders = synthetic_renders(args.views, args.size)
    base = timed(serial_level6, renders)
    ours = timed(lambda d, r: saving.write_turntable(d, 0, r), renders)
    print(f"turntable writing: {args.views} views at {args.size}², CPU ({os.cpu_count()} cores), "
          f"torch {torch.__version__}; median of 3 after a warm-up")
    print("| writer | s/object | baseline/this |")
    print("|---|---|---|")
    print(f"| serial, zlib 6 (before) | {base:.2f} | 1.00× |")
    print(f"| write_turntable: {saving.FRAME_WRITERS} writer threads, zlib {saving.FRAME_PNG_LEVEL} (ours) | "
          f"{ours:.2f} | {base / ours:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
