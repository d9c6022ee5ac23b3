"""Errors of the distribution files."""

from dreamdist3d.io import DistributionFileError  # noqa: F401 (defined at the bottom layer, raised by io too)


class EncoderMismatchError(ValueError):
    """A distribution loaded beside a text encoder other than the one it was learned with."""
