"""The one way we load diffusers / transformers models quietly: their loading chatter (transformers 5's "Loading
weights" bars, diffusers' "install accelerate" hint, the torch_dtype rename notice, the "install torchvision"
image-processor notice, "newly initialized weights" warnings whose keys we check ourselves) stays out of the user's
terminal; errors still raise. Our own progress bars say what the user waits for."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """Inside the block both libraries log errors only and draw no progress bars; the previous settings come back
    after it (no global state left behind). Wrap the import too where it may speak (diffusers' pipeline import)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(mod, mod.get_verbosity(), mod.is_progress_bar_enabled()) for mod in (dlog, tlog)]
    for mod, _, _ in saved:
        mod.set_verbosity_error()
        mod.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        for mod, level, bars in saved:
            mod.set_verbosity(level)
            if bars:
                mod.enable_progress_bar()
