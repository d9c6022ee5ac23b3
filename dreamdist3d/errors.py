"""The one error → message → exit-code path of every entry point (`dreamdist3d ...` and `launch.py`).

A user error or a fault of the machine (read-only folder, full disk, an output path that is a file) ends the program
with one line on stderr, `<prog>: error: <message>`, and an exit code, never a traceback (`--verbose`/`--debug`
re-raises to show it):

    2    the input is wrong: config key or value, missing or unreadable input file (ConfigError, ValueError,
         KeyError, FileNotFoundError)
    1    the system refused: permission denied, read-only file system, no space left, a path that is a file where a
         folder is needed or the reverse (any other OSError)
    3    training diverged (an exception with `exit_code = 3`, e.g. learn's NonFiniteLossError, or the 3D trainer's
         FloatingPointError, whose message says where the NaN came from)
    130  interrupted (Ctrl-C); the trainers save their current step first and the line says how to resume
    143  terminated (SIGTERM: a scheduler's preemption, `kill`, `timeout`): handled as Ctrl-C is — the trainers save
         their current step — but nothing runs after that (a 3D run skips its test stage)

Any exception whose class sets an int `exit_code` is handled here too and ends with that code (a RuntimeError
subclass such as NonFiniteLossError included). Warnings raised while the command runs are printed as one line,
`<prog>: warning: <message>`, like the errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from typing import Callable, Iterator, Optional

INPUT_ERROR = 2
SYSTEM_ERROR = 1
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM killed

# errno -> what a user should read (the strerror of some platforms is terse)
_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.EISDIR: "is a folder, a file was expected",
    errno.ENOTDIR: "a part of this path is an existing file, not a folder",
    errno.EEXIST: "already exists",
}

DIVERGED = 3
HANDLED = (OSError, ValueError, KeyError, FloatingPointError)


def describe(e: BaseException) -> str:
    """One line saying what went wrong (an OSError names its file and the fix)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and type(e).__str__ is OSError.__str__:
        hint = _OS_HINTS.get(e.errno)
        where = " → ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        if hint and where:
            return f"{where}: {hint}"
        if hint:
            return f"{e.strerror or type(e).__name__}: {hint}"
    return str(e) or type(e).__name__


def exit_code(e: BaseException) -> int:
    code = getattr(e, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(e, FloatingPointError):
        return DIVERGED
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
        return SYSTEM_ERROR
    return INPUT_ERROR


def is_input_error(e: BaseException) -> bool:
    """A handled error whose exit code is 2: the input (a config key or value, an input file) is wrong."""
    return handled(e) and not isinstance(e, KeyboardInterrupt) and exit_code(e) == INPUT_ERROR


def handled(e: BaseException) -> bool:
    """An error this module turns into one line (the module docstring's kinds, or a class with an `exit_code`)."""
    return isinstance(e, HANDLED) or isinstance(getattr(e, "exit_code", None), int)


class Terminated(KeyboardInterrupt):
    """SIGTERM while a command runs (see `sigterm_raises`). A KeyboardInterrupt, so every place that keeps its state
    on Ctrl-C keeps it on SIGTERM too; the command then ends with exit code 143."""

    exit_code = TERMINATED


class TerminateHandler:
    """The SIGTERM handler `sigterm_raises` installs: raises `Terminated` in the process that installed it; a forked
    child that inherited it dies of the signal as it would have without it."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __call__(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated("SIGTERM")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block a SIGTERM raises `Terminated` in the main thread (where Python delivers signals) instead of
    killing the process at once, so the trainers' Ctrl-C path saves the current step. Only over the default action:
    a handler someone else installed (a cluster runtime, a test harness) is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, TerminateHandler())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_reporting(prog: str, fn: Callable[[], Optional[int]], verbose: bool = False) -> int:
    """Call `fn()`; a handled error (see the module docstring) becomes one stderr line and its exit code; a warning
    becomes one `<prog>: warning: …` line (with `verbose`, Python's usual form with the file and line). A SIGTERM
    during `fn()` ends it as Ctrl-C does (`sigterm_raises`), with exit code 143."""
    format_before = warnings.formatwarning
    if not verbose:
        warnings.formatwarning = lambda message, *_args, **_kw: f"{prog}: warning: {message}\n"
    try:
        with sigterm_raises():
            return int(fn() or 0)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        detail = str(e) if str(e) and str(e) != "SIGTERM" else ""
        print(f"{prog}: {what}" + (f": {detail}" if detail else ""), file=sys.stderr)
        return exit_code(e)
    except Exception as e:
        if verbose or not handled(e):
            raise
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return exit_code(e)
    finally:
        warnings.formatwarning = format_before
