"""`dreamdist3d gallery --ray` on a local Ray cluster started here (`ray.init(num_cpus=2)`), with the shipped toy
backbone and `configs/toy/toy-3d.yaml` cut to a few SDS steps and 8 turntable views: the same prompt samples and
objects as the one-machine path for the same seeds, resume, an actor killed mid-run, a seed that keeps failing, the
shared-filesystem path. Skipped, saying why, where Ray is not installed (`pip install 'dreamdist3d[ray]'`)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dreamdist3d[ray]'); the cluster path "
                                        "cannot be tested here")

from dreamdist3d.cli import main  # noqa: E402
from dreamdist3d.cluster import ClusterConfig, RayRunner  # noqa: E402
from dreamdist3d.recipes.gallery import gallery_task, run_seed  # noqa: E402
from dreamdist3d.recipes.objects import Call, ObjectTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy" / "toy-3d.yaml")
CAPTIONS = ["a large red sphere", "a large blue cube", "a small green cone", "a small yellow cylinder"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the one-machine runs here: one thread, as each 1-CPU worker
    yield
    torch.set_num_threads(threads)
    ray.shutdown()


@pytest.fixture(scope="module")
def distribution(tmp_path_factory):
    """K=4: four captions as the learned prompts (a spread the seeds sample from)."""
    from dreamdist3d.backbones.toy_weights import load_toy_backbone
    from dreamdist3d.distribution import PromptDistribution

    bb = load_toy_backbone()
    ds = [PromptDistribution.from_caption(c, bb.text_encoder, bb.tokenizer, backbone="toy") for c in CAPTIONS]
    meta = dataclasses.replace(ds[0].meta, n_prompts=len(ds), source="four captions")
    path = tmp_path_factory.mktemp("d") / "four.safetensors"
    return PromptDistribution(torch.cat([d.ctx for d in ds]), meta).save(path)


def argv(dist, out, *extra, steps=8):
    return ["gallery", "--distribution", str(dist), "--config", CONFIG, "--out", str(out), "--cpu", "--frames", "3",
            *extra, f"trainer.max_steps={steps}", "data.n_test_views=8", "trainer.enable_progress_bar=false"]


def files_of(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.relative_to(run).parts[0] != "ckpts"}


def same_run(a: Path, b: Path) -> None:
    """Same files (checkpoints aside) with the same bytes (cmd.txt: the driver's command, here pytest's for both);
    configs/parsed.yaml up to the two output folders; the meshes' model.export.json up to its source checkpoint's
    folder and its timings."""
    import json

    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    root_a, root_b = str(a.parent.parent), str(b.parent.parent)
    for rel in fa:
        if rel.endswith("model.export.json"):
            ja, jb = (json.loads(f[rel].decode().replace(root, "OUT")) for f, root in ((fa, root_a), (fb, root_b)))
            assert ja.pop("timings_s").keys() == jb.pop("timings_s").keys() and ja == jb
        elif rel == "configs/parsed.yaml":
            assert fa[rel].decode().replace(root_a, "OUT") == fb[rel].decode().replace(root_b, "OUT")
        else:
            assert fa[rel] == fb[rel], rel


def test_ray_gallery_gives_the_one_machine_objects_and_resumes(cluster, distribution, tmp_path, capsys):
    here, there = tmp_path / "here", tmp_path / "ray"
    assert main(argv(distribution, here, "--seeds", "0,1,2")) == 0
    assert main(argv(distribution, there, "--seeds", "0,1,2", "--ray", "auto", "--actors", "2")) == 0
    for s in (0, 1, 2):
        same_run(here / "runs" / f"seed{s}", there / "runs" / f"seed{s}")  # prompt sample, metrics, every frame
    page = (there / "gallery.html").read_text()
    assert page.count("<video") == 3
    assert np.asarray(Image.open(there / "gallery.png")).shape == (3 * 32, 3 * 32, 3)
    err = capsys.readouterr().err
    assert "2 worker(s), 1 CPU(s) each" in err and "3/3 done" in err and "obj/h" in err
    assert "3/3 done, running 0" in err and "3/3 done, running 1" not in err  # the finished object no longer runs

    # a rerun keeps the finished seeds and runs only the missing one
    kept = (there / "runs" / "seed0" / "save" / "it8-test.mp4").stat().st_mtime_ns
    import shutil

    shutil.rmtree(there / "runs" / "seed1")
    assert main(argv(distribution, there, "--seeds", "0,1,2", "--ray", "auto")) == 0
    printed = capsys.readouterr()
    err = printed.err
    assert "keeping 2 finished run(s); 1 to do" in printed.out
    assert (there / "runs" / "seed0" / "save" / "it8-test.mp4").stat().st_mtime_ns == kept
    same_run(here / "runs" / "seed1", there / "runs" / "seed1")
    assert "seed 1 done" in err and "seed 0 done" not in err


def test_shared_filesystem_writes_the_same_files(cluster, distribution, tmp_path):
    sent, shared = tmp_path / "sent", tmp_path / "shared"
    assert main(argv(distribution, sent, "--n", "2", "--ray", "auto")) == 0
    assert main(argv(distribution, shared, "--n", "2", "--ray", "auto", "--shared-fs")) == 0
    for s in (0, 1):
        same_run(sent / "runs" / f"seed{s}", shared / "runs" / f"seed{s}")
        assert (shared / "runs" / f"seed{s}" / "ckpts" / "last.ckpt").is_file()  # written in place
        assert not (sent / "runs" / f"seed{s}" / "ckpts").exists()  # not sent back
    assert not list(shared.glob(".dreamdist3d-shared-fs-*"))  # the marker the workers check is gone


@pytest.mark.slow
def test_an_actor_killed_mid_run_is_retried_and_the_gallery_completes(cluster, distribution, tmp_path, capsys):
    out, scratch = tmp_path / "g", tmp_path / "scratch"
    result = {}
    cli = threading.Thread(target=lambda: result.setdefault(
        "rc", main(argv(distribution, out, "--n", "3", "--ray", "auto", "--scratch", str(scratch), steps=60))))
    cli.start()
    deadline, killed = time.monotonic() + 240, None
    while killed is None and time.monotonic() < deadline and cli.is_alive():
        started = sorted(scratch.glob("dreamdist3d-ray/*-seed*-*/runs/seed*/cmd.txt"))  # training has begun
        if started:
            work = started[0].parents[2].name  # <worker name>-seed<S>-<random>
            killed = work.split("-seed")[0], int(work.split("-seed")[1].split("-")[0])
            ray.kill(ray.get_actor(killed[0]), no_restart=False)
        time.sleep(0.05)
    cli.join(timeout=300)
    assert killed is not None, "no run started in time"
    assert result.get("rc") == 0
    err = capsys.readouterr().err
    assert f"seed {killed[1]} failed (worker {killed[0]} died" in err and "trying again on another worker" in err
    assert all((out / "runs" / f"seed{s}" / "save" / "it60-test.mp4").is_file() for s in range(3))
    assert (out / "gallery.html").read_text().count("<video") == 3
    assert not list(scratch.glob("dreamdist3d-ray/*-seed*"))  # scratch runs removed (the killed one on restart)


def cursed_run(backbone, out, seed, *, cursed, **kwargs):
    """`run_seed`, except that the seeds in `cursed` always fail."""
    if seed in cursed:
        raise ValueError(f"seed {seed} is cursed")
    return run_seed(backbone, out, seed, **kwargs)


def test_a_seed_failing_twice_is_reported_and_the_others_finish(cluster, distribution, tmp_path, capsys):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    out = (tmp_path / "g").resolve()
    task = gallery_task(CONFIG, str(distribution), out, 0, ["trainer.max_steps=4", "data.n_test_views=4"], "cpu")
    task = ObjectTask(Call(cursed_run, {**task.run.kwargs, "cursed": {1}}, task.run.files), task.backbone)
    with RayRunner(ClusterConfig(cpu=True, progress=False)) as runner:
        res = runner(task, out, [0, 1, 2])
    assert sorted(res.values) == [0, 2] and list(res.failed) == [1]
    assert res.failed[1] == "seed 1 is cursed"
    assert res.values[0] == out / "runs" / "seed0"  # the worker's scratch path given as the driver's folder
    err = capsys.readouterr().err
    assert "seed 1 failed (seed 1 is cursed); trying again" in err and "seed 1 failed 2 times" in err
    assert not (out / "runs" / "seed1").exists()


def test_failed_seeds_are_listed_with_the_command_that_retries_them(cluster, distribution, tmp_path, capsys):
    out = tmp_path / "g"
    # an unknown covariance law parses at the driver and fails in every run, on the workers
    rc = main(argv(distribution, out, "--n", "2", "--ray", "auto", "--actors", "1",
                   "system.prompt_processor.covariance=bogus"))
    err = capsys.readouterr().err
    assert rc == 1
    assert "seed 0 failed 2 times" in err and "failed seeds: [0, 1]; retry only them" in err
    assert (f"dreamdist3d gallery --distribution {distribution} --n 2 --config {CONFIG} --out {out} --cpu --frames 3 "
            "--ray auto --actors 1 system.prompt_processor.covariance=bogus trainer.max_steps=8") in err


def test_toy_demo_and_arms_objects_through_the_runner(cluster, distribution, tmp_path):
    """The toy demo's 3D stage (run + export) and the arms' 3D objects through Ray: what they make here."""
    from safetensors.torch import load_file

    from dreamdist3d.backbones.toy_weights import load_toy_backbone
    from dreamdist3d.recipes.toy_3d import demo_3d_task, run_3d_seeds
    from dreamdist3d.recipes.toy_demo import DemoConfig
    from dreamdist3d.recipes.toy_eval import objects_3d

    bb = load_toy_backbone()
    cfg = DemoConfig(steps_3d=3, workers_3d=1, progress=False, formats="glb", isosurface_resolution=16,
                     overrides_3d=["data.n_test_views=4"])
    here = run_3d_seeds(bb, cfg, distribution, tmp_path / "here", [0, 1])
    with RayRunner(ClusterConfig(cpu=True, progress=False)) as runner:
        there = runner(demo_3d_task(cfg, distribution), tmp_path / "there", [0, 1])
        views = objects_3d(None, distribution, tmp_path / "arms", [2, 3], CONFIG, 3, runner=runner,
                           overrides=["data.n_test_views=4"])
    for s, (run, exported, _) in zip((0, 1), here):
        run_r, exported_r, times = there.values[s]
        assert run_r == (tmp_path / "there" / "runs" / f"seed{s}").resolve() and exported_r["glb"].is_file()
        assert set(times[0]) == {"wall_s", "cpu_s"}
        assert torch.equal(load_file(run / "prompt_sample.safetensors")["text_embeddings"],
                           load_file(run_r / "prompt_sample.safetensors")["text_embeddings"])
        assert exported["glb"].read_bytes() == exported_r["glb"].read_bytes()
    local = objects_3d(bb, distribution, tmp_path / "arms-here", [2, 3], CONFIG, 3, overrides=["data.n_test_views=4"])
    assert views.shape == (2, 4, 3, 32, 32) and torch.equal(views, local)
