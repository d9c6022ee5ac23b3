"""MVDream single-file loader: full-size key coverage (meta device), official-fixture weights through the loader,
tiny checkpoints (.pt and .safetensors), and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_path

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG
from dreamdist3d.backbones.mvdream import (
    SCHEDULE_KEYS,
    CheckpointError,
    infer_unet_config,
    ldm_schedule_buffers,
    load_mvdream,
    mvdream_from_state_dict,
    mvdream_state_dict_shapes,
)
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.testing.checkpoints import tiny_mvdream_state_dict, write_tiny_mvdream_checkpoint


def _official_shapes():
    keys = json.loads(reference_path("mvdream-sd21-4view-keys.json").read_text())["keys"]
    return {k: tuple(v[:-1]) for k, v in keys.items()}


def test_full_size_keys_and_shapes_match_the_release_exactly():
    ref = _official_shapes()
    assert len(ref) == 1244
    ours = mvdream_state_dict_shapes()
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))[:10]
    assert {k: ours[k] for k in ref} == ref


def test_full_size_checkpoint_loads_strictly_on_meta():
    ref = _official_shapes()
    sd = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    assert infer_unet_config(unet_sd) == MVDREAM_SD21_CONFIG
    bb = mvdream_from_state_dict(sd, device="meta", source="sd-v2.1-base-4view (meta)")
    assert bb.name == "mvdream" and bb.supports_camera and bb.resolution == 256 and bb.latent_size == 32
    assert bb.text_encoder.num_layers == 23 and bb.text_encoder.hidden_size == 1024
    assert bb.text_encoder.clip.config.num_attention_heads == 16
    assert list(bb.vae.config.block_out_channels) == [128, 256, 512, 512]
    assert bb.schedule.prediction_type == "epsilon" and bb.scale_factor == 0.18215
    # one key more or less is an error listing it
    extra = dict(sd, **{"model_ema.decay": torch.empty((), device="meta")})
    with pytest.raises(CheckpointError, match="model_ema.decay"):
        mvdream_from_state_dict(extra, device="meta")
    less = dict(sd)
    del less["model.diffusion_model.output_blocks.3.1.proj_out.weight"]
    del less["cond_stage_model.model.transformer.resblocks.5.ln_2.bias"]
    with pytest.raises(CheckpointError, match=r"output_blocks\.3\.1\.proj_out\.weight(.|\n)*resblocks\.5\.ln_2\.bias"):
        mvdream_from_state_dict(less, device="meta")


def test_schedule_buffers_are_the_official_values(reference):
    ref, _ = reference("mvdream-schedule")
    ours = ldm_schedule_buffers()
    for k in SCHEDULE_KEYS:
        assert torch.equal(ours[k], ref[k]), k
    assert torch.equal(ours["alphas_cumprod"], NoiseSchedule.scaled_linear("epsilon", style="ldm").alphas_cumprod)


def test_official_fixture_weights_through_the_loader(tmp_path, reference):
    """Assemble an official-layout file from the UNet, VAE and OpenCLIP fixtures; outputs must match theirs."""
    unet_t, unet_js = reference("mvdream-unet-tiny-a")
    vae_t, _ = reference("mvdream-vae-tiny-a")
    txt_t, txt_js = reference("mvdream-openclip-text-tiny-a")
    sd = {}
    sd.update({"model.diffusion_model." + k[5:]: v for k, v in unet_t.items() if k.startswith("unet.")})
    sd.update({"first_stage_model." + k[4:]: v for k, v in vae_t.items() if k.startswith("vae.")})
    sd.update({"cond_stage_model.model." + k[11:]: v for k, v in txt_t.items() if k.startswith("cond.model.")})
    sd.update(ldm_schedule_buffers())
    path = tmp_path / "fixture-4view.pt"
    torch.save(sd, path)
    cfg = {"format": "dreamdist3d-mvdream", "unet": unet_js["constructor_kwargs"], "text_heads": 4,
           "resolution": 32, "vae_sample_size": 32}
    path.with_suffix(".json").write_text(json.dumps(cfg))
    bb = load_mvdream(path)

    z = bb.encode_text(txt_js["prompts"])
    torch.testing.assert_close(z, txt_t["z"], atol=1e-5, rtol=0)
    with torch.no_grad():
        out = bb(unet_t["x"], unet_t["timesteps"], unet_t["context"], camera=unet_t["camera"], num_frames=4)
        torch.testing.assert_close(out, unet_t["out_mv"], atol=1e-4, rtol=1e-4)
        dist = bb.vae.encode(vae_t["image"]).latent_dist
        torch.testing.assert_close(dist.mean, vae_t["posterior_mean"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bb.vae.decode(dist.mean).sample, vae_t["decoded"], atol=1e-4, rtol=1e-4)
    # without the sidecar the heads cannot be known: shapes still load (heads=64 fails on 32-wide layers)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar fixture-4view.json"):
        load_mvdream(path)


def test_tiny_checkpoint_pt_and_safetensors_agree(tmp_path):
    cfg = write_tiny_mvdream_checkpoint(tmp_path / "tiny.pt", seed=1)
    write_tiny_mvdream_checkpoint(tmp_path / "tiny.safetensors", seed=1)
    assert (tmp_path / "tiny.json").is_file() and not (tmp_path / "tiny.safetensors.json").exists()
    a, b = load_mvdream(tmp_path / "tiny.pt"), load_mvdream(tmp_path / "tiny.safetensors")
    assert a.resolution == cfg["resolution"] == 32 and a.latent_size == 16
    assert a.text_encoder.num_layers == 2  # 3 blocks stored, "penultimate" uses 2
    sd, _ = tiny_mvdream_state_dict(seed=1)
    assert torch.equal(a.unet.state_dict()["input_blocks.0.0.weight"],
                       sd["model.diffusion_model.input_blocks.0.0.weight"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    ctx = a.encode_text(["a cathedral"] * 8)
    cam = get_camera(4).repeat(2, 1)
    with torch.no_grad():
        oa = a(x, t, ctx, camera=cam, num_frames=4)
        ob = b(x, t, b.encode_text(["a cathedral"] * 8), camera=cam, num_frames=4)
    assert oa.abs().mean() > 1e-2
    torch.testing.assert_close(oa, ob, atol=0, rtol=0)
    # different seed -> different model
    write_tiny_mvdream_checkpoint(tmp_path / "other.pt", seed=2)
    with torch.no_grad():
        oc = load_mvdream(tmp_path / "other.pt")(x, t, ctx, camera=cam, num_frames=4)
    assert (oa - oc).abs().max() > 1e-2


def test_dtype_argument(tmp_path):
    write_tiny_mvdream_checkpoint(tmp_path / "tiny.pt")
    bb = load_mvdream(tmp_path / "tiny.pt", dtype=torch.bfloat16)
    assert next(bb.unet.parameters()).dtype == torch.bfloat16
    assert bb.vae.dtype == torch.bfloat16 and bb.text_encoder.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in bb.unet.parameters())


def test_errors(tmp_path):
    missing = tmp_path / "sd-v2.1-base-4view.pt"
    with pytest.raises(FileNotFoundError) as e:
        load_mvdream(missing, config_key="--mvdream")
    assert str(missing) in str(e.value) and "--mvdream" in str(e.value) and "sd-v2.1-base-4view.pt" in str(e.value)

    write_tiny_mvdream_checkpoint(tmp_path / "tiny.pt")
    data = (tmp_path / "tiny.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_mvdream(tmp_path / "cut.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_mvdream(tmp_path / "cut.safetensors")

    sd = torch.load(tmp_path / "tiny.pt", weights_only=True)
    plain = {k: v for k, v in sd.items() if ".camera_embed." not in k}
    torch.save(plain, tmp_path / "sd21.pt")
    with pytest.raises(CheckpointError, match="not an MVDream 4-view checkpoint"):
        load_mvdream(tmp_path / "sd21.pt")

    sd15 = {k.replace("cond_stage_model.model.", "cond_stage_model.transformer.text_model."): v for k, v in sd.items()}
    torch.save(sd15, tmp_path / "sd-v1.5-4view.pt")  # MVDream's SD 1.5 release: the HF CLIP text model's key prefix
    with pytest.raises(CheckpointError, match="sd-v1.5-4view.pt.*is MVDream's Stable Diffusion 1.5 checkpoint.*"
                                              "use sd-v2.1-base-4view.pt"):
        load_mvdream(tmp_path / "sd-v1.5-4view.pt")

    bad = dict(sd)
    bad["betas"] = torch.linspace(1e-4, 0.02, 1000)
    with pytest.raises(CheckpointError, match="schedule buffer betas"):
        mvdream_from_state_dict(bad, config=json.loads((tmp_path / "tiny.json").read_text()))
