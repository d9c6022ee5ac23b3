"""Anchored 3D runs (`dreamdist3d.lift3d.anchor`): the anchor views are `preview`'s images of the run's seed, the
field fitted to them is the object they show (cameras right, seen and unseen views), config errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.cli import main
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.anchor import (
    GRID_FILE,
    VIEWS_FILE,
    Anchor,
    AnchorConfig,
    AnchorViews,
    embedding_digest,
    prepare_views,
)
from dreamdist3d.lift3d.data import camera_batch
from dreamdist3d.lift3d.system import MVDreamSystem
from dreamdist3d.recipes.lift3d import load_config, run_3d
from dreamdist3d.sample2d.mvdream_preview import PreviewSampler
from dreamdist3d.testing.assets import write_tiny_assets
from dreamdist3d.toyworld.objects import ObjectSpec, PartSpec
from dreamdist3d.toyworld.render import render

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml"
TOY = REPO / "configs" / "toy" / "toy-3d.yaml"
ANCHORED = ["system.anchor.source=preview", "system.loss.lambda_anchor_rgb=1000", "system.loss.lambda_anchor_mask=100"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("assets"))


def _tiny_run(tmp_path, ckpt, dist, seed, *extra):
    return run_3d(TINY, overrides=[
        f"system.guidance.pretrained_model_name_or_path={ckpt}", f"system.prompt_processor.distribution={dist}",
        f"exp_root_dir={tmp_path}", f"seed={seed}", "trainer.max_steps=3", "trainer.val_check_interval=0",
        "data.n_test_views=2", "system.anchor.steps=2", *ANCHORED, *extra], device="cpu")


def test_anchor_views_of_a_run_are_previews_images_of_its_seed(assets, tmp_path):
    """The mechanism, with the tiny MVDream checkpoint: a run with seed s fits exactly what `dreamdist3d preview
    --seed s` shows (bit for bit on CPU), and preview sample i of `--seed 0 --n 3` is the 4-view sample of seed i."""
    ckpt, dist = assets
    res = _tiny_run(tmp_path / "runs", ckpt, dist, 2)
    views = AnchorViews.load(res.run_dir / "anchor" / VIEWS_FILE)
    assert views.seed == 2 and views.views.shape == (4, 3, 32, 32) and views.views.std() > 0.01
    assert views.sampler == PreviewSampler()  # MVDream's preview defaults: 50 steps, CFG 7.5, elevation 15
    anchor_png = np.asarray(Image.open(res.run_dir / "anchor" / GRID_FILE))

    one = tmp_path / "one.png"
    assert main(["preview", "--mvdream", str(ckpt), "--distribution", str(dist), "--seed", "2", "--out", str(one),
                 "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(one)), anchor_png)
    from dreamdist3d.backbones.mvdream import load_mvdream
    from dreamdist3d.sample2d.mvdream_preview import conditioning_from_distribution, preview_views

    bb = load_mvdream(ckpt)
    ctx = conditioning_from_distribution(bb, dist, 3, seed=0)
    many = preview_views(bb, ctx, [0, 1, 2], PreviewSampler(), max_batch=1)
    assert torch.equal(many[2], views.views)  # sample 2 of seed 0 = the 4-view sample of seed 2, bit for bit
    batched = preview_views(bb, ctx, [0, 1, 2], PreviewSampler(), max_batch=4)
    torch.testing.assert_close(batched[2], views.views, atol=1e-5, rtol=0)  # batching: float rounding only
    grid = tmp_path / "three.png"
    assert main(["preview", "--mvdream", str(ckpt), "--distribution", str(dist), "--seed", "0", "--n", "3",
                 "--out", str(grid), "--device", "cpu"]) == 0
    row = np.asarray(Image.open(grid))[64:96]  # row 2: sample 2, its 4 views side by side (32 px tiles)
    tiles = np.concatenate([np.concatenate([row[:, 0:32], row[:, 32:64]], 1),
                            np.concatenate([row[:, 64:96], row[:, 96:128]], 1)], 0)  # as the 2×2 anchor grid
    assert np.abs(tiles.astype(int) - anchor_png.astype(int)).max() <= 1
    side = json.loads(grid.with_suffix(".json").read_text())
    assert side["image_seeds"] == [2**31, 2**31 + 1, 2**31 + 2] and side["sampler"]["steps"] == 50


def test_resumed_run_reuses_its_anchor_and_other_settings_are_refused(assets, tmp_path):
    ckpt, dist = assets
    res = _tiny_run(tmp_path / "runs", ckpt, dist, 1)
    from dreamdist3d.lift3d.prompt_processor import SAMPLE_FILE, PromptSample

    folder = res.run_dir / "anchor"
    first = AnchorViews.load(folder / VIEWS_FILE)
    sample = PromptSample.load(res.run_dir / SAMPLE_FILE).text_embeddings
    again = prepare_views(AnchorConfig(source="preview"), _StubBackbone(), sample, 1, folder)  # read, not drawn
    assert torch.equal(again.views, first.views)
    with pytest.raises(ConfigError, match="anchor views .* were drawn for another prompt sample"):
        prepare_views(AnchorConfig(source="preview", elevation=30.0), _StubBackbone(), sample, 1, folder)
    # resume=latest continues with the same views (the file is not redrawn)
    mtime = (folder / VIEWS_FILE).stat().st_mtime_ns
    run_3d(TINY, overrides=[
        f"system.guidance.pretrained_model_name_or_path={ckpt}", f"system.prompt_processor.distribution={dist}",
        f"exp_root_dir={tmp_path / 'runs'}", "seed=1", "trainer.max_steps=5", "trainer.val_check_interval=0",
        "data.n_test_views=2", "system.anchor.steps=2", *ANCHORED, "resume=latest"], device="cpu")
    assert (folder / VIEWS_FILE).stat().st_mtime_ns == mtime


class _StubBackbone:
    name = "mvdream"


def test_prepare_views_checks_the_prompt_sample(tmp_path):
    views = AnchorViews(torch.rand(4, 3, 8, 8), 3, PreviewSampler(), embedding_digest(torch.ones(1, 77, 8)))
    views.save(tmp_path)
    got = prepare_views(AnchorConfig(source="preview"), _StubBackbone(), torch.ones(1, 77, 8), 3, tmp_path)
    assert torch.equal(got.views, views.views)
    with pytest.raises(ConfigError, match="another prompt sample"):
        prepare_views(AnchorConfig(source="preview"), _StubBackbone(), torch.zeros(1, 77, 8), 3, tmp_path)
    with pytest.raises(ConfigError, match="another prompt sample"):
        prepare_views(AnchorConfig(source="preview"), _StubBackbone(), torch.ones(1, 77, 8), 4, tmp_path)
    assert Image.open(tmp_path / GRID_FILE).size == (16, 16)


@pytest.mark.parametrize("settings, message", [
    (["system.anchor.source=preview", "system.loss.lambda_anchor_rgb=0", "system.loss.lambda_anchor_mask=0"],
     "lambda_anchor_rgb and lambda_anchor_mask are both 0"),
    (["system.anchor.source=sketch"], "system.anchor.source must be one of none, preview"),
    (["system.anchor.stpes=3"], "stpes"),
    (["system.anchor.steps=-1"], "must be ≥ 0"),
])
def test_anchor_config_errors(settings, message):
    cfg = load_config(TOY, ["system.prompt_processor.distribution=x.safetensors", *settings], make_dirs=False)
    with pytest.raises(ConfigError, match=message):
        MVDreamSystem(cfg.system, build_guidance=False)


def _toy_views(spec: ObjectSpec, azimuths, elevation: float = 15.0) -> torch.Tensor:
    cams = torch.cat([get_camera(1, elevation, a) for a in azimuths])
    return render([spec], cams, resolution=32).image  # (V, 3, 32, 32) in [0, 1], white background


@pytest.mark.slow
def test_fitting_the_anchor_views_gives_the_object_they_show(tmp_path):
    """No diffusion: four renders of an asymmetric toy object (a part on its right) as the anchor views; fitting them
    alone gives a field that renders those views back AND the views between them (45°, never shown), each closer
    to its own ground truth than to the mirrored object's: the cameras of the anchor are the sampler's cameras."""
    torch.manual_seed(0)
    spec = ObjectSpec("box", hue=0.0, size=0.7, aspect=1.2,
                      part=PartSpec("sphere", hue=220.0, placement="right", scale=0.6))
    mirror = ObjectSpec("box", hue=0.0, size=0.7, aspect=1.2,
                        part=PartSpec("sphere", hue=220.0, placement="left", scale=0.6))
    sampler = PreviewSampler()
    views = _toy_views(spec, sampler.azimuths())
    cfg = load_config(TOY, ["system.prompt_processor.distribution=x.safetensors", "system.anchor.steps=1000"],
                      make_dirs=False)
    system = MVDreamSystem(cfg.system, build_guidance=False)
    system.anchor = Anchor(system.anchor_cfg, AnchorViews(views, 0, sampler, "test"))
    optim, _ = system.configure_optimizers()
    system.train()
    losses = []
    for step in range(200):
        system.do_update_step(0, step)
        out = system.training_step({})
        optim.zero_grad()
        out["loss"].backward()
        optim.step()
        losses.append(float(out["logs"]["train/loss_anchor_rgb"]))
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:10]), (losses[:10], losses[-20:])
    system.eval()

    def render_at(mvdream_azimuths):
        n = len(mvdream_azimuths)
        b = camera_batch(torch.full((n,), 15.0), torch.tensor(mvdream_azimuths) - 90.0, torch.full((n,), 3.0),
                         torch.full((n,), 40.0), 32, 32)
        with torch.no_grad():
            return system.renderer(rays_o=b["rays_o"], rays_d=b["rays_d"],
                                   bg_color=torch.ones(3))["comp_rgb"].permute(0, 3, 1, 2)

    seen = render_at(sampler.azimuths())
    assert (seen - views).abs().mean() < 0.03
    novel_az = [45.0, 135.0, 225.0, 315.0]
    novel = render_at(novel_az)
    truth, wrong = _toy_views(spec, novel_az), _toy_views(mirror, novel_az)
    err_true, err_wrong = (novel - truth).abs().mean(), (novel - wrong).abs().mean()
    assert err_true < 0.05 and err_true < 0.6 * err_wrong, (float(err_true), float(err_wrong))


def test_anchor_lr_scale_applies_to_the_anchor_only_steps():
    cfg = load_config(TOY, ["system.prompt_processor.distribution=x.safetensors", "system.anchor.steps=3",
                            "system.anchor.lr_scale=3"], make_dirs=False)
    system = MVDreamSystem(cfg.system, build_guidance=False)
    optim, sched = system.configure_optimizers()
    lrs = lambda: {g["name"]: round(g["lr"], 9) for g in optim.param_groups}  # noqa: E731
    assert lrs() == {"geometry.encoding": 0.03, "geometry.density_network": 0.003, "geometry.feature_network": 0.003}
    for _ in range(3):
        optim.step()
        sched.step()
    assert lrs() == {"geometry.encoding": 0.01, "geometry.density_network": 0.001, "geometry.feature_network": 0.001}
    state = sched.state_dict()  # plain data (checkpoints load with weights_only)
    assert state["last_epoch"] == 3 and state["lr_lambdas"] == [{"scale": 3.0, "steps": 3}] * 3
    for settings, message in ((["system.anchor.lr_scale=0"], "lr_scale must be a finite number > 0"),
                              (["system.scheduler.name=StepLR", "system.scheduler.args.step_size=5"],
                               "cannot be combined")):
        bad = load_config(TOY, ["system.prompt_processor.distribution=x.safetensors", "system.anchor.steps=3",
                                "system.anchor.lr_scale=3", *settings], make_dirs=False)
        with pytest.raises(ConfigError, match=message):
            MVDreamSystem(bad.system, build_guidance=False).configure_optimizers()
