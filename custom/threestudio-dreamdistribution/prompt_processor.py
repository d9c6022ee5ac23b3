"""The threestudio adapter. Everything it computes comes from dreamdist3d: `backbones.load.load_text_side` (the
text encoder of the MVDream checkpoint / SD 2.1 folder, no UNet; which one: `lift3d.threestudio_checks.
text_encoder_source`) and `lift3d.prompt_processor.prepare_prompt` (fit the distribution with the prefix/suffix edits,
γ and the mixture; draw ONE sample with the seed; reuse/write the sample file; encode the negative prompt).

threestudio's base class logs `Using prompt [<prompt>]` and the view prompts made from it: `preprocess_prompt` gives
it the distribution ("a photo of <cathedrals>") instead of the placeholder `prompt`, and a second line says which
files, law, γ, seed and sample the run uses and where the sample came from.

threestudio traps handled here (see dreamdist3d's threestudio contract notes):
- no `spawn_func` of our own: threestudio's spawned child cannot import a `custom/` module, so
  `prepare_text_embeddings` runs in-process and writes nothing to `.threestudio_cache` (a sample is not a prompt);
- every config key is a field of `Config` (threestudio's parse_structured is strict: a typo is a TypeError);
- the output is built from `super().__call__()` and spread into a dataclass subclass, which works on both upstream
  threestudio (which has `prompt`/`prompts_vd` fields) and the MVDream-threestudio fork (which has not).
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

import threestudio
import torch
from threestudio.models.prompt_processors.base import PromptProcessor, PromptProcessorOutput

from dreamdist3d.backbones.load import load_text_side
from dreamdist3d.distribution.conditioning import DistributionSpec
from dreamdist3d.lift3d.prompt_processor import describe, prepare_prompt
from dreamdist3d.lift3d.threestudio_checks import text_encoder_source


@dataclass
class DreamDistributionPromptProcessorOutput(PromptProcessorOutput):
    distribution: str = ""
    sample_seed: int = 0
    view_dependent_available: bool = False

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting: bool = True):
        if view_dependent_prompting and not self.view_dependent_available:
            raise ValueError(
                "the guidance asks for view-dependent embeddings but system.prompt_processor.view_dependent_prompting "
                "is false (MVDream runs without them): set one of the two to match"
            )
        return super().get_text_embeddings(elevation, azimuth, camera_distances, view_dependent_prompting)


@threestudio.register("dreamdistribution-prompt-processor")
class DreamDistributionPromptProcessor(PromptProcessor):
    @dataclass
    class Config(PromptProcessor.Config):
        distribution: Optional[str] = None  # .safetensors from `dreamdist3d learn`, or an official prompt_learner.pt
        class_index: int = 0  # class of a multi-class official file
        prefix: Optional[str] = None  # None: the prefix the distribution was learned with
        suffix: Optional[str] = None
        scale: float = 1.0  # γ
        mixture: List[Any] = field(default_factory=list)  # [{path, weight, scale}, ...], weights sum to 1
        covariance: Optional[str] = None  # diag | lowrank | kernel; None: what the file records (official files: diag)
        seed: Optional[int] = None  # set it to ${seed}; None falls back to torch.initial_seed()
        view_dependent_prompting: bool = False  # direction suffix edits of the distribution, re-fitted
        # the model whose text encoder the distribution was learned with; None: pretrained_model_name_or_path
        # (a local MVDream .pt/.safetensors file or diffusers SD 2.1 folder; nothing is downloaded)
        text_encoder_path: Optional[str] = None
        sample_path: Optional[str] = None  # where the drawn sample is saved and, on resume, read back

    cfg: Config

    def preprocess_prompt(self, prompt: str) -> str:
        """What threestudio logs as the prompt (and makes the view prompts of): the distribution, not `prompt`."""
        cfg = self.cfg
        return describe(DistributionSpec.from_config(cfg.distribution, cfg.scale, cfg.mixture, cfg.class_index,
                                                     cfg.prefix, cfg.suffix, cfg.covariance))

    def prepare_text_embeddings(self) -> None:
        cfg = self.cfg
        source, key = text_encoder_source(cfg.text_encoder_path, cfg.pretrained_model_name_or_path)
        tokenizer, text_encoder = load_text_side(source, key=key)
        seed = cfg.seed if cfg.seed is not None else torch.initial_seed()
        self._prepared = prepare_prompt(
            distribution=cfg.distribution, scale=cfg.scale, mixture=cfg.mixture, prefix=cfg.prefix, suffix=cfg.suffix,
            seed=int(seed) % (2**63), view_dependent=cfg.view_dependent_prompting,
            prefix_style=cfg.view_dependent_prompt_front, class_index=cfg.class_index,
            negative_prompt=cfg.negative_prompt, text_encoder=text_encoder, tokenizer=tokenizer,
            where="system.prompt_processor", sample_path=cfg.sample_path, device=self.device, covariance=cfg.covariance,
        )
        del text_encoder
        self.prompt = self._prepared.prompt  # as preprocess_prompt gave it (trees whose base class does not call it)
        self.prompts_vd = [d.prompt(self.prompt) for d in self.directions]
        threestudio.info(f"[dreamdistribution] {self._prepared.summary}")

    def load_text_embeddings(self) -> None:
        p = self._prepared
        text = p.sample.text_embeddings.to(self.device, torch.float32)  # (1, 77, D)
        vd = p.sample.text_embeddings_vd
        self.text_embeddings = text
        self.text_embeddings_vd = vd.to(self.device, torch.float32) if vd is not None else text.expand(4, -1, -1)
        self.uncond_text_embeddings = p.uncond.to(self.device, torch.float32)
        self.uncond_text_embeddings_vd = self.uncond_text_embeddings.expand(4, -1, -1)

    def __call__(self) -> DreamDistributionPromptProcessorOutput:
        base = super().__call__()
        p = self._prepared
        return DreamDistributionPromptProcessorOutput(
            **vars(base), distribution=p.prompt, sample_seed=p.spec.seed,
            view_dependent_available=p.sample.text_embeddings_vd is not None,
        )
