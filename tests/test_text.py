"""Text side against the official numbers: OpenCLIP tokenizer ids and text tower, transformers CLIP encoder.

Float32 tolerances: `conftest.F32` (why there)."""

import json

import pytest
import torch
from conftest import F32

from dreamdist3d.text import ClipTokenizer, TextEncoder, fingerprints_match


def test_tokenizer_matches_openclip_on_fixture_prompts(reference):
    tensors, meta = reference("mvdream-openclip-text-tiny-a")
    tok = ClipTokenizer.default()
    ids = tok(meta["prompts"])
    assert torch.equal(ids, tensors["tokens"])
    assert [tok.count(p) + 2 for p in meta["prompts"]] == meta["untruncated_token_counts_with_sot_eot"]
    # truncation forces EOS last; padding is id 0
    assert ids[3, -1].item() == 49407 and ids[0, 2:].eq(0).all()


def test_tokenizer_known_ids_and_decode():
    tok = ClipTokenizer.default()
    assert tok("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert tok.vocab_size == 49408
    assert tok.decode(tok.encode("A DSLR photo of a toy robot")) == "a dslr photo of a toy robot"


def test_tokenizer_from_folder_equals_packaged(tmp_path):
    """A diffusers tokenizer/ folder (vocab.json + merges.txt) gives the same ids as the packaged BPE."""
    base = ClipTokenizer.default()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(base.encoder))
    merges = sorted(base.ranks, key=base.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = ClipTokenizer.from_folder(tmp_path)
    prompts = ["a photo of a cathedral", "café, naïve — 3D!", ""]
    assert torch.equal(tok(prompts), base(prompts))
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        ClipTokenizer.from_folder(tmp_path / "nowhere")


def test_openclip_text_tower_penultimate_matches_official(reference):
    tensors, meta = reference("mvdream-openclip-text-tiny-a")
    heads = meta["open_clip_model_config"]["text_cfg"]["heads"]
    enc, consumed = TextEncoder.from_openclip_state_dict(tensors, prefix="cond.model.", heads=heads)
    assert consumed == {k for k in tensors if k.startswith("cond.model.")}  # every key accounted for
    assert enc.num_layers == meta["open_clip_model_config"]["text_cfg"]["layers"] - 1
    with torch.no_grad():
        z = enc.encode_ids(tensors["tokens"])
    torch.testing.assert_close(z, tensors["z"], atol=1e-5, rtol=1e-5)


def test_transformers_clip_on_embeddings_matches_official(reference):
    tensors, meta = reference("dreamdist-promptlearner-tiny-a")
    sd = {k[len("text_encoder.") :]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    enc = TextEncoder.from_hf_state_dict(meta["text_encoder_config"], sd)
    with torch.no_grad():
        for i in range(4):
            # the official input already carries one position embedding; the encoder adds the table again
            hidden = enc(tensors[f"prompts_emb.{i}"][0])
            torch.testing.assert_close(hidden, tensors[f"hidden.{i}"][0], **F32)


def test_text_encoder_is_causal_and_frozen(reference):
    tensors, meta = reference("dreamdist-promptlearner-tiny-a")
    sd = {k[len("text_encoder.") :]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    enc = TextEncoder.from_hf_state_dict(meta["text_encoder_config"], sd)
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(1, 77, enc.hidden_size)
    y = x.clone()
    y[0, 10:] += torch.randn(67, enc.hidden_size)  # later tokens must not change earlier outputs
    with torch.no_grad():
        a, b = enc(x), enc(y)
    assert torch.equal(a[0, :10], b[0, :10]) and (a[0, 10:] - b[0, 10:]).abs().max() > 0.1
    fp = enc.fingerprint()
    assert fp["hidden_size"] == 32 and fp["num_layers"] == 2
    # same weights in bf16 still match; other weights do not
    assert fingerprints_match(fp, TextEncoder.from_hf_state_dict(meta["text_encoder_config"],
                                                                 sd).to(torch.bfloat16).fingerprint())
    other = TextEncoder.from_config(meta["text_encoder_config"])
    assert not fingerprints_match(fp, other.fingerprint())
