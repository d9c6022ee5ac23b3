"""The learning loss against the official training step (dreamdist-trainstep-tiny-a), and fast == official.

Float32 tolerances: `conftest.F32` (why there)."""

import pytest
import torch
from conftest import F32

from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.distribution import PromptLearner
from dreamdist3d.learn.loss import distribution_loss, min_snr_weights, official_snr
from dreamdist3d.text import ClipTokenizer, TextEncoder

PREFIX = {"v_prediction": "v", "epsilon": "eps"}


@pytest.fixture(scope="module")
def official():
    from conftest import load_reference
    from diffusers import UNet2DConditionModel

    from dreamdist3d.backbones.sd21 import DiffusersUNetAdapter

    a, am = load_reference("dreamdist-promptlearner-tiny-a")
    t, tm = load_reference("dreamdist-trainstep-tiny-a")
    enc = TextEncoder.from_hf_state_dict(
        am["text_encoder_config"], {k[len("text_encoder."):]: v for k, v in a.items() if k.startswith("text_encoder.")}
    )
    unet = UNet2DConditionModel(**tm["unet_config"])
    unet.load_state_dict({k[len("unet."):]: v for k, v in t.items() if k.startswith("unet.")}, strict=True)
    return a, t, tm, enc, DiffusersUNetAdapter(unet.eval().requires_grad_(False))


def _learner(a, enc):
    pl = PromptLearner(enc, ClipTokenizer.default(), n_ctx=4, n_prompts=6, position_mode="official")
    with torch.no_grad():
        pl.ctx.copy_(a["ctx"][0])
    return pl


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("mode", ["official", "fast"])
def test_official_training_step_parity(official, prediction, mode):
    a, t, tm, enc, unet = official
    p = PREFIX[prediction]
    js = tm[prediction]
    pl = _learner(a, enc)
    schedule = NoiseSchedule.scaled_linear(prediction, style="diffusers")  # the DDPMScheduler's float32 ᾱ
    out = distribution_loss(pl, unet, schedule, t["latents"], t[f"{p}.noise"], t[f"{p}.timesteps"],
                            t[f"{p}.reparam_eps"], snr_gamma=js["snr_gamma"], ortho_weight=js["ortho_loss_weight"],
                            mode=mode, keep_pred=True)
    rel = dict(atol=0, rtol=1e-6)
    torch.testing.assert_close(out.total, t[f"{p}.loss_total"], **rel)
    torch.testing.assert_close(out.mse, t[f"{p}.loss_mse"], **rel)
    torch.testing.assert_close(out.ortho, t[f"{p}.loss_ortho"], **rel)
    torch.testing.assert_close(out.weights, t[f"{p}.mse_loss_weights"], atol=0, rtol=1e-6)
    torch.testing.assert_close(out.per_sample_mse, t[f"{p}.per_sample_mse"], **F32)
    torch.testing.assert_close(out.model_pred, t[f"{p}.model_pred"], atol=1e-5, rtol=0)  # diffusers 0.24 vs today

    out.total.backward()
    torch.testing.assert_close(pl.ctx.grad, t[f"{p}.ctx_grad"][0], **F32)
    norm = torch.nn.utils.clip_grad_norm_([pl.ctx], 1.0)
    torch.testing.assert_close(norm, t[f"{p}.grad_norm_preclip"], **F32)  # a reduction: 1.3e-6 rel. on an AMD EPYC
    torch.testing.assert_close(pl.ctx.grad, t[f"{p}.ctx_grad_clipped"][0], **F32)
    torch.optim.AdamW([pl.ctx], lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8).step()
    torch.testing.assert_close(pl.ctx.detach(), t[f"{p}.ctx_after_adamw"][0], **F32)


def test_min_snr_has_no_plus_one_for_v(official):
    _, t, tm, _, _ = official
    ts = t["v.timesteps"].repeat_interleave(3)
    snr = official_snr(NoiseSchedule.scaled_linear("v_prediction", style="diffusers").alphas_cumprod, ts)
    torch.testing.assert_close(snr, t["v.snr"], atol=0, rtol=1e-6)
    w = min_snr_weights(snr, 5.0).view(2, 3)
    torch.testing.assert_close(w, t["v.mse_loss_weights"], atol=0, rtol=1e-6)
    plus_one = torch.tensor(tm["v_prediction_plus1_info_only"]["weights"])
    assert (w - plus_one).abs().max() > 0.1  # the diffusers (SNR+1) variant is NOT what the official code does
    assert torch.equal(min_snr_weights(snr, 0.0), torch.ones_like(snr))


def test_fast_equals_official_in_multiview_layout():
    """4-view items with cameras: same loss, same ctx gradient (up to re-association), rows b-major (b, r, f)."""
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    bb = tiny_toy_backbone(supports_camera=True)
    calls = []

    def recording(x, t, context, camera=None, num_frames=1):
        calls.append((t.clone(), context.detach().clone(), camera.clone(), num_frames))
        return bb(x, t, context, camera=camera, num_frames=num_frames)

    g = torch.Generator().manual_seed(0)
    B, F, R = 2, 4, 3
    lat, noise = torch.randn(B, F, 3, 8, 8, generator=g), torch.randn(B, F, 3, 8, 8, generator=g)
    ts, eps = torch.tensor([10, 700]), torch.randn(B, R, 77, 32, generator=g)
    cams = torch.randn(B, F, 16, generator=g)
    grads, losses = [], []
    for mode in ("official", "fast"):
        pl = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=5,
                           generator=torch.Generator().manual_seed(1))
        out = distribution_loss(pl, recording, bb.schedule, lat, noise, ts, eps, cameras=cams, mode=mode)
        out.total.backward()
        grads.append(pl.ctx.grad.clone())
        losses.append(out.total.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], **F32)
    t_rows, c_rows, cam_rows, frames = calls[-1]
    assert frames == F and t_rows.shape == (B * R * F,)
    row = lambda b, r, f: (b * R + r) * F + f  # noqa: E731
    assert t_rows[row(1, 2, 3)] == 700 and t_rows[row(0, 2, 3)] == 10
    torch.testing.assert_close(cam_rows[row(1, 0, 2)], cams[1, 2], atol=0, rtol=0)
    torch.testing.assert_close(c_rows[row(1, 2, 0)], c_rows[row(1, 2, 3)], atol=0, rtol=0)
    assert (c_rows[row(1, 2, 0)] - c_rows[row(1, 1, 0)]).abs().max() > 1e-3  # each r its own sample


def test_assign_runs_each_drawn_prompt_once_per_image_with_the_same_loss():
    """`assign` in the fast arrangement: samples of one image that drew the same prompt are one denoiser row (4-view,
    cameras), and loss, per-sample losses, kept predictions and the ctx gradient equal running every row (official)."""
    from dreamdist3d.learn.loss import denoiser_rows
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    bb = tiny_toy_backbone(supports_camera=True)
    rows = {}

    def recording(mode):
        def call(x, t, context, camera=None, num_frames=1):
            rows[mode] = (t.clone(), context.detach().clone(), camera.clone())
            return bb(x, t, context, camera=camera, num_frames=num_frames)
        return call

    g = torch.Generator().manual_seed(0)
    B, F, R, K = 3, 4, 4, 5
    lat, noise = torch.randn(B, F, 3, 8, 8, generator=g), torch.randn(B, F, 3, 8, 8, generator=g)
    ts, cams = torch.tensor([10, 700, 300]), torch.randn(B, F, 16, generator=g)
    index = torch.tensor([[0, 3, 0, 0], [1, 1, 1, 1], [2, 4, 4, 2]])  # 2 + 1 + 2 distinct (image, prompt) pairs
    out = {}
    for mode in ("official", "fast"):
        pl = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=K,
                           generator=torch.Generator().manual_seed(1))
        res = distribution_loss(pl, recording(mode), bb.schedule, lat, noise, ts, None, cameras=cams, mode=mode,
                                objective="assign", prompt_index=index, keep_pred=True)
        res.total.backward()
        out[mode] = (res, pl.ctx.grad.clone())
    assert rows["official"][0].shape == (B * R * F,) and rows["fast"][0].shape == (5 * F,)
    rows_b, rows_k, inverse = denoiser_rows(B, R, index, K)
    assert rows_b.tolist() == [0, 0, 1, 2, 2] and rows_k.tolist() == [0, 3, 1, 2, 4]
    assert inverse.view(B, R).tolist() == [[0, 1, 0, 0], [2, 2, 2, 2], [3, 4, 4, 3]]
    t_fast, c_fast, cam_fast = rows["fast"]
    assert t_fast[4 * F:].tolist() == [300] * F and torch.equal(cam_fast[2 * F:3 * F], cams[1])
    t_all, c_all, _ = rows["official"]
    torch.testing.assert_close(c_fast[4 * F], c_all[(2 * R + 1) * F], **F32)  # image 2's prompt 4
    (fast, g_fast), (full, g_full) = out["fast"], out["official"]
    torch.testing.assert_close(fast.total, full.total, atol=0, rtol=1e-6)
    torch.testing.assert_close(fast.per_sample_mse, full.per_sample_mse, **F32)
    torch.testing.assert_close(fast.model_pred, full.model_pred, **F32)
    assert fast.model_pred.shape == (B, R, F, 3, 8, 8)
    torch.testing.assert_close(g_fast, g_full, **F32)
    assert g_full.abs().max() > 1e-6 and g_full[0].abs().max() > 0  # a real gradient, prompt 0 counted three times


def test_lowpass_term_adds_the_block_averaged_error_once_more():
    """`lowpass_weight` λ: each row's loss is its MSE plus λ × the MSE of the error averaged over lowpass_pool² blocks
    (the body's colour and layout), under the same min-SNR weights; λ = 0 is the loss as it was, bit for bit."""
    import torch.nn.functional as F_

    from dreamdist3d.testing.backbones import tiny_toy_backbone

    bb = tiny_toy_backbone(supports_camera=True)
    g = torch.Generator().manual_seed(0)
    B, F, R, K = 2, 4, 2, 3
    lat, noise = torch.randn(B, F, 3, 8, 8, generator=g), torch.randn(B, F, 3, 8, 8, generator=g)
    ts, cams = torch.tensor([900, 100]), torch.randn(B, F, 16, generator=g)
    index = torch.tensor([[0, 2], [1, 1]])
    out = {}
    for lam in (0.0, 3.0):
        pl = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=K,
                           generator=torch.Generator().manual_seed(1))
        out[lam] = distribution_loss(pl, bb, bb.schedule, lat, noise, ts, None, cameras=cams, objective="assign",
                                     prompt_index=index, keep_pred=True, lowpass_weight=lam, lowpass_pool=4)
    plain, low = out[0.0], out[3.0]
    torch.testing.assert_close(low.model_pred, plain.model_pred, atol=0, rtol=0)
    error = plain.model_pred - bb.schedule.target(lat, noise, ts)[:, None]  # (B, R, F, 3, 8, 8)
    blocks = F_.avg_pool2d(error.reshape(-1, 3, 8, 8), 4).reshape(B, R, -1).pow(2).mean(-1)  # (B, R)
    torch.testing.assert_close(low.per_sample_mse, plain.per_sample_mse + 3.0 * blocks, **F32)
    torch.testing.assert_close(low.mse, (low.per_sample_mse * low.weights).mean(), **F32)
    assert blocks.min() > 1e-4 and low.mse > plain.mse
