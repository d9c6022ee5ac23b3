"""SD 2.1 backbone from a local diffusers folder (a tiny random one written by testing.checkpoints)."""

from __future__ import annotations

import shutil

import pytest
import torch

from dreamdist3d.backbones.sd21 import load_sd21
from dreamdist3d.testing.checkpoints import tiny_sd21_folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_sd21_folder(tmp_path_factory.mktemp("sd21") / "tiny-sd21", seed=3)


def test_load_sd21_backbone(sd_folder):
    bb = load_sd21(sd_folder)
    assert bb.name == "sd21" and not bb.supports_camera
    assert bb.schedule.prediction_type == "v_prediction"
    assert bb.resolution == 16 and bb.latent_size == 8 and bb.latent_channels == 4
    ids = bb.tokenizer(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[0, 7:].eq(0).all()
    ctx = bb.encode_text(["a photo of a cat", ""])
    assert ctx.shape == (2, 77, 32)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    out = bb(x, t, ctx)
    with torch.no_grad():
        direct = bb.unet.unet(x, t, encoder_hidden_states=ctx).sample
    assert out.shape == x.shape and out.abs().mean() > 1e-3
    torch.testing.assert_close(out, direct)
    with pytest.raises(ValueError, match="camera"):
        bb(x, t, ctx, camera=torch.zeros(2, 16))
    with pytest.raises(ValueError, match="camera"):
        bb.unet(x, t, ctx, camera=torch.zeros(2, 16))
    # round trip through the VAE keeps shapes
    img = bb.decode_latents(bb.encode_images(torch.rand(1, 3, 16, 16) * 2 - 1, sample=False))
    assert img.shape == (1, 3, 16, 16)


def test_folder_works_with_diffusers_pipeline(sd_folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_folder), local_files_only=True, safety_checker=None)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.tokenizer.pad_token_id == 0
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    img = pipe("a cat", num_inference_steps=2, height=16, width=16, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()


def test_epsilon_folder_and_errors(tmp_path, sd_folder):
    eps = tiny_sd21_folder(tmp_path / "eps", prediction_type="epsilon")
    assert load_sd21(eps).schedule.prediction_type == "epsilon"
    with pytest.raises(FileNotFoundError, match="unet/.*vae/.*text_encoder/.*tokenizer/.*scheduler/"):
        load_sd21(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="missing vae/"):
        load_sd21(broken, config_key="--sd21")
