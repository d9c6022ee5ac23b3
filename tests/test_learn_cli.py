"""`dreamdist3d learn` end to end on tiny random backbones written in the real formats (MVDream .pt, SD 2.1 folder)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.cli import main
from dreamdist3d.distribution import PromptDistribution

DATA = Path(__file__).resolve().parent / "data" / "cathedral_small"
FAST = ["--steps", "3", "--n-prompts", "4", "--batch-size", "2", "--n-samples", "2", "--checkpoint-every", "2",
        "--quiet"]


@pytest.fixture(scope="module")
def mvdream_ckpt(tmp_path_factory):
    from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint

    path = tmp_path_factory.mktemp("mvd") / "tiny-mvdream.pt"
    write_tiny_mvdream_checkpoint(path, seed=0)
    return path


def test_cli_learns_cathedral_against_tiny_mvdream(tmp_path, mvdream_ckpt, capsys):
    from dreamdist3d.backbones.mvdream import load_mvdream

    out = tmp_path / "cathedral.safetensors"
    rc = main(["learn", "--images", str(DATA), "--backbone", "mvdream", "--mvdream", str(mvdream_ckpt), "--out",
               str(out),
               "--out-dir", str(tmp_path / "runs"), "--preview-every", "3", "--preview-samples", "1",
               "--preview-steps", "2", *FAST])
    assert rc == 0, capsys.readouterr().err
    dist = PromptDistribution.load(out)
    assert dist.meta.backbone == "mvdream" and dist.meta.steps == 3 and dist.meta.n_images == 5
    assert dist.meta.extra["mode"] == "2d" and dist.ctx.shape == (4, 4, 32)
    bb = load_mvdream(mvdream_ckpt)
    gauss = dist.learner(bb.text_encoder, bb.tokenizer).fit()  # reloads against the same encoder
    assert torch.isfinite(gauss.mean).all() and gauss.std.abs().max() > 0
    run = next((tmp_path / "runs").glob("cathedral_small@*"))
    preview = Image.open(run / "previews" / "step-0000003.png")
    assert preview.size == (4 * 32 + 3 * 2, 32)  # MVDream backbone: one sample, 4 views side by side
    assert (run / "ckpts" / "step-0000003.pt").is_file() and (run / "loss.png").is_file()


def test_cli_on_the_shared_cathedral_folder(tmp_path, mvdream_ckpt, capsys):
    from conftest import DATASETS

    folder = DATASETS / "cathedral"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (expected ../shared/datasets/cathedral beside the clone)")
    out = tmp_path / "cathedral.safetensors"
    rc = main(["learn", "--images", str(folder), "--backbone", "mvdream", "--mvdream", str(mvdream_ckpt), "--out",
               str(out),
               "--out-dir", str(tmp_path / "runs"), "--preview-every", "0", "--steps", "2", "--n-prompts", "4",
               "--batch-size", "4", "--n-samples", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert PromptDistribution.load(out).meta.n_images == len(list(folder.glob("*.jpg")))


def _renders(root: Path, n_objects=2, size=32):
    rng = np.random.default_rng(0)
    for o in range(n_objects):
        d = root / f"object{o}"
        d.mkdir(parents=True)
        views = []
        for v in range(4):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"view{v}.png")
            views.append({"file": f"view{v}.png", "elevation": 15.0, "azimuth": 90.0 * v})
        (d / "cameras.json").write_text(json.dumps({"views": views}))
    return root


def test_cli_four_view_mode(tmp_path, mvdream_ckpt, capsys):
    renders = _renders(tmp_path / "renders")
    out = tmp_path / "mv.safetensors"
    rc = main(["learn", "--images", str(renders), "--backbone", "mvdream", "--mvdream", str(mvdream_ckpt),
               "--out", str(out), "--out-dir", str(tmp_path / "runs"), "--preview-every", "0", *FAST])
    assert rc == 0, capsys.readouterr().err
    dist = PromptDistribution.load(out)
    assert dist.meta.extra["mode"] == "4view" and dist.meta.n_images == 2


def test_cli_sd21_folder_v_prediction(tmp_path, capsys):
    from dreamdist3d.testing.checkpoints import tiny_sd21_folder

    folder = tiny_sd21_folder(tmp_path / "sd21", prediction_type="v_prediction")
    out = tmp_path / "sd.safetensors"
    rc = main(["learn", "--images", str(DATA), "--backbone", "sd21", "--sd21", str(folder), "--out", str(out),
               "--out-dir", str(tmp_path / "runs"), "--preview-every", "3", "--preview-samples", "2",
               "--preview-steps", "2", "--loss", "official", *FAST])
    assert rc == 0, capsys.readouterr().err
    dist = PromptDistribution.load(out)
    assert dist.meta.backbone == "sd21" and dist.meta.position_mode == "official"
    assert dist.meta.extra["loss"] == "official"
    run = next((tmp_path / "runs").glob("*@*"))
    assert Image.open(run / "previews" / "step-0000003.png").size == (2 * 16 + 2, 16)


def test_cli_bad_folders_name_the_file(tmp_path, capsys):
    toy = ["--backbone", "dreamdist3d.testing.backbones:tiny_toy_backbone", "--resolution", "8", "--out-dir",
           str(tmp_path / "r"),
           "--preview-every", "0", *FAST]
    assert main(["learn", "--images", str(tmp_path / "missing"), *toy]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    bad = tmp_path / "refs"
    bad.mkdir()
    for p in sorted(DATA.glob("*.jpg"))[:3]:
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "empty.png").write_bytes(b"")
    assert main(["learn", "--images", str(bad), *toy]) == 2
    assert "empty.png" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="empty.png"):
        assert main(["learn", "--images", str(bad), "--skip-bad", *toy]) == 0
    assert main(["learn", "--images", str(bad), "--backbone", "mvdream", "--out-dir", str(tmp_path / "r"),
                 "--quiet"]) == 2
    assert "--mvdream" in capsys.readouterr().err
    assert len(list((tmp_path / "r").glob("refs@*"))) == 1  # only the --skip-bad run: failed runs leave no folder
    assert main(["learn", "--images", str(bad), *toy, "stesp=3"]) == 2
    assert "stesp" in capsys.readouterr().err
    assert main(["learn", "--images", str(bad), *toy, "--ctx-init", "a photo of a red"]) == 2  # 5 tokens > n_ctx 4
    assert "ctx_init" in capsys.readouterr().err
    assert main(["learn", "--images", str(bad), *toy, "--out", str(tmp_path / "mine")]) == 1  # (as preview)
    assert (f"out (--out) {tmp_path / 'mine'}: the file is written as SAFETENSORS; give a name ending in "
            f".safetensors (e.g. {tmp_path / 'mine.safetensors'})") in capsys.readouterr().err
    assert len(list((tmp_path / "r").glob("refs@*"))) == 1


@pytest.mark.slow
def test_torchrun_data_parallel_equals_one_process_with_the_global_batch(tmp_path):
    """The documented multi-process command (torchrun, gloo on CPU): 2 processes × batch 2 == 1 process × batch 4."""
    import os
    import subprocess
    import sys

    common = ["--images", str(DATA), "--backbone", "dreamdist3d.testing.backbones:tiny_toy_backbone", "--resolution",
              "8",
              "--steps", "4", "--n-prompts", "4", "--n-samples", "2", "--preview-every", "0", "--quiet", "--device",
              "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dreamdist3d.cli",
           "learn", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp.safetensors"), "--out-dir",
           str(tmp_path / "a")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "a").glob("*@*"))) == 1  # one run folder, written by rank 0
    assert main(["learn", *common, "--batch-size", "4", "--out", str(tmp_path / "one.safetensors"),
                 "--out-dir", str(tmp_path / "b")]) == 0
    ddp = PromptDistribution.load(tmp_path / "ddp.safetensors")
    one = PromptDistribution.load(tmp_path / "one.safetensors")
    assert (ddp.ctx - one.ctx).abs().max() < 1e-5
    assert main(["learn", *common, "--batch-size", "2", "--out", str(tmp_path / "half.safetensors"),
                 "--out-dir", str(tmp_path / "c")]) == 0
    assert (PromptDistribution.load(tmp_path / "half.safetensors").ctx - ddp.ctx).abs().max() > 1e-4  # batch matters

    # resumed by one process, the torchrun run's checkpoint says its global batch changes (4 → 2)
    ckpt = next((tmp_path / "a").glob("*/ckpts/step-0000004.pt"))
    with pytest.warns(UserWarning, match=r"made with 2 process\(es\), this one has 1: the global batch changes "
                                         r"from 4 to 2"):
        assert main(["learn", *common, "--batch-size", "2", "--steps", "5", "--resume", str(ckpt), "--debug"]) == 0


def test_the_resume_line_of_a_torchrun_learn_restarts_torchrun(monkeypatch):
    """Ctrl-C under `torchrun --nproc_per_node 2 -m dreamdist3d.cli learn …`: the printed resume line starts the
    same number of processes (a one-process resume would halve the global batch), on each node when there are
    several."""
    from dreamdist3d.learn.run_files import resume_command

    argv = ["/x/dreamdist3d/cli.py", "learn", "--images", "refs dir", "--steps", "3000", "--resume", "old.pt"]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("GROUP_WORLD_SIZE", raising=False)
    assert resume_command(Path("r/step-9.pt")) == ("dreamdist3d learn --images 'refs dir' --steps 3000 --resume "
                                                   "r/step-9.pt")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command(Path("r/step-9.pt")) == ("torchrun --nproc_per_node 2 -m dreamdist3d.cli learn --images "
                                                   "'refs dir' --steps 3000 --resume r/step-9.pt")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "3")
    assert resume_command(Path("r/step-9.pt")) == (
        "torchrun --nnodes 3 --nproc_per_node 2 -m dreamdist3d.cli learn --images 'refs dir' --steps 3000 --resume "
        "r/step-9.pt (on each of the 3 nodes, with the launch's rendezvous options)")
