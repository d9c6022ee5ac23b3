"""Errors of the distribution files."""


class DistributionFileError(ValueError):
    """A distribution file that cannot be used; the message names the file and the fix."""


class EncoderMismatchError(ValueError):
    """A distribution loaded beside a text encoder other than the one it was learned with."""
