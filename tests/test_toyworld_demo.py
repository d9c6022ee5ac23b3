"""Toy-world demo (smoke version through launch.py) and evaluator (metrics on known readings, report on tiny inputs).

A tiny random toy backbone (`small_test_config`) stands in for the shipped weights: these tests check the plumbing
and the files (the pictures are noise); the evaluator's numbers on the real backbone are in the README.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamdist3d.backbones.toy import build_toy_backbone, small_test_config
from dreamdist3d.backbones.toy_weights import save_toy_backbone
from dreamdist3d.recipes.toy_eval import (
    METRICS,
    EvalConfig,
    claim_check,
    evaluate,
    format_table,
    medoid_caption,
    score_readings,
)
from dreamdist3d.toyworld.attributes import Reading, spec_feature
from dreamdist3d.toyworld.refsets import get_refset

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at one thread, as a run


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("toyw") / "tiny-toy.safetensors"
    save_toy_backbone(build_toy_backbone(small_test_config(), seed=0), path)
    return path


# ----------------------------------------------------------------------------------------------------- demo
def test_demo_smoke_through_launch_py(tiny_weights, tmp_path, capsys):
    import trimesh
    from PIL import Image

    from dreamdist3d.launch import main

    out = tmp_path / "demo"
    rc = main([
        "--config", str(REPO / "configs/toy/dreamdist-toy.yaml"),  # no --train: the demo recipe accepts either
        f"weights={tiny_weights}", f"out={out}", "progress=false", "steps=3", "n_2d=3", "n_4view=1", "sample_steps=2",
        "n_3d=1", "steps_3d=4", "isosurface_resolution=32", "scale=0.5",
    ])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    files = summary["files"]
    # reference set and 2D outputs
    assert len(files["reference_images"]) == get_refset("warm-cones-cylinders").n
    grid = Image.open(files["samples_2d"])
    assert grid.size[0] > grid.size[1] > 0  # one row of 3 samples
    assert Image.open(files["previews_4view"]).size[0] > 4 * 32
    assert Path(files["distribution"]).is_file()
    # the 3D run: a 120-frame turntable and meshes that reopen
    (run,) = files["runs_3d"]
    assert summary["seeds_3d"] == [run["seed"]] and run["seed"] in range(3)  # the medoid of the 3 2D samples
    assert Path(run["run_dir"]).name == f"seed{run['seed']}"
    from dreamdist3d.lift3d.prompt_processor import PromptSample

    lifted = PromptSample.load(run["prompt_sample"])
    assert lifted.meta["files"][0]["scale"] == 0.5  # γ reaches the 3D runs too
    # the pick relies on the seed rule: 2D sample i of seed 0 is the prompt sample the 3D run with seed i draws
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.toy_demo import prompt_samples

    drawn = prompt_samples(load_backbone(f"toy:{tiny_weights}"), Path(files["distribution"]), 3, seed=0, scale=0.5)
    torch.testing.assert_close(lifted.text_embeddings[0], drawn[run["seed"]], rtol=0, atol=1e-6)
    assert summary["seeds_4view"] == summary["seeds_3d"]  # the previews show what is lifted
    tile = np.asarray(grid.convert("RGB"))[8:8 + 128, (2 + 34 * run["seed"]) * 4:(2 + 34 * run["seed"]) * 4 + 128]
    border = np.concatenate([tile[:4].reshape(-1, 3), tile[-4:].reshape(-1, 3), tile[:, :4].reshape(-1, 3)])
    assert (border == round(0.1 * 255)).all()  # the lifted sample is framed in samples-2d.png (×4, 2 px gaps)
    frames = _read_frames(run["turntable"])
    assert len(frames) == 120
    mesh = trimesh.load(run["mesh"]["glb"], force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert Path(run["mesh"]["obj"]).is_file() and Path(run["mesh"]["ply"]).is_file()
    html = Path(files["gallery_html"]).read_text()
    assert "<video" in html and Path(files["gallery_png"]).is_file()
    assert f"[toy-demo] view it: dreamdist3d serve {out / '3d'}  (then open http://127.0.0.1:8000/gallery.html" in \
        capsys.readouterr().err
    # every file listed exists, and the times were measured
    assert all(Path(p).is_file() for p in summary["all_files"])
    assert summary["times"]["total"]["wall_s"] > 0 and summary["times"]["total"]["cpu_s"] > 0
    assert summary["learn"]["steps"] == 3


def _read_frames(path):
    import imageio

    reader = imageio.get_reader(path)
    try:
        return [f for f in reader]
    finally:
        reader.close()


def test_demo_config_is_strict(tmp_path):
    from dreamdist3d.launch import main

    rc = main(["--config", str(REPO / "configs/toy/dreamdist-toy.yaml"), "stepz=3", f"out={tmp_path}"])
    assert rc == 2
    assert not any(tmp_path.iterdir())  # nothing was written
    rc = main(["--config", str(REPO / "configs/toy/dreamdist-toy.yaml"), "n_2d=2", "n_3d=4", f"out={tmp_path}"])
    assert rc == 2  # four 3D seeds cannot be picked among two 2D samples
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):  # a 3D/learn config still needs a mode flag
        main(["--config", str(REPO / "configs/tiny/learn-toy.yaml")])


# ----------------------------------------------------------------------------------------------------- metrics
def _exact_reading(spec, ok=True) -> Reading:
    lab = spec.labels()
    one_hot = spec_feature(spec)[4:-3].tolist()  # the shape one-hot of the feature
    return Reading(ok=ok, reason=None if ok else "grey", colour=lab.get("colour"), hue=spec.hue,
                   shape=spec.shape, shape_prob=1.0, shape_probs=one_hot, size=spec.size, aspect=spec.aspect,
                   has_part=spec.part is not None, part_hue=spec.part.hue if spec.part is not None else None,
                   part_colour=lab.get("part_colour"), part_position=lab.get("part_position"), fg_fraction=0.2)


def test_score_readings_on_known_readings():
    rs = get_refset("warm-cones-cylinders")
    specs = rs.specs()
    real = torch.stack([spec_feature(s) for s in specs])
    # the set itself: everything inside, full coverage
    s = score_readings([_exact_reading(x) for x in specs], rs.support, real)
    assert s["reject"] == 0.0 and s["in_dist"] == 1.0 and s["coverage"] == 1.0 and s["precision"] == 1.0
    # one object repeated: inside but covering little, no diversity
    s1 = score_readings([_exact_reading(specs[0])] * 12, rs.support, real)
    assert s1["in_dist"] == 1.0 and s1["coverage"] < 0.5 and s1["diversity"] == pytest.approx(0.0)
    # half rejected, a quarter outside the support (blue spheres are neither warm nor cone/cylinder)
    from dreamdist3d.toyworld.objects import ObjectGrammar

    blue = ObjectGrammar(shapes=("sphere",), colours=("blue",), part_prob=0.0).sample_many(3, 0)
    readings = [_exact_reading(x) for x in specs[:3]] + [_exact_reading(x) for x in blue] + \
        [Reading(ok=False, reason="grey")] * 6
    s2 = score_readings(readings, rs.support, real, images=torch.rand(12, 3, 32, 32))
    assert s2["reject"] == pytest.approx(0.5) and s2["in_dist"] == pytest.approx(0.25)
    assert s2["in_dist_acc"] == pytest.approx(0.5)
    assert set(s2) == set(METRICS)
    for key in ("coverage", "precision", "recall"):
        assert 0.0 <= s2[key] <= 1.0
    assert s2["density"] >= 0 and s2["diversity"] > 0 and s2["pix_div"] > 0
    # everything rejected: zeros, no crash
    s3 = score_readings([Reading(ok=False, reason="grey")] * 4, rs.support, real)
    assert s3["in_dist"] == 0.0 and s3["coverage"] == 0.0 and math.isnan(s3["diversity"])


def test_table_and_claim():
    rows = [{"refset": "a", "method": "K=32", **dict.fromkeys(METRICS, 0.5), "coverage": 0.8},
            {"refset": "a", "method": "K=1", **dict.fromkeys(METRICS, 0.5), "coverage": 0.3}]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| refset | method | n |") and len(lines) == 4
    assert "0.800" in lines[2]
    assert claim_check(rows)["a"].startswith("holds")
    rows[0]["in_dist"] = 0.0  # more coverage bought by leaving the set
    assert claim_check(rows)["a"].startswith("does not hold")
    rows[0]["in_dist"] = 1.0  # more coverage and more in distribution
    assert claim_check(rows)["a"].startswith("holds")
    rows[0]["coverage"] = 0.2
    assert claim_check(rows)["a"].startswith("does not hold")
    assert medoid_caption(get_refset("warm-cones-cylinders")) in get_refset("warm-cones-cylinders").captions()


@pytest.mark.slow
def test_evaluate_end_to_end_on_tiny_inputs(tiny_weights, tmp_path):
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.toyworld.attributes import AttributeReader

    reader = AttributeReader.fit(n_train=300, epochs=5)  # a rough reader is enough for the structure
    cfg = EvalConfig(refsets=["warm-cones-cylinders"], out=str(tmp_path / "eval"), n=6, n_prompts=4, steps=2,
                     batch_size=2, n_samples=2, sample_steps=2, progress=False, n_3d=1, steps_3d=2,
                     caption_check=4)
    report = evaluate(cfg, backbone=load_backbone(f"toy:{tiny_weights}"), reader=reader)
    rows = report["table"]
    assert [r["method"] for r in rows] == ["reference", "oracle: set grammar", "oracle: one object",
                                           "oracle: whole world", "K=32", "K=1", "caption", "K=32 (3D)", "K=1 (3D)",
                                           "caption (3D)"]
    for r in rows:
        for key in ("reject", "in_dist", "coverage", "precision"):
            assert 0.0 <= r[key] <= 1.0, (r["method"], key, r[key])
        assert r["density"] >= 0.0
    assert rows[4]["n"] == 6
    out = tmp_path / "eval"
    assert (out / "report.md").read_text().count("| warm-cones-cylinders |") == 10
    assert all(r["n"] == 1 for r in rows[-3:])  # one 3D object per method, read on 4 turntable views
    # the caption baseline's 3D runs were driven by its caption saved as a K=1 distribution
    from dreamdist3d.distribution import PromptDistribution

    cap = PromptDistribution.load(report["refsets"]["warm-cones-cylinders"]["distributions"]["caption"])
    assert cap.meta.source == f"caption: {report['refsets']['warm-cones-cylinders']['caption']}"
    assert (out / "warm-cones-cylinders" / "3d" / "caption" / "runs" / "seed0").is_dir()
    by = {r["method"]: r for r in rows}  # the calibration rows: exact renders, whatever the reader's roughness
    assert by["oracle: one object"]["diversity"] == pytest.approx(0.0)
    assert by["oracle: set grammar"]["coverage"] > by["oracle: one object"]["coverage"]
    assert json.loads((out / "report.json").read_text())["table"][0]["method"] == "reference"
    check = report["caption_check"]  # random tiny weights: only the structure (numbers in README, shipped weights)
    assert check["n"] == 4 and len(check["samples"]) == 4 and 0.0 <= check["colour_and_shape"] <= check["colour"] <= 1
    assert len(check["interpolation"]["hues"]) == 5
    assert "caption check (4 seen-world captions" in (out / "report.md").read_text()
    from PIL import Image

    assert Image.open(out / "sheet-warm-cones-cylinders.png").size[1] > 4 * 32


def test_arms_end_to_end_on_tiny_inputs(tiny_weights, tmp_path, capsys):
    """The objectives × covariance sweep: learned arms, calibration arms, the 3D pass, caching and the table."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.recipes.toy_arms import ArmsConfig, colour_scores, run_arms, run_arms_3d, table
    from dreamdist3d.toyworld.attributes import AttributeReader, Reading

    reader = AttributeReader.fit(n_train=300, epochs=5)
    bb = load_backbone(f"toy:{tiny_weights}")
    cfg = ArmsConfig(refsets=["warm-cones-cylinders"], arms=["wta+lowrank", "captions+lowrank", "K=1"], seeds=[0, 1],
                     out=str(tmp_path / "arms"), n=4, steps=2, n_prompts=4, batch_size=2, n_samples=2, sample_steps=2,
                     n_real=24, n_3d=1, steps_3d=2, pick_blocks=2,
                     overrides_3d=["system.anchor.sampler_steps=2", "system.anchor.refine_steps=2",
                                   "data.n_test_views=8"])
    recs = run_arms(cfg, backbone=bb, reader=reader)
    assert sorted((r["arm"], r["seed"]) for r in recs) == [(a, s) for a in ("K=1", "captions+lowrank", "wta+lowrank")
                                                             for s in (0, 1)]
    for r in recs:
        assert r["n"] == 4 and 0.0 <= r["colour_tv"] <= 1.0 and 0 <= r["colours_hit2"] <= 4 and r["mean_colour"]
        for pre in ("", "form_"):  # the colour pick and the colour+form pick: 2 blocks of 16, 4 picked each
            assert r[f"{pre}pick4"] in (0.0, 0.5, 1.0) and r[f"{pre}pick4_shapes"] in (0.0, 0.5, 1.0)
            assert 0.0 <= r[f"{pre}pick4_in_dist"] <= 1.0
        assert 0.0 <= r["shape_tv"] <= 1.0 and 0 <= r["shapes_hit2"] <= 2
    low = next(r for r in recs if r["arm"] == "wta+lowrank")
    assert sum(low["prompt_colours"].values()) == 4  # each of the K=4 learned prompts decoded on its own
    from dreamdist3d.distribution import PromptDistribution

    dist = PromptDistribution.load(low["distribution"])
    assert dist.meta.covariance == "lowrank" and dist.meta.extra["objective"] == "wta"
    again = run_arms(cfg, backbone=None, reader=None)  # everything cached: nothing loads, nothing reruns
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in recs)
    # --resample: scored again from the learned files, nothing learned again; the same law and seeds give the same
    # numbers, and every learned file is still the one that was learned
    learned_before = sorted((tmp_path / "arms").rglob("distribution.safetensors"))
    rescored = run_arms(cfg, backbone=bb, reader=reader, resample=True)
    assert sorted((tmp_path / "arms").rglob("distribution.safetensors")) == learned_before
    before = {(r["arm"], r["seed"]): r for r in recs}
    for r in rescored:
        b = before[(r["arm"], r["seed"])]
        assert ("rescore_s" in r) == bool(b.get("distribution"))
        same = lambda rec: json.dumps({k: v for k, v in rec.items() if k not in ("rescore_s", "time_s")},  # noqa: E731
                                      sort_keys=True)  # (NaN scores compare equal as JSON)
        assert same(r) == same(b)
    rec3d = run_arms_3d(cfg, backbone=bb, reader=reader)
    assert sorted(r["arm"] for r in rec3d) == ["K=1 (3D)", "K=1 (3D)", "wta+lowrank (3D)", "wta+lowrank (3D)"]
    assert all(len(r["object_colours"]) == 1 for r in rec3d)
    parsed = sorted((tmp_path / "arms" / "work3d").rglob("parsed.yaml"))  # the 3D overrides reached every run
    assert len(parsed) == 4 and all("n_test_views: 8" in p.read_text() for p in parsed)
    # --pick-3d: the object is the most typical of 16 candidate seeds (one lifted), drawn with the arm's covariance
    from dataclasses import replace

    from dreamdist3d.lift3d.prompt_processor import PromptSample

    picked = run_arms_3d(replace(cfg, pick_3d=True), backbone=bb, reader=reader)
    assert sorted(r["arm"] for r in picked) == ["K=1 (3D, picked)"] * 2 + ["wta+lowrank (3D, picked)"] * 2
    for r in picked:
        (s,) = r["seeds_3d"]
        assert s in range(100 * r["seed"], 100 * r["seed"] + 16)
        folder = "K=1" if r["arm"].startswith("K=1") else "wta_lowrank"
        sample = PromptSample.load(tmp_path / "arms" / "work3d-picked" / "warm-cones-cylinders" / folder / "runs"
                                   / f"seed{s}" / "prompt_sample.safetensors")
        assert sample.meta["covariance"] == ("diag" if folder == "K=1" else "lowrank")
    # --scale: every law sampled at γ; learned arms scored from their γ 1 runs' files (nothing learned again), kept
    # apart; K=1 has no spread, so its samples and scores are γ 1's exactly
    half = run_arms(replace(cfg, scale=0.5), backbone=bb, reader=reader)
    assert sorted((tmp_path / "arms").rglob("distribution.safetensors")) == learned_before
    assert {r["scale"] for r in half} == {0.5} and len(half) == 6
    assert len(list((tmp_path / "arms" / "runs-scale0.5").rglob("seed*.json"))) == 6
    for r in half:
        b = before[(r["arm"], r["seed"])]
        assert r.get("distribution") == b.get("distribution")
        if r["arm"] == "K=1":
            assert r["colour_hist"] == b["colour_hist"] and r["in_dist"] == b["in_dist"]
    with pytest.raises(ValueError, match="γ 1"):
        run_arms_3d(replace(cfg, scale=0.5), backbone=bb, reader=reader)
    text = table(recs + rec3d + picked + half)
    assert text.count("| warm-cones-cylinders |") == 10 and " ± " in text
    assert "| wta+lowrank (γ 0.5) | 2 |" in text
    # the colour measures, by hand: 3 red + 1 yellow against {red, orange, yellow, pink}
    reads = [Reading(True, colour="red")] * 3 + [Reading(True, colour="yellow"), Reading(False)]
    c = colour_scores(reads, ["red", "orange", "yellow", "pink"])
    assert c["colour_tv"] == pytest.approx(0.5 * (abs(0.75 - 0.25) + 0.25 + 0 + 0.25)) and c["colours_hit2"] == 1
    assert c["batch4"] == 0.0  # windows red red red yellow / red red yellow – show 2 colours, not 3
    red, yellow, orange, teal = (Reading(True, colour=x) for x in ("red", "yellow", "orange", "teal"))
    reads = [red, red, yellow, orange, Reading(False), teal, red, red]  # teal is not one of the set's colours
    # windows: r r y o (3) | r y o – (3) | y o – t (2) | o – t r (2) | – t r r (1)
    assert colour_scores(reads, ["red", "orange", "yellow", "pink"])["batch4"] == pytest.approx(2 / 5)
    assert colour_scores(reads, ["red", "teal"])["batch4"] == pytest.approx(2 / 5)  # two colours: both needed
    assert colour_scores(reads[:3], ["red", "yellow"])["batch4"] is None  # fewer readings than a batch
    # the shape measures, by hand: 3 cones + 1 box against {cone, cylinder}; the box is not one of the set's shapes
    from dreamdist3d.recipes.toy_arms import shape_scores, shows_set_shapes

    cone, box, cyl = (Reading(True, shape=x) for x in ("cone", "box", "cylinder"))
    sc = shape_scores([cone, cone, cone, box, Reading(False)], ["cone", "cylinder"])
    assert sc["shape_tv"] == pytest.approx(0.5 * (0.25 + 0.5 + 0.25)) and sc["shapes_hit2"] == 1
    assert shape_scores([Reading(False)], ["cone"]) == {"shape_tv": 1.0, "shapes_hit2": 0}
    assert shows_set_shapes([cone, cyl, box], ["cone", "cylinder"])  # both of a two-shape set
    assert not shows_set_shapes([cone, cone, box, Reading(False)], ["cone", "cylinder", "box", "torus"])
    assert shows_set_shapes([cone, cyl, box], ["cone", "cylinder", "box", "torus"])  # three of four suffice


# ----------------------------------------------------------------------------------------------------- issue 17
def test_demo_output_is_per_reference_set_and_a_rerun_never_replaces_results_unasked(tiny_weights, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository's outputs/ whatever happens
    """Item 3: the default folder is outputs/toyworld/demo/<refset>; an earlier demo in the folder is refused before
    anything loads, and replaced as a whole (no seed run of it left beside the new ones) only with overwrite."""
    from dreamdist3d.launch import main
    from dreamdist3d.recipes.toy_demo import DemoConfig, check_config

    assert check_config(DemoConfig(refset="cool-round-topped")).out == "outputs/toyworld/demo/cool-round-topped"
    assert check_config(DemoConfig()).out == "outputs/toyworld/demo/warm-cones-cylinders"

    out = tmp_path / "demo"
    (out / "3d" / "runs" / "seed3").mkdir(parents=True)  # an earlier demo (with more 3D runs than this one)
    (out / "3d" / "runs" / "seed3" / "cmd.txt").write_text("earlier")
    (out / "summary.json").write_text("{}")
    (out / "mine.txt").write_text("not the demo's")
    small = ["--config", str(REPO / "configs/toy/dreamdist-toy.yaml"), f"weights={tmp_path / 'absent.safetensors'}",
             f"out={out}", "progress=false", "steps=2", "n_2d=1", "n_4view=0", "sample_steps=1", "n_3d=0"]
    assert main(small) == 2  # refused before the (absent) weights are even looked at
    err = capsys.readouterr().err
    assert str(out) in err and "earlier demo run" in err and "overwrite=true" in err and "out=DIR" in err
    assert (out / "3d" / "runs" / "seed3" / "cmd.txt").read_text() == "earlier"

    small[2] = f"weights={tiny_weights}"
    assert main(small + ["overwrite=true"]) == 0
    assert not (out / "3d").exists() and (out / "mine.txt").read_text() == "not the demo's"
    assert json.loads((out / "summary.json").read_text())["learn"]["steps"] == 2


def test_fast_never_overrides_keys_set_explicitly(tmp_path):
    """Item 7: fast=true shrinks the config file's values, not a key=value (or --steps) the user gave."""
    import argparse

    from dreamdist3d.recipes.toy_demo import DemoConfig, add_arguments, config_from_args, fast_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--fast", "steps=300", "n_2d=16", "--steps-3d", "100"]))
    assert (cfg.steps, cfg.n_2d, cfg.steps_3d, cfg.n_4view) == (300, 16, 100, 2)  # n_4view: the fast preset's
    assert fast_config(DemoConfig()).steps == 40

    seen = {}
    import dreamdist3d.recipes.toy_demo as demo

    def fake_run(cfg, backbone=None):
        seen["cfg"] = cfg

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(demo, "run_demo", fake_run)
    try:
        demo.launch_entry(str(REPO / "configs/toy/dreamdist-toy.yaml"), ["fast=true", "steps=120", "sample_steps=7"])
    finally:
        monkeypatch.undo()
    cfg = seen["cfg"]
    assert (cfg.steps, cfg.sample_steps, cfg.steps_3d, cfg.n_2d) == (120, 7, 40, 8)


def test_3d_runs_in_forked_workers_equal_runs_in_process(tiny_weights, tmp_path):
    """workers_3d=2 (two forked one-thread workers sharing the loaded backbone) gives the same runs as one by one."""
    from PIL import Image
    from safetensors.torch import load_file

    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.distribution import PromptDistribution
    from dreamdist3d.recipes.toy_3d import run_3d_seeds
    from dreamdist3d.recipes.toy_demo import DemoConfig

    bb = load_backbone(f"toy:{tiny_weights}")
    dist = tmp_path / "d.safetensors"
    PromptDistribution.from_caption("a red cone", bb.text_encoder, bb.tokenizer).save(dist)
    outs = {}
    for workers in (1, 2):
        cfg = DemoConfig(steps_3d=3, workers_3d=workers, progress=False, formats="glb", isosurface_resolution=16)
        outs[workers] = run_3d_seeds(bb, cfg, dist, tmp_path / f"w{workers}", [0, 1])
    for (run1, files1, _), (run2, files2, _) in zip(outs[1], outs[2]):
        assert run1.name == run2.name and Path(files2["glb"]).is_file()
        s1, s2 = load_file(run1 / "prompt_sample.safetensors"), load_file(run2 / "prompt_sample.safetensors")
        assert torch.equal(s1["text_embeddings"], s2["text_embeddings"])
        g1, g2 = (np.asarray(Image.open(next((r / "save").glob("*-test-grid.png")))) for r in (run1, run2))
        assert np.array_equal(g1, g2)
