"""Issue 31 (nothing lost, nothing silent, round two): the faults and bad inputs the first battery left, run as a
user runs them — `dreamdist3d …` and `python launch.py …` in a subprocess, stderr and the exit code checked.

Items 1 (divergence: exit code 3), 2 (Ctrl-C in a 3D run, a real SIGINT: exit code 130 and an exact resume),
4 (a full disk: a tmpfs in a private mount namespace), 5 (messages that named the wrong thing), 6 (optimizer groups
with dots as overrides) and 7 (config errors leave no trial folder; YAML errors give the line). Each test failed
before its fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamdist3d.testing.assets import write_tiny_assets

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "dreamdist-mvdream-tiny.yaml")
LEARN_TOY = str(REPO / "configs" / "tiny" / "learn-toy.yaml")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    ckpt, dist = write_tiny_assets(tmp_path_factory.mktemp("assets"))
    return {"ckpt": str(ckpt), "dist": str(dist)}


def run_cli(*argv: str, timeout: float = 300, prefix=()) -> subprocess.CompletedProcess:
    """`python <argv>` in the repository, as a user types it (`prefix`: a wrapper such as `unshare`)."""
    return subprocess.run([*prefix, sys.executable, *argv], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def launch_args(assets, root, *extra) -> list:
    return ["launch.py", "--config", TINY, "--train", "--cpu",
            f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
            f"system.prompt_processor.distribution={assets['dist']}", f"exp_root_dir={root}",
            "trainer.val_check_interval=0", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
            *extra]


def one_error_line(err: str, *words: str) -> str:
    """The one `error:` line of stderr (no traceback), holding every word."""
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, err)
    return lines[0]


# ---------------------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("argv", [
    ["-m", "dreamdist3d.cli", "learn", "--config", LEARN_TOY, "--lr", "1e30", "--quiet", "--out-dir", "{out}"],
    ["launch.py", "--config", LEARN_TOY, "--train", "--cpu", "lr=1e30", "progress=false", "out_dir={out}"],
], ids=["dreamdist3d-learn", "launch.py"])
def test_learning_divergence_is_one_line_and_exit_code_3(tmp_path, argv):
    res = run_cli(*[a.format(out=tmp_path / "runs") for a in argv])
    line = one_error_line(res.stderr, "loss became nan at step 2", "step-0000001.pt", "lower lr")
    assert res.returncode == 3, (res.returncode, line)


# ---------------------------------------------------------------------------------------------- item 2
def _tensors(obj, prefix=""):
    """Every tensor in a nested checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


def test_ctrl_c_then_resume_latest_is_the_uninterrupted_3d_run_bit_for_bit(assets, tmp_path):
    steps = ["trainer.max_steps=40", "trainer.val_check_interval=7", "checkpoint.every_n_train_steps=7"]
    full = run_cli(*launch_args(assets, tmp_path / "full", *steps))
    assert full.returncode == 0, full.stderr
    # preexec_fn: Ctrl-C handled as in a terminal even when the suite itself runs as a background job (whose
    # children inherit SIGINT ignored)
    proc = subprocess.Popen([sys.executable, *launch_args(assets, tmp_path / "cut", *steps)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:  # Ctrl-C in the middle of training
        logs = list((tmp_path / "cut").glob("tiny/*/csv_logs/metrics.csv"))
        if logs and len(logs[0].read_text().splitlines()) > 5:
            break
        time.sleep(0.05)
    time.sleep(0.06)  # into the next step
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("launch.py: interrupted")]
    assert "Traceback" not in err and len(lines) == 1 and "resume=latest" in lines[0], err
    run = next((tmp_path / "cut" / "tiny").iterdir())
    cut_step = torch.load(run / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= cut_step < 40 and f"stopped at step {cut_step}" in lines[0]
    resumed = run_cli(*launch_args(assets, tmp_path / "cut", *steps, "resume=latest"))
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(next((tmp_path / "full" / "tiny").iterdir()) / "ckpts" / "last.ckpt", weights_only=True)
    b = torch.load(run / "ckpts" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    ta, tb = _tensors({k: a[k] for k in ("state_dict", "optimizer", "rng")}), _tensors(
        {k: b[k] for k in ("state_dict", "optimizer", "rng")})
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:5]


def _signal_when(proc, ready, sig, timeout: float = 180) -> None:
    """Send `sig` to `proc` once `ready()` holds (training is under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    time.sleep(0.06)  # into the next step
    proc.send_signal(sig)


def test_sigterm_in_a_3d_run_keeps_the_step_and_skips_the_test_stage(assets, tmp_path):
    """A scheduler's preemption (SIGTERM) ends a 3D run as Ctrl-C does — last.ckpt of the step in progress, the
    resume hint — but with exit code 143 and no test stage after it (before: killed at once, the step lost)."""
    steps = ["trainer.max_steps=200", "checkpoint.every_n_train_steps=1000"]  # no periodic checkpoint before the cut
    proc = subprocess.Popen([sys.executable, *launch_args(assets, tmp_path, *steps)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = lambda: list(tmp_path.glob("tiny/*/csv_logs/metrics.csv"))  # noqa: E731
    _signal_when(proc, lambda: bool(logs()) and len(logs()[0].read_text().splitlines()) > 5, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.startswith("launch.py: terminated (SIGTERM)")]
    assert "Traceback" not in err and len(lines) == 1 and "resume=latest" in lines[0], err
    step = torch.load(next((tmp_path / "tiny").iterdir()) / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= step < 200 and f"stopped at step {step}" in lines[0]
    assert "turntable:" not in out  # the grace period goes to the checkpoint, not to rendering a turntable


def test_ctrl_c_in_a_gallery_then_the_same_command_finishes_the_stopped_object(assets, tmp_path):
    """Ctrl-C renders a test turntable at the step training stopped (as threestudio does); the gallery used to count
    that half-trained object as finished and keep it for good. Now the same command again continues the stopped run
    from its last.ckpt and ends with the uninterrupted run's object, bit for bit on CPU."""
    def gallery(out):
        return ["-m", "dreamdist3d.cli", "gallery", "--distribution", assets["dist"], "--seeds", "0", "--config", TINY,
                "--out", str(out), "--cpu", f"system.guidance.pretrained_model_name_or_path={assets['ckpt']}",
                "trainer.max_steps=40", "checkpoint.every_n_train_steps=1000", "trainer.val_check_interval=0",
                "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false"]

    assert run_cli(*gallery(tmp_path / "full")).returncode == 0
    proc = subprocess.Popen([sys.executable, *gallery(tmp_path / "cut")], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "cut" / "runs" / "seed0" / "csv_logs" / "metrics.csv"
    _signal_when(proc, lambda: log.is_file() and len(log.read_text().splitlines()) > 5, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    run = tmp_path / "cut" / "runs" / "seed0"
    step = torch.load(run / "ckpts" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= step < 40 and (run / "save" / f"it{step}-test.mp4").is_file()  # the half-trained turntable
    assert "Traceback" not in err and f"interrupted: seed 0 stopped at step {step}, kept in " in err
    assert "run the same command again" in err and "resume=latest" not in err  # (no key a gallery user types)

    again = run_cli(*gallery(tmp_path / "cut"))
    assert again.returncode == 0, again.stderr
    assert "keeping" not in again.stdout and "seed 0: continuing its stopped run from" in again.stdout
    assert (run / "save" / "it40-test.mp4").is_file()
    a = torch.load(tmp_path / "full" / "runs" / "seed0" / "ckpts" / "last.ckpt", weights_only=True)
    b = torch.load(run / "ckpts" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    ta, tb = (_tensors({k: c[k] for k in ("state_dict", "optimizer", "rng")}) for c in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sigterm_while_learning_saves_the_step_in_progress(tmp_path):
    """`dreamdist3d learn` under SIGTERM: the checkpoint of the current step and the resume command, exit 143."""
    from dreamdist3d.runs import checkpoints_in, step_of

    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "dreamdist3d.cli", "learn", "--config", LEARN_TOY, "--steps",
                             "100000", "--checkpoint-every", "5", "--preview-every", "0", "--quiet", "--out-dir",
                             str(out)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _signal_when(proc, lambda: bool(list(out.glob("*/ckpts/*.pt"))), signal.SIGTERM)  # learning is under way
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143 and "Traceback" not in err, err
    saved = checkpoints_in(next(out.iterdir()) / "ckpts")[-1]
    assert step_of(saved) >= 5 and f"[learn] interrupted at step {step_of(saved)}: saved {saved}" in err
    assert "resume with:" in err and err.rstrip().endswith("dreamdist3d learn: terminated (SIGTERM)"), err


# ---------------------------------------------------------------------------------------------- item 3
def _scaled(dist, factor: float, out: Path) -> Path:
    """The distribution with its context multiplied by `factor`: finite, with a valid checksum."""
    from dreamdist3d.distribution import PromptDistribution

    return PromptDistribution(dist.ctx * factor, dist.meta).save(out)


def test_huge_finite_distributions_are_refused_or_warned_about_naming_the_file(assets, tmp_path):
    from dreamdist3d.distribution import PromptDistribution, PromptLearner
    from dreamdist3d.testing.checkpoints import tiny_sd21_folder
    from dreamdist3d.text import ClipTokenizer, TextEncoder

    dist = PromptDistribution.load(assets["dist"])
    huge, big = _scaled(dist, 1e30, tmp_path / "huge.safetensors"), _scaled(dist, 1e10, tmp_path / "big.safetensors")
    sd21 = tiny_sd21_folder(tmp_path / "tiny-sd21", seed=5)  # and a file learned against its text encoder
    learner = PromptLearner(TextEncoder.from_diffusers(sd21), ClipTokenizer.from_folder(sd21), n_ctx=2, n_prompts=3,
                            generator=torch.Generator().manual_seed(0))
    huge_sd21 = _scaled(PromptDistribution.from_learner(learner), 1e30, tmp_path / "huge-sd21.safetensors")
    cli = ["-m", "dreamdist3d.cli"]
    res = run_cli(*cli, "inspect", str(huge))  # no encoder to try: the metadata, and a loud warning
    assert res.returncode == 0 and "inf" not in res.stdout, res.stdout
    warned = [ln for ln in res.stderr.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and str(huge) in warned[0] and "NaN" in warned[0], res.stderr
    preview = ["preview", "--mvdream", assets["ckpt"], "--n", "1", "--steps", "2", "--device", "cpu"]
    scatter = str(tmp_path / "s.png")
    for path, argv in ((huge, ["inspect", str(huge), "--text-encoder", assets["ckpt"], "--plot", scatter]),
                       (huge, [*preview, "--distribution", str(huge), "--out", str(tmp_path / "p.png")]),
                       (huge_sd21, ["sample", "--distribution", str(huge_sd21), "--sd21", str(sd21), "--n", "1",
                                    "--steps", "1", "--out", str(tmp_path / "sampled")])):
        res = run_cli(*cli, *argv)
        one_error_line(res.stderr, str(path), "encodes to NaN/Inf", "black images")
        assert res.returncode == 2
    assert not list(tmp_path.rglob("*.png"))  # no all-black picture was written
    res = run_cli(*cli, *preview, "--distribution", str(big), "--out", str(tmp_path / "big.png"))
    warned = [ln for ln in res.stderr.splitlines() if "warning:" in ln]
    assert res.returncode == 0 and len(warned) == 1, res.stderr
    assert str(big) in warned[0] and "far outside the encoder's range" in warned[0]


# ---------------------------------------------------------------------------------------------- item 4
def test_full_disk_in_a_3d_run_is_one_line_and_keeps_the_last_checkpoint(assets, tmp_path):
    """A real full disk: exp_root_dir is a 1.2 MB tmpfs mounted in a private mount namespace (`unshare -rm`); the
    first last.ckpt (0.7 MB) fits, the next one does not."""
    disk, after = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    after.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {disk}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare -rm, mount tmpfs): {probe.stderr.strip()}")
    # mount, run launch.py ("$0" "$@"), copy what is on the full disk out before the namespace goes away
    script = f'mount -t tmpfs -o size=1200k tmpfs {disk} && {{ "$0" "$@"; rc=$?; cp -a {disk}/. {after}/; exit $rc; }}'
    wrapper = ["unshare", "-rm", "sh", "-c", script]
    res = run_cli(*launch_args(assets, disk, "trainer.max_steps=6", "trainer.val_check_interval=2"), prefix=wrapper)
    line = one_error_line(res.stderr, "last.ckpt", "no space left on the device")
    assert res.returncode == 1, (res.returncode, line)
    ckpts = next((after / "tiny").iterdir()) / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous one, intact


# ---------------------------------------------------------------------------------------------- item 5
def test_random_bytes_are_never_called_anything_but_not_a_checkpoint(tmp_path):
    """Decided by the file's first bytes, not by which error torch.load raises (that varies with the bytes: random
    bytes starting 0xa4 once gave a UnicodeDecodeError and the message 'cannot be read')."""
    import random

    from dreamdist3d.io import load_error_reason
    from dreamdist3d.runs import _read_problem

    rng = random.Random(0)
    junk = tmp_path / "junk.ckpt"
    for head in [b"\xa4", b"\x80\x00", b"PK\x05\x06", b""] + [b""] * 60:
        junk.write_bytes(head + rng.randbytes(4096))
        assert _read_problem(junk, None).startswith("is not a checkpoint at all"), head
        assert "not a PyTorch checkpoint" in load_error_reason(RuntimeError("x"), junk)


def test_random_bytes_as_resume_are_not_a_checkpoint_at_all(assets, tmp_path):
    junk = tmp_path / "last.ckpt"
    junk.write_bytes(b"\xa4" + os.urandom(4095))  # what once slipped through (see the test above)
    for argv in (launch_args(assets, tmp_path / "runs", f"resume={junk}"),
                 ["-m", "dreamdist3d.cli", "learn", "--config", LEARN_TOY, "--quiet", "--resume", str(junk),
                  "--out-dir", str(tmp_path / "learn")]):
        res = run_cli(*argv)
        line = one_error_line(res.stderr, str(junk), "is not a checkpoint at all")
        assert res.returncode == 2 and "pickled" not in line and "could run code" not in line, line


def test_a_diffusers_folder_as_the_mvdream_checkpoint_says_so(assets, tmp_path):
    sd21 = tmp_path / "stable-diffusion-2-1-base"
    (sd21 / "unet").mkdir(parents=True)
    (sd21 / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    res = run_cli(*launch_args(assets, tmp_path / "runs", f"system.guidance.pretrained_model_name_or_path={sd21}"))
    line = one_error_line(res.stderr, "system.guidance.pretrained_model_name_or_path", str(sd21),
                          "diffusers (Stable Diffusion 2.1) model folder, not the MVDream checkpoint",
                          "sd-v2.1-base-4view.pt")
    assert res.returncode == 2 and "not found" not in line, line


def test_skip_bad_warning_gives_no_advice_to_pass_skip_bad(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    for p in sorted((REPO / "tests" / "data" / "cathedral_small").glob("*.jpg"))[:3]:
        (refs / p.name).write_bytes(p.read_bytes())
    (refs / "empty.png").write_bytes(b"")
    res = run_cli("-m", "dreamdist3d.cli", "learn", "--config", LEARN_TOY, "--images", str(refs), "--skip-bad",
                  "--steps", "1", "--preview-every", "0", "--quiet", "--out-dir", str(tmp_path / "learn"))
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "warning:" in ln]
    assert warned == [f"dreamdist3d learn: warning: --skip-bad: skipped: reference image {refs / 'empty.png'} is "
                      "empty (0 bytes)"], res.stderr


# ---------------------------------------------------------------------------------------------- item 6
def test_optimizer_groups_with_dots_can_be_overridden(assets, tmp_path):
    override = "system.optimizer.params.geometry.encoding.lr=0.02"  # the group's key `geometry.encoding` has a dot
    res = run_cli(*launch_args(assets, tmp_path, "trainer.max_steps=1", override))
    assert res.returncode == 0, res.stderr
    groups = torch.load(next((tmp_path / "tiny").iterdir()) / "ckpts" / "last.ckpt",
                        weights_only=True)["optimizer"]["param_groups"]
    assert {g["name"]: g["lr"] for g in groups} == {"geometry.encoding": 0.02, "geometry.density_network": 0.001,
                                                   "geometry.feature_network": 0.001}


# ---------------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("override, words", [
    ("system.optimizer.params.geometry.encodng.lr=0.02", ["'geometry.encodng' does not name a module"]),
    ("system.optimizer.params.geometry.encoding.lrr=0.02", ["system.optimizer.params.geometry.encoding",
                                                            "unknown key(s) ['lrr']"]),
    ("yaml:lr: .nan", ["system.optimizer.params.geometry.encoding.lr must be a finite number"]),
    ("system.guidance.view_dependent_prompting=true", ["system.prompt_processor.view_dependent_prompting is false"]),
    ("system.loss.lambda_orient=1", ["lambda_orient > 0 needs normals"]),  # found at the first step, files written
], ids=["group-typo", "hyperparameter-typo", "nan-in-yaml", "view-dependence", "late-error"])
def test_config_errors_leave_no_trial_folder(assets, tmp_path, override, words):
    argv = launch_args(assets, tmp_path / "runs", "trainer.max_steps=1")
    if override.startswith("yaml:"):  # the user's own copy of the config, edited
        config = tmp_path / "mine.yaml"
        config.write_text(Path(TINY).read_text().replace("lr: 0.01", override[len("yaml:"):], 1))
        argv[argv.index(TINY)] = str(config)
    else:
        argv.append(override)
    res = run_cli(*argv)
    one_error_line(res.stderr, *words)
    assert res.returncode == 2
    assert not (tmp_path / "runs" / "tiny").exists() or not any((tmp_path / "runs" / "tiny").iterdir())


def test_a_yaml_syntax_error_names_the_line(assets, tmp_path):
    config = tmp_path / "mine.yaml"
    lines = Path(TINY).read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if ln.strip().startswith("lr: 0.01"))
    lines[n] = lines[n].replace("lr: 0.01", "lr: [0.01")  # an unclosed bracket
    config.write_text("\n".join(lines) + "\n")
    argv = launch_args(assets, tmp_path / "runs")
    argv[argv.index(TINY)] = str(config)
    res = run_cli(*argv)
    one_error_line(res.stderr, str(config), f"line {n + 2}, column", f"that starts at line {n + 1}")
    assert res.returncode == 2 and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- the README's table
def test_readme_exit_code_table_is_the_one_errors_py_uses():
    import re

    from dreamdist3d import errors

    text = (REPO / "README.md").read_text()
    table = text[text.index("**Exit codes and what each means**"):].split("\n\n")[1]
    codes = [int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)]
    assert codes == [0, errors.SYSTEM_ERROR, errors.INPUT_ERROR, errors.DIVERGED, errors.INTERRUPTED, errors.TERMINATED]
    assert errors.exit_code(PermissionError(13, "denied")) == 1 and errors.exit_code(ValueError()) == 2
    assert errors.exit_code(FloatingPointError()) == 3 and errors.exit_code(KeyboardInterrupt()) == 130
    assert errors.exit_code(errors.Terminated()) == 143
