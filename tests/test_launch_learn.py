"""`python launch.py --config configs/dreamdist-learn.yaml --train key=value ...` runs the learning recipe."""

from pathlib import Path

from dreamdist3d.distribution import PromptDistribution
from dreamdist3d.launch import main

REPO = Path(__file__).resolve().parents[1]


def test_launch_learn_config_trains_and_resumes(tmp_path, capsys):
    from dreamdist3d.testing.checkpoints import write_tiny_mvdream_checkpoint

    ckpt = tmp_path / "tiny.pt"
    write_tiny_mvdream_checkpoint(ckpt, seed=0)
    common = [
        "--config", str(REPO / "configs" / "dreamdist-learn.yaml"), "--train", "--cpu",
        f"images={REPO / 'tests' / 'data' / 'cathedral_small'}", f"mvdream={ckpt}", "steps=4", "n_prompts=4",
        "batch_size=2", "n_samples=2", "progress=false", "checkpoint_every=2", "preview_every=0",
        f"out_dir={tmp_path / 'runs'}", "name=cat",
    ]
    assert main(common + ["max_steps=2"]) == 0
    assert main(common + ["resume=latest", f"out={tmp_path / 'd.safetensors'}"]) == 0
    dist = PromptDistribution.load(tmp_path / "d.safetensors")
    assert dist.meta.steps == 4 and dist.ctx.shape[:2] == (4, 4)

    assert main(common + ["stepz=4"]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["--config", str(REPO / "configs" / "dreamdist-learn.yaml"), "--test"]) == 2
    assert "only supports --train" in capsys.readouterr().err
