"""`dreamdist3d gallery`: N seeded runs of one distribution on the tiny CPU config, then the PNG grid and HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.cli import main
from dreamdist3d.testing.assets import write_tiny_assets

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml")


def test_gallery_runs_seeds_and_builds_grid_and_page(tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt, dist = write_tiny_assets(tmp_path / "assets")
        out = tmp_path / "gallery"
        argv = ["gallery", "--distribution", str(dist), "--n", "2", "--config", TINY, "--out", str(out), "--cpu",
                "--frames", "3",
                f"system.guidance.pretrained_model_name_or_path={ckpt}", "trainer.max_steps=2",
                "trainer.val_check_interval=0",
                "trainer.limit_test_batches=6"]
        assert main(argv) == 0
        for seed in (0, 1):
            assert (out / "runs" / f"seed{seed}" / "save" / "it2-test.mp4").is_file()
        grid = np.asarray(Image.open(out / "gallery.png"))
        assert grid.shape == (2 * 32, 3 * 32, 3)  # a row per seed, 3 frames of 32 px
        # two samples, two renders (2 steps only)
        assert np.abs(grid[:32].astype(float) - grid[32:].astype(float)).mean() > 0.05
        page = (out / "gallery.html").read_text()
        assert page.count("<video") == 2 and "runs/seed1/save/it2-test.mp4" in page
        # each object's meshes, as `launch.py --export` writes them, in the page's viewer
        import trimesh

        for seed in (0, 1):
            glb = out / "runs" / f"seed{seed}" / "save" / "it2-export" / "model.glb"
            assert len(trimesh.load(glb, force="mesh").faces) > 0
            assert f'<model-viewer src="runs/seed{seed}/save/it2-export/model.glb"' in page
        assert f"view it: dreamdist3d serve {out}  (then open http://127.0.0.1:8000/gallery.html;" in \
            capsys.readouterr().out  # GLB models load over http only
        # re-running keeps finished runs (nothing is trained again)
        mtime = (out / "runs" / "seed0" / "save" / "it2-test.mp4").stat().st_mtime
        assert main(argv) == 0
        assert (out / "runs" / "seed0" / "save" / "it2-test.mp4").stat().st_mtime == mtime
        # a run without its meshes (made with --no-export) is not finished while meshes are asked for: the same
        # command exports it, without training it again
        no_export = ["gallery", "--distribution", str(dist), "--seeds", "2", "--no-export", *argv[5:]]
        assert main(no_export) == 0
        assert not (out / "runs" / "seed2" / "save" / "it2-export").exists()
        assert "no GLB exported" in (out / "gallery.html").read_text()
        last = out / "runs" / "seed2" / "ckpts" / "last.ckpt"
        before = torch.load(last, weights_only=True)
        assert main(no_export) == 0 and "keeping 1 finished run(s); 0 to do" in capsys.readouterr().out
        assert main([a for a in no_export if a != "--no-export"]) == 0
        assert (out / "runs" / "seed2" / "save" / "it2-export" / "model.glb").is_file()
        after = torch.load(last, weights_only=True)  # not trained again
        assert after["global_step"] == before["global_step"] == 2
        assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
        # --seeds (as `preview --pick` names them): those runs, in that order (both finished: nothing trains)
        picked = ["gallery", "--distribution", str(dist), "--seeds", "1,0", *argv[5:]]
        assert main(picked) == 0
        page = (out / "gallery.html").read_text()
        assert page.index("runs/seed1/") < page.index("runs/seed0/")
        assert main(picked + ["--first-seed", "3"]) == 2  # --first-seed belongs to --n
        with pytest.raises(SystemExit):
            main(["gallery", "--distribution", str(dist), "--seeds", "1,x"])
    finally:
        torch.set_num_threads(n)


def test_ctrl_c_reaches_the_gpu_workers_once_and_they_keep_their_steps(tmp_path, capfd, monkeypatch):
    """`--gpu 0,1` runs a worker process per GPU in a session of its own; a Ctrl-C (or SIGTERM) of the command is
    handed on to each, which saves its step, and the command ends naming what to run again (before, the workers
    stayed in the terminal's group or, under SIGTERM, ran on as orphans). No GPU here: the check that refuses
    several workers without CUDA is bypassed, and each worker runs on one CPU thread."""
    import os
    import signal
    import threading
    import time

    import dreamdist3d.commands.gallery as gallery_cmd

    ckpt, dist = write_tiny_assets(tmp_path / "assets")
    out = tmp_path / "gallery"
    monkeypatch.setattr(gallery_cmd, "_check_gpus", lambda gpus: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logs = [out / "runs" / f"seed{s}" / "csv_logs" / "metrics.csv" for s in (0, 1)]

    def interrupt_once_both_train():
        deadline = time.time() + 240
        while time.time() < deadline and not all(p.is_file() and len(p.read_text().splitlines()) > 3 for p in logs):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_both_train, daemon=True).start()
    code = main(["gallery", "--distribution", str(dist), "--n", "2", "--config", TINY, "--out", str(out),
                 "--gpu", "0,1",
                 f"system.guidance.pretrained_model_name_or_path={ckpt}", "trainer.max_steps=3000",
                 "checkpoint.every_n_train_steps=100000", "trainer.val_check_interval=0",
                 "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false"])
    assert code == 130
    err = capfd.readouterr().err  # the workers' lines too
    assert "interrupted: the workers stopped; seed(s) 0, 1 kept their step in ckpts/last.ckpt" in err
    assert "run the same command again" in err and f"--out {out} --gpu 0,1" in err
    for s in (0, 1):  # each worker saved the step it was at (no periodic checkpoint could have)
        step = torch.load(out / "runs" / f"seed{s}" / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
        assert 3 <= step < 3000
    assert err.count("run the same command again") == 1  # the workers name their seed only; the parent says how
    assert "dreamdist3d gallery: interrupted: seed 0 stopped at step" in err
