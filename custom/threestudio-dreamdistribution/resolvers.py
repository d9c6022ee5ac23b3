"""OmegaConf resolvers used by configs/*.yaml, registered when threestudio's launch.py imports this extension (it
loads `custom/` before it reads the config).

- `${dreamdist_tag:${system.prompt_processor},${system.guidance}}`: the trial tag's name part: the distribution
  file's name ("cathedrals"), or the mixture's ("cathedrals+castles"). A mixture run (`distribution: null`) needs no
  `tag=`. The settings are checked here, while the config is read (`dreamdist3d.lift3d.threestudio_checks`), so a
  misspelt processor key, an unset distribution, a missing file, a bad mixture, an unset `system.guidance.ckpt_path`
  or no local text encoder, and view-dependent guidance without view-dependent samples are each an error naming the
  key before any model is loaded. (The older form `${dreamdist_tag:<distribution>,<mixture>}` of copied configs
  still names the trial and checks the distribution settings.)
- `${dreamdist_timestamp:<use_timestamp>,<n_gpus>}`: threestudio's own trial timestamp (`@%Y%m%d-%H%M%S`; empty
  without `use_timestamp` or with several GPUs, as threestudio does), taken while the config is read instead of after
  it. Set as the config's `timestamp`, threestudio uses it as it is, so `${exp_root_dir}/${name}/${tag}${timestamp}` is
  exactly the trial folder and the prompt sample can be written there (a resumed run's parsed.yaml keeps it).
"""

import warnings
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from dreamdist3d.distribution.conditioning import DistributionSpec
from dreamdist3d.lift3d.threestudio_checks import WHERE, check_settings


def dreamdist_tag(processor, guidance=None) -> str:
    if OmegaConf.is_dict(processor):
        from .prompt_processor import DreamDistributionPromptProcessor

        spec = check_settings(processor, guidance, DreamDistributionPromptProcessor.Config)
    else:  # the older form: (distribution, mixture)
        mixture = OmegaConf.to_container(guidance) if OmegaConf.is_config(guidance) else list(guidance or [])
        spec = DistributionSpec.from_config(processor, 1.0, mixture, where=WHERE)
    return "+".join(Path(c.path).stem for c in spec.components)


def dreamdist_timestamp(use_timestamp, n_gpus) -> str:
    if not use_timestamp or int(n_gpus) > 1:
        return ""
    return datetime.now().strftime("@%Y%m%d-%H%M%S")


def register() -> None:
    with warnings.catch_warnings():  # some omegaconf releases flag register_new_resolver; threestudio uses it too
        warnings.simplefilter("ignore")
        OmegaConf.register_new_resolver("dreamdist_tag", dreamdist_tag, replace=True)
        OmegaConf.register_new_resolver("dreamdist_timestamp", dreamdist_timestamp, replace=True)


register()
