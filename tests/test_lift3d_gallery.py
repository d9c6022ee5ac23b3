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
        assert f"view it: dreamdist3d serve {out}  (then open http://127.0.0.1:8000/gallery.html;" in \
            capsys.readouterr().out  # GLB models load over http only
        # re-running keeps finished runs (nothing is trained again)
        mtime = (out / "runs" / "seed0" / "save" / "it2-test.mp4").stat().st_mtime
        assert main(argv) == 0
        assert (out / "runs" / "seed0" / "save" / "it2-test.mp4").stat().st_mtime == mtime
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
