"""Issue 17 (nothing lost, nothing silent): bad inputs and faults give a clear error before the expensive work.

Items 2 (no NaN/Inf reaches an image), 3 (nothing overwritten or mixed), 5 (Ctrl-C keeps work), 6 (the file is what
it says) and 7 (odd inputs). Each test failed before its fix.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import time
from pathlib import Path

import pytest
import torch

from dreamdist3d.cli import main
from dreamdist3d.distribution import PromptDistribution, PromptLearner
from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.testing.backbones import tiny_text_encoder
from dreamdist3d.text import ClipTokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "cathedral_small"
TOY = "dreamdist3d.testing.backbones:tiny_toy_backbone"


@pytest.fixture(scope="module")
def enc():
    return tiny_text_encoder(0)


def make_dist(enc, path: Path, prefix: str = "a photo of", ctx_fill=None) -> Path:
    pl = PromptLearner(enc, ClipTokenizer.default(), n_ctx=2, n_prompts=3, prefix=prefix,
                       generator=torch.Generator().manual_seed(0))
    dist = PromptDistribution.from_learner(pl, backbone="tiny", steps=3, n_images=2)
    if ctx_fill is not None:
        dist.ctx[0, 0, 0] = ctx_fill
    return dist.save(path)


def rewrite_header(path: Path, edit) -> None:
    """Apply `edit(meta_dict)` to a safetensors file's dreamdist3d metadata in place (as a flipped byte would)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["dreamdist3d"])
    edit(meta)
    header["__metadata__"]["dreamdist3d"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


# ==================================================================================================== item 6
def test_checksum_covers_the_metadata(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    PromptDistribution.load(path)

    def flip(meta):  # one byte of the training prefix: "a photo of" -> "a phnto of"
        meta["prefix"] = "a phnto of"

    rewrite_header(path, flip)
    with pytest.raises(DistributionFileError, match="checksum"):
        PromptDistribution.load(path)


def test_files_written_before_the_full_checksum_still_load(enc, tmp_path):
    path = make_dist(enc, tmp_path / "old.safetensors")
    rewrite_header(path, lambda m: m.pop("sha256"))  # what older dreamdist3d wrote: ctx_sha256 only
    d = PromptDistribution.load(path)
    assert d.meta.prefix == "a photo of"

    def tamper_ctx_hash(meta):
        meta["ctx_sha256"] = "0" * 64

    rewrite_header(path, tamper_ctx_hash)
    with pytest.raises(DistributionFileError, match="checksum"):
        PromptDistribution.load(path)


def test_safetensors_named_pt_is_read_by_content(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    renamed = tmp_path / "d.pt"
    renamed.write_bytes(path.read_bytes())
    d = PromptDistribution.load(renamed)
    assert d.meta.prefix == "a photo of" and d.meta.position_mode == "clean"


def test_encoder_mismatch_is_one_short_line(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    other = tiny_text_encoder(1)
    with pytest.raises(EncoderMismatchError) as e:
        PromptDistribution.load(path).learner(other, ClipTokenizer.default(), source=str(path))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.count("hidden 32, 2 layers, vocab 49408") == 2 and "signature" not in msg


def test_refusal_of_pickled_objects_never_suggests_weights_only_false(tmp_path):
    import argparse

    path = tmp_path / "prompt_learner.pt"
    torch.save({"model_state_dict": {"ctx": argparse.Namespace(x=1)}}, path)  # a pickled Python object
    with pytest.raises(DistributionFileError) as e:
        PromptDistribution.load(path)
    msg = str(e.value)
    assert "weights_only=False" not in msg and "`False`" not in msg and "pickled Python objects" in msg
    assert main(["inspect", str(path)]) == 2


def test_inspect_never_prints_a_bare_key_name(enc, tmp_path, capsys):
    path = make_dist(enc, tmp_path / "d.safetensors")
    rewrite_header(path, lambda m: (m.pop("sha256"), m["text_encoder"].pop("hidden_size")))
    assert main(["inspect", str(path)]) == 0
    assert "hidden ?" in capsys.readouterr().out
    rewrite_header(path, lambda m: m.pop("n_ctx"))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "n_ctx" in err and str(path) in err and not err.strip().endswith("error: n_ctx")


def test_distribution_files_get_the_usual_mode(enc, tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = make_dist(enc, tmp_path / "d.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # 0644 under the usual umask 022, not 0600


# ==================================================================================================== item 2
def test_non_finite_ctx_is_refused_at_load(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    t = PromptDistribution.load(path)
    t.ctx[1, 1, 3] = float("nan")
    with pytest.raises(DistributionFileError, match="NaN"):  # nor written
        t.save(tmp_path / "nan.safetensors")
    # a file with NaN written by an older version (checksums consistent)
    from safetensors.torch import save_file

    meta = dict(t.meta.__dict__)
    from dreamdist3d.distribution.file import _ctx_hash

    meta.update(ctx_sha256=_ctx_hash(t.ctx), sha256="")
    save_file({"ctx": t.ctx}, str(tmp_path / "nan.safetensors"), {"dreamdist3d": json.dumps(meta)})
    with pytest.raises(DistributionFileError, match="NaN/Inf"):
        PromptDistribution.load(tmp_path / "nan.safetensors")
    # the official format
    official = tmp_path / "prompt_learner.pt"
    ctx = torch.randn(1, 3, 2, 32)
    ctx[0, 0, 0, 0] = float("inf")
    torch.save({"model_state_dict": {"ctx": ctx}}, official)
    with pytest.raises(DistributionFileError, match="NaN/Inf"):
        PromptDistribution.load(official)


@pytest.mark.parametrize("argv", [
    ["preview", "--mvdream", "toy", "--prompt", "a red cone", "--cfg", "nan"],
    ["preview", "--mvdream", "toy", "--prompt", "a red cone", "--elevation", "nan"],
    ["sample", "--distribution", "d.safetensors", "--sd21", "sd", "--out", "o", "--weight", "nan"],
    ["sample", "--distribution", "d.safetensors", "--sd21", "sd", "--out", "o", "--cfg", "inf"],
    ["sweep", "--distribution", "d.safetensors", "--sd21", "sd", "--out", "o", "--kind", "scale", "--cfg", "nan"],
    ["learn", "--images", "refs", "--lr", "inf"],
    ["toyworld", "sample", "--prompt", "a red cone", "--cfg", "nan"],
])
def test_non_finite_numbers_are_refused_by_every_command(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (before the fix, preview and toyworld sample wrote black images here)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "must be a finite number" in capsys.readouterr().err


def test_non_finite_numbers_are_refused_by_the_python_api_and_configs(enc, tmp_path):
    from dreamdist3d.distribution import DistributionSpec
    from dreamdist3d.recipes.learn import LearnConfig, learn
    from dreamdist3d.sample2d.mvdream_preview import PreviewRequest, run_preview

    path = make_dist(enc, tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="finite"):  # NaN passed the sum-to-1 check (NaN compares False)
        DistributionSpec.from_lists([path, path], weights=[float("nan"), 1.0])
    for key in ("cfg", "elevation", "azimuth_start", "scale"):
        with pytest.raises(ValueError, match="finite"):
            run_preview(PreviewRequest(mvdream="no-such.pt", prompt="x", **{key: float("nan")}), tmp_path / "p.png")
    for lr in (float("inf"), float("nan")):  # learn ... lr=inf as a key=value override
        with pytest.raises(ValueError, match="config key 'lr': must be a finite number"):
            learn(LearnConfig(images=str(DATA), backbone=TOY, lr=lr, out_dir=str(tmp_path / "runs")))
    for key, value in (("lowpass_weight", -1.0), ("lowpass_pool", 0)):
        with pytest.raises(ValueError, match=f"config key '{key}': must be ≥"):
            learn(LearnConfig(images=str(DATA), backbone=TOY, out_dir=str(tmp_path / "runs"), **{key: value}))
    assert not (tmp_path / "runs").exists()
    assert main(["learn", "--images", str(DATA), "--backbone", TOY, "--out-dir", str(tmp_path / "runs"), "lr=inf"]) == 2


class _NaNGradFrom(torch.nn.Module):
    """The UNet as is, but from its `start`-th call on its gradient is NaN (the loss stays finite)."""

    def __init__(self, inner, start):
        super().__init__()
        self.inner, self.start, self.calls = inner, start, 0

    def forward(self, *a, **kw):
        self.calls += 1
        out = self.inner(*a, **kw)
        if self.calls < self.start:
            return out

        class NaNGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                return g * float("nan")

        return NaNGrad.apply(out)


def small(tmp_path, **kw):
    from dreamdist3d.recipes.learn import LearnConfig

    base = dict(images=str(DATA), backbone=TOY, n_prompts=8, batch_size=2, n_samples=2, steps=6, checkpoint_every=1,
                keep_checkpoints=0, preview_every=0, out_dir=str(tmp_path), progress=False)
    base.update(kw)
    return LearnConfig(**base)


def test_learn_never_saves_a_non_finite_ctx_as_the_last_good_state(tmp_path):
    from dreamdist3d.recipes.learn import NonFiniteLossError, learn
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    sick = tiny_toy_backbone(resolution=8)
    sick.unet = _NaNGradFrom(sick.unet, start=3)  # one UNet call per step ("fast" loss)
    with pytest.raises(NonFiniteLossError, match=r"gradient became nan at step 3.*step-0000002\.pt \(step 2\)"):
        learn(small(tmp_path), backbone=sick)
    ckpts = sorted(tmp_path.glob("*/ckpts/step-*.pt"))
    assert [p.name for p in ckpts] == ["step-0000001.pt", "step-0000002.pt"]
    for p in ckpts:
        assert torch.isfinite(torch.load(p, weights_only=True)["ctx"]).all(), p
    assert not list(tmp_path.glob("*/distribution.safetensors"))


def interrupting_backbone(device="cpu", dtype=torch.float32, at_call=4):
    """A tiny backbone whose UNet is interrupted (Ctrl-C) at its `at_call`-th call, inside a step."""
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    bb = tiny_toy_backbone(device=device, dtype=dtype, resolution=8)
    inner = bb.unet

    class CtrlC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *a, **kw):
            self.calls += 1
            if self.calls == at_call:
                raise KeyboardInterrupt
            return self.inner(*a, **kw)

    bb.unet = CtrlC()
    return bb


def test_ctrl_c_in_learn_keeps_the_current_step_and_prints_the_resume_command(tmp_path, capsys, monkeypatch):
    from dreamdist3d.recipes.learn import learn
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    full = learn(small(tmp_path / "full", checkpoint_every=100), backbone=tiny_toy_backbone(resolution=8))

    argv = ["dreamdist3d", "learn", "--images", str(DATA), "--backbone", "test_robustness:interrupting_backbone",
            "--out-dir", str(tmp_path / "cut"), "--n-prompts", "8", "--batch-size", "2", "--n-samples", "2",
            "--steps", "6", "--checkpoint-every", "100", "--preview-every", "0", "--quiet", "flip=true"]
    monkeypatch.setattr("sys.argv", argv)
    assert main(argv[1:]) == 130  # interrupted inside step 4: steps 1-3 are done
    err = capsys.readouterr().err
    ckpt = next((tmp_path / "cut").glob("*/ckpts/step-0000003.pt"))
    assert f"interrupted at step 3: saved {ckpt}" in err
    command = err.split("resume with: ")[1].splitlines()[0]
    assert command.startswith("dreamdist3d learn --images") and command.endswith(f"--resume {ckpt}")
    # the kept state is exactly step 3 of the uninterrupted run: resuming replays it bit for bit
    resumed = learn(small(tmp_path / "cut", checkpoint_every=100, backbone="test_robustness:interrupting_backbone"),
                    backbone=tiny_toy_backbone(resolution=8), resume=str(ckpt))
    assert resumed.step == 6 and torch.equal(resumed.ctx, full.ctx)
    assert resumed.history["loss"] == full.history["loss"]


def test_a_sigterm_raises_terminated_and_is_held_like_ctrl_c():
    """Under `sigterm_raises` (every entry point's) a SIGTERM is a `Terminated` (a KeyboardInterrupt, exit code
    143): held until the update is whole, raised at once elsewhere; the default action comes back after."""
    import signal

    from dreamdist3d.errors import TERMINATED, Terminated, exit_code, sigterm_raises
    from dreamdist3d.runs import interrupts_held

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process (Ray, run earlier, sets its own)
    try:
        done = []
        with sigterm_raises():
            with pytest.raises(Terminated) as held:
                with interrupts_held():
                    os.kill(os.getpid(), signal.SIGTERM)
                    done.append("update finished")
            assert done == ["update finished"] and exit_code(held.value) == TERMINATED
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # (the handler raises at the next bytecode: the sleep is cut short)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_ctrl_c_during_the_update_is_held_until_the_update_is_whole():
    import signal

    from dreamdist3d.runs import interrupts_held

    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("update finished")
        assert done == ["update finished"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def assets_3d(tmp_path_factory):
    from dreamdist3d.testing.assets import write_tiny_assets

    ckpt, dist = write_tiny_assets(tmp_path_factory.mktemp("assets3d"))
    return str(ckpt), str(dist)


@pytest.mark.parametrize("where, expected", [
    ("prompt", "the prompt sample holds NaN/Inf"),
    ("geometry", "the parameters of system.geometry became NaN/Inf in an earlier update: lower the learning rates"),
    ("render", "the render (comp_rgb) is NaN/Inf although the parameters are finite"),
    ("guidance", "the guidance returned NaN/Inf (loss_sds)"),
])
def test_3d_non_finite_error_says_where_the_nan_came_from(assets_3d, tmp_path, monkeypatch, capsys, where, expected):
    from dreamdist3d.launch import main as launch_main
    from dreamdist3d.lift3d.system import MVDreamSystem

    orig = MVDreamSystem.training_step

    def sabotaged(self, batch):
        with torch.no_grad():
            if where == "prompt":
                self.prompt_utils.text_embeddings_vd.fill_(float("nan"))
                self.prompt_utils.text_embeddings.fill_(float("nan"))
            elif where == "geometry":  # (NaN density alone renders as empty space: the render is made NaN too)
                for p in self.geometry.parameters():
                    p.fill_(float("nan"))
        return orig(self, batch)

    if where == "guidance":
        from dreamdist3d.lift3d.guidance import MultiviewDiffusionGuidance

        g_orig = MultiviewDiffusionGuidance.forward

        def nan_guidance(self, *a, **kw):
            res = g_orig(self, *a, **kw)
            res["loss_sds"] = res["loss_sds"] * float("nan")
            return res

        monkeypatch.setattr(MultiviewDiffusionGuidance, "forward", nan_guidance)
    if where in ("render", "geometry"):
        r_orig = MVDreamSystem.forward

        def nan_render(self, batch):
            out = r_orig(self, batch)
            return {**out, "comp_rgb": out["comp_rgb"] * float("nan")}

        monkeypatch.setattr(MVDreamSystem, "forward", nan_render)
    monkeypatch.setattr(MVDreamSystem, "training_step", sabotaged)
    ckpt, dist = assets_3d
    rc = launch_main(["--config", str(REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml"), "--train", "--cpu",
                      f"system.guidance.pretrained_model_name_or_path={ckpt}",
                      f"system.prompt_processor.distribution={dist}", f"exp_root_dir={tmp_path}",
                      "trainer.max_steps=2", "trainer.val_check_interval=0"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err  # one line through the error path, exit code 3 (diverged)
    assert expected in err and "at step 0" in err, err
    if where != "geometry":
        assert "learning rate" not in err


def test_3d_optimizer_lr_inf_is_refused(assets_3d, tmp_path, capsys):
    from dreamdist3d.launch import main as launch_main

    ckpt, dist = assets_3d
    rc = launch_main(["--config", str(REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml"), "--train", "--cpu",
                      f"system.guidance.pretrained_model_name_or_path={ckpt}",
                      f"system.prompt_processor.distribution={dist}", f"exp_root_dir={tmp_path}",
                      "trainer.max_steps=2", "system.optimizer.args.lr=inf"])
    assert rc == 2 and "system.optimizer.args.lr must be a finite number" in capsys.readouterr().err


# ==================================================================================================== item 7
def _png(path: Path, size) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


@pytest.mark.parametrize("pixels", [130, 20_000])  # a DecompressionBombWarning (> limit) and an Error (> 2 × limit)
def test_decompression_bomb_sized_image_is_named_and_skipped_with_skip_bad(tmp_path, monkeypatch, pixels):
    from PIL import Image

    from dreamdist3d.learn.data import ReferenceDataError, load_reference_images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a small stand-in for PIL's 89 M pixel limit
    side = int(pixels ** 0.5)
    for i in range(2):
        _png(tmp_path / f"ok{i}.png", (8, 10))
    bomb = _png(tmp_path / "zz-bomb.png", (side, side))
    with pytest.raises(ReferenceDataError, match=r"zz-bomb\.png is too large to decode safely.*--skip-bad"):
        load_reference_images(tmp_path, 8)
    with pytest.warns(UserWarning, match="zz-bomb.png"):
        refs = load_reference_images(tmp_path, 8, skip_bad=True)
    assert len(refs) == 2 and refs.skipped and str(bomb) in refs.skipped[0]


@pytest.mark.parametrize("kind", ["random", "mvdream", "truncated"])
def test_bad_toy_weights_are_a_clear_error(tmp_path, capsys, kind):
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.backbones.toy_weights import default_weights_path

    path = tmp_path / "weights.safetensors"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "mvdream":
        from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint

        path = tmp_path / "sd-v2.1-base-4view.pt"
        write_tiny_mvdream_checkpoint(path)
    else:
        blob = default_weights_path().read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=f"--weights: {path}"):
        load_backbone(f"toy:{path}", config_key="--weights")
    assert main(["toyworld", "sample", "--prompt", "a red cone", "--weights", str(path), "--out",
                 str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "toy backbone weights" in err and "Traceback" not in err and not (tmp_path / "s.png").exists()


def test_toyworld_sample_n_0_is_a_clear_error(tmp_path, capsys):
    assert main(["toyworld", "sample", "--prompt", "a red cone", "--n", "0", "--out", str(tmp_path / "s.png")]) == 2
    assert "--n must be ≥ 1, got 0" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
    assert main(["toyworld", "sample", "--prompt", "a red cone", "--out", str(tmp_path / "s.jpg")]) != 0
    assert "give a name ending in .png" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_resume_with_another_text_encoder_says_which_in_one_line(tmp_path):
    from dreamdist3d.config import ConfigError
    from dreamdist3d.recipes.learn import learn
    from dreamdist3d.testing.backbones import tiny_toy_backbone

    first = learn(small(tmp_path, steps=2), backbone=tiny_toy_backbone(resolution=8))
    with pytest.raises(ConfigError) as e:
        learn(small(tmp_path, steps=4), backbone=tiny_toy_backbone(resolution=8, seed=1), resume=str(first.run_dir))
    msg = str(e.value)
    assert "\n" not in msg and msg.count("hidden 32, 2 layers, vocab 49408, weights ") == 2, msg


def test_toyworld_arms_refuses_a_3d_override_without_a_value_before_anything_runs(tmp_path, capsys):
    """A bad --override-3d would otherwise surface at the first 3D run, after the whole 2D pass."""
    out = tmp_path / "arms"
    assert main(["toyworld", "arms", "--override-3d", "data.n_test_views", "--n-3d", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--override-3d takes KEY=VALUE" in err and "data.n_test_views" in err
    assert not out.exists()  # nothing learned, nothing written


@pytest.mark.parametrize("sweep", ["arms", "lift"])
def test_table_only_on_a_folder_without_records_says_so(tmp_path, capsys, sweep):
    """Before: an empty table (lift: after fitting the attribute reader into ./outputs), and arms overwrote the
    sweep's config.json with the flags of the table command."""
    out = tmp_path / sweep
    assert main(["toyworld", sweep, "--table-only", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--table-only: no finished" in err and str(out) in err and "without --table-only" in err
    assert not out.exists()


def test_the_default_configs_are_found_from_any_working_directory(tmp_path, capsys, monkeypatch):
    """`dreamdist3d gallery` run outside the checkout (an editable install): its default --config
    (configs/dreamdist-mvdream.yaml) is the repository's; a config that exists nowhere is named, with both places
    looked in."""
    from dreamdist3d.config import REPO_ROOT, repo_file

    monkeypatch.chdir(tmp_path)
    assert repo_file("configs/dreamdist-mvdream.yaml") == REPO_ROOT / "configs" / "dreamdist-mvdream.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "dreamdist-mvdream.yaml").write_text("name: mine\n")
    assert repo_file("configs/dreamdist-mvdream.yaml") == Path("configs/dreamdist-mvdream.yaml")  # the user's wins
    dist = tmp_path / "d.safetensors"
    dist.write_bytes(b"")
    assert main(["gallery", "--distribution", str(dist), "--config", "configs/nope.yaml", "--out", "g"]) == 2
    err = capsys.readouterr().err
    assert f"--config configs/nope.yaml does not exist, neither here nor in {REPO_ROOT}" in err, err
