"""`dreamdist3d eval` end to end on tiny random Dinov2Model / CLIPModel / ViTModel folders written here with
save_pretrained (hidden 32, 2 layers, 32 px images) beside matching image-processor configs: the report files, the
numbers equal `metrics.*` on the features, the cache, 3D runs read at N turntable views, and errors that name the
flag. The models are random, so only the plumbing is checked, not what the numbers mean."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamdist3d.cli import main
from dreamdist3d.evaluation import metrics as M
from dreamdist3d.testing.encoders import write_tiny_encoders


def _write_images(folder: Path, n: int, seed: int, shift: float = 0.0, size=(40, 48)) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 1, 3) * 0.5 + shift
        img = np.clip(base + 0.3 * rng.standard_normal((*size, 3)), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")


def _write_run(run: Path, seed: int, frames: int = 12) -> None:
    import imageio.v2 as imageio

    (run / "save").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    w = imageio.get_writer(str(run / "save" / "it10-test.mp4"), fps=10, codec="libx264", macro_block_size=1)
    for f in range(frames):
        w.append_data((np.roll(rng.uniform(0, 255, (32, 32, 3)), f, axis=1)).astype(np.uint8))
    w.close()
    (run / "save" / "it10-val.png").write_bytes(b"")  # a 3D run's other files are ignored


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    folders = write_tiny_encoders(root / "models")
    _write_images(root / "refs", 8, seed=0)
    _write_images(root / "near", 7, seed=1)
    _write_images(root / "far", 6, seed=2, shift=0.4, size=(32, 32))
    for s in range(2):
        _write_run(root / "gallery" / "runs" / f"seed{s}", seed=10 + s)
    return {"root": root, **folders}


def _argv(world, out, *extra):
    r = world["root"]
    return ["eval", "--refs", str(r / "refs"), "--samples", str(r / "near"), "--samples", str(r / "far"),
            "--samples", str(r / "gallery"), "--dinov2", str(world["dinov2"]), "--clip", str(world["clip"]),
            "--dino", str(world["dino"]), "--prompt", "a photo of a cathedral", "--out", str(out), "--views", "4",
            "--device", "cpu", "--quiet", *extra]


def test_eval_end_to_end_report_and_cache(world, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(_argv(world, out)) == 0
    printed = capsys.readouterr()
    assert "FD-DINOv2" in printed.out and "| near |" in printed.out
    assert "29 images x 3 models: 87 features computed, 0 from the cache" in printed.err

    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["sets"]] == ["near", "far", "gallery"]
    near, far, gal = rep["sets"]
    assert near["kind"] == "2d" and near["metrics"]["n"] == 7 and far["metrics"]["n"] == 6
    assert gal["kind"] == "3d" and gal["objects"] == 2 and gal["metrics"]["n"] == 8  # 2 runs x 4 views
    assert gal["images"][0]["name"] == "runs/seed0@view0"
    for s in rep["sets"]:
        m = s["metrics"]
        for key in ("fd_dinov2", "kd_dinov2", "kd_dinov2_std", "precision", "recall", "density", "coverage",
                    "diversity", "clip_i", "dino_i", "clip_t"):
            assert m[key] is not None and math.isfinite(m[key]), (s["name"], key)
        assert 0 <= m["precision"] <= 1 and 0 <= m["coverage"] <= 1
        assert len(s["images"]) == m["n"] and all(im["nearest_ref"].startswith("img") for im in s["images"])
        assert all((out / im["thumb"]).is_file() for im in s["images"])
    assert rep["models"]["dinov2"]["dim"] == 32 and rep["models"]["clip"]["dim"] == 16
    assert rep["cache"] == {"file": "feature-cache.safetensors", "embedded": 3 * 29, "from_cache": 0}

    # the numbers are metrics.* on the cached features
    from safetensors.torch import load_file

    cache = load_file(str(out / "feature-cache.safetensors"))
    assert len(cache) == 3 * 29
    html = (out / "report.html").read_text()
    assert "<svg" in html and "coverage" in html and html.count("<img ") == 29
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network at view time
    md = (out / "report.md").read_text()
    assert "| near |" in md and "coverage-precision.svg" in md and (out / "coverage-precision.svg").is_file()

    # second run: nothing new to embed, same numbers
    assert main(_argv(world, out)) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["cache"]["embedded"] == 0 and rep2["cache"]["from_cache"] == 3 * 29
    assert [s["metrics"] for s in rep2["sets"]] == [s["metrics"] for s in rep["sets"]]
    capsys.readouterr()


def test_metrics_match_direct_computation_and_new_images_only(world, tmp_path):
    from dreamdist3d.evaluation.features import FeatureCache, embed_items, load_encoder
    from dreamdist3d.evaluation.pipeline import EvalSpec, run_eval
    from dreamdist3d.evaluation.sources import read_folder

    r = world["root"]
    extra = tmp_path / "near"
    _write_images(extra, 7, seed=1)  # the same files as `near` (same hashes)
    out = tmp_path / "out"
    spec = EvalSpec(refs=str(r / "refs"), samples=[str(extra)], dinov2=str(world["dinov2"]), clip=str(world["clip"]),
                    out=str(out), device="cpu", progress=False, kid_subsets=10)
    rep = run_eval(spec)
    assert rep["cache"]["embedded"] == 2 * 15 and rep["sets"][0]["metrics"]["dino_i"] is None
    _write_images(extra / "more", 1, seed=5)  # one new image in a subfolder
    rep = run_eval(spec)
    assert rep["cache"]["embedded"] == 2 and rep["sets"][0]["metrics"]["n"] == 8

    # features straight from the encoder (no cache) give the report's numbers
    enc = load_encoder("dinov2", world["dinov2"], "cpu")
    refs, samples = read_folder(r / "refs"), read_folder(extra)
    fr = enc.embed_images([it.load() for it in refs.items]).astype(np.float64)
    fs = enc.embed_images([it.load() for it in samples.items]).astype(np.float64)
    cached, n_new = embed_items(enc, samples.items, FeatureCache(out / "feature-cache.safetensors"), progress=False)
    assert n_new == 0 and np.allclose(cached, fs, atol=1e-6)
    m = rep["sets"][0]["metrics"]
    assert m["fd_dinov2"] == pytest.approx(M.frechet_distance(fs, fr), rel=1e-4)
    assert m["coverage"] == pytest.approx(M.prdc(fr, fs)["coverage"])
    assert m["diversity"] == pytest.approx(M.diversity(fs), rel=1e-5)
    idx, cos = M.nearest(fs, fr)
    assert [im["nearest_ref"] for im in rep["sets"][0]["images"]] == [refs.items[i].name for i in idx]
    # preprocessing follows the folder's config: 40x48 images -> resize shortest edge 36 -> centre crop 32
    pv = enc.processor(images=[samples.items[0].load()], return_tensors="pt")["pixel_values"]
    assert tuple(pv.shape) == (1, 3, 32, 32)


def test_ctrl_c_keeps_the_features_embedded_so_far_and_the_same_command_goes_on(world, tmp_path, capsys,
                                                                              monkeypatch):
    from dreamdist3d.evaluation import features
    from dreamdist3d.testing.interrupt import StopAtCall

    out = tmp_path / "out"
    argv = _argv(world, out, "--batch-size", "2")
    real, writes = features.Encoder.embed_images, []
    # dinov2: refs in 4 batches of 2, near 2, then Ctrl-C in near's second batch
    stop = StopAtCall(real, 6, lambda self, images: len(images))

    from dreamdist3d import io  # the cache imports its writer when it saves: count the writes there

    real_write = io.atomic_save_safetensors
    monkeypatch.setattr(io, "atomic_save_safetensors", lambda *a, **k: (writes.append(1), real_write(*a, **k))[1])
    monkeypatch.setattr(features.Encoder, "embed_images", lambda self, images: stop(self, images))
    assert main(argv) == 130
    err = capsys.readouterr().err
    cache = out / "feature-cache.safetensors"
    assert f"{cache} holds 10 image features; run the same command again to go on" in err, err
    assert len(writes) == 2  # once when the refs are done, once on the way out (a write per batch: 5)

    monkeypatch.setattr(features.Encoder, "embed_images", real)
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["cache"]["from_cache"] == 10 and rep["cache"]["embedded"] == 3 * 29 - 10
    fresh = tmp_path / "fresh"  # the same numbers as a run never stopped
    assert main(_argv(world, fresh, "--batch-size", "2")) == 0
    unstopped = json.loads((fresh / "report.json").read_text())
    assert [s["metrics"] for s in rep["sets"]] == [s["metrics"] for s in unstopped["sets"]]
    capsys.readouterr()


def test_clip_text_embedding_matches_transformers(world):
    from dreamdist3d.evaluation.features import load_encoder
    from dreamdist3d.text.tokenizer import ClipTokenizer

    enc = load_encoder("clip", world["clip"], "cpu")
    got = enc.embed_text("a red cathedral")
    ids = ClipTokenizer.default()(["a red cathedral"])
    n = int((ids[0] > 0).sum())  # SOS..EOS
    with torch.no_grad():  # unpadded: transformers pools at the EOS, the last token
        ref = enc.model.text_projection(enc.model.text_model(input_ids=ids[:, :n]).pooler_output).numpy()
    assert np.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("flag", ["--dinov2", "--clip", "--dino"])
def test_missing_or_wrong_folder_names_the_flag(world, tmp_path, capsys, flag):
    argv = _argv(world, tmp_path / "out")
    i = argv.index(flag)
    argv[i + 1] = str(tmp_path / "nowhere")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path / 'nowhere'}: no such folder" in err
    # a folder of another model type
    argv[i + 1] = str(world["clip" if flag != "--clip" else "dinov2"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "model_type" in err
    assert not (tmp_path / "out").exists()  # nothing written before the models loaded


def test_missing_sample_folder_and_processor_config(world, tmp_path, capsys):
    argv = _argv(world, tmp_path / "out")
    argv[argv.index("--samples") + 1] = str(tmp_path / "none")
    assert main(argv) == 2 and "--samples" in capsys.readouterr().err
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(world["dino"], bare)
    (bare / "preprocessor_config.json").unlink()
    argv = _argv(world, tmp_path / "out")
    argv[argv.index("--dino") + 1] = str(bare)
    assert main(argv) == 2
    assert "--dino" in (err := capsys.readouterr().err) and "preprocessor_config.json" in err


def test_scatter_places_points_and_lists_unplottable_sets():
    import xml.etree.ElementTree as ET

    from dreamdist3d.evaluation.report import scatter_svg

    svg = scatter_svg([{"name": "a", "coverage": 0.0, "precision": 1.0}, {"name": "b", "coverage": 0.5,
                                                                          "precision": 0.5},
                       {"name": "small", "coverage": None, "precision": None}], size=200)
    root = ET.fromstring(svg)
    circles = [c for c in root.iter() if c.tag.endswith("circle")]
    assert [(float(c.get("cx")), float(c.get("cy"))) for c in circles] == [(48.0, 48.0), (100.0, 100.0)]
    assert "not plotted (too few images): small" in svg


def test_turntable_read_at_evenly_spaced_frames(tmp_path):
    import imageio.v2 as imageio

    from dreamdist3d.evaluation.sources import read_folder

    run = tmp_path / "runs" / "seed0"
    (run / "save").mkdir(parents=True)
    for step, level0 in ((5, 200), (40, 0)):  # two turntables: the newest step (40) is read
        w = imageio.get_writer(str(run / "save" / f"it{step}-test.mp4"), fps=10, codec="libx264", macro_block_size=1)
        for f in range(12):
            w.append_data(np.full((32, 32, 3), level0 + 20 * f if step == 40 else level0, np.uint8))
        w.close()
    s = read_folder(tmp_path, views=4)
    assert s.kind == "3d" and s.objects == 1
    assert [it.name for it in s.items] == [f"runs/seed0@view{i}" for i in range(4)]
    levels = [float(np.asarray(it.load()).mean()) for it in s.items]
    assert np.allclose(levels, [0, 60, 120, 180], atol=4)  # frames 0, 3, 6, 9 of 12


def test_sweep_folder_gives_one_set_per_row_and_a_sweep_plot(world, tmp_path):
    """A `dreamdist3d sweep --save-cells` folder: its cells, grouped by row (γ), as sets; coverage and precision
    plotted against γ."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    from dreamdist3d.evaluation.pipeline import EvalSpec, run_eval

    sweep = tmp_path / "sw"
    sweep.mkdir()
    rng = np.random.default_rng(7)
    cells = []
    for r, g in enumerate((0.0, 0.5, 1.0)):
        for c in range(3):
            f = f"sweep-scale-r{r}-c{c}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(sweep / f)
            cells.append({"row": r, "col": c, "label": f"gamma={g:g}", "file": f})
    (sweep / "sweep-scale.json").write_text(json.dumps({"sweep": "scale", "cells": cells}))
    Image.new("RGB", (64, 32)).save(sweep / "sweep-scale.png")  # the sheet itself is not a sample
    out = tmp_path / "out"
    rep = run_eval(EvalSpec(refs=str(world["root"] / "refs"), samples=[str(sweep)], dinov2=str(world["dinov2"]),
                            clip=str(world["clip"]), out=str(out), device="cpu", progress=False, kid_subsets=3))
    assert [s["name"] for s in rep["sets"]] == ["sw gamma=0", "sw gamma=0.5", "sw gamma=1"]
    assert [s["sweep"]["value"] for s in rep["sets"]] == [0.0, 0.5, 1.0] and rep["sets"][0]["sweep"]["param"] == "γ"
    assert all(s["metrics"]["n"] == 3 for s in rep["sets"])
    svg = ET.fromstring((out / "sweep-0.svg").read_text())
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 2 and all(len(e.get("points").split()) == 3 for e in lines)  # coverage, precision x 3 γ
    assert "Sweep: sw (sweep-scale)" in (out / "report.html").read_text()
    assert "sweep-0.svg" in (out / "report.md").read_text()


def test_toy_eval_report_page(tmp_path):
    """report.html of `dreamdist3d toyworld eval`, from the report.json it writes (nan where a metric is undefined)."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    from dreamdist3d.evaluation.toy_report import write_toy_html

    row = dict(n=6, reject=0.0, in_dist=0.5, in_dist_acc=0.5, coverage=0.25, density=0.4, precision=0.5,
               recall=float("nan"), diversity=0.1, pix_div=0.2)
    report = {"config": {"n": 6, "steps": 2, "n_prompts": 4, "sample_steps": 2, "guidance": 2.0, "k": 5},
              "backbone": "tiny", "table": [{"refset": "warm", "method": "K=32", **row},
                                            {"refset": "warm", "method": "K=1", **row, "coverage": 0.1,
                                             "in_dist": 0.9}],
              "refsets": {"warm": {"sheet": str(tmp_path / "sheet-warm.png"), "description": "warm things"}},
              "claim": {"warm": "holds (coverage 0.25 vs 0.10, in-dist 0.50 vs 0.90)"},
              "caption_check": {"n": 4, "views": 1, "accepted": 1.0, "colour": 0.5, "shape": 0.5,
                                "colour_and_shape": 0.25}}
    (tmp_path / "report.json").write_text(json.dumps(report))  # NaN as the evaluator writes it
    Image.new("RGB", (64, 32)).save(tmp_path / "sheet-warm.png")
    page = write_toy_html(tmp_path).read_text()
    assert "<td>K=32</td>" in page and "<td>–</td>" in page and 'src="sheet-warm.png"' in page and "holds" in page
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    assert len([e for e in svg.iter() if e.tag.endswith("circle")]) == 2 and "in_dist" in page
