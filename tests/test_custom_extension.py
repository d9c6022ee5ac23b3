"""custom/threestudio-dreamdistribution against a minimal stand-in of threestudio's API (tests/threestudio_standin.py,
written from the contract: registry with duplicate check, strict `parse_structured`, `BaseObject`,
`PromptProcessor.configure` flow with a spawned-cache path that must not be used, `PromptProcessorOutput`, and
launch.py's custom-module loader)."""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from threestudio_standin import EXTENSION, fake_threestudio, load_custom_module

from dreamdist3d.lift3d.prompt_processor import DreamDistributionPromptProcessor as OurProcessor
from dreamdist3d.testing.assets import write_tiny_assets


@pytest.fixture
def threestudio(monkeypatch):
    mods = fake_threestudio()
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


# ---------------------------------------------------------------------------------------------- the example yaml
YAML = EXTENSION / "configs" / "dreamdistribution-mvdream-sd21.yaml"


def _launch_config(tmp_path, monkeypatch, stamp, *overrides):
    """The yaml as threestudio's launch.py reads it (custom/ already imported), at the wall-clock second `stamp`."""
    from threestudio_standin import load_config

    resolvers = sys.modules[f"{EXTENSION.name}.resolvers"]
    fixed = datetime.datetime(2026, 12, 1, 6, 0, stamp)
    monkeypatch.setattr(resolvers, "datetime", type("Clock", (), {"now": staticmethod(lambda: fixed)}))
    return load_config(str(YAML), cli_args=[f"exp_root_dir={tmp_path / 'outputs'}", *overrides], n_gpus=1)


def test_example_yaml_sample_is_per_trial_and_resumes(threestudio, assets, tmp_path, monkeypatch):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    args = [f"system.prompt_processor.distribution={assets['dist']}", f"system.guidance.ckpt_path={assets['ckpt']}",
            "seed=3"]
    cfg = _launch_config(tmp_path, monkeypatch, 1, *args)
    assert cfg.tag == "tiny-dist-seed3" and cfg.trial_dir.endswith("tiny-dist-seed3@20261201-060001")
    pp = cfg.system.prompt_processor
    assert pp.sample_path == f"{cfg.trial_dir}/prompt_sample.safetensors" and pp.text_encoder_path == assets["ckpt"]
    first = cls(pp)()
    assert Path(pp.sample_path).is_file()
    # a new run with another scale: another trial folder, another sample file (was: the old file, refused)
    other = _launch_config(tmp_path, monkeypatch, 2, *args, "system.prompt_processor.scale=2.0")
    assert other.trial_dir != cfg.trial_dir
    second = cls(other.system.prompt_processor)()
    assert not torch.equal(second.text_embeddings, first.text_embeddings)
    # resume from the trial's parsed.yaml (threestudio's ConfigSnapshotCallback): same folder, the saved sample
    parsed = tmp_path / "parsed.yaml"
    OmegaConf.save(cfg, parsed)
    from threestudio_standin import load_config

    again = load_config(str(parsed), cli_args=[f"resume={cfg.trial_dir}/ckpts/last.ckpt"], n_gpus=1)
    assert again.trial_dir == cfg.trial_dir
    assert torch.equal(cls(again.system.prompt_processor)().text_embeddings, first.text_embeddings)
    changed = load_config(str(parsed), cli_args=["system.prompt_processor.scale=2.0"], n_gpus=1)
    with pytest.raises(ValueError, match="other settings"):
        cls(changed.system.prompt_processor)


def test_example_yaml_mixture_and_missing_distribution(threestudio, assets, tmp_path, monkeypatch):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    _, other = write_tiny_assets(tmp_path / "b", seed=0, n_prompts=4)  # same text encoder, another file
    mix = f"system.prompt_processor.mixture=[{{path: {assets['dist']}, weight: 0.5}}, {{path: {other}, weight: 0.5}}]"
    cfg = _launch_config(tmp_path, monkeypatch, 1, mix, f"system.guidance.ckpt_path={assets['ckpt']}")
    assert cfg.tag == "tiny-dist+tiny-dist-seed0" and cfg.system.prompt_processor.distribution is None
    out = cls(cfg.system.prompt_processor)()
    assert out.text_embeddings.shape == (1, 77, 32)
    with pytest.raises(Exception, match=r"system\.prompt_processor\.distribution is not set"):
        _launch_config(tmp_path, monkeypatch, 1, f"system.guidance.ckpt_path={assets['ckpt']}")
    with pytest.raises(Exception, match=r"system\.prompt_processor\.distribution: distribution file .*nope"):
        _launch_config(tmp_path, monkeypatch, 1, f"system.prompt_processor.distribution={tmp_path}/nope.safetensors",
                       f"system.guidance.ckpt_path={assets['ckpt']}")


# ---------------------------------------------------------------------------------------------- issue 31, item 8
def test_the_log_names_the_distribution_law_gamma_seed_and_sample(threestudio, assets, tmp_path, caplog):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    sample_path = tmp_path / "prompt_sample.safetensors"
    cfg = {"distribution": assets["dist"], "text_encoder_path": assets["ckpt"], "seed": 3, "scale": 1.5,
           "covariance": "lowrank", "sample_path": str(sample_path)}
    with caplog.at_level(logging.INFO, logger="threestudio"):
        cls(cfg)
    log = caplog.text
    assert "a hamburger" not in log, log  # threestudio's placeholder prompt
    assert "Using prompt [<tiny-dist>]" in log and "[front]:[<tiny-dist>, front view]" in log, log
    line = next(ln for ln in log.splitlines() if "[dreamdistribution]" in ln)
    for words in ("sample 0 of seed 3", f"{assets['dist']} (γ 1.5)", "law lowrank", "prefix 'a photo of' (as learned)",
                  f"drawn, saved to {sample_path}"):
        assert words in line, (words, line)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="threestudio"):
        cls(cfg)  # a resumed run
    assert f"read back from {sample_path}" in caplog.text


@pytest.mark.parametrize("overrides, words", [
    ((), ["system.guidance.ckpt_path is not set", "sd-v2.1-base-4view.pt"]),  # the yaml's ckpt_path: ???
    (("system.guidance.ckpt_path=null",), ["system.prompt_processor.text_encoder_path is null",
                                           "set system.guidance.ckpt_path=", "nothing is downloaded"]),
    (("system.prompt_processor.distrubution={dist}", "system.guidance.ckpt_path={ckpt}"),
     ["unknown config key 'system.prompt_processor.distrubution'",
      "did you mean system.prompt_processor.distribution"]),
    (("system.prompt_processor.distribution={dist}", "system.guidance.ckpt_path={ckpt}",
      "system.guidance.view_dependent_prompting=true"),
     ["system.guidance.view_dependent_prompting is true", "system.prompt_processor.view_dependent_prompting is false"]),
    (("system.prompt_processor.mixture=[{{path: {dist}, weight: 0.7}}, {{path: {dist}, weight: 0.7}}]",
      "system.guidance.ckpt_path={ckpt}"),
     ["system.prompt_processor.mixture: mixture weights must sum to 1",
      "e.g. system.prompt_processor.mixture: [{path: a.safetensors, weight: 0.5}"]),
], ids=["ckpt-path-unset", "ckpt-path-null", "misspelt-key", "view-dependence", "mixture-weights"])
def test_example_yaml_mistakes_are_named_while_the_config_is_read(threestudio, assets, tmp_path, monkeypatch,
                                                                  overrides, words):
    load_custom_module(EXTENSION)
    args = [o.format(dist=assets["dist"], ckpt=assets["ckpt"]) for o in overrides]
    with pytest.raises(Exception) as e:  # omegaconf wraps a resolver's error; threestudio prints it
        _launch_config(tmp_path, monkeypatch, 1, *args)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "--weight" not in str(e.value) and "Missing mandatory value" not in str(e.value)


def test_no_local_text_encoder_names_the_keys_to_set(threestudio, assets):
    load_custom_module(EXTENSION)
    cls = threestudio.find("dreamdistribution-prompt-processor")
    hub_id = "'runwayml/stable-diffusion-v1-5' is not a local file"  # threestudio's default: a Hub model id
    with pytest.raises(ValueError, match=r"text_encoder_path is null and system\.prompt_processor\."
                                         r"pretrained_model_name_or_path " + hub_id):
        cls({"distribution": assets["dist"]})
