"""The one backbone loader (`load_backbone(spec)`), the text side, and the one DDIM sampler against diffusers."""

from __future__ import annotations

import pytest
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.ddim import ddim_sample, ddim_timesteps, make_ddim_scheduler
from dreamdist3d.backbones.load import SPEC_FORMS, load_backbone, load_text_side, parse_spec
from dreamdist3d.config import ConfigError
from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mvd") / "tiny-4view.pt"
    write_tiny_mvdream_checkpoint(path, seed=5, resolution=16)
    return path


def test_parse_spec_forms():
    assert parse_spec("toy") == ("toy", "")
    assert parse_spec("toy:/w/t.safetensors") == ("toy", "/w/t.safetensors")
    assert parse_spec("mvdream:/m/sd-v2.1-base-4view.pt") == ("mvdream", "/m/sd-v2.1-base-4view.pt")
    assert parse_spec("sd21:/m/sd21") == ("sd21", "/m/sd21")
    assert parse_spec("dreamdist3d.testing.backbones:tiny_toy_backbone") == ("factory",
                                                                             "dreamdist3d.testing.backbones:tiny_toy_backbone")
    # a bare path is the default kind's (threestudio's pretrained_model_name_or_path holds a path)
    assert parse_spec("/m/sd-v2.1-base-4view.pt", default_kind="mvdream") == ("mvdream", "/m/sd-v2.1-base-4view.pt")
    assert parse_spec("toy", default_kind="mvdream") == ("toy", "")


def test_unknown_spec_lists_the_valid_forms():
    with pytest.raises(ConfigError) as e:
        load_backbone("/m/model.pt", config_key="--backbone")
    msg = str(e.value)
    assert "--backbone" in msg and "/m/model.pt" in msg and all(form in msg for form in SPEC_FORMS)
    with pytest.raises(ConfigError, match="system.guidance.pretrained_model_name_or_path is not set"):
        load_backbone(None, config_key="system.guidance.pretrained_model_name_or_path", default_kind="mvdream")
    with pytest.raises(ConfigError, match="--mvdream is not set"):
        load_backbone("mvdream:", config_key="--mvdream")


def test_missing_files_name_the_file_and_the_key(tmp_path):
    missing = tmp_path / "sd-v2.1-base-4view.pt"
    with pytest.raises(Exception) as e:
        load_backbone(f"mvdream:{missing}", config_key="--mvdream")
    assert str(missing) in str(e.value) and "--mvdream" in str(e.value)
    weights = tmp_path / "toy.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        load_backbone(f"toy:{weights}", config_key="weights")
    assert str(weights) in str(e.value) and "weights" in str(e.value)
    with pytest.raises(Exception) as e:
        load_backbone(f"sd21:{tmp_path / 'nope'}", config_key="--sd21")
    assert "nope" in str(e.value) and "--sd21" in str(e.value)
    with pytest.raises(ConfigError, match="cannot import"):
        load_backbone("no_such_module_xyz:fn", config_key="--backbone")


def test_factory_and_mvdream_and_text_side(ckpt):
    bb = load_backbone("dreamdist3d.testing.backbones:tiny_toy_backbone")
    assert isinstance(bb, Backbone)
    with pytest.raises(ConfigError, match="expected a dreamdist3d Backbone"):
        load_backbone("torch.nn:Identity")  # takes device=, dtype= but is no Backbone
    mv = load_backbone(f"mvdream:{ckpt}")
    assert mv.name == "mvdream" and mv.supports_camera
    assert load_backbone(str(ckpt), default_kind="mvdream").fingerprint() == mv.fingerprint()
    for source in (ckpt, f"mvdream:{ckpt}"):
        tok, enc = load_text_side(source)
        assert enc.fingerprint() == mv.text_encoder.fingerprint()
        ids = tok(["a toy robot"])
        torch.testing.assert_close(enc.encode_ids(ids), mv.encode_text(["a toy robot"]), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="--text-encoder is not set"):
        load_text_side("")


def test_text_package_does_not_import_backbones():
    import ast
    from pathlib import Path

    import dreamdist3d.text

    for f in Path(dreamdist3d.text.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("dreamdist3d.backbones") for n in names), f


def test_ddim_sample_equals_diffusers_ddim_for_eps(ckpt):
    """The one sampler's step is diffusers' DDIMScheduler.step(eta=0) on MVDream's schedule, bit for bit."""
    bb = load_backbone(f"mvdream:{ckpt}")
    ctx, uc = bb.encode_text(["a stone cathedral"]), bb.encode_text([""])
    ours = ddim_sample(bb, ctx, uc, steps=3, cfg=5.0, seed=1, return_latents=True)  # (1, 1, 4, 8, 8)
    sched = make_ddim_scheduler(bb.schedule, 3)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, 3).tolist() == [667, 334, 1]
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in sched.timesteps:
            out = bb(torch.cat([x, x]), torch.full((2,), int(t)), torch.cat([uc, ctx])).float()
            u, c = out.chunk(2)
            x = sched.step(u + 5.0 * (c - u), int(t), x, eta=0.0).prev_sample
    assert torch.equal(ours[0], x)  # (1, 4, 8, 8): one sample, one view


def test_ddim_timesteps_edges():
    assert ddim_timesteps(1000, 1).tolist() == [1]
    assert ddim_timesteps(10, 10).tolist()[0] == 9  # steps == T: clamped to the last timestep
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_toy_spec_is_the_shipped_toy_backbone():
    from dreamdist3d.backbones.toy_weights import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("shipped toy weights not there")
    bb = load_backbone("toy")
    assert bb.name == "toy" and bb.vae is None and bb.source == str(default_weights_path())
    assert load_backbone(f"toy:{default_weights_path()}").fingerprint() == bb.fingerprint()
    assert load_backbone("toy", default_kind="mvdream").fingerprint() == bb.fingerprint()  # guidance's key
    tok, enc = load_text_side("toy")
    assert enc.fingerprint() == bb.text_encoder.fingerprint()
