"""launch.py end to end on the tiny CPU config with a tiny fake MVDream checkpoint: the trial folder, the turntable
MP4, exact resume, seeds, Ctrl-C, and clear errors that name the config key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dreamdist3d.launch import load_config, main
from dreamdist3d.testing.assets import write_tiny_assets

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    ckpt, dist = write_tiny_assets(folder)
    return {"ckpt": str(ckpt), "dist": str(dist), "folder": folder}


def _args(assets, root, *extra, mode="--train"):
    return [
        "--config", TINY, mode, "--cpu",
        f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
        f"system.prompt_processor.distribution={assets['dist']}",
        f"exp_root_dir={root}",
        *extra,
    ]


def _only_run(root: Path) -> Path:
    runs = [p for p in (root / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """4 steps, validation and a checkpoint every 2 steps, the full 120-view test orbit."""
    root = tmp_path_factory.mktemp("runs")
    rc = main(_args(assets, root, "trainer.max_steps=4", "trainer.val_check_interval=2",
                    "checkpoint.every_n_train_steps=2"))
    assert rc == 0
    return _only_run(root)


def test_trial_folder_layout(trained):
    assert trained.name.startswith("tiny-dist-seed0@")  # <tag>@%Y%m%d-%H%M%S, tag from the config's resolvers
    for rel in ("configs/raw.yaml", "configs/parsed.yaml", "cmd.txt", "ckpts/last.ckpt", "ckpts/epoch=0-step=2.ckpt",
                "ckpts/epoch=0-step=4.ckpt", "prompt_sample.safetensors", "csv_logs/metrics.csv",
                "save/it2-0.png", "save/it4-3.png", "save/it4-test-grid.png", "save/it4-test/119.png"):
        assert (trained / rel).is_file(), rel
    assert not list((trained / "ckpts").glob(".*tmp"))  # atomic writes leave no temp files
    parsed = load_config(str(trained / "configs" / "parsed.yaml"), [], make_dirs=False)
    assert parsed.system["guidance"]["image_size"] == 32 and parsed.seed == 0
    ck = torch.load(trained / "ckpts" / "last.ckpt", weights_only=False)
    assert ck["global_step"] == 4 and not any(k.startswith("guidance.") for k in ck["state_dict"])
    assert "renderer.binaries" in ck["state_dict"] and "geometry.encoding.params" in ck["state_dict"]
    lines = (trained / "csv_logs" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and len(lines) == 5


def test_turntable_mp4_has_120_frames(trained):
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(trained / "save" / "it4-test.mp4"))
    frames = [f for f in reader]
    meta = reader.get_meta_data()
    reader.close()
    assert len(frames) == 120 and frames[0].shape == (32, 32, 3)
    assert meta["fps"] == 30 and "yuv420p" in meta.get("pix_fmt", "")
    assert frames[0].std() > 1  # not a blank video


def _sd(path):
    return torch.load(path, weights_only=False)


def test_resume_continues_exactly(assets, trained, tmp_path):
    rc = main(_args(assets, tmp_path, f"resume={trained / 'ckpts' / 'epoch=0-step=2.ckpt'}", "trainer.max_steps=4",
                    "trainer.val_check_interval=2", "trainer.limit_test_batches=2"))
    assert rc == 0
    a, b = _sd(trained / "ckpts" / "last.ckpt"), _sd(_only_run(tmp_path) / "ckpts" / "last.ckpt")
    assert b["global_step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert torch.equal(a["prompt_sample"]["text_embeddings"], b["prompt_sample"]["text_embeddings"])
    ea, eb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(ea[i]["exp_avg"], eb[i]["exp_avg"]) for i in ea)


def test_resume_latest_keeps_the_run_folder(assets, trained):
    root = trained.parent.parent
    rc = main(_args(assets, root, "resume=latest", "trainer.max_steps=5", "trainer.val_check_interval=0",
                    "trainer.limit_test_batches=1"))
    assert rc == 0
    assert _sd(trained / "ckpts" / "last.ckpt")["global_step"] == 5 and (trained / "save" / "it5-test.mp4").is_file()
    assert len([p for p in (root / "tiny").iterdir()]) == 1


def test_two_seeds_give_two_samples_and_two_objects(assets, trained, tmp_path):
    import numpy as np
    from PIL import Image

    from dreamdist3d.lift3d.prompt_processor import PromptSample

    rc = main(_args(assets, tmp_path, "seed=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
                    "trainer.limit_test_batches=1"))
    assert rc == 0
    other = _only_run(tmp_path)
    assert other.name.startswith("tiny-dist-seed1@")
    s0 = PromptSample.load(trained / "prompt_sample.safetensors")
    s1 = PromptSample.load(other / "prompt_sample.safetensors")
    assert s0.meta["seed"] == 0 and s1.meta["seed"] == 1
    assert (s0.text_embeddings - s1.text_embeddings).abs().max() > 0.05
    im0 = np.asarray(Image.open(trained / "save" / "it4-0.png"), dtype=np.float32)
    im1 = np.asarray(Image.open(other / "save" / "it4-0.png"), dtype=np.float32)
    assert np.abs(im0 - im1).mean() > 0.1


def test_ctrl_c_stops_training_and_runs_the_test_stage(assets, tmp_path, monkeypatch):
    from dreamdist3d.lift3d.system import MVDreamSystem

    orig = MVDreamSystem.training_step
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, batch)

    monkeypatch.setattr(MVDreamSystem, "training_step", step)
    assert main(_args(assets, tmp_path, "trainer.max_steps=50", "trainer.val_check_interval=0",
                      "trainer.limit_test_batches=2")) == 130  # errors.INTERRUPTED, after the test stage
    run = _only_run(tmp_path)
    assert _sd(run / "ckpts" / "last.ckpt")["global_step"] == 2
    assert (run / "save" / "it2-test.mp4").is_file()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("system.geometry.densty_bias=blob_magic3d", "system.geometry.densty_bias"),
        ("data.batchsize=4", "data.batchsize"),
        ("system.loss.lambda_sdss=1", "system.loss.lambda_sdss"),
        ("trainer.max_step=10", "trainer.max_step"),
        ("system.background_type=nonexistent-background",
         "system.background_type: unknown component 'nonexistent-background'"),
        ("data_type=nonexistent-datamodule", "data_type: unknown component"),
        ("system.guidance.pretrained_model_name_or_path=/nonexistent/sd-v2.1-base-4view.pt",
         "system.guidance.pretrained_model_name_or_path"),
        ("system.prompt_processor.distribution=/nonexistent/cathedrals.safetensors",
         "system.prompt_processor.distribution"),
    ],
)
def test_bad_input_names_the_key(assets, tmp_path, capsys, override, expected):
    rc = main(_args(assets, tmp_path, "trainer.max_steps=1", override))
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err


def test_mismatched_text_encoder_is_refused(assets, tmp_path, capsys):
    _, other_dist = write_tiny_assets(tmp_path / "other", seed=1)
    rc = main(_args(assets, tmp_path, "trainer.max_steps=1", f"system.prompt_processor.distribution={other_dist}"))
    err = capsys.readouterr().err
    assert rc == 2 and "system.prompt_processor.distribution" in err and "text encoder" in err, err


def test_missing_mandatory_distribution(tmp_path, capsys):
    rc = main(["--config", TINY, "--train", "--cpu", f"exp_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "system.prompt_processor.distribution" in err, err


def test_empty_density_at_test_time_is_an_error(assets, trained, tmp_path, capsys):
    rc = main(_args(assets, tmp_path, f"resume={trained / 'ckpts' / 'epoch=0-step=4.ckpt'}",
                    "system.geometry.density_bias=-100",
                    "trainer.limit_test_batches=3", mode="--test"))
    err = capsys.readouterr().err
    assert rc == 2 and "renders empty" in err and "system.geometry" in err, err


def test_test_mode_renders_from_a_checkpoint(assets, trained, tmp_path):
    rc = main(_args(assets, tmp_path, f"resume={trained / 'ckpts' / 'epoch=0-step=4.ckpt'}",
                    "trainer.limit_test_batches=3", mode="--test"))
    assert rc == 0
    run = _only_run(tmp_path)
    assert (run / "save" / "it4-test.mp4").is_file() and (run / "save" / "it4-test" / "2.png").is_file()


def test_export_from_parsed_yaml_writes_into_the_run(trained):
    import trimesh

    rc = main(["--config", str(trained / "configs" / "parsed.yaml"), "--export", "--cpu",
               f"resume={trained / 'ckpts' / 'epoch=0-step=4.ckpt'}", "system.exporter.formats=ply,glb",
               "system.exporter.texture_size=64"])
    assert rc == 0
    out = trained / "save" / "it4-export"  # parsed.yaml keeps the run's timestamp: same folder, as threestudio
    mesh = trimesh.load(out / "model.ply", process=False)
    assert len(mesh.faces) > 100 and (out / "model.glb").is_file()


def test_help_lists_threestudio_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--gpu", "--train", "--validate", "--test", "--export"):
        assert flag in text


# (config, anchored, max_steps, min_step at step 0): the anchored configs refine at t <= 0.5 from the first SDS
# step; the SDS-only config is MVDream's recipe (t from 0.98, annealed)
FULL_CONFIGS = [("dreamdist-mvdream.yaml", True, 3000, 20), ("dreamdist-mvdream-lowmem.yaml", True, 3000, 20),
                ("dreamdist-mvdream-sds.yaml", False, 10000, 980)]


@pytest.mark.parametrize("name,anchored,max_steps,min_step", FULL_CONFIGS)
def test_full_configs_parse_strictly_and_build(assets, tmp_path, name, anchored, max_steps, min_step):
    from dreamdist3d.lift3d.system import MVDreamSystem, find_component

    cfg = load_config(str(REPO / "configs" / name), [f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
                                                     f"system.prompt_processor.distribution={assets['dist']}",
                                                     f"exp_root_dir={tmp_path}"])
    assert cfg.trainer["max_steps"] == max_steps and cfg.system["guidance"]["guidance_scale"] == 50.0
    assert (cfg.system["anchor"]["source"] == "preview") == anchored
    assert Path(cfg.trial_dir).name.startswith("tiny-dist-g1.0-seed0@")
    dm = find_component(cfg.data_type, "data_type")(cfg.data, where="data")
    system = MVDreamSystem(cfg.system, save_dir=str(Path(cfg.trial_dir) / "save"))
    assert system.geometry.encoding.n_output_dims == 32 and system.renderer.cfg.num_samples_per_ray == 512
    assert dm.batch_sizes == [8, 4] and system.guidance.min_step == min_step
    groups = system.configure_optimizers()[0].param_groups
    assert {g["name"]: g["initial_lr"] if anchored else g["lr"] for g in groups} == {
        "geometry.encoding": 0.01, "geometry.density_network": 0.001, "geometry.feature_network": 0.001,
        "background": 0.001}
    if anchored:  # the anchor-only phase runs at anchor.lr_scale x MVDream's rates
        assert all(g["lr"] == pytest.approx(3.0 * g["initial_lr"]) for g in groups)


def test_run_3d_from_python_with_a_config_object(assets, tmp_path):
    """The recipe without argv: a loaded config object in, the run folder and its files out; launch.py's --test on
    the same run gives the same turntable frames."""
    from omegaconf import OmegaConf

    from dreamdist3d.config import load_yaml
    from dreamdist3d.recipes.lift3d import run_3d

    cfg = load_yaml(TINY, [f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
                           f"system.prompt_processor.distribution={assets['dist']}", f"exp_root_dir={tmp_path}",
                           "trainer.max_steps=2", "trainer.val_check_interval=0", "trainer.limit_test_batches=1"])
    before = OmegaConf.to_yaml(cfg)  # the caller's object must stay as it was
    res = run_3d(cfg, mode="train", device="cpu")
    assert OmegaConf.to_yaml(cfg) == before and res.run_dir == _only_run(tmp_path)
    assert res.files["video"].is_file() and res.files["video"].parent == res.run_dir / "save"
    assert (res.run_dir / "configs" / "raw.yaml").is_file() and (res.run_dir / "ckpts" / "last.ckpt").is_file()
    again = run_3d(cfg, mode="test", resume=str(res.run_dir / "ckpts" / "last.ckpt"), device="cpu")
    assert again.files["video"].is_file()
    with pytest.raises(Exception, match="mode"):
        run_3d(cfg, mode="fly")
