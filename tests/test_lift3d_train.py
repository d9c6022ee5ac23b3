"""300 SDS steps of the tiny CPU config: the loss falls and the density forms a blob of the target's colour.

A random tiny MVDream UNet has no notion of a "good" image, so its SDS loss cannot fall. The proxy: the same config,
datamodule, hash grid, renderer, guidance maths (CFG, recon loss with std rescale), optimizer groups and training
loop, with the denoiser replaced by an oracle that knows the data (every clean image is a red disk on white — what a
red ball looks like from every camera of the relative-radius datamodule). SDS against it is a regression of the
renders onto that image, so a working loop must lower the loss and turn the blob red; a broken gradient path,
camera, compositing or optimizer does not. The same loop guided by a denoiser that really knows its world (the
shipped toy backbone, from a caption) is tested in tests/test_toyworld_3d.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamdist3d.config import parse_structured
from dreamdist3d.launch import load_config, seed_everything
from dreamdist3d.lift3d.system import MVDreamSystem, find_component
from dreamdist3d.lift3d.trainer import CheckpointConfig, Trainer, TrainerConfig
from dreamdist3d.testing.assets import disk_image, oracle_backbone, write_tiny_assets

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml")


@pytest.mark.slow
def test_tiny_config_300_sds_steps_fall_and_form_a_red_blob(tmp_path):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt, dist = write_tiny_assets(tmp_path / "assets")
        cfg = load_config(TINY, [f"system.guidance.pretrained_model_name_or_path={ckpt}",
                                 f"system.prompt_processor.distribution={dist}",
                                 f"exp_root_dir={tmp_path / 'runs'}", "trainer.val_check_interval=0",
                                 "data.n_test_views=8"])
        assert cfg.trainer["max_steps"] == 300
        seed_everything(cfg.seed)
        red = (0.9, 0.1, 0.1)
        backbone = oracle_backbone(ckpt, disk_image(32, radius=0.55, color=red), resolution=32)
        dm = find_component(cfg.data_type, "data_type")(cfg.data, where="data")
        system = MVDreamSystem(cfg.system, save_dir=str(Path(cfg.trial_dir) / "save"), backbone=backbone, seed=cfg.seed)
        with torch.no_grad():
            before = system.material(system.geometry(torch.zeros(1, 3))["features"])[0]
        trainer = Trainer(parse_structured(TrainerConfig, cfg.trainer), parse_structured(CheckpointConfig,
                                                                                         cfg.checkpoint),
                          Path(cfg.trial_dir), torch.device("cpu"))
        step = trainer.fit(system, dm)
        assert step == 300
        rows = list(csv.DictReader(open(Path(cfg.trial_dir) / "csv_logs" / "metrics.csv")))
        loss = np.array([float(r["loss_sds"]) for r in rows])
        assert len(loss) == 300 and np.isfinite(loss).all()
        first, last = loss[:50].mean(), loss[-50:].mean()
        assert last < 0.5 * first, (first, last)

        g = system.geometry
        with torch.no_grad():
            centre = float(g.density(torch.zeros(1, 3)))
            shell = torch.nn.functional.normalize(torch.randn(256, 3, generator=torch.Generator().manual_seed(0)),
                                                  dim=-1)
            outside = float(g.density(shell * 0.9).max())
            colour = system.material(g(torch.zeros(1, 3))["features"])[0]
        assert centre > 5.0 and outside < 0.5, (centre, outside)  # a blob: dense core, empty beyond radius 0.9
        assert torch.allclose(before, torch.full((3,), 0.5), atol=0.05)
        assert colour[0] > 0.7 and colour[1] < 0.3 and colour[2] < 0.3, colour  # grey at init, red now
        res = trainer.test(system, dm, step)
        frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(res["frames"] / "0.png"),
                           dtype=np.float32) / 255
        h = frame.shape[0]
        mid = frame[h // 2 - 2 : h // 2 + 2, h // 2 - 2 : h // 2 + 2]  # rgb panel, centre
        assert mid[..., 0].mean() > 0.6 and mid[..., 1].mean() < 0.35, mid.mean((0, 1))
        assert frame[0, 0, :].mean() > 0.9  # white background at the corner
    finally:
        torch.set_num_threads(n_threads)
