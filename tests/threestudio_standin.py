"""A stand-in of threestudio's API for testing custom/threestudio-dreamdistribution without threestudio (which needs
CUDA-only packages), written from the contract in ../shared/reference/threestudio-contract.md: registry with duplicate
check, strict `parse_structured`, `BaseObject`, `PromptProcessor.configure` flow with a spawned-cache path that must not
be used, `PromptProcessorOutput`, the base class's log lines (`threestudio.info`), and launch.py's custom-module
loader.

No pytest here: tests/test_threestudio_pins.py runs it in a second interpreter with threestudio's pinned packages."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "custom" / "threestudio-dreamdistribution"


def fake_threestudio() -> Dict[str, types.ModuleType]:
    ts = types.ModuleType("threestudio")
    ts.__modules__ = {}

    def register(name):
        def deco(cls):
            if name in ts.__modules__:
                raise ValueError(f"Module {name} already exists! Names of extensions conflict!")
            ts.__modules__[name] = cls
            return cls

        return deco

    ts.register = register
    ts.find = lambda name: ts.__modules__[name]
    ts.info = logging.getLogger("threestudio").info  # threestudio: rank_zero_info on the pytorch_lightning logger

    def parse_structured(fields, cfg=None):
        return OmegaConf.structured(fields(**cfg))  # strict: an unknown key is a TypeError

    class Updateable:
        def do_update_step(self, epoch, global_step, on_load_weights=False):
            self.update_step(epoch, global_step, on_load_weights)

        def update_step(self, epoch, global_step, on_load_weights=False):
            pass

    class BaseObject(Updateable):
        @dataclass
        class Config:
            pass

        def __init__(self, cfg=None, *args, **kwargs):
            self.cfg = parse_structured(self.Config, cfg)
            self.device = base.get_device()
            self.configure(*args, **kwargs)

        def configure(self, *args, **kwargs):
            pass

    @dataclass
    class DirectionConfig:
        name: str
        prompt: Callable[[str], str]
        negative_prompt: Callable[[str], str]
        condition: Callable

    def shift_azimuth_deg(a):
        return (a + 180) % 360 - 180

    @dataclass
    class PromptProcessorOutput:
        text_embeddings: Any
        uncond_text_embeddings: Any
        text_embeddings_vd: Any
        uncond_text_embeddings_vd: Any
        directions: List[DirectionConfig]
        direction2idx: Dict[str, int]
        use_perp_neg: bool
        perp_neg_f_sb: Tuple[float, float, float]
        perp_neg_f_fsb: Tuple[float, float, float]
        perp_neg_f_fs: Tuple[float, float, float]
        perp_neg_f_sf: Tuple[float, float, float]
        prompt: str
        prompts_vd: List[str]

        def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
            B = elevation.shape[0]
            if view_dependent_prompting:
                idx = torch.zeros_like(elevation, dtype=torch.long)
                for d in self.directions:
                    idx[d.condition(elevation, azimuth, camera_distances)] = self.direction2idx[d.name]
                return torch.cat([self.text_embeddings_vd[idx], self.uncond_text_embeddings_vd[idx]], 0)
            return torch.cat([self.text_embeddings.expand(B, -1, -1), self.uncond_text_embeddings.expand(B, -1, -1)], 0)

    class PromptProcessor(BaseObject):
        @dataclass
        class Config:
            prompt: str = "a hamburger"
            prompt_front: Optional[str] = None
            prompt_side: Optional[str] = None
            prompt_back: Optional[str] = None
            prompt_overhead: Optional[str] = None
            negative_prompt: str = ""
            pretrained_model_name_or_path: str = "runwayml/stable-diffusion-v1-5"
            overhead_threshold: float = 60.0
            front_threshold: float = 45.0
            back_threshold: float = 45.0
            view_dependent_prompt_front: bool = False
            use_cache: bool = True
            spawn: bool = True
            use_perp_neg: bool = False
            perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
            perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
            perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)
            perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)
            use_prompt_debiasing: bool = False
            pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
            prompt_debiasing_mask_ids: Optional[Any] = None

        def configure_text_encoder(self):
            raise NotImplementedError

        def destroy_text_encoder(self):
            raise NotImplementedError

        def configure(self):
            self._cache_dir = ".threestudio_cache/text_embeddings"
            c = self.cfg
            self.directions = [
                DirectionConfig("side", lambda s: f"{s}, side view", lambda s: s,
                                lambda e, a, d: torch.ones_like(e, dtype=torch.bool)),
                DirectionConfig("front", lambda s: f"{s}, front view", lambda s: s,
                                lambda e, a, d: ((shift_azimuth_deg(a) > -c.front_threshold)
                                                 & (shift_azimuth_deg(a) < c.front_threshold))),
                DirectionConfig("back", lambda s: f"{s}, back view", lambda s: s,
                                lambda e, a, d: ((shift_azimuth_deg(a) > 180 - c.back_threshold)
                                                 | (shift_azimuth_deg(a) < -180 + c.back_threshold))),
                DirectionConfig("overhead", lambda s: f"{s}, overhead view", lambda s: s,
                                lambda e, a, d: e > c.overhead_threshold),
            ]
            self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}
            self.prompt = self.preprocess_prompt(c.prompt)
            self.negative_prompt = c.negative_prompt
            ts.info(f"Using prompt [{self.prompt}] and negative prompt [{self.negative_prompt}]")
            self.prompts_vd = [d.prompt(self.prompt) for d in self.directions]
            self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]
            shown = " ".join(f"[{d.name}]:[{p}]" for p, d in zip(self.prompts_vd, self.directions))
            ts.info(f"Using view-dependent prompts {shown}")
            self.prepare_text_embeddings()
            self.load_text_embeddings()

        def preprocess_prompt(self, prompt):  # threestudio: a "lib:" prompt is looked up in prompt_library.json
            return prompt

        @staticmethod
        def spawn_func(pretrained_model_name_or_path, prompts, cache_dir):
            raise NotImplementedError

        def prepare_text_embeddings(self):  # threestudio spawns a subprocess here; a custom module must not
            raise AssertionError("prompt embedding process failed! (the stand-in's spawned encoder was used)")

        def load_text_embeddings(self):
            raise FileNotFoundError("Text embedding file .threestudio_cache/... not found.")

        def __call__(self):
            return PromptProcessorOutput(
                text_embeddings=self.text_embeddings, uncond_text_embeddings=self.uncond_text_embeddings,
                text_embeddings_vd=self.text_embeddings_vd, uncond_text_embeddings_vd=self.uncond_text_embeddings_vd,
                directions=self.directions, direction2idx=self.direction2idx, use_perp_neg=self.cfg.use_perp_neg,
                perp_neg_f_sb=self.cfg.perp_neg_f_sb, perp_neg_f_fsb=self.cfg.perp_neg_f_fsb,
                perp_neg_f_fs=self.cfg.perp_neg_f_fs, perp_neg_f_sf=self.cfg.perp_neg_f_sf,
                prompt=self.prompt, prompts_vd=self.prompts_vd,
            )

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    base = mod("threestudio.utils.base", Updateable=Updateable, BaseObject=BaseObject,
               get_device=lambda: torch.device("cpu"))
    modules = {
        "threestudio": ts,
        "threestudio.utils": mod("threestudio.utils"),
        "threestudio.utils.base": base,
        "threestudio.utils.config": mod("threestudio.utils.config", parse_structured=parse_structured),
        "threestudio.models": mod("threestudio.models"),
        "threestudio.models.prompt_processors": mod("threestudio.models.prompt_processors"),
        "threestudio.models.prompt_processors.base": mod(
            "threestudio.models.prompt_processors.base", PromptProcessor=PromptProcessor,
            PromptProcessorOutput=PromptProcessorOutput, DirectionConfig=DirectionConfig,
            shift_azimuth_deg=shift_azimuth_deg,
        ),
    }
    return modules


def load_custom_module(path: Path) -> types.ModuleType:
    """threestudio launch.py's loader: module name = folder name (hyphens kept), spec from <folder>/__init__.py."""
    name = path.name
    spec = importlib.util.spec_from_file_location(name, str(path / "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- launch.py's config
def register_config_resolvers() -> None:
    """The resolvers threestudio.utils.config registers on import."""
    for name, fn in {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b, "basename": lambda p: os.path.basename(p),
        "rmspace": lambda s, sub: s.replace(" ", sub),
        "tuple2": lambda s: [float(s), float(s)], "gt0": lambda s: s > 0, "not": lambda s: not s,
    }.items():
        with warnings.catch_warnings():  # some omegaconf releases flag register_new_resolver; threestudio uses it
            warnings.simplefilter("ignore")
            OmegaConf.register_new_resolver(name, fn, replace=True)


@dataclass
class ExperimentConfig:
    """threestudio's ExperimentConfig: the trial folder is computed after the yaml is resolved."""

    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1
    resume: Optional[str] = None
    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.tag and not self.use_timestamp:
            raise ValueError("Either tag is specified or use_timestamp is True.")
        self.trial_name = self.tag
        if self.timestamp is None:
            self.timestamp = ""
            if self.use_timestamp and self.n_gpus == 1:
                self.timestamp = datetime.now().strftime("@%Y%m%d-%H%M%S")
        self.trial_name += self.timestamp
        self.exp_dir = os.path.join(self.exp_root_dir, self.name)
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)
        os.makedirs(self.trial_dir, exist_ok=True)


def load_config(*yamls: str, cli_args: list = (), **kwargs) -> Any:
    """threestudio's load_config: yaml(s) + CLI dotlist + kwargs (n_gpus), resolved, then ExperimentConfig."""
    register_config_resolvers()
    cfg = OmegaConf.merge(*[OmegaConf.load(f) for f in yamls], OmegaConf.from_cli(list(cli_args)), kwargs)
    OmegaConf.resolve(cfg)
    return OmegaConf.structured(ExperimentConfig(**cfg))


def install(modules: Dict[str, types.ModuleType]) -> None:
    """Put the stand-in into sys.modules (for a script; tests use monkeypatch)."""
    sys.modules.update(modules)
