"""3D in seconds: the feed-forward lift (`--lift lgm`) and SDS from the reconstruction (`--lift lgm+sds`).

The real path end to end with the tiny MVDream checkpoint and a tiny random LGM on CPU: the gallery command's files
(the folder layout of a 3D run), the 4-view sample it reconstructs is `preview`'s for the seed, resume; LGM's frame
into a scene; the anchor of `system.anchor.source: lgm`; the arms and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.backbones.cameras import c2w_from_spherical
from dreamdist3d.cli import main
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.anchor import (
    VIEWS_FILE,
    AnchorConfig,
    AnchorViews,
    join_targets,
    preview_targets,
    sample_cameras,
)
from dreamdist3d.lift3d.reconstruction import gaussian_targets
from dreamdist3d.lift3d.system import MVDreamSystem
from dreamdist3d.recipes.lift3d import load_config, run_3d
from dreamdist3d.recipes.toy_lift import arm_settings
from dreamdist3d.reconstruct import Gaussians, load_reconstructor, read_splat_ply, render_gaussians
from dreamdist3d.reconstruct.lgm import lgm_config
from dreamdist3d.reconstruct.lgm_load import LGMCheckpointError
from dreamdist3d.sample2d.mvdream_preview import PreviewSampler
from dreamdist3d.testing.assets import write_tiny_assets
from dreamdist3d.testing.lgm import TINY_LGM_CONFIG, tiny_lgm, write_tiny_lgm_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml"
TOY = REPO / "configs" / "toy" / "toy-3d.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at one thread, as a run


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    ckpt, dist = write_tiny_assets(folder)
    return ckpt, dist, write_tiny_lgm_checkpoint(folder / "tiny-lgm.safetensors")


@pytest.mark.slow
def test_gallery_lift_lgm_end_to_end_with_tiny_models(assets, tmp_path, capsys):
    """`dreamdist3d gallery --lift lgm`: per seed the 4-view sample `preview --seed s` shows (bit for bit), its
    Gaussians (refined on it for 2 steps) as a splat .ply, meshes and a turntable in a 3D run's folder layout, the
    page beside it; time per object printed; a second call keeps the finished seeds."""
    ckpt, dist, lgm = assets
    out = tmp_path / "gallery"
    def gallery(n: int) -> int:
        return main(["gallery", "--distribution", str(dist), "--lift", "lgm", "--lgm", str(lgm), "--mvdream",
                     str(ckpt), "--config", str(TINY), "--n", str(n), "--cpu", "--out", str(out),
                     "data.n_test_views=6", "system.exporter.save_texture=false", "system.anchor.refine_steps=2"])

    assert gallery(2) == 0
    printed = capsys.readouterr().out
    assert "[gallery] seed 1 (2/2) done in" in printed and "reconstruct" in printed and "turntable" in printed
    for seed in (0, 1):
        run = out / "runs" / f"seed{seed}"
        for name in ("prompt_sample.safetensors", "anchor/anchor.png", "anchor/views.safetensors",
                     "export/gaussians.ply", "export/model.glb", "export/model.obj", "export/model.ply",
                     "save/it0-test.mp4", "save/it0-test-grid.png", "save/it0-test/5.png", "reconstruct.json",
                     "configs/parsed.yaml"):
            assert (run / name).is_file(), name
        record = json.loads((run / "reconstruct.json").read_text())
        assert record["seed"] == seed and record["gaussians"] == TINY_LGM_CONFIG.gaussians_per_object
        assert set(record["seconds"]) == {"prompt", "views", "reconstruct", "refine", "meshes", "turntable", "total"}
        assert record["anchor"]["refine_steps"] == 2 and record["seconds"]["refine"] > 0  # the real path refines too
        splats = read_splat_ply(run / "export" / "gaussians.ply")
        assert 0 < splats.num <= TINY_LGM_CONFIG.gaussians_per_object
    page = (out / "gallery.html").read_text()
    assert "runs/seed1/anchor/anchor.png" in page and "runs/seed0/export/model.glb" in page

    one = tmp_path / "one.png"  # the views reconstructed are the 4-view sample of the seed, as preview draws it
    assert main(["preview", "--mvdream", str(ckpt), "--distribution", str(dist), "--seed", "1", "--out", str(one),
                 "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(one)),
                          np.asarray(Image.open(out / "runs" / "seed1" / "anchor" / "anchor.png")))

    video = out / "runs" / "seed0" / "save" / "it0-test.mp4"
    mtime = video.stat().st_mtime_ns
    assert gallery(3) == 0  # resumable: seeds 0 and 1 are kept, seed 2 is made
    assert "keeping 2 finished run(s); 1 to do" in capsys.readouterr().out
    assert video.stat().st_mtime_ns == mtime and (out / "runs" / "seed2" / "save" / "it0-test.mp4").is_file()

    # `dreamdist3d export RUN` on a feed-forward run (no ckpts/): meshed again from its Gaussians, as the gallery did
    import trimesh

    run = out / "runs" / "seed0"
    assert main(["export", str(run), "--no-texture", "--format", "ply"]) == 0
    again, made = trimesh.load(run / "save" / "export" / "model.ply"), trimesh.load(run / "export" / "model.ply")
    assert len(again.faces) == len(made.faces) > 0 and np.allclose(again.vertices, made.vertices, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["lgm", "preview+lgm"])
def test_lgm_sds_run_is_anchored_to_the_reconstruction(assets, tmp_path, source):
    """`system.anchor.source: lgm`: the run keeps its 4-view sample, writes the reconstruction and fits renders of it
    from lgm_azimuths × lgm_elevations cameras (alpha as masks) before SDS, through the same system; `preview+lgm`
    the sample at its own views and those renders at the others."""
    ckpt, dist, lgm = assets
    res = run_3d(TINY, overrides=[
        f"system.guidance.pretrained_model_name_or_path={ckpt}", f"system.prompt_processor.distribution={dist}",
        f"exp_root_dir={tmp_path}", "seed=3", "trainer.max_steps=3", "trainer.val_check_interval=0",
        "data.n_test_views=2", f"system.anchor.source={source}", f"system.anchor.reconstructor={lgm}",
        "system.anchor.steps=2", "system.anchor.lgm_azimuths=4", "system.anchor.lgm_elevations=[0,30]",
        "system.loss.lambda_anchor_rgb=1000", "system.loss.lambda_anchor_mask=100",
        "system.anchor.sampler_steps=4"], device="cpu")
    views = AnchorViews.load(res.run_dir / "anchor" / VIEWS_FILE)
    assert views.seed == 3 and (res.run_dir / "anchor" / "gaussians.ply").is_file()
    header = (res.run_dir / "csv_logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss_anchor_rgb", "loss_anchor_mask", "loss_sds"} <= set(header) and res.files["video"].is_file()


def test_gaussian_targets_are_renders_around_the_sample():
    g = Gaussians(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.2]]), torch.tensor([0.9, 0.8]),
                  torch.full((2, 3), 0.2), torch.tensor([[1.0, 0, 0, 0]] * 2), torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    sampler = PreviewSampler(elevation=10.0)
    views = AnchorViews(torch.rand(4, 3, 16, 16), 0, sampler, "x")
    cfg = AnchorConfig(source="lgm", reconstructor="toy", lgm_azimuths=8, lgm_elevations=[0.0, 20.0],
                       camera_distance=2.5, fovy_deg=35.0)
    t = gaussian_targets(cfg, g, views)
    assert t.views.shape == (16, 3, 16, 16) and t.masks.shape == (16, 1, 16, 16)
    first = float(sample_cameras(sampler)[1][0])  # the sample's first view: MVDream 0 = scene -90
    assert first == -90.0
    torch.testing.assert_close(t.azimuths[:8], first + 45.0 * torch.arange(8.0))
    assert t.elevations.tolist() == [0.0] * 8 + [20.0] * 8
    want = render_gaussians(g, c2w_from_spherical(t.elevations[9], t.azimuths[9], 2.5), 35.0, 16, 16)
    torch.testing.assert_close(t.views[9], want.rgb[0].permute(2, 0, 1))
    torch.testing.assert_close(t.masks[9], want.alpha[0].permute(2, 0, 1))


def test_preview_plus_lgm_targets_are_the_sample_then_the_other_renders():
    """`preview+lgm`: the 4-view sample at its own cameras (its foreground masks), then only the renders whose camera
    is not one of the sample's."""
    g = Gaussians(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([0.9]), torch.full((1, 3), 0.3),
                  torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[1.0, 0, 0]]))
    sampler = PreviewSampler(elevation=15.0)
    views = AnchorViews(torch.ones(4, 3, 16, 16), 0, sampler, "x")
    views.views[:, :, 4:12, 4:12] = 0.2  # a dark square on white: the foreground
    cfg = AnchorConfig(source="preview+lgm", reconstructor="toy", lgm_azimuths=8, lgm_elevations=[15.0, 30.0])
    renders = gaussian_targets(cfg, g, views)
    t = join_targets(preview_targets(views), renders, cfg.mask_threshold)
    assert t.views.shape == (4 + 16 - 4, 3, 16, 16) and t.masks.shape == (16, 1, 16, 16)
    torch.testing.assert_close(t.views[:4], views.views)  # the sample itself, at its cameras
    assert t.azimuths[:4].tolist() == [-90.0, 0.0, 90.0, 180.0] and t.elevations[:4].tolist() == [15.0] * 4
    assert t.masks[:4, 0, 8, 8].tolist() == [1.0] * 4 and t.masks[:4, 0, 0, 0].tolist() == [0.0] * 4
    # the renders in between at 15° (45° off the sample's views) and all 8 at 30°
    assert t.azimuths[4:8].tolist() == [-45.0, 45.0, 135.0, 225.0]
    assert t.elevations[4:].tolist() == [15.0] * 4 + [30.0] * 8
    torch.testing.assert_close(t.views[5], renders.views[3])
    torch.testing.assert_close(t.masks[8:], renders.masks[8:])


def test_lgm_frame_into_a_scene():
    """`forward_scene`: views taken at distance d are LGM's views at its radius; the object comes back scaled by
    d/cam_radius (equal fields of view), so it renders in the scene exactly as in LGM's frame."""
    torch.manual_seed(0)
    model = tiny_lgm()
    cfg = model.config
    images = torch.rand(1, 4, 3, 16, 16)
    az = torch.tensor([-90.0, 0.0, 90.0, 180.0])
    lgm_c2w = c2w_from_spherical(torch.full((4,), 10.0), az, cfg.cam_radius)
    scene_c2w = c2w_from_spherical(torch.full((4,), 10.0), az, 3.0)
    in_lgm = model.reconstruct(images, lgm_c2w)[0]
    in_scene = model.reconstruct_scene(images, scene_c2w, cfg.fovy)[0]
    k = 3.0 / cfg.cam_radius
    torch.testing.assert_close(in_scene.means, in_lgm.means * k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(in_scene.scales, in_lgm.scales * k, atol=1e-6, rtol=1e-5)
    a = render_gaussians(in_lgm, c2w_from_spherical(25.0, 33.0, cfg.cam_radius), cfg.fovy, 24, 24)
    b = render_gaussians(in_scene, c2w_from_spherical(25.0, 33.0, 3.0), cfg.fovy, 24, 24)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="share one distance"):
        model.reconstruct_scene(images, c2w_from_spherical(torch.zeros(4), az, torch.tensor([3.0, 3, 3, 2])), 40.0)


def test_ray_positions_sit_on_the_pixel_rays():
    """`position: ray` (the toy reconstructor's): output pixel (i, j) of view v lies on the ray through it, at depth
    x[0] from the ray's point nearest the origin; the official presets keep LGM's free positions."""
    from dreamdist3d.reconstruct import LGM, lgm_input

    assert lgm_config("big").position == "free" and lgm_config("toy").position == "ray"
    torch.manual_seed(0)
    cfg = lgm_config(TINY_LGM_CONFIG, position="ray")
    model = LGM(cfg).eval()
    c2w = c2w_from_spherical(torch.full((4,), 20.0), torch.tensor([0.0, 90.0, 180.0, 270.0]), cfg.cam_radius)
    x = lgm_input(torch.rand(1, 4, 3, 16, 16), c2w, cfg.input_size, cfg.fovy)
    with torch.no_grad():
        raw = model.raw(x)
        g = model.activate(raw, x)
    foot, d = model.output_rays(x)
    assert torch.allclose((foot * d).sum(-1), torch.zeros(1), atol=1e-5)  # the foot is the ray's nearest point
    depth = raw.permute(0, 1, 3, 4, 2).reshape(1, -1, 14)[..., 0]
    inside = (foot + depth[..., None] * d).abs().amax(-1) < 1
    torch.testing.assert_close(g.means[inside], (foot + depth[..., None] * d)[inside], atol=1e-5, rtol=0)
    # projected back into its own view, each Gaussian lands on its output pixel
    from dreamdist3d.reconstruct.lgm_cameras import LGM_FROM_WORLD
    from dreamdist3d.reconstruct.render import world_to_camera

    w2c = world_to_camera(c2w)[0]
    p = (g.means[0, : cfg.splat_size**2] @ LGM_FROM_WORLD) @ w2c[:3, :3].T + w2c[:3, 3]  # view 0, camera axes
    f = 0.5 * cfg.splat_size / torch.tan(torch.deg2rad(torch.tensor(cfg.fovy / 2)))
    u = f * p[:, 0] / p[:, 2] + cfg.splat_size / 2 - 0.5
    cols = torch.arange(cfg.splat_size, dtype=torch.float32).repeat(cfg.splat_size)
    assert (u - cols).abs().max() < 0.05
    with pytest.raises(ValueError, match="needs the model's input"):
        model.activate(raw)


@pytest.mark.parametrize("settings, message", [
    (["system.anchor.source=lgm", "system.anchor.reconstructor=null"], "system.anchor.reconstructor is not set"),
    (["system.anchor.source=lgm", "system.anchor.lgm_azimuths=0"], "lgm_azimuths must be ≥ 1"),
])
def test_lgm_anchor_config_errors(settings, message):
    cfg = load_config(TOY, ["system.prompt_processor.distribution=x.safetensors", *settings], make_dirs=False)
    with pytest.raises(ConfigError, match=message):
        MVDreamSystem(cfg.system, build_guidance=False)


def test_reconstructor_names(tmp_path):
    with pytest.raises(LGMCheckpointError, match="--lgm is not set"):
        load_reconstructor(None)
    with pytest.raises(FileNotFoundError, match="set by system.anchor.reconstructor"):
        load_reconstructor(tmp_path / "missing.safetensors", config_key="system.anchor.reconstructor")
    path = write_tiny_lgm_checkpoint(tmp_path / "mine.safetensors")
    assert load_reconstructor(path) is load_reconstructor(str(path))  # one model per file, kept
    assert lgm_config("toy").gaussians_per_object == 1024


def test_gallery_lift_flags_are_checked(assets, tmp_path):
    from dreamdist3d.commands import gallery as command
    from dreamdist3d.recipes import gallery as recipe

    assert command.LIFTS == recipe.LIFTS  # the command keeps its own copy so that --help loads no torch
    assert recipe.lift_settings("lgm+sds", "toy", "mv.pt") == [
        "system.anchor.source=lgm", "system.anchor.reconstructor=toy",
        "system.guidance.pretrained_model_name_or_path=mv.pt"]
    ckpt, dist, lgm = assets
    with pytest.raises(SystemExit):
        main(["gallery", "--distribution", str(dist), "--lift", "nerf"])
    assert main(["gallery", "--distribution", str(dist), "--lift", "sds", "--lgm", str(lgm), "--config", str(TINY),
                 "--out", str(tmp_path)]) == 2


def test_lgm_arms():
    assert arm_settings("lgm") == (0, 0, [])
    assert arm_settings("lgm~system.anchor.reconstructor=x.safetensors") == (
        0, 0, ["system.anchor.reconstructor=x.safetensors"])
    assert arm_settings("lgm40+20") == (40, 20, ["system.anchor.source=lgm", "system.anchor.steps=40",
                                                 "trainer.max_steps=60"])
    with pytest.raises(ValueError, match="lgm<A>"):
        arm_settings("lgm+sds")


@pytest.mark.slow
def test_lift_evidence_arms_lgm_on_tiny_inputs(tmp_path):
    """`toyworld lift` with the feed-forward arm and SDS from the reconstruction (tiny backbone, tiny random LGM):
    objects, steps and readings recorded; a rerun makes nothing."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.backbones.toy import build_toy_backbone, small_test_config
    from dreamdist3d.backbones.toy_weights import save_toy_backbone
    from dreamdist3d.recipes.toy_lift import LiftConfig, run_lift
    from dreamdist3d.recipes.toy_lift_scores import table
    from dreamdist3d.toyworld.attributes import AttributeReader

    weights = tmp_path / "tiny-toy.safetensors"
    save_toy_backbone(build_toy_backbone(small_test_config(), seed=0), weights)
    reader = tmp_path / "reader.safetensors"
    AttributeReader.fit(n_train=300, epochs=5).save(reader)
    lgm = write_tiny_lgm_checkpoint(tmp_path / "tiny-lgm.safetensors")
    cfg = LiftConfig(out=str(tmp_path / "lift"), weights=str(weights), reader=str(reader), arms=["lgm", "lgm2+1"],
                     seeds=[0], parts=["captions"], n_captions=2, workers=1,
                     overrides=["system.anchor.sampler_steps=2", f"system.anchor.reconstructor={lgm}"])
    bb = load_backbone(f"toy:{weights}")
    _, objects = run_lift(cfg, backbone=bb)
    assert sorted((o["arm"], o["item"], o["anchor_steps"], o["sds_steps"]) for o in objects) == [
        ("lgm", "c00", 0, 0), ("lgm", "c01", 0, 0), ("lgm2+1", "c00", 2, 1), ("lgm2+1", "c01", 2, 1)]
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "lift" / "objects").rglob("*.json")}
    views, again = run_lift(cfg, backbone=bb)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lift" / "objects").rglob("*.json")} == stamp
    assert "| lgm (2) |" in table(views, again) and "| lgm2+1 (2) |" in table(views, again)
