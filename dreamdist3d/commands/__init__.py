"""The `dreamdist3d` subcommands (see `dreamdist3d.cli`); helpers shared by their argument parsers."""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """argparse type: a float that is a finite number (NaN/Inf would silently give black images)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
