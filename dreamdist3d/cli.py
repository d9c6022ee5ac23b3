"""`dreamdist3d` command line: one subcommand per module in `dreamdist3d.commands`.

Each command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`. Errors end in one line
and an exit code through `dreamdist3d.errors.run_reporting` (the same path as launch.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Order shown in --help.
COMMANDS = [
    "learn",
    "sample",
    "sweep",
    "eval",
    "preview",
    "inspect",
    "export",
    "gallery",
    "serve",
    "toyworld",
]


def _load(name: str):
    try:
        return importlib.import_module(f"dreamdist3d.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"dreamdist3d.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamdist3d",
        description="Learn DreamDistribution prompt distributions and use them with MVDream, SD 2.1 and text-to-3D.",
    )
    from dreamdist3d import __version__

    parser.add_argument("--version", action="version", version=f"dreamdist3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from dreamdist3d.errors import run_reporting

    verbose = bool(getattr(args, "debug", False) or getattr(args, "verbose", False))
    return run_reporting(f"dreamdist3d {args.command}", lambda: args._run(args), verbose=verbose)

if __name__ == "__main__":
    sys.exit(main())
