"""OmegaConf resolvers used by configs/*.yaml, registered when threestudio's launch.py imports this extension (it
loads `custom/` before it reads the config).

- `${dreamdist_tag:<distribution>,<mixture>}`: the trial tag's name part: the distribution file's name
  ("cathedrals"), or the mixture's ("cathedrals+castles"). A mixture run (`distribution: null`) needs no `tag=`.
  The distribution settings are checked here, while the config is read, so an unset distribution, a missing file or a
  bad mixture is an error naming its `system.prompt_processor.*` key before any model is loaded.
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

WHERE = "system.prompt_processor"


def dreamdist_tag(distribution, mixture) -> str:
    mixture = OmegaConf.to_container(mixture) if OmegaConf.is_config(mixture) else list(mixture or [])
    spec = DistributionSpec.from_config(distribution, 1.0, mixture, where=WHERE)
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
