"""The method: PromptLearner, PromptGaussian, the PromptDistribution file, the official import, and the ONE path from
files to conditioning (`DistributionSpec` → `fit` → `PromptMixture.sample`, in conditioning.py)."""

from dreamdist3d.distribution.conditioning import Component, DistributionSpec, PromptMixture, fit, load_files
from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.distribution.file import DistributionMeta, PromptDistribution, import_official
from dreamdist3d.distribution.gaussian import COVARIANCES, PromptGaussian
from dreamdist3d.distribution.learner import POSITION_MODES, PromptLayout, PromptLearner

__all__ = [
    "COVARIANCES",
    "Component",
    "DistributionSpec",
    "PromptMixture",
    "fit",
    "load_files",
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
