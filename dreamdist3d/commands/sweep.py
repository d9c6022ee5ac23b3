"""`dreamdist3d sweep`: the paper's 2D figures as labelled grids: a γ sweep or a mixing sweep, same ε per column.
Finished batches wait in `OUT/sweep-<kind>.partial/` until the grid is written: after a Ctrl-C the same command
draws only the rest."""

from __future__ import annotations

import argparse
import sys

from dreamdist3d.commands import finite_float
from dreamdist3d.commands.sample import add_common_arguments, prepare

NAME = "sweep"
HELP = "labelled SD 2.1 grids: diversity scale γ per row (--kind scale) or mixing weight per row (--kind mix)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, 4, "columns: one prompt sample ε and latent seed each, shared by every row (default 4)")
    p.add_argument("--kind", required=True, choices=["scale", "mix"],
                   help="scale: rows γ (--gammas); mix: rows w, the weight of the second of two distributions")
    p.add_argument("--gammas", type=finite_float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 1.5, 2.0],
                   help="row values of γ for --kind scale (default 0 0.25 0.5 1 1.5 2)")
    p.add_argument("--mix-weights", type=finite_float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="row weights w of the second distribution for --kind mix (default 0 0.25 0.5 0.75 1)")
    p.add_argument("--save-cells", action="store_true", help="also write every cell as its own PNG with metadata")


def run(args: argparse.Namespace) -> int:
    from dreamdist3d.sample2d.sd21 import sweep_to_grid

    if args.kind == "mix":
        if len(args.distribution) != 2:
            raise ValueError(f"--kind mix needs exactly two --distribution files, got {len(args.distribution)}")
        if not args.weight:
            args.weight = [0.5, 0.5]  # placeholder shares; each row sets its own (1-w, w)
    sampler, mixture, settings = prepare(args)
    try:
        path, cells = sweep_to_grid(sampler, mixture, settings, args.out, kind=args.kind, gammas=args.gammas,
                                    mix_weights=args.mix_weights, save_cells=args.save_cells, command=sys.argv[:],
                                    title=args.title, progress=not args.quiet)
    except KeyboardInterrupt as e:  # (SIGTERM too) the finished batches stay; say how to go on
        from dreamdist3d.io import kept_rows
        from dreamdist3d.sample2d.sd21 import sweep_partial_folder

        folder = sweep_partial_folder(args.out, args.kind)
        total = settings.n * len(args.gammas if args.kind == "scale" else args.mix_weights)
        raise type(e)(f"{kept_rows(folder, 'images')} of {total} images are kept in {folder}; run the same command "
                      "again to go on") from None
    print(f"wrote {path} ({len(cells)} cells; per-cell seeds and embedding statistics in {path.with_suffix('.json')})")
    return 0
