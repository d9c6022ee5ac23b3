"""The method: PromptLearner, PromptGaussian, the PromptDistribution file and the official import."""

from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.distribution.file import DistributionMeta, PromptDistribution, import_official
from dreamdist3d.distribution.gaussian import PromptGaussian
from dreamdist3d.distribution.learner import POSITION_MODES, PromptLayout, PromptLearner

__all__ = [
    "DistributionFileError",
    "DistributionMeta",
    "EncoderMismatchError",
    "POSITION_MODES",
    "PromptDistribution",
    "PromptGaussian",
    "PromptLayout",
    "PromptLearner",
    "import_official",
]
