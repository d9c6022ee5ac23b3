"""MVDream 4-view preview: DDIM timesteps and math against MVDream's sampler, the grid PNG + JSON sidecar, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.ddim import ddim_timesteps, make_ddim_scheduler
from dreamdist3d.backbones.mvdream import ldm_schedule_buffers, load_mvdream
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.cli import main
from dreamdist3d.sample2d.mvdream_preview import sample_views
from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint
from dreamdist3d.testing.interrupt import StopAtCall


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mvd") / "tiny-4view.pt"
    write_tiny_mvdream_checkpoint(path, seed=5, resolution=16)  # 8×8 latents: fast
    return path


def test_ddim_timesteps_are_mvdreams():
    sched = NoiseSchedule.scaled_linear("epsilon", style="ldm")
    t = ddim_timesteps(sched.num_train_timesteps, 50)
    assert t.tolist() == list(range(981, 0, -20)) and len(t) == 50
    assert t.tolist() == (np.asarray(list(range(0, 1000, 1000 // 50))) + 1)[::-1].tolist()  # LDM make_ddim_timesteps
    assert ddim_timesteps(sched.num_train_timesteps, 4).tolist() == [751, 501, 251, 1]
    s = make_ddim_scheduler(sched, 50)
    assert torch.equal(s.alphas_cumprod, ldm_schedule_buffers()["alphas_cumprod"])
    assert float(s.final_alpha_cumprod) == float(s.alphas_cumprod[0])  # LDM: ᾱ_prev of the last step is ᾱ_0


def _reference_ddim(bb, context, uncond, steps, cfg, seed, elevation=15.0, azimuth_start=0.0):
    """MVDream's DDIMSampler (η=0, eps model, [uncond, cond] guidance) written out with LDM's formulas."""
    n, F = context.shape[0], 4
    ac = ldm_schedule_buffers()["alphas_cumprod"]
    ts = np.asarray(list(range(0, 1000, 1000 // steps))) + 1
    a = ac[ts]
    a_prev = torch.cat([ac[:1], ac[ts[:-1]]])
    x = torch.randn((n * F, 4, bb.latent_size, bb.latent_size), generator=torch.Generator().manual_seed(seed))
    cam = get_camera(F, elevation, azimuth_start).repeat(n, 1)
    c = context.repeat_interleave(F, 0)
    uc = uncond.expand_as(c)
    for i in reversed(range(steps)):
        t = torch.full((2 * n * F,), int(ts[i]))
        e_u, e_c = bb.unet(torch.cat([x, x]), t, torch.cat([uc, c]), camera=torch.cat([cam, cam]),
                           num_frames=F).chunk(2)
        e = e_u + cfg * (e_c - e_u)
        x0 = (x - (1 - a[i]).sqrt() * e) / a[i].sqrt()
        x = a_prev[i].sqrt() * x0 + (1 - a_prev[i]).sqrt() * e
    return x


def test_sampler_equals_mvdream_ddim(ckpt):
    bb = load_mvdream(ckpt)
    ctx = bb.encode_text(["a stone cathedral", "a toy robot"])
    uc = bb.encode_text([""])
    with torch.no_grad():
        ours = sample_views(bb, ctx, uc, steps=4, cfg=7.5, seed=3, return_latents=True, max_batch=1)
        ref = _reference_ddim(bb, ctx, uc, steps=4, cfg=7.5, seed=3)
    assert ours.shape == (2, 4, 4, 8, 8)
    assert ref.abs().mean() > 0.1
    torch.testing.assert_close(ours.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)
    # swapping the guidance halves would be a different sampler
    with torch.no_grad():
        swapped = _reference_ddim(bb, uc.expand_as(ctx), ctx[:1], steps=4, cfg=7.5, seed=3)
    assert (swapped - ref).abs().max() > 1e-2


def test_cli_preview_prompt_grid_and_sidecar(ckpt, tmp_path):
    out = tmp_path / "grid.png"
    args = ["preview", "--mvdream", str(ckpt), "--prompt", "a cathedral", "--n", "1", "--steps", "3",
            "--seed", "7", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    img = Image.open(out)
    assert img.size == (32, 32) and img.mode == "RGB"  # 2×2 views of 16 px
    side = json.loads(out.with_suffix(".json").read_text())
    s, sampler = side["settings"], side["sampler"]
    assert (s["prompt"], s["n"], s["steps"], s["elevation"], s["azimuth_start"], s["seed"]) == (
        "a cathedral", 1, 3, 15.0, 0.0, 7)
    assert (sampler["steps"], sampler["guidance_scale"], sampler["negative_prompt"]) == (3, 7.5, "")  # MVDream's CFG
    assert side["image_seeds"] == [7 + 2**31]
    assert side["ddim_timesteps"] == [667, 334, 1] and side["guidance_order"] == "[uncond, cond]"
    assert side["view_azimuths_deg"] == [0.0, 90.0, 180.0, 270.0]
    first = out.read_bytes()
    assert main(args) == 0
    assert out.read_bytes() == first, "same seed must give the same PNG"
    assert main(args[:-5] + ["8", "--out", str(tmp_path / "other.png"), "--device", "cpu"]) == 0
    a = np.asarray(Image.open(out), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "other.png"), dtype=np.int16)
    assert np.abs(a - b).max() > 0, "a different seed must change the image"
    assert a.std() > 1.0


def test_cli_preview_distribution(ckpt, tmp_path, capsys):
    from dreamdist3d.distribution import PromptDistribution, PromptLearner

    bb = load_mvdream(ckpt)
    learner = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=3,
                            generator=torch.Generator().manual_seed(0))
    dist_path = PromptDistribution.from_learner(learner, backbone="mvdream").save(tmp_path / "dist.safetensors")
    out = tmp_path / "dist.png"
    rc = main(["preview", "--mvdream", str(ckpt), "--distribution", str(dist_path), "--scale", "0.5", "--n", "2",
               "--steps", "2", "--prefix", "a photo of", "--suffix", ", in the snow", "--elevation", "20",
               "--negative", "blurry", "--out", str(out), "--device", "cpu", "--pick", "1"])
    assert rc == 0
    assert Image.open(out).size == (4 * 16, 2 * 16)  # rows = samples, 4 view columns
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["settings"]["distribution"] == str(dist_path) and side["settings"]["scale"] == 0.5
    assert side["settings"]["prefix"] == "a photo of" and side["grid"]["rows"] == 2 and side["grid"]["cols"] == 4
    (seed,) = side["picked_seeds"]  # --pick 1 of 2: the medoid of two is the first (ties go to the lower index)
    printed = capsys.readouterr().out
    assert seed == 0 and f"lift them: dreamdist3d gallery --distribution {dist_path} --seeds 0" in printed
    assert side["pick_features"] == "colour"
    _the_gallery_line_fits_these_views(printed, side, tmp_path)


def _the_gallery_line_fits_these_views(printed: str, side: dict, tmp_path) -> None:
    """The printed `gallery` line, parsed by the gallery's own parser and config loader, gives each run the preview's
    checkpoint, prompt-sample settings and 4-view sampler: an anchored run of a picked seed fits the grid's views
    (`test_lift3d_anchor` checks views against `preview` for equal settings, bit for bit)."""
    import shlex

    from dreamdist3d.cli import build_parser
    from dreamdist3d.commands.gallery import _overrides
    from dreamdist3d.config import parse_structured
    from dreamdist3d.lift3d.anchor import AnchorConfig
    from dreamdist3d.lift3d.prompt_processor import DreamDistributionPromptProcessor
    from dreamdist3d.recipes.gallery import run_settings
    from dreamdist3d.recipes.lift3d import load_config

    line = printed.split("lift them: ", 1)[1].strip()
    args = build_parser().parse_args(shlex.split(line)[1:])
    cfg = load_config(args.config, run_settings(args.distribution, tmp_path / "g", 0, _overrides(args)),
                      make_dirs=False)
    pp = parse_structured(DreamDistributionPromptProcessor.Config, cfg.system["prompt_processor"])
    anchor = parse_structured(AnchorConfig, cfg.system["anchor"])  # strict: a key the system would refuse fails here
    s, sampler = side["settings"], side["sampler"]
    assert pp.pretrained_model_name_or_path == s["mvdream"] and pp.distribution == s["distribution"]
    assert (pp.scale, pp.prefix, pp.suffix, pp.covariance) == (s["scale"], s["prefix"], s["suffix"], s["covariance"])
    assert anchor.source == "preview" and anchor.sampler_steps == sampler["steps"]
    assert (anchor.elevation, anchor.azimuth_start, anchor.negative_prompt) == (
        s["elevation"], s["azimuth_start"], sampler["negative_prompt"])
    assert (anchor.guidance_scale or 7.5) == sampler["guidance_scale"]  # None: the backbone's default (MVDream 7.5)


def test_cli_preview_pick_by_form_and_by_a_local_encoder(ckpt, tmp_path, capsys):
    """`--features`: the silhouette pick and a local DINOv2 folder pick seeds among the same previews; the seeds are
    those `sample2d.pick` gives on the previews' own images (drawn again here through the API, same seeds), recorded
    with the features in the sidecar."""
    from dreamdist3d.distribution import PromptDistribution, PromptLearner
    from dreamdist3d.evaluation.features import load_encoder
    from dreamdist3d.sample2d.mvdream_preview import conditioning_from_distribution, preview_sampler_for, preview_views
    from dreamdist3d.sample2d.pick import pick_seeds
    from dreamdist3d.testing.encoders import write_tiny_encoders

    bb = load_mvdream(ckpt)
    learner = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=3,
                            generator=torch.Generator().manual_seed(1))
    dist = PromptDistribution.from_learner(learner, backbone="mvdream").save(tmp_path / "dist.safetensors")
    dinov2 = write_tiny_encoders(tmp_path / "models", ("dinov2",))["dinov2"]
    context = conditioning_from_distribution(bb, dist, 4, seed=3)
    with torch.no_grad():
        views = preview_views(bb, context, [3, 4, 5, 6], preview_sampler_for(bb, steps=2))  # (4, 4, 3, 16, 16)
    base = ["preview", "--mvdream", str(ckpt), "--distribution", str(dist), "--n", "4", "--steps", "2", "--seed", "3",
            "--device", "cpu", "--pick", "2"]
    for features, encoder in (("form", None), (f"dinov2={dinov2}", load_encoder("dinov2", dinov2, "cpu"))):
        out = tmp_path / f"{features.split('=')[0]}.png"
        assert main([*base, "--features", features, "--out", str(out)]) == 0
        side = json.loads(out.with_suffix(".json").read_text())
        assert side["pick_features"] == features
        assert side["picked_seeds"] == pick_seeds(views, 2, 3, features, encoder)
        assert f"({features}): seeds {','.join(map(str, side['picked_seeds']))}" in capsys.readouterr().out


def test_cli_preview_errors(tmp_path, capsys):
    missing = tmp_path / "sd-v2.1-base-4view.pt"
    assert main(["preview", "--mvdream", str(missing), "--prompt", "x", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--mvdream" in err and "sd-v2.1-base-4view.pt" in err
    assert not (tmp_path / "g.png").exists()
    assert main(["preview", "--mvdream", str(missing), "--distribution", "d.safetensors", "--n", "2", "--pick", "3",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "--pick 3" in capsys.readouterr().err  # said before anything loads
    common = ["preview", "--mvdream", str(missing), "--distribution", "d.safetensors", "--n", "2"]
    assert main([*common, "--features", "form", "--out", str(tmp_path / "g.png")]) == 2
    assert "give --pick N too" in capsys.readouterr().err
    assert main([*common, "--pick", "1", "--features", "shape", "--out", str(tmp_path / "g.png")]) == 2
    assert "--features 'shape': expected one of colour, form, colour+form" in capsys.readouterr().err
    nope = tmp_path / "no-dinov2"
    assert main([*common, "--pick", "1", "--features", f"dinov2={nope}", "--out", str(tmp_path / "g.png")]) == 2
    assert f"--features dinov2={nope}: no such folder" in capsys.readouterr().err  # before the checkpoint is read
    assert main(["preview", "--mvdream", str(missing), "--prompt", "x", "--out", str(tmp_path / "g")]) != 0
    assert f"--out {tmp_path / 'g'}: the file is written as PNG; give a name ending in .png (e.g. " \
           f"{tmp_path / 'g.png'})" in capsys.readouterr().err  # before the checkpoint is read, not after sampling
    with pytest.raises(SystemExit):  # --prompt and --distribution are exclusive
        main(["preview", "--mvdream", str(missing), "--prompt", "x", "--distribution", "d.safetensors"])


def test_ddim_noise_seeds_are_per_sample(ckpt):
    """`noise_seeds`: sample j's noise from its own generator, so a sample's images do not depend on the others in
    the call; one sample with noise_seeds=[s] is the same draw as seed=s."""
    from dreamdist3d.backbones.ddim import ddim_sample

    bb = load_mvdream(ckpt)
    ctx = bb.encode_text(["a stone cathedral", "a toy robot", "a red car"])
    uc = bb.encode_text([""])
    cam = get_camera(4)
    kw = dict(steps=2, cfg=7.5, camera=cam, num_frames=4, return_latents=True, max_batch=1)
    with torch.no_grad():
        both = ddim_sample(bb, ctx, uc, noise_seeds=[11, 12, 13], **kw)
        alone = ddim_sample(bb, ctx[2:], uc, noise_seeds=[13], **kw)
        plain = ddim_sample(bb, ctx[2:], uc, seed=13, **kw)
        shared = ddim_sample(bb, ctx, uc, seed=11, **kw)  # one generator for all: sample 2's noise differs
    assert torch.equal(both[2], alone[0]) and torch.equal(alone, plain)
    assert (shared[2] - both[2]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="2 noise seeds for 3 samples"):
        ddim_sample(bb, ctx, uc, noise_seeds=[1, 2], **kw)


def test_preview_sampler_defaults_follow_the_backbone(ckpt):
    from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS
    from dreamdist3d.sample2d.mvdream_preview import PreviewSampler, preview_sampler_for

    assert preview_sampler_for(load_mvdream(ckpt)) == PreviewSampler(steps=50, guidance_scale=7.5, clip_x0=False)
    toy = preview_sampler_for(_Named("toy"), guidance_scale=None, elevation=20.0)  # the shipped toy backbone's name
    assert (toy.steps, toy.guidance_scale, toy.clip_x0, toy.elevation) == (
        DEFAULT_SAMPLE_STEPS, DEFAULT_GUIDANCE, True, 20.0)
    assert PreviewSampler(azimuth_start=30).azimuths() == [30.0, 120.0, 210.0, 300.0]
    with pytest.raises(ValueError, match="unknown preview setting"):
        preview_sampler_for(_Named("mvdream"), cfg=3)
    with pytest.raises(ValueError, match="finite"):
        preview_sampler_for(_Named("mvdream"), guidance_scale=float("nan"))


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_stopped_preview_keeps_its_finished_samples_and_the_same_command_goes_on(ckpt, tmp_path, capsys,
                                                                                   monkeypatch):
    from dreamdist3d.distribution import PromptDistribution, PromptLearner
    from dreamdist3d.sample2d import mvdream_preview as mp

    bb = load_mvdream(ckpt)
    learner = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=2, n_prompts=3,
                            generator=torch.Generator().manual_seed(0))
    dist = PromptDistribution.from_learner(learner, backbone="mvdream").save(tmp_path / "dist.safetensors")

    def argv(out, *extra):
        return ["preview", "--mvdream", str(ckpt), "--distribution", str(dist), "--n", "10", "--steps", "2",
                "--out", str(out), "--device", "cpu", *extra]

    assert main(argv(tmp_path / "whole.png", "--pick", "3")) == 0  # never stopped
    stop = StopAtCall(mp.preview_views, 3, lambda backbone, context, seeds, *a, **k: list(seeds))
    monkeypatch.setattr(mp, "preview_views", stop)
    out = tmp_path / "stopped.png"
    assert main(argv(out, "--pick", "3")) == 130
    err = capsys.readouterr().err
    assert f"8 of 10 samples are kept in {tmp_path / 'stopped.png.partial'}; run the same command again" in err, err
    assert not out.exists()
    stop.calls.clear()
    stop.at = None
    assert main(argv(out, "--pick", "3")) == 0
    assert stop.calls == [[8, 9]]  # only the batch that was stopped is drawn again
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()  # the uninterrupted run's grid, bit for bit
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (out, tmp_path / "whole.png"))
    assert a["picked_seeds"] == b["picked_seeds"] and a["image_seeds"] == b["image_seeds"]
    assert not (tmp_path / "stopped.png.partial").exists()  # the kept samples go once the grid is written

    stop.calls.clear()
    stop.at = 2
    assert main(argv(out, "--pick", "3")) == 130  # stopped again, then asked with other settings: drawn afresh
    stop.calls.clear()
    stop.at = None
    assert main(argv(out, "--scale", "0.5")) == 0
    assert [s for c in stop.calls for s in c] == list(range(10))
    capsys.readouterr()
