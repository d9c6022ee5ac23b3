"""threestudio extension: `dreamdistribution-prompt-processor` — one sample of a learned DreamDistribution prompt
distribution per run as the condition, for upstream threestudio + threestudio-mvdream.

Drop this folder into `threestudio/custom/` (with `pip install -e <dreamdist3d>` in the same environment); threestudio's
launch.py imports it at start-up. All logic lives in `dreamdist3d`; this package only adapts it to threestudio's
PromptProcessor API (see README.md).
"""

from . import resolvers  # noqa: F401  (${dreamdist_tag:...}, ${dreamdist_timestamp:...} in configs/*.yaml)
from .prompt_processor import DreamDistributionPromptProcessor, DreamDistributionPromptProcessorOutput  # noqa: F401
