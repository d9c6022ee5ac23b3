"""LDM VAE -> diffusers AutoencoderKL conversion against the official MVDream VAE fixture."""

from __future__ import annotations

import pytest
import torch

from dreamdist3d.backbones.vae import convert_ldm_vae, vae_config_from_ldm, vae_to_ldm_state_dict


def _ldm(tensors):
    return {k[len("vae.") :]: v for k, v in tensors.items() if k.startswith("vae.")}


def test_vae_matches_official_fixture(reference):
    tensors, meta = reference("mvdream-vae-tiny-a")
    sd = _ldm(tensors)
    assert len(sd) == 124
    vae, used = convert_ldm_vae(sd, prefix="", sample_size=32)
    assert used == set(sd), "every LDM VAE key must be consumed"
    cfg = vae.config
    assert list(cfg.block_out_channels) == [32, 64] and cfg.latent_channels == 4 and cfg.layers_per_block == 1
    with torch.no_grad():
        dist = vae.encode(tensors["image"]).latent_dist
        torch.testing.assert_close(dist.mean, tensors["posterior_mean"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dist.std, tensors["posterior_std"], atol=1e-4, rtol=1e-4)
        dec = vae.decode(dist.mean).sample
        torch.testing.assert_close(dec, tensors["decoded"], atol=1e-4, rtol=1e-4)
    # all VAE GroupNorms use eps 1e-6
    eps = {m.eps for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert eps == {1e-6}


def test_vae_roundtrip_and_strict_errors(reference):
    tensors, _ = reference("mvdream-vae-tiny-a")
    sd = {"first_stage_model." + k: v for k, v in _ldm(tensors).items()}
    vae, _ = convert_ldm_vae(sd, sample_size=32)
    back = vae_to_ldm_state_dict(vae)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k

    extra = dict(sd)
    extra["first_stage_model.encoder.bogus.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="bogus"):
        convert_ldm_vae(extra)
    missing = dict(sd)
    del missing["first_stage_model.decoder.mid.attn_1.q.bias"]
    with pytest.raises(KeyError, match="attn_1.q.bias"):
        convert_ldm_vae(missing)


def test_vae_config_of_full_sd_keys():
    import json

    from conftest import reference_path

    keys = json.loads(reference_path("mvdream-sd21-4view-keys.json").read_text())["keys"]
    sd = {k: torch.empty(v[:-1], device="meta") for k, v in keys.items() if k.startswith("first_stage_model.")}
    cfg = vae_config_from_ldm(sd)
    assert cfg["block_out_channels"] == [128, 256, 512, 512] and cfg["layers_per_block"] == 2
    vae, used = convert_ldm_vae(sd)
    assert used == set(sd) and len(used) == 248


def test_vae_builds_on_a_diffusers_without_the_newer_switches(monkeypatch):
    """threestudio pins diffusers 0.19.3, whose AutoencoderKL has no use_quant_conv / use_post_quant_conv /
    mid_block_add_attention (it always has both convs and the mid-block attention)."""
    import dreamdist3d.backbones.vae as vae_mod
    from dreamdist3d.testing.checkpoints import tiny_vae_config

    class OldAutoencoderKL:  # the 0.19.3 signature
        def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                     up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1, act_fn="silu",
                     latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215, force_upcast=True):
            self.kwargs = dict(locals())

    monkeypatch.setattr(vae_mod, "AutoencoderKL", OldAutoencoderKL)
    cfg = {**tiny_vae_config(), "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}
    assert vae_mod.build_vae(cfg).kwargs["block_out_channels"] == [32, 64]
    with pytest.raises(ValueError, match="use_post_quant_conv=False"):
        vae_mod.build_vae({**cfg, "use_post_quant_conv": False})
