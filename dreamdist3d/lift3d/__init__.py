"""dreamdist3d.lift3d: threestudio-compatible text-to-3D from a prompt distribution (MVDream SDS), pure PyTorch.

Importing this package registers the components under threestudio's names:
random-multiview-camera-datamodule, implicit-volume, no-material, solid-color-background,
neural-environment-map-background, nerf-volume-renderer, multiview-diffusion-guidance,
dreamdistribution-prompt-processor, mvdream-system.
"""

from dreamdist3d.lift3d import background, data, geometry, guidance, material, prompt_processor, renderer, system  # noqa: F401
from dreamdist3d.lift3d.prompt_processor import PromptProcessorOutput, PromptSample
from dreamdist3d.lift3d.saving import EmptyFieldError
from dreamdist3d.lift3d.system import MVDreamSystem, RunField, load_run_field

__all__ = ["EmptyFieldError", "MVDreamSystem", "PromptProcessorOutput", "PromptSample", "RunField", "load_run_field"]
