"""Issue 17 (nothing lost, nothing silent): bad inputs and faults give a clear error before the expensive work.

Items 2 (no NaN/Inf reaches an image), 3 (nothing overwritten or mixed), 5 (Ctrl-C keeps work), 6 (the file is what
it says) and 7 (odd inputs). Each test failed before its fix.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch

from dreamdist3d.cli import main
from dreamdist3d.distribution import PromptDistribution, PromptLearner
from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.learn.tiny import tiny_text_encoder
from dreamdist3d.text import ClipTokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "cathedral_small"
TOY = "dreamdist3d.learn.tiny:tiny_toy_backbone"


@pytest.fixture(scope="module")
def enc():
    return tiny_text_encoder(0)


def make_dist(enc, path: Path, prefix: str = "a photo of", ctx_fill=None) -> Path:
    pl = PromptLearner(enc, ClipTokenizer.default(), n_ctx=2, n_prompts=3, prefix=prefix,
                       generator=torch.Generator().manual_seed(0))
    dist = PromptDistribution.from_learner(pl, backbone="tiny", steps=3, n_images=2)
    if ctx_fill is not None:
        dist.ctx[0, 0, 0] = ctx_fill
    return dist.save(path)


def rewrite_header(path: Path, edit) -> None:
    """Apply `edit(meta_dict)` to a safetensors file's dreamdist3d metadata in place (as a flipped byte would)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["dreamdist3d"])
    edit(meta)
    header["__metadata__"]["dreamdist3d"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


# ==================================================================================================== item 6
def test_checksum_covers_the_metadata(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    PromptDistribution.load(path)

    def flip(meta):  # one byte of the training prefix: "a photo of" -> "a phnto of"
        meta["prefix"] = "a phnto of"

    rewrite_header(path, flip)
    with pytest.raises(DistributionFileError, match="checksum"):
        PromptDistribution.load(path)


def test_files_written_before_the_full_checksum_still_load(enc, tmp_path):
    path = make_dist(enc, tmp_path / "old.safetensors")
    rewrite_header(path, lambda m: m.pop("sha256"))  # what older dreamdist3d wrote: ctx_sha256 only
    d = PromptDistribution.load(path)
    assert d.meta.prefix == "a photo of"

    def tamper_ctx_hash(meta):
        meta["ctx_sha256"] = "0" * 64

    rewrite_header(path, tamper_ctx_hash)
    with pytest.raises(DistributionFileError, match="checksum"):
        PromptDistribution.load(path)


def test_safetensors_named_pt_is_read_by_content(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    renamed = tmp_path / "d.pt"
    renamed.write_bytes(path.read_bytes())
    d = PromptDistribution.load(renamed)
    assert d.meta.prefix == "a photo of" and d.meta.position_mode == "clean"


def test_encoder_mismatch_is_one_short_line(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    other = tiny_text_encoder(1)
    with pytest.raises(EncoderMismatchError) as e:
        PromptDistribution.load(path).learner(other, ClipTokenizer.default(), source=str(path))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.count("hidden 32, 2 layers, vocab 49408") == 2 and "signature" not in msg


def test_refusal_of_pickled_objects_never_suggests_weights_only_false(tmp_path):
    import argparse

    path = tmp_path / "prompt_learner.pt"
    torch.save({"model_state_dict": {"ctx": argparse.Namespace(x=1)}}, path)  # a pickled Python object
    with pytest.raises(DistributionFileError) as e:
        PromptDistribution.load(path)
    msg = str(e.value)
    assert "weights_only=False" not in msg and "`False`" not in msg and "pickled Python objects" in msg
    assert main(["inspect", str(path)]) == 2


def test_inspect_never_prints_a_bare_key_name(enc, tmp_path, capsys):
    path = make_dist(enc, tmp_path / "d.safetensors")
    rewrite_header(path, lambda m: (m.pop("sha256"), m["text_encoder"].pop("hidden_size")))
    assert main(["inspect", str(path)]) == 0
    assert "hidden ?" in capsys.readouterr().out
    rewrite_header(path, lambda m: m.pop("n_ctx"))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "n_ctx" in err and str(path) in err and not err.strip().endswith("error: n_ctx")


def test_distribution_files_get_the_usual_mode(enc, tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = make_dist(enc, tmp_path / "d.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # 0644 under the usual umask 022, not 0600


# ==================================================================================================== item 2
def test_non_finite_ctx_is_refused_at_load(enc, tmp_path):
    path = make_dist(enc, tmp_path / "d.safetensors")
    t = PromptDistribution.load(path)
    t.ctx[1, 1, 3] = float("nan")
    with pytest.raises(DistributionFileError, match="NaN"):  # nor written
        t.save(tmp_path / "nan.safetensors")
    # a file with NaN written by an older version (checksums consistent)
    from safetensors.torch import save_file

    meta = dict(t.meta.__dict__)
    from dreamdist3d.distribution.file import _ctx_hash

    meta.update(ctx_sha256=_ctx_hash(t.ctx), sha256="")
    save_file({"ctx": t.ctx}, str(tmp_path / "nan.safetensors"), {"dreamdist3d": json.dumps(meta)})
    with pytest.raises(DistributionFileError, match="NaN/Inf"):
        PromptDistribution.load(tmp_path / "nan.safetensors")
    # the official format
    official = tmp_path / "prompt_learner.pt"
    ctx = torch.randn(1, 3, 2, 32)
    ctx[0, 0, 0, 0] = float("inf")
    torch.save({"model_state_dict": {"ctx": ctx}}, official)
    with pytest.raises(DistributionFileError, match="NaN/Inf"):
        PromptDistribution.load(official)
