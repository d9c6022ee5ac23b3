"""Refining a reconstruction on its own input views (`reconstruct.refine`): the fit moves the Gaussians toward the
views, keeps them where the views say nothing, and reaches the feed-forward lift through `system.anchor`."""

from __future__ import annotations

import pytest
import torch

from dreamdist3d.backbones.cameras import c2w_from_spherical
from dreamdist3d.backbones.load import load_backbone
from dreamdist3d.lift3d.anchor import AnchorConfig, AnchorViews, embedding_digest, sample_cameras, sampler_of
from dreamdist3d.lift3d.reconstruction import build_anchor, gaussian_targets, reconstruct_sample, refine_sample
from dreamdist3d.reconstruct import Gaussians, load_reconstructor, render_gaussians
from dreamdist3d.reconstruct.refine import refine_gaussians
from dreamdist3d.sample2d.mvdream_preview import PreviewSampler
from dreamdist3d.toyworld.objects import sample_objects
from dreamdist3d.toyworld.render import render

SEEN = c2w_from_spherical(torch.full((4,), 15.0), torch.tensor([-90.0, 0.0, 90.0, 180.0]), 3.0)
NOVEL = c2w_from_spherical(torch.full((4,), 15.0), torch.tensor([-45.0, 45.0, 135.0, 225.0]), 3.0)


def _error(g: Gaussians, c2w: torch.Tensor, truth) -> float:
    out = render_gaussians(g, c2w, 40.0, 32, 32)
    return float((out.rgb.permute(0, 3, 1, 2) - truth.image).abs().mean())


def test_refinement_fits_the_input_views_of_objects_it_never_saw():
    """The shipped toy reconstructor on renders of objects from a grammar seed training never used: 20 refinement
    steps lower the error at the input views and do not raise it at the views halfway between them."""
    model = load_reconstructor("toy")
    before, after, before_novel, after_novel = [], [], [], []
    for spec in sample_objects(6, 2031):
        inputs = render([spec], SEEN.reshape(-1, 16), distance=None)
        truth = render([spec], NOVEL.reshape(-1, 16), distance=None)
        g = model.reconstruct_scene(inputs.image[None], SEEN, 40.0)[0]
        refined, stats = refine_gaussians(g, inputs.image, SEEN, 40.0, steps=20)
        assert stats["loss_last"] < stats["loss_first"] and refined.num == g.num
        before.append(_error(g, SEEN, inputs))
        after.append(_error(refined, SEEN, inputs))
        before_novel.append(_error(g, NOVEL, truth))
        after_novel.append(_error(refined, NOVEL, truth))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(after) < 0.8 * mean(before), (before, after)
    assert mean(after_novel) < 1.05 * mean(before_novel), (before_novel, after_novel)


def _rendered_sample(object_seed: int, sampler: PreviewSampler, digest: str = "x"):
    """A toy object rendered at the sample's own cameras (MVDream azimuth a = scene a − 90): (views, c2w, spec)."""
    c2w = c2w_from_spherical(*sample_cameras(sampler), 3.0)
    spec = sample_objects(1, object_seed)[0]
    return AnchorViews(render([spec], c2w.reshape(-1, 16), distance=None).image, 0, sampler, digest), c2w, spec


def test_system_anchor_refine_steps_reach_the_reconstruction():
    """`system.anchor.refine_steps` (what `--lift lgm` reads): the same views, reconstructed and refined, at the
    sample's own cameras (MVDream azimuth a = scene a − 90)."""
    views, c2w, spec = _rendered_sample(2033, PreviewSampler(elevation=15.0))
    cfg = AnchorConfig(source="lgm", reconstructor="toy", refine_steps=10)
    plain = reconstruct_sample(cfg, views)
    refined = refine_sample(cfg, views, plain)
    assert refine_sample(AnchorConfig(source="lgm", reconstructor="toy"), views, plain) is plain  # 0 steps: as is
    assert plain.num == refined.num and not torch.equal(plain.colors, refined.colors)
    truth = render([spec], c2w.reshape(-1, 16), distance=None)
    assert _error(refined, c2w, truth) < _error(plain, c2w, truth)


def test_lgm_anchors_fit_the_refined_reconstruction(tmp_path):
    """`source: lgm` with `refine_steps` > 0: the renders a run fits are those of the refined reconstruction (here at
    the sample's own four cameras, so they come closer to the sample than the unrefined reconstruction's)."""
    backbone = load_backbone("toy")
    emb = backbone.encode_text([""])  # (1, 77, D)
    sampler = sampler_of(AnchorConfig(), backbone)
    views, _, _ = _rendered_sample(2035, sampler, embedding_digest(emb))
    errors = {}
    for steps in (0, 10):
        cfg = AnchorConfig(source="lgm", reconstructor="toy", refine_steps=steps, lgm_azimuths=4,
                           lgm_elevations=[sampler.elevation])
        views.save(tmp_path / str(steps))  # an earlier start drew them: the anchor reads them back
        anchor = build_anchor(cfg, backbone, emb, 0, tmp_path / str(steps))
        want = gaussian_targets(cfg, refine_sample(cfg, views, reconstruct_sample(cfg, views)), views)
        torch.testing.assert_close(anchor.rgb, want.views.permute(0, 2, 3, 1))
        errors[steps] = float((anchor.rgb - views.views.permute(0, 2, 3, 1)).abs().mean())
    assert errors[10] < 0.9 * errors[0], errors


def test_zero_steps_and_bad_settings():
    g = Gaussians(torch.zeros(2, 3), torch.full((2,), 0.5), torch.full((2, 3), 0.1), torch.tensor([[1.0, 0, 0, 0]] * 2),
                  torch.full((2, 3), 0.5))
    views = torch.ones(4, 3, 8, 8)
    same, stats = refine_gaussians(g, views, SEEN, 40.0, steps=0)
    assert stats == {} and all(torch.equal(getattr(same, k), getattr(g, k)) for k in ("means", "scales", "colors"))
    with pytest.raises(ValueError, match="steps must be ≥ 0"):
        refine_gaussians(g, views, SEEN, 40.0, steps=-1)
    with pytest.raises(ValueError, match="one object"):
        refine_gaussians(Gaussians(*(getattr(g, k)[None] for k in ("means", "opacities", "scales", "rotations",
                                                                      "colors"))), views, SEEN, 40.0, steps=1)
