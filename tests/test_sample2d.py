"""SD 2.1 generation from distributions on a tiny random diffusers folder: parity with a bare diffusers pipeline call,
γ=0 → the mean embedding, metadata (PNG tEXt + JSON sidecars), grids, sweeps, mixing/folder errors, devices."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreamdist3d.cli import main
from dreamdist3d.distribution import DistributionSpec, PromptDistribution, PromptLearner
from dreamdist3d.images import PNG_KEY, contact_sheet, labelled_grid, read_png_record
from dreamdist3d.sample2d.sd21 import (
    LATENT_SEED_OFFSET,
    SampleSettings,
    SD21Sampler,
    check_sd21_folder,
    image_seeds,
    resolve_device,
    resolve_dtype,
    sample_to_folder,
    sweep_to_grid,
)
from dreamdist3d.testing.checkpoints import tiny_sd21_folder
from dreamdist3d.text import ClipTokenizer, TextEncoder

STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster than two spinning ones on a shared 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD 2.1 folder (16 px images) and two distribution files learned against its text encoder."""
    root = tmp_path_factory.mktemp("sample2d")
    folder = tiny_sd21_folder(root / "tiny-sd21", seed=5)
    enc, tok = TextEncoder.from_diffusers(folder), ClipTokenizer.from_folder(folder)
    files = []
    for i in range(2):
        pl = PromptLearner(enc, tok, n_ctx=4, n_prompts=5, generator=torch.Generator().manual_seed(100 + i))
        with torch.no_grad():
            pl.ctx.mul_(50)  # a visible spread over the K prompts
        files.append(PromptDistribution.from_learner(pl, backbone="tiny-sd21").save(root / f"dist{i}.safetensors"))
    return {"root": root, "folder": folder, "files": [str(f) for f in files], "enc": enc, "tok": tok}


@pytest.fixture(scope="module")
def sampler(world):
    return SD21Sampler.from_folder(world["folder"])


def _bare_pipe(folder, scheduler_cls=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _png_chunks(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


@pytest.mark.parametrize("scheduler", [None, "euler-a"])
def test_images_equal_bare_diffusers_call(world, tmp_path, scheduler):
    """Same prompt_embeds, seeds, scheduler and batches → our PNGs equal a bare StableDiffusionPipeline call bit for
    bit; the embeddings are mean + ε·std with ε from the recorded sample seed, fitted with the prefix/suffix edit."""
    import diffusers

    sampler = SD21Sampler.from_folder(world["folder"], scheduler=scheduler)
    spec = DistributionSpec.from_lists([world["files"][0]], scales=[0.8], prefix="a photo of",
                                       suffix="jumping on the grass")
    mixture = sampler.fit(spec)
    settings = SampleSettings(n=3, steps=STEPS, cfg=7.5, seed=11, batch_size=2, negative="blurry, dark")
    records = sample_to_folder(sampler, mixture, settings, tmp_path, save_embeddings=True)
    saved = load_file(str(tmp_path / "embeddings.safetensors"))

    # the embeddings: the edit re-fits every prompt; ε from the recorded sample seed; γ scales std
    pl = PromptDistribution.load(world["files"][0]).learner(world["enc"], world["tok"])
    g = pl.fit("a photo of", "jumping on the grass")
    for j, rec in enumerate(records):
        assert rec["sample_seed"] == 11 + j and rec["latent_seed"] == 11 + j + LATENT_SEED_OFFSET
        expect = g.mean + draw_eps(rec["sample_seed"], g.mean.shape) * (0.8 * g.std)
        torch.testing.assert_close(saved["embeddings"][j], expect, rtol=0, atol=2e-6)

    # a bare diffusers call with those embeddings, the negative prompt as text, and per-image generators
    cls = getattr(diffusers, "EulerAncestralDiscreteScheduler") if scheduler else None
    pipe = _bare_pipe(world["folder"], cls)
    for start in (0, 2):
        recs = records[start : start + 2]
        bare = pipe(
            prompt_embeds=saved["embeddings"][start : start + len(recs)],
            negative_prompt=["blurry, dark"] * len(recs),
            generator=[torch.Generator().manual_seed(r["latent_seed"]) for r in recs],
            num_inference_steps=STEPS, guidance_scale=7.5,
        ).images
        for r, im in zip(recs, bare):
            ours = np.asarray(Image.open(tmp_path / r["file"]).convert("RGB"))
            assert ours.shape == (16, 16, 3) and ours.std() > 1
            assert np.array_equal(ours, np.asarray(im)), f"{r['file']} differs from the bare diffusers call"


def test_gamma_zero_gives_the_mean_in_every_image(world, tmp_path, capsys):
    out = tmp_path / "g0"
    rc = main(["sample", "--distribution", world["files"][0], "--sd21", str(world["folder"]), "--n", "3",
               "--scale", "0", "--steps", str(STEPS), "--batch-size", "2", "--seed", "4", "--out", str(out),
               "--save-embeddings", "--device", "cpu", "--dtype", "fp32"])
    assert rc == 0, capsys.readouterr().err
    pngs = sorted(out.glob("[0-9]*.png"))
    assert len(pngs) == 3
    saved = load_file(str(out / "embeddings.safetensors"))
    for png in pngs:
        rec = read_png_record(png)
        assert rec["gamma"] == 0.0 and rec["embedding"]["equals_mean"] is True
        assert rec["embedding"]["max_abs_minus_mean"] == 0.0 and rec["embedding"]["fed_max_abs_minus_mean"] == 0.0
    assert torch.equal(saved["embeddings"], saved["mean"].expand(3, -1, -1))
    g = PromptDistribution.load(world["files"][0]).learner(world["enc"], world["tok"]).fit()
    assert torch.equal(saved["mean"], g.mean)
    # different latent seeds still give different images from the same (mean) prompt
    a, b = (np.asarray(Image.open(p)) for p in pngs[:2])
    assert not np.array_equal(a, b)


def test_metadata_png_text_json_sidecar_and_grid(world, sampler, tmp_path):
    mixture = sampler.fit(DistributionSpec.from_lists(world["files"], weights=[0.25, 0.75], scales=[1.0, 0.5],
                                                      suffix="at night"))
    settings = SampleSettings(n=5, steps=STEPS, cfg=5.0, seed=7, batch_size=4, negative="blurry")
    records = sample_to_folder(sampler, mixture, settings, tmp_path)
    assert [r["file"] for r in records] == [f"{i:04d}.png" for i in range(5)]
    for i, rec in enumerate(records):
        png = tmp_path / rec["file"]
        chunks = dict((k, v) for k, v in _png_chunks(png) if k == b"tEXt" and v.startswith(PNG_KEY.encode() + b"\0"))
        assert b"tEXt" in chunks  # a plain tEXt chunk (ASCII JSON), readable by any PNG tool
        from_png = read_png_record(png)
        sidecar = json.loads((tmp_path / f"{i:04d}.json").read_text())
        assert from_png == sidecar == json.loads(json.dumps(rec))
        assert sidecar["sample_seed"] == 7 + i and sidecar["latent_seed"] == 7 + i + LATENT_SEED_OFFSET
        assert sidecar["weights"] == [0.25, 0.75] and sidecar["scales"] == [1.0, 0.5] and sidecar["gamma"] == [1.0, 0.5]
        assert sidecar["edit"] == {"prefix": None, "suffix": "at night"}
        assert [d["suffix_used"] for d in sidecar["distributions"]] == ["at night"] * 2
        assert [Path(d["path"]).name for d in sidecar["distributions"]] == ["dist0.safetensors", "dist1.safetensors"]
        assert sidecar["negative"] == "blurry" and sidecar["cfg"] == 5.0 and sidecar["steps"] == STEPS
        assert sidecar["scheduler"] == "DDIMScheduler" and sidecar["dtype"] == "fp32" and sidecar["device"] == "cpu"
        emb = sidecar["embedding"]
        assert emb["equals_mean"] is False and emb["max_abs_minus_mean"] > 0 and 0.5 < emb["rms_z"] < 1.5
    # the mixed law: mean Σwμ, std sqrt(Σ(wγσ)²)
    law = mixture.law()
    g0, g1 = (p.gaussian for p in mixture.parts)
    torch.testing.assert_close(law.mean, 0.25 * g0.mean + 0.75 * g1.mean)
    torch.testing.assert_close(law.std, ((0.25 * g0.std) ** 2 + (0.75 * 0.5 * g1.std) ** 2).sqrt())
    run = json.loads((tmp_path / "run.json").read_text())
    assert [r["file"] for r in run["images"]] == [r["file"] for r in records] and run["timings_s"]["pipeline"] > 0
    # contact sheet: 3 columns × 2 rows of 128 px cells (16 px images enlarged 8×), with its settings
    with Image.open(tmp_path / "grid.png") as sheet:
        assert sheet.width >= 3 * 128 and sheet.height >= 2 * 128
        assert json.loads(sheet.text[PNG_KEY])["files"] == [r["file"] for r in records]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    from dreamdist3d.evaluation.sources import read_folder

    (tmp_path / "more").mkdir()  # `eval --samples` on this folder reads the 5 samples, not the contact sheet
    Image.new("RGB", (16, 16)).save(tmp_path / "more" / "grid.png")  # (a grid.png of no sample run is an image)
    assert [it.name for it in read_folder(tmp_path).items] == [r["file"] for r in records] + ["more/grid.png"]
    (tmp_path / "more" / "grid.png").unlink()
    (tmp_path / "more").rmdir()
    from dreamdist3d.io import _FILE_MODE

    assert all(p.stat().st_mode & 0o777 == _FILE_MODE for p in tmp_path.iterdir())  # not mkstemp's 0600


def test_labelled_grid_places_cells_and_draws_labels():
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 255, 255), (255, 0, 255)]]
    rows = [[np.full((16, 16, 3), c, np.uint8) for c in row] for row in colours]
    sheet, boxes = labelled_grid(rows, ["gamma=0", "gamma=1"], ["seed 0", "seed 1", "seed 2"], title="tiny",
                                 return_boxes=True)
    arr = np.asarray(sheet)
    assert len(boxes) == 6 and all(w == h == 128 for _, _, w, h in boxes)
    for (x, y, w, h), colour in zip(boxes, [c for row in colours for c in row]):
        assert (arr[y : y + h, x : x + w] == colour).all()
    x0, y0 = boxes[0][:2]
    assert (arr[y0 : y0 + 128, :x0] < 128).any(), "row label missing"
    assert (arr[:y0, x0 : x0 + 128] < 128).any(), "column label / title missing"
    big = contact_sheet([np.zeros((512, 512, 3), np.uint8)] * 3, ["a", "b", "c"])
    assert big.width < 3 * 300  # large images are reduced to ≤ 256 px cells
    with pytest.raises(ValueError, match="row labels"):
        labelled_grid(rows, ["only one"])


def test_sweeps_share_eps_per_column(world, sampler, tmp_path):
    mixture = sampler.fit(DistributionSpec.from_lists(world["files"], weights=[0.5, 0.5]))
    settings = SampleSettings(n=2, steps=2, cfg=7.5, seed=3, batch_size=4)
    path, cells = sweep_to_grid(sampler, mixture, settings, tmp_path, kind="scale", gammas=[0, 1, 2])
    assert path.name == "sweep-scale.png" and len(cells) == 6
    by = {(c["row"], c["col"]): c for c in cells}
    for col in range(2):
        assert len({by[r, col]["sample_seed"] for r in range(3)}) == 1
        assert len({by[r, col]["latent_seed"] for r in range(3)}) == 1
        assert by[0, col]["embedding"]["equals_mean"] is True
        # same ε: the deviation from the mean doubles from γ=1 to γ=2
        d1, d2 = by[1, col]["embedding"]["max_abs_minus_mean"], by[2, col]["embedding"]["max_abs_minus_mean"]
        assert d2 == pytest.approx(2 * d1, rel=1e-5)
    with Image.open(path) as im:
        assert im.width > 2 * 128 and im.height > 3 * 128 and "rows" in json.loads(im.text[PNG_KEY])

    path, cells = sweep_to_grid(sampler, mixture, settings, tmp_path, kind="mix", mix_weights=[0, 0.5, 1])
    assert path.name == "sweep-mix.png" and [c["weights"] for c in cells[::2]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    g0, g1 = (p.gaussian for p in mixture.parts)
    assert cells[0]["embedding"]["law_mean_norm"] == pytest.approx(float(g0.mean.norm()), rel=1e-6)
    assert cells[-1]["embedding"]["law_mean_norm"] == pytest.approx(float(g1.mean.norm()), rel=1e-6)
    with pytest.raises(ValueError, match="exactly two"):
        sweep_to_grid(sampler, sampler.fit(DistributionSpec.from_lists(world["files"][:1])), settings, tmp_path,
                      kind="mix")


def test_sweep_command(world, tmp_path):
    rc = main(["sweep", "--kind", "mix", "--distribution", world["files"][0], "--distribution", world["files"][1],
               "--sd21", str(world["folder"]), "--n", "1", "--steps", "1", "--mix-weights", "0", "1",
               "--out", str(tmp_path), "--save-cells"])
    assert rc == 0
    assert (tmp_path / "sweep-mix.png").is_file() and len(list(tmp_path.glob("sweep-mix-r*-c*.png"))) == 2
    assert json.loads((tmp_path / "sweep-mix.json").read_text())["rows"] == ["w=0", "w=1"]


def test_a_stopped_sweep_keeps_its_finished_batches_and_the_same_command_goes_on(world, tmp_path, capsys,
                                                                                  monkeypatch):
    from dreamdist3d.sample2d.sd21 import SD21Sampler as Sampler
    from dreamdist3d.testing.interrupt import StopAtCall

    def argv(out, *extra):
        return ["sweep", "--kind", "scale", "--distribution", world["files"][0], "--sd21", str(world["folder"]),
                "--n", "2", "--steps", "1", "--gammas", "0", "1", "2", "--batch-size", "2", "--out", str(out), *extra]

    assert main(argv(tmp_path / "whole")) == 0  # never stopped
    stop = StopAtCall(Sampler.generate, 2, lambda self, embeds, latent_seeds, *a, **k: list(latent_seeds))
    monkeypatch.setattr(Sampler, "generate", lambda self, *a, **k: stop(self, *a, **k))
    out = tmp_path / "stopped"
    assert main(argv(out)) == 130
    err = capsys.readouterr().err
    assert f"2 of 6 images are kept in {out / 'sweep-scale.partial'}; run the same command again" in err, err
    stop.calls.clear()
    stop.at = None
    assert main(argv(out)) == 0
    assert len(stop.calls) == 2  # the two batches not finished before, not the first
    whole = json.loads((tmp_path / "whole" / "sweep-scale.json").read_text())
    again = json.loads((out / "sweep-scale.json").read_text())
    assert again["cells"] == whole["cells"]  # seeds and embedding statistics of every cell
    a, b = (np.asarray(Image.open(f / "sweep-scale.png")) for f in (out, tmp_path / "whole"))
    np.testing.assert_array_equal(a, b)  # the grid's pixels, as the uninterrupted run's
    assert not (out / "sweep-scale.partial").exists()
    capsys.readouterr()


def test_clear_errors(world, tmp_path, capsys):
    with pytest.raises(ValueError, match="sum to 1.*0.9"):
        DistributionSpec.from_lists(world["files"], weights=[0.3, 0.6])
    with pytest.raises(ValueError, match="one weight per file"):
        DistributionSpec.from_lists(world["files"], weights=[1.0])
    with pytest.raises(ValueError, match="≥ 0"):
        DistributionSpec.from_lists(world["files"][:1], scales=[-1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DistributionSpec.from_lists([str(tmp_path / "missing.safetensors")])
    # CLI: exit code 2 and the reason, before any model is loaded
    args = ["sample", "--distribution", world["files"][0], "--distribution", world["files"][1], "--weight", "0.3",
            "0.6",
            "--sd21", str(world["folder"]), "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "mixture weights must sum to 1" in capsys.readouterr().err
    assert main(["sample", "--distribution", world["files"][0], "--sd21", str(tmp_path / "no-sd"), "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unet/, vae/, text_encoder/, tokenizer/, scheduler/" in err and "no-sd" in err
    broken = tmp_path / "broken"
    shutil.copytree(world["folder"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="missing vae/"):
        check_sd21_folder(broken)
    (broken / "model_index.json").unlink()
    shutil.copytree(world["folder"] / "vae", broken / "vae")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        check_sd21_folder(broken)
    with pytest.raises(ValueError, match="multiple of 8"):
        SampleSettings(height=20).validate()


def test_official_checkpoint_class_index(world, sampler):
    from conftest import reference_path

    pt = str(reference_path("dreamdist-official-ckpt-example.pt"))
    # official files carry no encoder fingerprint: D must match
    mixture = sampler.fit(DistributionSpec.from_lists([pt]))
    assert mixture.parts[0].info["position_mode"] == "official" and mixture.law().mean.shape == (77, 32)
    with pytest.raises(ValueError, match="class index 1 is out of range"):
        sampler.fit(DistributionSpec.from_lists([pt], class_indices=[1]))


def test_devices_dtypes_and_memory_flags(world, tmp_path):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    # bf16 pipeline on CPU with attention slicing and VAE tiling: the fit still runs in fp32, the text encoder
    # goes back to bf16 exactly, the sample is fed in bf16
    sampler = SD21Sampler.from_folder(world["folder"], dtype=torch.bfloat16, attention_slicing=True, vae_tiling=True)
    te = sampler.pipe.text_encoder
    before = {k: v.clone() for k, v in te.state_dict().items()}
    mixture = sampler.fit(DistributionSpec.from_lists(world["files"][:1]))
    after = te.state_dict()
    assert te.dtype == torch.bfloat16 and all(torch.equal(after[k], v) for k, v in before.items())
    fp32 = PromptDistribution.load(world["files"][0]).learner(world["enc"], world["tok"]).fit()
    assert mixture.law().mean.dtype == torch.float32
    torch.testing.assert_close(mixture.law().mean, fp32.mean, atol=0.1, rtol=0.05)  # bf16-rounded weights
    records = sample_to_folder(sampler, mixture, SampleSettings(n=1, steps=1, batch_size=1), tmp_path)
    rec = records[0]
    assert rec["dtype"] == "bf16" and rec["embedding"]["fed_dtype"] == "bfloat16"
    assert rec["attention_slicing"] is True and rec["vae_tiling"] is True
    assert np.asarray(Image.open(tmp_path / rec["file"])).shape == (16, 16, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 sampling on the device)")
def test_cuda_fp16_matches_bare_pipeline(world, tmp_path):
    sampler = SD21Sampler.from_folder(world["folder"], device="cuda", dtype=torch.float16)
    mixture = sampler.fit(DistributionSpec.from_lists(world["files"][:1]))
    records = sample_to_folder(sampler, mixture, SampleSettings(n=2, steps=STEPS, batch_size=2), tmp_path,
                               save_embeddings=True)
    saved = load_file(str(tmp_path / "embeddings.safetensors"))
    pipe = _bare_pipe(world["folder"]).to("cuda", torch.float16)
    bare = pipe(prompt_embeds=saved["embeddings"].to("cuda", torch.float16), negative_prompt=[""] * 2,
                generator=[torch.Generator().manual_seed(r["latent_seed"]) for r in records],
                num_inference_steps=STEPS).images
    for r, im in zip(records, bare):
        assert np.array_equal(np.asarray(Image.open(tmp_path / r["file"])), np.asarray(im))


def draw_eps(seed, shape):
    """The distribution seed rule, written out: sample `seed` is N(0, 1) from a CPU generator seeded with it."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def test_seed_layout():
    assert image_seeds(5, 2) == (7, 7 + LATENT_SEED_OFFSET)
    assert image_seeds(5, 2, same_latents=True) == (7, 5 + LATENT_SEED_OFFSET)
    from dreamdist3d.distribution import PromptGaussian

    g = PromptGaussian(torch.zeros(77, 8), torch.ones(77, 8))
    assert torch.equal(g.noise(2, 3), torch.stack([draw_eps(3, (77, 8)), draw_eps(4, (77, 8))]))
    assert torch.equal(g.noise(1, 4, start=0)[0], g.noise(2, 3)[1])  # sample i does not depend on how many


def test_sample_into_a_folder_holding_an_earlier_run_refuses_or_overwrites_cleanly(world, tmp_path, capsys,
                                                                                  monkeypatch):
    """Issue 17 item 3: a second run into the same --out never overwrites 0000.png beside stale files of the first."""
    out = tmp_path / "run"
    base = ["sample", "--distribution", world["files"][0], "--sd21", str(world["folder"]), "--steps", "1",
            "--batch-size", "2", "--out", str(out), "--device", "cpu", "--dtype", "fp32"]
    assert main(base + ["--n", "3", "--save-embeddings"]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")  # not a file of the run: never touched

    # refused before any model is loaded, naming the folder and both ways out
    monkeypatch.setattr(SD21Sampler, "from_folder", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    capsys.readouterr()
    assert main(base + ["--n", "2", "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "earlier run" in err and "--out" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "notes.txt"} == first
    monkeypatch.undo()

    # --overwrite: the new run alone (2 images), no 0002.png / embeddings of the first left beside the new run.json
    assert main(base + ["--n", "2", "--seed", "9", "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0000.json", "0000.png", "0001.json", "0001.png", "grid.png", "notes.txt", "run.json"]
    run = json.loads((out / "run.json").read_text())
    assert run["files"] == ["0000.png", "0001.png"] and (out / "notes.txt").read_text() == "mine"


def test_a_stopped_sample_run_continues_into_the_images_of_an_uninterrupted_one(world, tmp_path, capsys,
                                                                                monkeypatch):
    """Ctrl-C during `sample`: the images written stay, the line says how many and how to go on; the same command
    again keeps the whole batches already written and draws the rest: every file equals an uninterrupted run's, bit
    for bit. A stopped run with other settings is refused (naming the setting), never mixed into a new one."""
    ref, out = tmp_path / "whole", tmp_path / "stopped"
    argv = ["sample", "--distribution", world["files"][0], "--sd21", str(world["folder"]), "--steps", "1", "--n", "5",
            "--batch-size", "2", "--device", "cpu", "--dtype", "fp32", "--save-embeddings"]
    capsys.readouterr()
    assert main(argv + ["--out", str(ref)]) == 0
    err = capsys.readouterr().err
    assert "sample:" in err and "/5 [" in err and "img/s" in err  # the progress bar over images
    argv.append("--quiet")

    real_generate, calls = SD21Sampler.generate, []

    def stop_at_the_third_batch(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(self, *a, **k)

    monkeypatch.setattr(SD21Sampler, "generate", stop_at_the_third_batch)
    capsys.readouterr()
    assert main(argv + ["--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: 4 of 5 images are written in {out}; run the same command again to go on" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["0000.json", "0000.png", "0001.json", "0001.png", "0002.json",
                                                     "0002.png", "0003.json", "0003.png"]

    calls.clear()
    assert main(argv + ["--out", str(out)]) == 0
    assert len(calls) == 1  # the third batch alone
    printed = capsys.readouterr()
    assert "continuing the stopped run" in printed.out and "img/s" not in printed.err  # --quiet: no bar
    whole = {p.name: p.read_bytes() for p in ref.iterdir() if p.suffix != ".json"}
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix != ".json"} == whole  # PNGs, grid, embeddings
    for name in ["0000.json", "0004.json"]:
        mine, theirs = json.loads((out / name).read_text()), json.loads((ref / name).read_text())
        assert {**mine, "command": None} == {**theirs, "command": None}

    # stopped with other settings: refused before anything is drawn, naming the setting; the folder is untouched
    (out / "run.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    assert main([a if a != "1" else "2" for a in argv] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a stopped run with other settings (steps: 1 there, 2 now)" in err and "--overwrite" in err, err
    assert calls == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_loading_models_keeps_library_chatter_out_of_the_terminal(world, tmp_path):
    """Every way we load a diffusers/transformers model goes through `hf_loading.quiet_hf_loading`: the pipeline
    (`sample`; its import makes transformers say "Install torchvision", a CUDA torch we never depend on), the SD 2.1
    backbone (`learn --backbone sd21`: diffusers' "install accelerate" hint, transformers 5's "Loading weights" bars)
    and the image encoders of `eval`. A fresh process: some notices come once per process, at the first import."""
    import subprocess
    import sys

    from dreamdist3d.testing.encoders import write_tiny_encoders

    encoders = write_tiny_encoders(tmp_path / "enc", kinds=("dinov2",))
    code = ("import sys; from dreamdist3d.sample2d.sd21_pipeline import load_sd21_pipeline; "
            "from dreamdist3d.backbones.sd21 import load_sd21; "
            "from dreamdist3d.evaluation.features import load_encoder; "
            "load_sd21_pipeline(sys.argv[1]); load_sd21(sys.argv[1]); load_encoder('dinov2', sys.argv[2], 'cpu'); "
            "print('loaded')")
    done = subprocess.run([sys.executable, "-c", code, str(world["folder"]), str(encoders["dinov2"])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr
    assert done.stderr == "", done.stderr
