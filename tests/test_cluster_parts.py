"""The parts of `dreamdist3d.cluster` that need no running cluster: sizing the pool from the cluster's resources
(errors name them), an unreachable address (named, no fallback), the flags, and run folders sent back as bytes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dreamdist3d.cli import main
from dreamdist3d.cluster.connect import ClusterError, plan_actors, probe, split_address
from dreamdist3d.cluster.files import pack_run, relocate, write_run
from dreamdist3d.lift3d.gallery import find_turntable

CPU_ONLY = {"CPU": 2.0, "memory": 8 * 2**30}


def test_pool_size_follows_the_cluster_and_errors_name_its_resources():
    assert plan_actors({"CPU": 16, "GPU": 4}, "c", cpu=False, actors=0, cpus_per_actor=2, n_objects=64).actors == 4
    plan = plan_actors({"CPU": 16, "GPU": 4}, "c", cpu=False, actors=0, cpus_per_actor=1, n_objects=3)
    assert (plan.actors, plan.num_gpus, plan.num_cpus) == (3, 1.0, 1.0)  # never more workers than objects
    plan = plan_actors(CPU_ONLY, "c", cpu=True, actors=0, cpus_per_actor=1, n_objects=8)
    assert (plan.actors, plan.num_gpus) == (2, 0.0)
    with pytest.raises(ClusterError, match=r"the Ray cluster at 10.0.0.5:6379 has 2 CPUs and 0 GPUs: no GPU .* "
                                           r"--cpu"):
        plan_actors(CPU_ONLY, "the Ray cluster at 10.0.0.5:6379", cpu=False, actors=0, cpus_per_actor=1, n_objects=4)
    with pytest.raises(ClusterError, match=r"--actors 3: c has 2 CPUs and 0 GPUs, room for 1 worker\(s\) at 2 CPU"):
        plan_actors(CPU_ONLY, "c", cpu=True, actors=3, cpus_per_actor=2, n_objects=4)


def test_addresses():
    assert split_address("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert split_address("head") == ("head", 6379)
    assert split_address("ray://head") == ("head", 10001)
    with pytest.raises(ClusterError, match="not an address"):
        split_address("head:port")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_is_an_error_naming_it():
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ClusterError, match=f"cannot reach a Ray cluster at {address} .*ray start --head"):
        probe(address, timeout_s=2)


def test_gallery_ray_flags(tmp_path, capsys):
    dist = tmp_path / "d.safetensors"
    dist.write_bytes(b"")  # only its existence is checked before these errors
    base = ["gallery", "--distribution", str(dist), "--out", str(tmp_path / "g"),
            "--config", str(Path(__file__).resolve().parents[1] / "configs" / "toy" / "toy-3d.yaml")]
    assert main([*base, "--ray", "--gpu", "0,1"]) == 2
    assert "with --ray each worker takes one GPU of the cluster" in capsys.readouterr().err
    assert main([*base, "--ray", "trainer.max_steps=3"]) == 2  # an override taken for the address
    assert "key=value overrides go after the flags" in capsys.readouterr().err
    pytest.importorskip("ray", reason="Ray is not installed: the connection itself cannot be tried")
    address = f"127.0.0.1:{_closed_port()}"
    assert main([*base, "--n", "1", "--ray", address]) == 1  # no silent fallback to this machine
    assert f"error: cannot reach a Ray cluster at {address}" in capsys.readouterr().err


def test_a_run_folder_travels_as_bytes(tmp_path):
    work, out = tmp_path / "node" / "scratch-1", tmp_path / "driver"
    run = work / "runs" / "seed3"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "parsed.yaml").write_text(f"trial_dir: {run}\ndistribution: /node/cache/ab/d.safetensors\n")
    (run / "ckpts").mkdir()
    (run / "ckpts" / "last.ckpt").write_bytes(b"big")
    (run / "save" / "it5-test").mkdir(parents=True)
    (run / "save" / "it5-test" / "0.png").write_bytes(b"png")
    (run / "save" / "it5-test.mp4").write_bytes(b"mp4")
    files = pack_run(run, {str(work): str(out), "/node/cache/ab/d.safetensors": "/data/d.safetensors"})
    assert sorted(files) == ["configs/parsed.yaml", "save/it5-test.mp4", "save/it5-test/0.png"]  # no checkpoints
    assert files["configs/parsed.yaml"].decode() == (f"trial_dir: {out}/runs/seed3\n"
                                                     "distribution: /data/d.safetensors\n")

    target = out / "runs" / "seed3"
    (target / "save").mkdir(parents=True)
    (target / "save" / "half-written.png").write_bytes(b"")  # an unfinished earlier attempt: cleared
    (target / "save" / "it2-test.mp4").write_bytes(b"stopped")  # ... even one stopped at step 2 with its turntable
    (target / "ckpts").mkdir()
    (target / "ckpts" / "last.ckpt").write_bytes(b"step 2")
    assert find_turntable(target, min_step=5) is None and find_turntable(target)["step"] == 2
    write_run(target, files)
    assert not (target / "save" / "half-written.png").exists() and not (target / "ckpts").exists()
    assert sorted(p.name for p in (target / "save").glob("*.mp4")) == ["it5-test.mp4"]
    assert find_turntable(target, min_step=5)["video"].read_bytes() == b"mp4"
    assert relocate({"run": run, "files": [run / "a.glb"], "n": 1}, work, out) == {
        "run": target, "files": [target / "a.glb"], "n": 1}
