"""MVDream SDS guidance against a hand-written transcription of MVDream-threestudio's forward (contract §3), and the
distribution prompt processor against the distribution API (one sample, γ, mixtures, view-dependent edits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.data import RandomMultiviewCameraDataModule
from dreamdist3d.lift3d.guidance import MultiviewDiffusionGuidance
from dreamdist3d.lift3d.prompt_processor import SAMPLE_FILE, DreamDistributionPromptProcessor, PromptSample
from dreamdist3d.testing.assets import write_tiny_assets


class ToyMVUNet(nn.Module):
    """Depends on x, t, context, camera, and mixes the views of each group (like MVDream's 3D self-attention)."""

    def __init__(self, c: int = 3, d: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.ctx = nn.Linear(d, c)
        self.cam = nn.Linear(16, c)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, t, context, camera=None, num_frames=1):
        h = self.conv(x) + self.ctx(context.mean(1))[:, :, None, None] + self.cam(camera)[:, :, None, None]
        h = h + (t.float() / 1000)[:, None, None, None]
        grp = h.reshape(-1, num_frames, *h.shape[1:])
        return h + grp.mean(1, keepdim=True).expand_as(grp).reshape(h.shape)


class FakePromptUtils:
    def __init__(self, cond, uncond):
        self.cond, self.uncond = cond, uncond

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
        B = elevation.shape[0]
        return torch.cat([self.cond.expand(B, -1, -1), self.uncond.expand(B, -1, -1)])


def reference_sds(unet, alphas, rgb, cond, uncond, c2w, t, noise, scale, r, n_view, image_size):
    """MVDream-threestudio's MultiviewDiffusionGuidance.forward, recon_loss branch, pixel space, written out."""
    B = rgb.shape[0]
    x = F.interpolate(rgb.permute(0, 3, 1, 2), (image_size, image_size), mode="bilinear", align_corners=False)
    z = x * 2 - 1
    a = alphas[t]
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    cam = c2w.clone()
    cam[:, :3, 3] = cam[:, :3, 3] / (cam[:, :3, 3].norm(dim=-1, keepdim=True) + 1e-8)
    cam = cam.reshape(B, 16).repeat(2, 1)
    emb = torch.cat([cond.expand(B, -1, -1), uncond.expand(B, -1, -1)])
    out = unet(torch.cat([z_t, z_t]), torch.full((2 * B,), t), emb, camera=cam, num_frames=n_view)
    e_c, e_u = out.chunk(2)
    e = e_u + scale * (e_c - e_u)
    x0 = (1 / a).sqrt() * z_t - (1 / a - 1).sqrt() * e
    x0_c = (1 / a).sqrt() * z_t - (1 / a - 1).sqrt() * e_c
    g = B // n_view
    f = (x0_c.reshape(g, -1).std(1) + 1e-8) / (x0.reshape(g, -1).std(1) + 1e-8)
    x0 = r * (f.repeat_interleave(n_view)[:, None, None, None] * x0) + (1 - r) * x0
    loss = 0.5 * F.mse_loss(z, x0.detach(), reduction="sum") / B
    return loss, z, x0


def _pixel_backbone(unet):
    return Backbone(name="toy", tokenizer=None, text_encoder=None, unet=unet, schedule=NoiseSchedule.scaled_linear(),
                    resolution=16, vae=None, supports_camera=True)


def _batch(B=8, H=12):
    dm = RandomMultiviewCameraDataModule({"batch_size": B, "n_view": 4, "width": H, "height": H, "camera_perturb": 0.0,
                                          "center_perturb": 0.0, "up_perturb": 0.0, "elevation_range": [0, 30]})
    dm.update_step(0, 5)
    return dm.train_batch()


def test_guidance_matches_mvdream_threestudio_forward_and_gradient():
    torch.manual_seed(0)
    unet = ToyMVUNet()
    guidance = MultiviewDiffusionGuidance(
        {"guidance_scale": 50.0, "image_size": 16, "recon_std_rescale": 0.5, "min_step_percent": [0, 0.98, 0.02, 8000],
         "max_step_percent": [0, 0.98, 0.50, 8000]}, backbone=_pixel_backbone(unet), where="system.guidance",
    )
    assert (guidance.min_step, guidance.max_step) == (980, 980)
    guidance.update_step(0, 8000)
    assert (guidance.min_step, guidance.max_step) == (20, 500)
    batch = _batch()
    c2w_before = batch["c2w"].clone()
    cond, uncond = torch.randn(1, 77, 8), torch.randn(1, 77, 8)
    rgb = torch.rand(8, 12, 12, 3, requires_grad=True)
    t = 333
    torch.manual_seed(7)
    out = guidance(rgb, FakePromptUtils(cond, uncond), **batch, timestep=t)
    torch.manual_seed(7)
    noise = torch.randn(8, 3, 16, 16)
    rgb_ref = rgb.detach().clone().requires_grad_(True)
    loss_ref, z_ref, x0_ref = reference_sds(unet, guidance.alphas_cumprod, rgb_ref, cond, uncond, batch["c2w"], t,
                                            noise, 50.0, 0.5, 4, 16)
    torch.testing.assert_close(out["loss_sds"], loss_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["grad_norm"], ((z_ref - x0_ref) / 8).norm(), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(out["loss_sds"], rgb)
    (g_ref,) = torch.autograd.grad(loss_ref, rgb_ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)
    assert torch.equal(batch["c2w"], c2w_before)  # unlike the official normalize_camera, nothing is written back
    # [cond, uncond] order matters: swapping the halves gives another loss
    torch.manual_seed(7)
    swapped = guidance(rgb, FakePromptUtils(uncond, cond), **batch, timestep=t)
    assert not torch.allclose(swapped["loss_sds"], out["loss_sds"])


def test_guidance_original_sds_branch_and_batch_check():
    unet = ToyMVUNet()
    guidance = MultiviewDiffusionGuidance({"recon_loss": False, "image_size": 16, "guidance_scale": 7.5},
                                          backbone=_pixel_backbone(unet))
    batch = _batch()
    cond, uncond = torch.randn(1, 77, 8), torch.randn(1, 77, 8)
    rgb = torch.rand(8, 12, 12, 3, requires_grad=True)
    torch.manual_seed(3)
    out = guidance(rgb, FakePromptUtils(cond, uncond), **batch, timestep=500)
    # ∂loss/∂z = (1-ᾱ)(ε̂ - ε)/B: check through z directly
    torch.manual_seed(3)
    noise = torch.randn(8, 3, 16, 16)
    z = F.interpolate(rgb.detach().permute(0, 3, 1, 2), (16, 16), mode="bilinear", align_corners=False) * 2 - 1
    a = guidance.alphas_cumprod[500]
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    from dreamdist3d.backbones.cameras import c2w_to_mvdream_camera

    cam = c2w_to_mvdream_camera(batch["c2w"]).repeat(2, 1)
    e = unet(torch.cat([z_t, z_t]), torch.full((16,), 500), torch.cat([cond.expand(8, -1, -1),
                                                                       uncond.expand(8, -1, -1)]), cam, 4)
    e_c, e_u = e.chunk(2)
    grad = (1 - a) * (e_u + 7.5 * (e_c - e_u) - noise)
    torch.testing.assert_close(out["loss_sds"], 0.5 * (grad**2).sum() / 8, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="n_view"):
        guidance(rgb[:6], FakePromptUtils(cond, uncond), **{k: (v[:6] if torch.is_tensor(v) else v) for k,
                                                            v in batch.items()})


# ---------------------------------------------------------------------------------------------- prompt processor
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from dreamdist3d.backbones.mvdream import load_mvdream

    folder = tmp_path_factory.mktemp("tiny")
    ckpt, dist = write_tiny_assets(folder)
    return {"ckpt": ckpt, "dist": dist, "backbone": load_mvdream(ckpt), "folder": folder}


def _fit(assets, **kw):
    from dreamdist3d.distribution import PromptDistribution

    bb = assets["backbone"]
    return PromptDistribution.load(assets["dist"]).learner(bb.text_encoder, bb.tokenizer).fit(**kw)


def test_processor_draws_one_seeded_sample_and_threestudio_output(assets, tmp_path):
    bb = assets["backbone"]
    pp = DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "scale": 1.5,
                                           "negative_prompt": "ugly"},
                                          backbone=bb, seed=3, save_dir=str(tmp_path))
    out = pp()
    D = bb.text_encoder.hidden_size
    assert out.text_embeddings.shape == (1, 77, D) and out.uncond_text_embeddings.shape == (1, 77, D)
    assert out.text_embeddings_vd.shape == (4, 77, D) and out.direction2idx == {"side": 0, "front": 1, "back": 2,
                                                                                "overhead": 3}
    g = _fit(assets)
    want = g.sample(1, scale=1.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.text_embeddings, want)
    torch.testing.assert_close(out.uncond_text_embeddings, bb.encode_text(["ugly"]))
    elev, azi, dist = torch.zeros(8), torch.arange(8.0) * 45, torch.ones(8)
    emb = out.get_text_embeddings(elev, azi, dist, view_dependent_prompting=False)
    assert emb.shape == (16, 77, D)
    assert torch.equal(emb[:8], want.expand(8, -1, -1)) and torch.equal(emb[8:],
                                                                        out.uncond_text_embeddings.expand(8, -1, -1))
    with pytest.raises(ConfigError, match="view_dependent_prompting"):
        out.get_text_embeddings(elev, azi, dist, view_dependent_prompting=True)
    # γ = 0 is the mean; another seed is another sample
    mean = DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "scale": 0.0}, backbone=bb, seed=3)()
    torch.testing.assert_close(mean.text_embeddings[0], g.mean)
    other = DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "scale": 1.5}, backbone=bb, seed=4)()
    assert (other.text_embeddings - out.text_embeddings).abs().max() > 1e-2


def test_processor_saves_and_reuses_its_sample(assets, tmp_path):
    bb = assets["backbone"]
    cfg = {"distribution": str(assets["dist"])}
    first = DreamDistributionPromptProcessor(cfg, backbone=bb, seed=0, save_dir=str(tmp_path))
    saved = PromptSample.load(tmp_path / SAMPLE_FILE)
    torch.testing.assert_close(saved.text_embeddings, first.sample.text_embeddings)
    assert saved.meta["seed"] == 0
    # a resumed run reads the file; it does not draw again
    import dreamdist3d.lift3d.prompt_processor as ppm

    orig = ppm.draw_prompt_sample
    ppm.draw_prompt_sample = lambda *a, **k: (_ for _ in ()).throw(AssertionError("drew a new sample"))
    try:
        again = DreamDistributionPromptProcessor(cfg, backbone=bb, seed=0, save_dir=str(tmp_path))
    finally:
        ppm.draw_prompt_sample = orig
    assert torch.equal(again().text_embeddings, first().text_embeddings)
    with pytest.raises(ConfigError, match="seed"):
        DreamDistributionPromptProcessor(cfg, backbone=bb, seed=1, save_dir=str(tmp_path))


def test_processor_view_dependent_suffix_edits_share_one_draw(assets):
    bb = assets["backbone"]
    pp = DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "view_dependent_prompting": True},
                                          backbone=bb, seed=5)
    out = pp()
    eps = torch.randn((77, bb.text_encoder.hidden_size), generator=torch.Generator().manual_seed(5))
    for i, d in enumerate(("side", "front", "back", "overhead")):
        g = _fit(assets, suffix=f", {d} view")
        torch.testing.assert_close(out.text_embeddings_vd[i], g.mean + eps * g.std)
    assert out.prompts_vd[1].endswith(", front view")
    elev = torch.tensor([10.0, 10.0, 10.0, 70.0])
    azi = torch.tensor([0.0, 90.0, 180.0, 90.0])
    emb = out.get_text_embeddings(elev, azi, torch.ones(4), view_dependent_prompting=True)
    assert torch.equal(emb[0], out.text_embeddings_vd[1]) and torch.equal(emb[1], out.text_embeddings_vd[0])
    assert torch.equal(emb[2], out.text_embeddings_vd[2]) and torch.equal(emb[3], out.text_embeddings_vd[3])
    perp, w = out.get_text_embeddings_perp_neg(elev, azi, torch.ones(4))
    assert perp.shape == (16, 77, bb.text_encoder.hidden_size) and w.shape == (4, 2)


def test_processor_mixture_and_prefix_edit(assets, tmp_path):
    import shutil

    bb = assets["backbone"]
    dist2 = tmp_path / "copy.safetensors"
    shutil.copyfile(assets["dist"], dist2)
    mix = DreamDistributionPromptProcessor(
        {"mixture": [{"path": str(assets["dist"]), "weight": 0.5, "scale": 1.0}, {"path": str(dist2), "weight": 0.5,
                                                                                  "scale": 1.0}]},
        backbone=bb, seed=0)()
    g = _fit(assets)  # mixing a distribution with itself: mean μ, std sqrt(2·(σ/2)²) = σ/√2
    eps = torch.randn(g.mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mix.text_embeddings[0], g.mean + eps * g.std / 2**0.5)
    edited = DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "prefix": "a drawing of"},
                                              backbone=bb, seed=0)()
    ge = _fit(assets, prefix="a drawing of")
    torch.testing.assert_close(edited.text_embeddings[0], ge.mean + eps * ge.std)


def test_processor_errors_name_the_key(assets, tmp_path):
    bb = assets["backbone"]
    with pytest.raises(FileNotFoundError, match="system.prompt_processor.distribution"):
        DreamDistributionPromptProcessor({"distribution": str(tmp_path / "missing.safetensors")}, backbone=bb,
                                         where="system.prompt_processor")
    with pytest.raises(ConfigError, match="system.prompt_processor.distribution is not set"):
        DreamDistributionPromptProcessor({}, backbone=bb, where="system.prompt_processor")
    with pytest.raises(ConfigError, match="system.prompt_processor.scael"):
        DreamDistributionPromptProcessor({"distribution": str(assets["dist"]), "scael": 2}, backbone=bb,
                                         where="system.prompt_processor")
    other_ckpt, other_dist = write_tiny_assets(tmp_path / "other", seed=1)  # learned against another text encoder
    with pytest.raises(ValueError, match="system.prompt_processor.distribution.*text encoder"):
        DreamDistributionPromptProcessor({"distribution": str(other_dist)}, backbone=bb,
                                         where="system.prompt_processor")


def test_guidance_on_the_tiny_mvdream_checkpoint_encodes_through_the_vae(assets):
    guidance = MultiviewDiffusionGuidance({"pretrained_model_name_or_path": str(assets["ckpt"]), "image_size": 32},
                                          where="system.guidance")
    assert guidance.latent_size == 16
    pp = DreamDistributionPromptProcessor({"distribution": str(assets["dist"])}, backbone=guidance.backbone)
    batch = _batch(B=4, H=16)
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, pp(), **batch)
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="system.guidance.pretrained_model_name_or_path"):
        MultiviewDiffusionGuidance({"pretrained_model_name_or_path": "/nonexistent/sd-v2.1-base-4view.pt"},
                                   where="system.guidance")
    with pytest.raises(ConfigError, match="system.guidance.pretrained_model_name_or_path is not set"):
        MultiviewDiffusionGuidance({}, where="system.guidance")
