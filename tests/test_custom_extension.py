"""custom/threestudio-dreamdistribution against a minimal stand-in of threestudio's API, written here from the
contract (registry with duplicate check, strict `parse_structured`, `BaseObject`, `PromptProcessor.configure` flow
with a spawned-cache path that must not be used, `PromptProcessorOutput`, and launch.py's custom-module loader)."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from omegaconf import OmegaConf

from dreamdist3d.lift3d.prompt_processor import DreamDistributionPromptProcessor as OurProcessor
from dreamdist3d.testing.assets import write_tiny_assets

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "custom" / "threestudio-dreamdistribution"


# ---------------------------------------------------------------------------------------------- the stand-in
def _fake_threestudio() -> Dict[str, types.ModuleType]:
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
                                lambda e, a, d: (shift_azimuth_deg(a) > -c.front_threshold)
                                & (shift_azimuth_deg(a) < c.front_threshold)),
                DirectionConfig("back", lambda s: f"{s}, back view", lambda s: s,
                                lambda e, a, d: (shift_azimuth_deg(a) > 180 - c.back_threshold)
                                | (shift_azimuth_deg(a) < -180 + c.back_threshold)),
                DirectionConfig("overhead", lambda s: f"{s}, overhead view", lambda s: s,
                                lambda e, a, d: e > c.overhead_threshold),
            ]
            self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}
            self.prompt = c.prompt
            self.negative_prompt = c.negative_prompt
            self.prompts_vd = [d.prompt(self.prompt) for d in self.directions]
            self.negative_prompts_vd = [d.negative_prompt(self.negative_prompt) for d in self.directions]
            self.prepare_text_embeddings()
            self.load_text_embeddings()

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


@pytest.fixture
def threestudio(monkeypatch):
    mods = _fake_threestudio()
    for name, m in mods.items():
        monkeypatch.setitem(sys.modules, name, m)
    for name in [n for n in sys.modules if n.startswith(EXTENSION.name)]:
        monkeypatch.delitem(sys.modules, name)
    yield mods["threestudio"]
    for name in [n for n in sys.modules if n.startswith(EXTENSION.name)]:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt, dist = write_tiny_assets(tmp_path_factory.mktemp("tiny"))
    yield {"ckpt": str(ckpt), "dist": str(dist)}
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- tests
def test_extension_registers_and_delegates_to_dreamdist3d(threestudio, assets, tmp_path):
    load_custom_module(EXTENSION)
    assert f"{EXTENSION.name}.prompt_processor" in sys.modules  # relative import inside the package worked
    cls = threestudio.find("dreamdistribution-prompt-processor")
    base = sys.modules["threestudio.models.prompt_processors.base"]
    assert issubclass(cls, base.PromptProcessor)
    sample_path = tmp_path / "run" / "prompt_sample.safetensors"
    cfg = {"distribution": assets["dist"], "pretrained_model_name_or_path": assets["ckpt"], "seed": 3, "scale": 1.5,
           "negative_prompt": "ugly", "spawn": True, "sample_path": str(sample_path)}
    pp = cls(cfg)
    out = pp()
    assert isinstance(out, base.PromptProcessorOutput)
    assert type(out).__name__ == "DreamDistributionPromptProcessorOutput"
    assert out.sample_seed == 3 and "<tiny-dist>" in out.prompt and out.prompts_vd[1].endswith(", front view")
    # the same numbers as dreamdist3d's own processor (delegation, no logic of its own)
    ours = OurProcessor({"distribution": assets["dist"], "pretrained_model_name_or_path": assets["ckpt"], "scale": 1.5,
                         "negative_prompt": "ugly"}, seed=3)()
    assert torch.equal(out.text_embeddings, ours.text_embeddings)
    assert torch.equal(out.uncond_text_embeddings, ours.uncond_text_embeddings)
    assert out.text_embeddings.shape[0] == 1 and out.text_embeddings_vd.shape[0] == 4
    elev, azi, dist = torch.zeros(8), torch.arange(8.0) * 45, torch.ones(8)
    emb = out.get_text_embeddings(elev, azi, dist, view_dependent_prompting=False)  # what MVDream's guidance calls
    assert emb.shape == (16, 77, out.text_embeddings.shape[-1])
    assert torch.equal(emb[:8], out.text_embeddings.expand(8, -1, -1))
    assert torch.equal(emb[8:], ours.uncond_text_embeddings.expand(8, -1, -1))
    with pytest.raises(ValueError, match="view_dependent_prompting"):
        out.get_text_embeddings(elev, azi, dist, view_dependent_prompting=True)
    assert sample_path.is_file()
    # a resumed run reads the saved sample back (same numbers) and a changed setting is refused
    again = cls(cfg)()
    assert torch.equal(again.text_embeddings, out.text_embeddings)
    with pytest.raises(ValueError, match="seed"):
        cls({**cfg, "seed": 4})


def test_extension_config_is_strict_and_view_dependent_edits_work(threestudio, assets):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    with pytest.raises(TypeError, match="scael"):
        cls({"distribution": assets["dist"], "pretrained_model_name_or_path": assets["ckpt"], "scael": 2.0})
    out = cls({"distribution": assets["dist"], "text_encoder_path": assets["ckpt"], "seed": 1,
               "view_dependent_prompting": True})()
    ours = OurProcessor({"distribution": assets["dist"], "pretrained_model_name_or_path": assets["ckpt"],
                         "view_dependent_prompting": True}, seed=1)()
    assert torch.equal(out.text_embeddings_vd, ours.text_embeddings_vd)
    emb = out.get_text_embeddings(torch.tensor([10.0, 70.0]), torch.tensor([180.0, 0.0]), torch.ones(2), True)
    assert torch.equal(emb[0], ours.text_embeddings_vd[2]) and torch.equal(emb[1], ours.text_embeddings_vd[3])


def test_extension_errors_name_the_key(threestudio, assets, tmp_path):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    with pytest.raises(FileNotFoundError, match="system.prompt_processor.distribution"):
        cls({"distribution": str(tmp_path / "nope.safetensors"), "pretrained_model_name_or_path": assets["ckpt"]})
    with pytest.raises(FileNotFoundError, match="system.prompt_processor.text_encoder_path"):
        cls({"distribution": assets["dist"], "text_encoder_path": str(tmp_path / "nope.pt")})
    _, other = write_tiny_assets(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="text encoder"):
        cls({"distribution": str(other), "pretrained_model_name_or_path": assets["ckpt"]})
    with pytest.raises(ValueError, match="already exists"):  # threestudio refuses a second extension with the name
        threestudio.register("dreamdistribution-prompt-processor")(object)
