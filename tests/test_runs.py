"""runs.py / io.py / errors.py: run folders, checkpoints, the one atomic writer, OS errors as one-line errors
(issue 17 items 1 and 4), on the tiny CPU 3D config and tiny learning backbones."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamdist3d import io as dio
from dreamdist3d import runs
from dreamdist3d.errors import describe, exit_code
from dreamdist3d.launch import load_config
from dreamdist3d.launch import main as launch_main
from dreamdist3d.testing.assets import write_tiny_assets

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml")
DATA = Path(__file__).resolve().parent / "data" / "cathedral_small"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    ckpt, dist = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    return {"ckpt": str(ckpt), "dist": str(dist)}


def _args(assets, root, *extra, mode="--train"):
    return ["--config", TINY, mode, "--cpu", f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
            f"system.prompt_processor.distribution={assets['dist']}", f"exp_root_dir={root}",
            "trainer.val_check_interval=0", "trainer.limit_test_batches=1", *extra]


def _one_line_error(err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip() and "error" in ln]
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, err)


# ---------------------------------------------------------------------------------------------- the atomic writer
def test_atomic_writer_umask_mode_and_nothing_left_on_failure(tmp_path):
    target = tmp_path / "a.bin"
    dio.atomic_write_bytes(target, b"old")
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with dio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died mid-write")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_torch_write_failure_is_an_os_error(tmp_path, monkeypatch):
    def full(obj, f):  # what torch does on a full disk: the file's OSError, then its own RuntimeError about it
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        dio.atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert e.value.errno == errno.ENOSPC and "last.ckpt" in describe(e.value) and "no space left" in describe(e.value)
    assert list(tmp_path.iterdir()) == []

    def broken(obj, f):  # a torch failure that is not a write error stays what it is, whatever its words
        raise RuntimeError("PytorchStreamWriter failed writing: an internal error")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="internal error"):
        dio.atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_video_writer_leaves_no_temp_file_when_a_frame_fails(tmp_path):
    from dreamdist3d.lift3d.saving import write_video

    def frames():
        yield np.zeros((8, 8, 3), np.uint8)
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError):
        write_video(tmp_path / "it4-test.mp4", frames())
    assert list(tmp_path.iterdir()) == []  # before: .it4-test.tmp.mp4 stayed behind


def test_toy_weights_writer_has_the_usual_mode(tmp_path):
    from dreamdist3d.backbones.toy import build_toy_backbone, small_test_config
    from dreamdist3d.backbones.toy_weights import save_toy_backbone

    save_toy_backbone(build_toy_backbone(small_test_config()), tmp_path / "w.safetensors")
    mask = os.umask(0o022)
    os.umask(mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# ---------------------------------------------------------------------------------------------- runs.py
def test_two_runs_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    class Frozen:
        @staticmethod
        def now():
            import datetime

            return datetime.datetime(2026, 12, 1, 6, 0, 0)

    monkeypatch.setattr(runs, "datetime", Frozen)
    a = runs.new_run_dir(tmp_path, "exp", "tag")
    b = runs.new_run_dir(tmp_path, "exp", "tag")
    assert a.name == "tag@20261201-060000" and b.name == "tag@20261201-060000-1"
    assert (a / "ckpts").is_dir() and (b / "ckpts").is_dir()
    keys = [f"exp_root_dir={tmp_path / 'o'}", "system.prompt_processor.distribution=x"]
    with pytest.raises(ValueError, match="pretrained_model_name_or_path"):
        load_config(TINY, keys)
    assert not any((tmp_path / "o" / "tiny").iterdir())  # the reserved folder went away with the config error
    keys.append("system.guidance.pretrained_model_name_or_path=y")
    cfg1, cfg2 = load_config(TINY, keys), load_config(TINY, keys)
    assert cfg1.trial_dir != cfg2.trial_dir and Path(cfg2.trial_dir).name.endswith("-1")
    assert cfg2.trial_name == Path(cfg2.trial_dir).name and cfg2.timestamp.endswith("-1")


def test_pick_device_and_checkpoint_names():
    assert runs.pick_device("cpu").type == "cpu"
    assert runs.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            runs.pick_device("cuda")
    with pytest.raises(ValueError, match="not a device"):
        runs.pick_device("gpu0")
    assert [runs.step_of(n) for n in ("step-0000200.pt", "epoch=0-step=12.ckpt", "last.ckpt")] == [200, 12, -1]


class Payload:  # a pickled object that is not a tensor or plain container
    pass


def test_damaged_checkpoint_names_the_intact_one(tmp_path):
    ck = tmp_path / "ckpts"
    runs.save_checkpoint({"format": "x", "step": 2}, ck / "epoch=0-step=2.ckpt")
    runs.save_checkpoint({"format": "x", "step": 4}, ck / "epoch=0-step=4.ckpt")
    data = (ck / "epoch=0-step=4.ckpt").read_bytes()
    (ck / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(runs.CheckpointError) as e:
        runs.load_checkpoint(ck / "last.ckpt", "x")
    assert "last.ckpt" in str(e.value) and "epoch=0-step=4.ckpt" in str(e.value) and "truncated" in str(e.value)
    (ck / "epoch=0-step=4.ckpt").write_bytes(os.urandom(300))
    with pytest.raises(runs.CheckpointError, match="epoch=0-step=2.ckpt"):
        runs.load_checkpoint(ck / "last.ckpt", "x")

    torch.save({"format": "x", "obj": Payload()}, ck / "pickled.ckpt")
    with pytest.raises(runs.CheckpointError) as e:
        runs.load_checkpoint(ck / "pickled.ckpt", "x")
    assert "refused" in str(e.value) and "weights_only" not in str(e.value)


# ---------------------------------------------------------------------------------------------- OS errors (17.1)
@pytest.mark.parametrize("exc, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/x/out.png"), ["/x/out.png", "permission denied"]),
    (OSError(errno.ENOSPC, "No space left on device", "/x/ckpt"), ["/x/ckpt", "no space left"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/dir"), ["/x/dir", "is a folder"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/a"), ["/ro/a", "read-only"]),
])
def test_os_errors_read_as_one_line(exc, words):
    text = describe(exc)
    assert "\n" not in text and all(w in text for w in words) and exit_code(exc) == 1


def test_output_names_that_viewers_or_users_would_misread_are_refused_first(tmp_path):
    """A PNG path without .png (the file opens in no viewer by name; PIL refused it only after sampling) and a folder
    named like an image (`sample --out grid.png` made a folder called grid.png) are refused, naming the fix."""
    with pytest.raises(dio.OutputPathError, match=r"--out .*/grid: the file is written as PNG; give a name ending in "
                                                  r"\.png \(e\.g\. .*/grid\.png\)"):
        dio.check_writable(tmp_path / "grid", "--out", suffix=".png")
    assert dio.check_writable(tmp_path / "grid.PNG", "--out", suffix=".png") == tmp_path / "grid.PNG"
    with pytest.raises(dio.OutputPathError, match=r"--out .*/samples\.png: names a folder .* e\.g\. .*/samples$"):
        dio.check_writable(tmp_path / "samples.png", "--out", is_dir=True)
    (tmp_path / "v2.png").mkdir()  # an existing folder of that name is the user's own choice
    assert dio.check_writable(tmp_path / "v2.png", "--out", is_dir=True) == tmp_path / "v2.png"
    assert not [p for p in tmp_path.iterdir() if p.name != "v2.png"]  # nothing written by the checks


def test_launch_output_root_is_a_file(assets, tmp_path, capsys):
    root = tmp_path / "outputs"
    root.write_text("not a folder")
    rc = launch_main(_args(assets, root, "trainer.max_steps=1"))
    _one_line_error(capsys.readouterr().err, "exp_root_dir", str(root))
    assert rc != 0


def test_launch_read_only_folder_is_refused_before_loading(assets, tmp_path, capsys, monkeypatch):
    def refuse(folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(dio, "_probe_write", refuse)
    loaded = []
    import dreamdist3d.lift3d.guidance as guidance

    monkeypatch.setattr(guidance, "load_backbone", lambda *a, **k: loaded.append(1))
    rc = launch_main(_args(assets, tmp_path / "out", "trainer.max_steps=1"))
    _one_line_error(capsys.readouterr().err, "read-only")
    assert rc == 1 and not loaded and not (tmp_path / "out").exists()


def test_launch_full_disk_during_training(assets, tmp_path, capsys, monkeypatch):
    import dreamdist3d.lift3d.trainer as trainer

    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    rc = launch_main(_args(assets, tmp_path, "trainer.max_steps=1"))
    _one_line_error(capsys.readouterr().err, ".ckpt", "no space left")
    assert rc == 1


def test_config_error_leaves_no_trial_folder(assets, tmp_path, capsys):
    rc = launch_main(_args(assets, tmp_path, "trainer.max_steps=1", "system.background_type=nonexistent-background"))
    assert rc == 2 and "nonexistent-background" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())


def test_cli_outputs_checked_before_models_load(tmp_path, capsys):
    from dreamdist3d.cli import main

    folder = tmp_path / "a-folder"
    folder.mkdir()
    missing = tmp_path / "nowhere.pt"  # the model is never reached: the --out check comes first
    rc = main(["preview", "--mvdream", str(missing), "--prompt", "x", "--out", str(folder)])
    _one_line_error(capsys.readouterr().err, "--out", "is a folder")
    assert rc == 1
    afile = tmp_path / "a-file"
    afile.write_text("x")
    rc = main(["sample", "--distribution", "d.safetensors", "--sd21", str(missing), "--out", str(afile)])
    _one_line_error(capsys.readouterr().err, "--out", "existing file")
    assert rc == 1
    toy = ["--backbone", "dreamdist3d.testing.backbones:tiny_toy_backbone", "--resolution", "8", "--quiet",
           "--preview-every", "0", "--steps", "1", "--n-prompts", "2", "--batch-size", "1", "--n-samples", "1"]
    out = str(afile / "d.safetensors")
    rc = main(["learn", "--images", str(DATA), *toy, "--out-dir", str(tmp_path / "r"), "--out", out])
    _one_line_error(capsys.readouterr().err, "--out", "existing file")
    assert rc == 1 and not (tmp_path / "r").exists()  # refused before training, no run folder
    rc = main(["learn", "--images", str(DATA), *toy, "--out-dir", str(afile)])
    _one_line_error(capsys.readouterr().err, "--out-dir", "existing file")
    assert rc == 1


# ---------------------------------------------------------------------------------------------- 3D metrics (17.4)
def _steps(csv_path: Path):
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("step,"), lines[:2]
    assert not any(ln.startswith("step,") for ln in lines[1:]), lines
    return [int(ln.split(",")[0]) for ln in lines[1:]]


def test_metrics_flushed_per_row_and_kept_on_resume(assets, tmp_path, monkeypatch):
    from dreamdist3d.lift3d.system import MVDreamSystem

    orig = MVDreamSystem.training_step
    seen = []

    def step(self, batch):
        found = list(tmp_path.glob("tiny/*/csv_logs/metrics.csv"))
        seen.append(len(found[0].read_text().splitlines()) if found else 0)
        return orig(self, batch)

    monkeypatch.setattr(MVDreamSystem, "training_step", step)
    assert launch_main(_args(assets, tmp_path, "trainer.max_steps=4", "checkpoint.every_n_train_steps=2")) == 0
    assert seen == [0, 2, 3, 4]  # header + each row on disk as soon as it is logged (before: 0 bytes until the end)
    monkeypatch.setattr(MVDreamSystem, "training_step", orig)
    run = next((tmp_path / "tiny").iterdir())
    csv_path = run / "csv_logs" / "metrics.csv"
    assert _steps(csv_path) == [1, 2, 3, 4]
    # the run died after step 4 but its last.ckpt is from step 2: resume drops rows 3, 4 and logs them again
    (run / "ckpts" / "last.ckpt").write_bytes((run / "ckpts" / "epoch=0-step=2.ckpt").read_bytes())
    assert launch_main(_args(assets, tmp_path, "resume=latest", "trainer.max_steps=5")) == 0
    assert _steps(csv_path) == [1, 2, 3, 4, 5]


def test_truncated_last_ckpt_is_a_clear_error(assets, tmp_path, capsys):
    assert launch_main(_args(assets, tmp_path, "trainer.max_steps=2", "checkpoint.every_n_train_steps=1")) == 0
    run = next((tmp_path / "tiny").iterdir())
    last = run / "ckpts" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    rc = launch_main(_args(assets, tmp_path, "resume=latest", "trainer.max_steps=3"))
    _one_line_error(capsys.readouterr().err, str(last), "epoch=0-step=2.ckpt")
    assert rc == 2
    last.write_bytes(os.urandom(4096))
    rc = launch_main(_args(assets, tmp_path / "t", f"resume={last}", mode="--test"))
    _one_line_error(capsys.readouterr().err, str(last), "epoch=0-step=2.ckpt")
    assert rc == 2


def test_a_diverged_3d_run_is_one_line_and_exit_code_3(capsys):
    """The 3D trainer raises FloatingPointError naming where the NaN came from: one stderr line, exit code 3."""
    from dreamdist3d.errors import run_reporting

    def diverge():
        raise FloatingPointError("loss became nan at step 12: the guidance terms are not finite")

    assert run_reporting("launch.py", diverge) == 3
    err = capsys.readouterr().err
    assert err == "launch.py: error: loss became nan at step 12: the guidance terms are not finite\n"
