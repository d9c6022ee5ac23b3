"""The learning loop: the loss falls, runs resume bit-exactly, NaN stops cleanly, run folder, launch.py entry."""

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dreamdist3d.config import ConfigError, parse_structured
from dreamdist3d.distribution import PromptDistribution, PromptLearner
from dreamdist3d.learn.data import load_reference_images
from dreamdist3d.learn.loss import distribution_loss
from dreamdist3d.recipes.learn import LearnConfig, NonFiniteLossError, launch_entry, learn
from dreamdist3d.testing.backbones import tiny_toy_backbone

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "cathedral_small"
TOY = "dreamdist3d.testing.backbones:tiny_toy_backbone"


def small(tmp_path, **kw) -> LearnConfig:
    base = dict(images=str(DATA), backbone=TOY, n_prompts=8, batch_size=2, n_samples=2, steps=6, checkpoint_every=2,
                preview_every=0, out_dir=str(tmp_path), progress=False)
    base.update(kw)
    return LearnConfig(**base)


def test_loss_falls_over_200_steps(tmp_path):
    bb = tiny_toy_backbone(resolution=8)
    res = learn(small(tmp_path, steps=200, checkpoint_every=1000, flip=False), backbone=bb)
    assert res.step == 200 and len(res.history["loss"]) == 200

    # a fixed evaluation batch: the initial ctx (same seed) against the learned one
    refs = load_reference_images(DATA, 8)
    g = torch.Generator().manual_seed(123)
    x0 = refs.images.repeat(4, 1, 1, 1)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape[0], 4, 77, 32, generator=g)
    init = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=4, n_prompts=8,
                         generator=torch.Generator().manual_seed(0))

    def evaluate(ctx):
        with torch.no_grad():
            init.ctx.copy_(ctx)
            return distribution_loss(init, bb, bb.schedule, x0, noise, t, eps).mse.item()

    before = evaluate(init.ctx.detach().clone())
    after = evaluate(res.ctx)
    assert after < 0.85 * before, (before, after)
    h = res.history["loss"]
    assert sum(h[-50:]) / 50 < sum(h[:50]) / 50


def test_lowpass_weight_changes_the_learning_and_is_recorded_in_the_file(tmp_path, capsys):
    """`--lowpass-weight`: the same run learns other prompts, and its file says how it was learned (inspect shows
    it); a file learned without it records nothing new."""
    from dreamdist3d.cli import main

    bb = tiny_toy_backbone(resolution=8)
    plain = learn(small(tmp_path / "plain", flip=False), backbone=bb)
    low = learn(small(tmp_path / "low", flip=False, lowpass_weight=4.0, lowpass_pool=4), backbone=bb)
    assert (low.ctx - plain.ctx).abs().max() > 1e-4
    files = {k: PromptDistribution.load(r.distribution) for k, r in (("plain", plain), ("low", low))}
    assert files["low"].meta.extra["lowpass_weight"] == 4.0 and "lowpass_weight" not in files["plain"].meta.extra
    assert main(["inspect", str(low.distribution)]) == 0
    assert "objective: assign   lowpass weight: 4" in capsys.readouterr().out


def test_interrupted_run_resumes_bit_exactly(tmp_path):
    bb = tiny_toy_backbone(resolution=8)
    full = learn(small(tmp_path / "a"), backbone=bb)
    paused = learn(small(tmp_path / "b", max_steps=3), backbone=bb)
    assert paused.step == 3 and (paused.run_dir / "ckpts" / "step-0000003.pt").is_file()
    assert not PromptDistribution.load(paused.distribution).meta.extra["complete"]
    resumed = learn(small(tmp_path / "b"), backbone=bb, resume="latest")
    assert resumed.run_dir == paused.run_dir and resumed.step == 6
    assert torch.equal(resumed.ctx, full.ctx)
    assert resumed.history["loss"] == full.history["loss"]
    assert resumed.history["step"] == list(range(1, 7))
    ck_a = torch.load(full.run_dir / "ckpts" / "step-0000006.pt", weights_only=True)
    ck_b = torch.load(resumed.run_dir / "ckpts" / "step-0000006.pt", weights_only=True)
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(ck_a["optimizer"]["state"][0][k], ck_b["optimizer"]["state"][0][k])
    assert torch.equal(ck_a["rng"], ck_b["rng"])
    assert sorted(p.name for p in (resumed.run_dir / "ckpts").iterdir()) == [
        "step-0000003.pt", "step-0000004.pt", "step-0000006.pt"]  # keep_checkpoints=3 pruned step 2
    # changing what the context means is refused on resume
    with pytest.raises(ConfigError, match="n_ctx"):
        learn(small(tmp_path / "b", n_ctx=2, steps=8), backbone=bb, resume="latest")
    with pytest.raises(ConfigError, match="ctx_init"):
        learn(small(tmp_path / "b", ctx_init="a photo of", steps=8), backbone=bb, resume="latest")


class _NaNFrom(torch.nn.Module):
    def __init__(self, inner, start):
        super().__init__()
        self.inner, self.start, self.calls = inner, start, 0

    def forward(self, *a, **kw):
        self.calls += 1
        out = self.inner(*a, **kw)
        return out * float("nan") if self.calls >= self.start else out


def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path):
    healthy = tiny_toy_backbone(resolution=8)
    full = learn(small(tmp_path / "ok", steps=4, checkpoint_every=100), backbone=healthy)

    sick = tiny_toy_backbone(resolution=8)
    sick.unet = _NaNFrom(sick.unet, start=3)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*step-0000002\.pt \(step 2\)"):
        learn(small(tmp_path / "nan", steps=4, checkpoint_every=100), backbone=sick)
    ck = next((tmp_path / "nan").glob("*/ckpts/step-0000002.pt"))
    state = torch.load(ck, weights_only=True)
    assert state["step"] == 2 and torch.isfinite(state["ctx"]).all()
    # the kept state is the one *before* the failing step: resuming it with a healthy model replays exactly
    resumed = learn(small(tmp_path / "nan", steps=4), backbone=healthy, resume=str(ck))
    assert torch.equal(resumed.ctx, full.ctx)


def test_run_folder_contents_and_distribution(tmp_path):
    bb = tiny_toy_backbone(resolution=8)
    res = learn(small(tmp_path, steps=4, preview_every=2, preview_samples=3, preview_steps=3, name="cath",
                      out=str(tmp_path / "final.safetensors")), backbone=bb)
    run = res.run_dir
    assert run.parent == tmp_path and run.name.startswith("cath@")
    parsed = parse_structured(LearnConfig, OmegaConf.load(run / "configs" / "parsed.yaml"))
    assert parsed.steps == 4 and parsed.position_mode == "clean" and parsed.name == "cath"
    for step in (2, 4):
        im = Image.open(run / "previews" / f"step-{step:07d}.png")
        assert im.size == (3 * 8 + 2 * 2, 8)  # 3 samples in a row, 2-px gutters
    assert Image.open(run / "loss.png").size[0] > 100
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3, 4] and all(float(r["loss"]) > 0 for r in rows)
    for path in (run / "distribution.safetensors", tmp_path / "final.safetensors"):
        dist = PromptDistribution.load(path)
        assert dist.meta.backbone == "tiny-toy" and dist.meta.steps == 4 and dist.meta.n_images == 5
        assert dist.meta.n_prompts == 8 and dist.meta.extra["complete"] and dist.meta.extra["mode"] == "2d"
        assert torch.equal(dist.ctx, res.ctx)
        g = dist.learner(bb.text_encoder, bb.tokenizer).fit()
        assert g.mean.shape == (77, 32) and g.std.abs().max() > 0


def test_launch_entry_with_the_shipped_config(tmp_path, capsys):
    cfg = OmegaConf.load(REPO / "configs" / "dreamdist-learn.yaml")
    assert cfg.recipe == "learn"
    over = OmegaConf.from_dotlist([f"images={DATA}", f"backbone={TOY}", "resolution=8", "steps=2", "n_prompts=4",
                                   "batch_size=2", "n_samples=1", "preview_every=0", f"out_dir={tmp_path}",
                                   "progress=false", "name=launch"])
    assert launch_entry(OmegaConf.merge(cfg, over), resume=None) == 0
    dist = PromptDistribution.load(next(tmp_path.glob("launch@*/distribution.safetensors")))
    assert dist.meta.steps == 2
    assert launch_entry(OmegaConf.merge(cfg, over), resume="latest") == 0  # nothing left to do: stays at step 2
    assert launch_entry(OmegaConf.merge(cfg, over, OmegaConf.create({"stpes": 3})), resume=None) == 2
    assert "stpes" in capsys.readouterr().err
    assert launch_entry(OmegaConf.merge(cfg, over, OmegaConf.create({"images": str(tmp_path / "none")}))) == 2
    assert "does not exist" in capsys.readouterr().err


def test_tiny_config_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # its images path is relative to the repository
    cfg = OmegaConf.merge(OmegaConf.load(REPO / "configs" / "tiny" / "learn-toy.yaml"),
                          OmegaConf.from_dotlist(["steps=2", f"out_dir={tmp_path}", "preview_every=2",
                                                  "preview_steps=2",
                                                  "progress=false"]))
    assert launch_entry(cfg) == 0
    run = next(tmp_path.glob("tiny-cathedral@*"))
    assert (run / "previews" / "step-0000002.png").is_file() and (run / "distribution.safetensors").is_file()
