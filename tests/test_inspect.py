"""`dreamdist3d inspect` on a file made here and on the official example checkpoint."""

import json

import pytest
import torch
from PIL import Image

from dreamdist3d.cli import main
from dreamdist3d.distribution import PromptDistribution, PromptLearner
from dreamdist3d.text import ClipTokenizer, TextEncoder


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """A diffusers-style folder (text_encoder/ + tokenizer/) holding the official fixture's tiny text encoder."""
    from conftest import load_reference

    tensors, meta = load_reference("dreamdist-promptlearner-tiny-a")
    sd = {k[len("text_encoder.") :]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    enc = TextEncoder.from_hf_state_dict(meta["text_encoder_config"], sd)
    root = tmp_path_factory.mktemp("sd")
    enc.clip.save_pretrained(root / "text_encoder")
    tok = ClipTokenizer.default()
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(tok.encoder))
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return root, enc, tensors, meta


def test_inspect_our_file_with_and_without_encoder(text_folder, tmp_path, capsys):
    root, enc, _, _ = text_folder
    pl = PromptLearner(enc, ClipTokenizer.default(), n_ctx=3, n_prompts=8, prefix="a photo of",
                       generator=torch.Generator().manual_seed(0))
    path = PromptDistribution.from_learner(pl, backbone="tiny", steps=12, n_images=5, covariance="kernel",
                                           objective="assign").save(tmp_path / "d.safetensors")

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "K=8 × L=3 × D=32" in out and "steps=12 images=5" in out and "prefix='a photo of'" in out
    assert "sampling law      kernel   objective: assign" in out

    plot = tmp_path / "scatter.png"
    assert main(["inspect", str(path), "--text-encoder", str(root), "--plot", str(plot), "--json", "--n", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["interpretation"]["mean_context"] == pl.interpret()
    spread = report["scatter"]["pc_spread_per_gamma"]
    assert spread["0.0"] == 0.0 and 0 < spread["0.5"] < spread["1.0"] < spread["2.0"]  # γ scales the spread
    assert abs(spread["2.0"] / spread["1.0"] - 2.0) < 1e-3
    assert report["gaussian"]["covariance"] == "kernel"  # the recorded law, unless --covariance says otherwise
    assert Image.open(plot).size[0] > 300
    assert main(["inspect", str(path), "--text-encoder", str(root), "--plot", str(tmp_path / "scatter")]) != 0
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "scatter").exists()  # a PNG named so viewers open it


def test_inspect_official_checkpoint(text_folder, tmp_path, capsys):
    from conftest import reference_path

    root, _, _, meta = text_folder
    pt = reference_path("dreamdist-official-ckpt-example.pt")
    assert main(["inspect", str(pt)]) == 0
    out = capsys.readouterr().out
    assert "not recorded (official file)" in out and "sampling law      diag   objective: official" in out
    assert "learned against   sd21 (official DreamDistribution)  steps and images not recorded" in out
    assert main(["inspect", str(pt), "--text-encoder", str(root), "--plot", str(tmp_path / "s.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["interpretation"]["mean_context"] == meta["fits"][0]["interpret_official"]
    assert report["metadata"]["position_mode"] == "official"


def test_inspect_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert main(["inspect", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
