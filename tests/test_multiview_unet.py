"""MultiViewUNet: parity with the official MVDream UNet, the released checkpoint's keys, multi-view behaviour."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_path
from torch import nn

from dreamdist3d.backbones.multiview_unet import (
    MVDREAM_SD21_CONFIG,
    MultiViewUNet,
    sdpa_attention,
    timestep_embedding,
)

TINY = dict(
    image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1], num_res_blocks=1,
    channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True, use_linear_in_transformer=True,
    transformer_depth=1, context_dim=24, legacy=False, camera_dim=16,
)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter (the zero-initialised ones too) the way the reference fixtures do."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(p) for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for p in m.parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if id(p) in norms:
                p.copy_(1 + 0.1 * r if name.endswith("weight") else 0.1 * r)
            elif p.ndim >= 2:
                p.copy_(r * 1.5 / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * r)
    return model


def tiny_inputs(b: int = 2, f: int = 4, seed: int = 1, size: int = 8, ctx: int = 24):
    g = torch.Generator().manual_seed(seed)
    n = b * f
    return (
        torch.randn(n, 4, size, size, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        torch.randn(n, 7, ctx, generator=g),
        torch.randn(n, 16, generator=g),
    )


# ------------------------------------------------------------------------------------------------ official parity
def test_parity_with_official_tiny_a(reference):
    tensors, meta = reference("mvdream-unet-tiny-a")
    model = MultiViewUNet.from_config(meta["constructor_kwargs"]).eval()
    weights = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    assert len(weights) == meta["n_unet_tensors"] == 406
    model.load_state_dict(weights, strict=True)
    assert sum(p.numel() for p in model.parameters()) == meta["n_unet_params"]
    with torch.no_grad():
        out_mv = model(tensors["x"], tensors["timesteps"], tensors["context"], camera=tensors["camera"], num_frames=4)
        out_2d = model(tensors["x1"], tensors["t1"], tensors["c1"], camera=None, num_frames=1)
    torch.testing.assert_close(out_mv, tensors["out_mv"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_2d, tensors["out_2d"], atol=1e-4, rtol=1e-4)
    # a real bug moves values by ~0.1: dropping the camera, or running the views apart, must be far outside tolerance
    with torch.no_grad():
        no_cam = model(tensors["x"], tensors["timesteps"], tensors["context"], camera=None, num_frames=4)
        apart = model(tensors["x"], tensors["timesteps"], tensors["context"], camera=tensors["camera"], num_frames=1)
    assert (no_cam - tensors["out_mv"]).abs().max() > 1e-2
    assert (apart - tensors["out_mv"]).abs().max() > 1e-2


def test_released_checkpoint_keys_and_shapes():
    path = reference_path("mvdream-sd21-4view-keys.json")
    entries = json.loads(path.read_text())["keys"]
    prefix = "model.diffusion_model."
    expected = {k[len(prefix):]: tuple(v[:-1]) for k, v in entries.items() if k.startswith(prefix)}
    with torch.device("meta"):
        model = MultiViewUNet.from_config(MVDREAM_SD21_CONFIG)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(expected)) == []  # extra
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert len(ours) == 690 and sum(v.numel() for v in model.state_dict().values()) == 867_572_164


def test_from_config_accepts_official_unet_config_block():
    block = {"target": "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel", "params": dict(TINY)}
    model = MultiViewUNet.from_config(block)
    assert model.config["context_dim"] == 24 and hasattr(model, "camera_embed")
    with pytest.raises(TypeError, match="unknown key"):
        MultiViewUNet.from_config({**TINY, "use_flash": True})


def test_unsupported_options_say_so():
    with pytest.raises(NotImplementedError, match="use_spatial_transformer=False"):
        MultiViewUNet(**{**TINY, "use_spatial_transformer": False, "context_dim": None})
    with pytest.raises(NotImplementedError, match="num_classes"):
        MultiViewUNet(**{**TINY, "num_classes": 10})
    with pytest.raises(NotImplementedError, match="use_fp16"):
        MultiViewUNet(**{**TINY, "use_fp16": True})


# ------------------------------------------------------------------------------------------------ behaviour
def test_timestep_embedding_is_cos_first():
    emb = timestep_embedding(torch.tensor([0, 10]), 6)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


def test_views_of_one_object_see_each_other_and_nothing_else():
    torch.manual_seed(0)
    model = randomize_(MultiViewUNet(**TINY)).eval()
    x, t, ctx, cam = tiny_inputs()
    x2 = x.clone()
    x2[0] += 1.0  # perturb view 0 of sample 0
    with torch.no_grad():
        a = model(x, t, ctx, camera=cam, num_frames=4)
        b = model(x2, t, ctx, camera=cam, num_frames=4)
        a1 = model(x, t, ctx, camera=cam, num_frames=1)
        b1 = model(x2, t, ctx, camera=cam, num_frames=1)
    change = (a - b).flatten(1).abs().amax(1)  # (8,) per row
    assert (change[1:4] > 1e-3).all(), change  # the other 3 views of sample 0 change
    assert (change[4:] == 0).all(), change  # sample 1 is untouched, bit for bit
    change1 = (a1 - b1).flatten(1).abs().amax(1)
    assert change1[0] > 1e-3 and (change1[1:] == 0).all(), change1  # num_frames=1: rows are independent


def test_transformer_depth_2_with_int_context_dim_matches_list_of_contexts():
    torch.manual_seed(0)
    model = randomize_(MultiViewUNet(**{**TINY, "transformer_depth": 2})).eval()
    assert len(model.middle_block[1].transformer_blocks) == 2
    x, t, ctx, cam = tiny_inputs(b=1)
    with torch.no_grad():
        shared = model(x, t, ctx, camera=cam, num_frames=4)
        listed = model(x, t, [ctx, ctx], camera=cam, num_frames=4)
        other = model(x, t, [ctx, ctx.flip(0)], camera=cam, num_frames=4)
    assert torch.equal(shared, listed)
    assert (other - shared).abs().max() > 1e-3  # the list really feeds block i with context[i]


@pytest.mark.parametrize(
    "variant",
    [
        {"use_linear_in_transformer": False},
        {"resblock_updown": True, "use_scale_shift_norm": True},
        {"conv_resample": False, "num_heads": 2, "num_head_channels": -1, "legacy": True},
        {"num_attention_blocks": [0, 1], "num_res_blocks": [1, 1]},
    ],
)
def test_variants_build_and_run(variant):
    model = randomize_(MultiViewUNet(**{**TINY, **variant})).eval()
    x, t, ctx, cam = tiny_inputs(b=1)
    with torch.no_grad():
        out = model(x, t, ctx, camera=cam, num_frames=4)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gradient_checkpointing_gives_same_output_and_gradients():
    torch.manual_seed(0)
    model = randomize_(MultiViewUNet(**TINY)).train()
    x, t, ctx, cam = tiny_inputs(b=1)

    def run():
        model.zero_grad(set_to_none=True)
        xi, ci = x.clone().requires_grad_(True), ctx.clone().requires_grad_(True)
        out = model(xi, t, ci, camera=cam, num_frames=4)
        (out.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out.detach(), xi.grad, ci.grad, grads

    plain = run()
    model.enable_gradient_checkpointing()
    assert all(m.use_checkpoint for m in model.modules() if hasattr(m, "use_checkpoint"))
    ckpt = run()
    model.enable_gradient_checkpointing(False)
    torch.testing.assert_close(ckpt[0], plain[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ckpt[1], plain[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ckpt[2], plain[2], atol=1e-6, rtol=1e-5)
    for name, g in plain[3].items():
        torch.testing.assert_close(ckpt[3][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert plain[2].abs().max() > 0  # gradients reach the text context (prompt learning needs this)


def test_einsum_attention_swap_and_bf16():
    torch.manual_seed(0)
    model = randomize_(MultiViewUNet(**TINY)).eval()
    x, t, ctx, cam = tiny_inputs(b=1)

    def einsum_attention(q, k, v):
        w = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
        return torch.einsum("bhij,bhjd->bhid", w.softmax(-1), v)

    with torch.no_grad():
        ref = model(x, t, ctx, camera=cam, num_frames=4)
        model.set_attention_fn(einsum_attention)
        alt = model(x, t, ctx, camera=cam, num_frames=4)
        model.set_attention_fn(sdpa_attention)
        half = model.to(torch.bfloat16)(x, t, ctx, camera=cam, num_frames=4)
    torch.testing.assert_close(alt, ref, atol=1e-4, rtol=1e-4)
    assert half.dtype == torch.float32  # returned in the dtype of x
    assert (half - ref).abs().max() < 0.1 * ref.abs().max()
