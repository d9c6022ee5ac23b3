"""The toy backbone: shipped weights, forward passes, generation that the attribute reader recognises, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.toy import (
    DEFAULT_GUIDANCE,
    build_toy_backbone,
    generate,
    initial_token_table,
    small_test_config,
    toy_config_of,
)
from dreamdist3d.backbones.toy_weights import default_weights_path, load_toy_backbone
from dreamdist3d.recipes.toy_train import (
    FLOAT32,
    SOS,
    TokenRows,
    TrainConfig,
    Trainer,
    aligned_pair,
    blend_ends,
    build_cache,
    train_toy_backbone,
    vocabulary_ids,
)
from dreamdist3d.toyworld.attributes import analyse
from dreamdist3d.toyworld.objects import ObjectSpec, PartSpec, nearest_colour

WEIGHTS = default_weights_path()
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"shipped toy weights {WEIGHTS} not there yet (train: dreamdist3d toyworld train --out {WEIGHTS})",
)


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return load_toy_backbone()


@needs_weights
def test_shipped_weights_load_every_key(shipped):
    from safetensors import safe_open

    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    with safe_open(str(WEIGHTS), "pt") as f:
        keys = set(f.keys())
    unet_keys = {f"unet.{k}" for k in shipped.unet.state_dict()}
    text_keys = {f"text.{k}" for k in shipped.text_encoder._core.state_dict()}
    table_key = "text.embeddings.token_embedding.weight"
    assert keys == unet_keys | (text_keys - {table_key}) | {"token_rows.ids", "token_rows.values"}
    # the stored rows are the trained ones (the toy captions' tokens, SOS, EOS, pad); the rest is the seeded init
    ids = shipped.tokenizer(["a small red box with a blue cone on top"])[0]
    with safe_open(str(WEIGHTS), "pt") as f:
        stored = set(f.get_tensor("token_rows.ids").tolist())
    assert set(ids.tolist()) <= stored and 50 < len(stored) < 1000
    table = shipped.text_encoder.token_embedding.weight
    init = initial_token_table(toy_config_of(shipped))
    unstored = torch.ones(table.shape[0], dtype=torch.bool)
    unstored[list(stored)] = False
    assert torch.equal(table[unstored], init[unstored])
    assert shipped.name == "toy" and shipped.vae is None and shipped.supports_camera and shipped.resolution == 32
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["record"]["steps"] > 0 and record["record"]["final_loss"] < record["record"]["first_loss"]


def test_forward_multiview_and_2d():
    torch.set_num_threads(1)
    bb = load_toy_backbone() if WEIGHTS.is_file() else build_toy_backbone()
    ctx = bb.encode_text(["a red box", "a small blue cone on a green cube"])  # (2,77,64)
    assert ctx.shape == (2, 77, 64)
    x = torch.randn(8, 3, 32, 32)
    cam = get_camera(4, 15, 0).repeat(2, 1)  # (8,16)
    with torch.no_grad():
        out4 = bb(x, torch.full((8,), 500), ctx.repeat_interleave(4, 0), camera=cam, num_frames=4)
        out1 = bb(x[:2], torch.tensor([10, 900]), ctx, camera=None, num_frames=1)
    assert out4.shape == (8, 3, 32, 32) and out1.shape == (2, 3, 32, 32)
    assert torch.isfinite(out4).all() and torch.isfinite(out1).all()
    # pixel space: the codec is the identity
    assert torch.equal(bb.encode_images(x), x) and torch.equal(bb.decode_latents(x), x)


@needs_weights
def test_generation_has_the_captions_colour(shipped):
    """Short DDIM at the default CFG for seen captions: the analytic hue of the images matches the caption."""
    specs = [
        ObjectSpec("box", hue=0.0, size=0.82, aspect=1.0),
        ObjectSpec("sphere", hue=222.0, size=0.82),
        ObjectSpec("cone", hue=120.0, size=0.82, aspect=1.1, part=PartSpec("sphere", 58.0, "top")),
    ]
    texts = [s.caption() for s in specs]
    imgs4 = generate(shipped, texts[:1], steps=15, cfg=DEFAULT_GUIDANCE, num_frames=4, seed=0)[0]  # (4,3,32,32)
    imgs1 = generate(shipped, [t for t in texts[1:] for _ in range(2)], steps=15, cfg=DEFAULT_GUIDANCE, num_frames=1,
                     seed=0)
    rows = [(specs[0], im) for im in imgs4] + [(specs[1 + i // 2], imgs1[i, 0]) for i in range(4)]
    got = []
    for spec, im in rows:
        a = analyse(im)
        got.append((spec.colour, None if a.hue is None else nearest_colour(a.hue), a.reason))
    matches = sum(want == read for want, read, _ in got)
    assert matches >= 6, got  # of 8 images


@pytest.mark.slow
@needs_weights
def test_interpolated_text_embeddings_give_interpolated_hues(shipped):
    """The text space is continuous: "a red box" -> "a yellow box" through interpolated token embeddings reads as
    hues moving from red (0°) to yellow (58°) in order."""
    from dreamdist3d.recipes.toy_eval import interpolation_readout
    from dreamdist3d.toyworld.attributes import AttributeReader

    reader = AttributeReader.fit(n_train=600, seed=0, epochs=20)  # hue is analytic; the fit only sets the rejects
    res = interpolation_readout(shipped, reader, seeds=(0, 1))
    hues = [(h + 180.0) % 360.0 - 180.0 for h in res["hues"]]  # red near 0 from either side
    assert None not in res["hues"], res
    assert abs(hues[0]) < 15 and abs(hues[-1] - 58) < 15, hues
    assert all(b_ > a_ - 5 for a_, b_ in zip(hues, hues[1:])), hues  # in order
    assert 10 < hues[2] < 50, hues  # the middle is between the ends, not a jump


def test_blend_pairs_line_up():
    from dreamdist3d.text import ClipTokenizer

    tok = ClipTokenizer.default()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b, kind = blend_ends(rng)
        pair = aligned_pair(a, b, rng, tok)
        if pair is None:
            continue
        ia, ib = pair
        assert len(ia) == len(ib) and ia != ib, (kind, a.caption(), b.caption())


def _small(steps: int, **switches) -> TrainConfig:
    return TrainConfig(steps=steps, batch_mv=2, batch_2d=2, cache_objects=8, cache_interp=4, warmup_steps=3,
                       ckpt_every=3, lr=2e-3, **switches)


@pytest.mark.slow
@pytest.mark.parametrize("switches", [{}, FLOAT32], ids=["shipped-recipe", "float32"])
def test_training_runs_checkpoints_and_resumes_exactly(tmp_path, switches):
    torch.set_num_threads(1)
    cfg, model = _small(6, **switches), small_test_config()
    straight = Trainer(cfg, model, progress=False)
    straight.run()
    # 3 steps, checkpoint, a fresh trainer resumes and does the other 3
    first = Trainer(cfg, model, progress=False)
    first.run(checkpoint=tmp_path / "ck.pt", until=4)  # interrupted after step 4 (checkpoints at 3 and 4)
    resumed = Trainer(cfg, model, progress=False)
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.step == 4
    resumed.run()
    assert resumed.losses == straight.losses
    for a, b in zip(straight.ema.unet.state_dict().values(), resumed.ema.unet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.backbone.text_encoder.state_dict().values(),
                    resumed.backbone.text_encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert len(straight.losses) == 6 and all(np.isfinite(straight.losses))


def test_caption_vocabulary_holds_every_token_a_caption_can_have():
    from dreamdist3d.text import ClipTokenizer
    from dreamdist3d.toyworld.captions import caption
    from dreamdist3d.toyworld.objects import interpolate_specs

    tok = ClipTokenizer.default()
    vocab = set(vocabulary_ids(tok).tolist())
    assert {SOS, 49407, 0} <= vocab and 60 < len(vocab) < 200
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(600):  # paraphrases of plain objects and of blends (compound colours such as "red-orange")
        a, b, _ = blend_ends(rng)
        for spec in (a, interpolate_specs(a, b, float(rng.uniform()))):
            seen |= set(tok.encode(caption(spec, rng)))
    assert seen <= vocab
    assert len(seen) > 0.8 * (len(vocab) - 3)  # the vocabulary is not padded with tokens captions never use


def test_token_rows_read_trained_rows_and_the_frozen_table_elsewhere():
    table = torch.randn(50, 4)
    rows = TokenRows(table, torch.tensor([0, 3, 7]))
    with torch.no_grad():
        rows.rows.add_(1.0)
    ids = torch.tensor([[3, 5, 0], [7, 7, 49]])
    out = rows(table, ids)
    want = table[ids] + torch.isin(ids, torch.tensor([0, 3, 7]))[..., None].float()
    torch.testing.assert_close(out, want)
    rows(table, ids).sum().backward()
    assert rows.rows.grad.tolist() == [[1.0] * 4, [1.0] * 4, [2.0] * 4]  # id 7 twice
    rows.write_into(table)
    torch.testing.assert_close(table[[0, 3, 7]], rows.rows.detach())


def test_sparse_token_rows_train_as_the_whole_table_does():
    """Training only the vocabulary's rows is the same optimisation as training all 49408 (the others get zero
    gradients, so Adam never moves them): same losses, same weights."""
    torch.set_num_threads(1)
    model = small_test_config()
    runs = {}
    for sparse in (True, False):
        tr = Trainer(_small(3, **{**FLOAT32, "sparse_token_rows": sparse}), model, progress=False)
        tr.run()
        runs[sparse] = tr
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-5, abs=1e-7)
    a = runs[True].ema.text_encoder.token_embedding.weight
    b = runs[False].ema.text_encoder.token_embedding.weight
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(a, initial_token_table(model))  # trained rows did move


def test_train_writes_loadable_weights_and_record(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "toy.safetensors"
    rec = train_toy_backbone(_small(8), out, model_config=small_test_config(), progress=False, command="test")
    assert rec["steps"] == 8 and rec["seed"] == 0 and rec["command"] == "test" and np.isfinite(rec["final_loss"])
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["record"]["steps"] == 8 and doc["config"]["text"]["hidden_size"] == 32
    bb = load_toy_backbone(out)
    # only the token rows the captions used moved; the stored ones are those, the rest is the seeded init
    assert 10 < doc["stored_token_rows"] < 200
    ids = bb.tokenizer(["a red box"])[0]
    assert SOS in ids.tolist()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y = bb(x, torch.full((4,), 300), bb.encode_text(["a red box"]).expand(4, -1, -1),
               camera=get_camera(4, 15, 0), num_frames=4)
    assert y.shape == x.shape and float(y.abs().sum()) > 0  # trained output layer is no longer zero


def test_cache_is_deterministic():
    from dreamdist3d.text import ClipTokenizer

    tok = ClipTokenizer.default()
    cfg = TrainConfig(cache_objects=4, cache_interp=2)
    a, b = build_cache(cfg, tok), build_cache(cfg, tok)
    assert torch.equal(a.images, b.images) and torch.equal(a.cameras, b.cameras)
    assert a.images.shape == (6, 4, 3, 32, 32)
    assert all(it.pairs is not None and 0.0 <= it.t <= 1.0 for it in a.items[4:])
    # views are not blank: every object covers part of each view
    assert ((a.images.float() / 255.0).min(dim=2).values < 0.7).flatten(2).any(-1).all()


def test_sampler_equals_diffusers_ddim_and_schedule_is_exact():
    """sample_toy (without x0 clamping) = diffusers' DDIMScheduler built from schedule.diffusers_config()."""
    from diffusers import DDIMScheduler

    from dreamdist3d.backbones.toy import sample_toy, toy_schedule

    torch.set_num_threads(1)
    sched = toy_schedule()
    assert sched.prediction_type == "v_prediction"
    lam = torch.log(sched.alphas_cumprod.double() / (1 - sched.alphas_cumprod.double()))
    assert abs(float(lam[0]) - 9.0) < 1e-3 and abs(float(lam[-1]) + 10.0) < 1e-3 and bool((lam.diff() < 0).all())
    bb = build_toy_backbone(small_test_config(), seed=3)
    with torch.no_grad():  # a non-zero output layer so the sampler has something to follow
        bb.unet.out[2].weight.normal_(0, 0.05)
    ctx, uncond = bb.encode_text(["a red box"]), bb.encode_text([""])
    ours = sample_toy(bb, ctx, uncond, steps=6, cfg=1.0, num_frames=4, seed=5, clip_x0=False)
    ddim = DDIMScheduler(**bb.schedule.diffusers_config())
    ddim.set_timesteps(6)
    x = torch.randn((4, 3, 32, 32), generator=torch.Generator().manual_seed(5))
    cam = get_camera(4, 15, 0)
    with torch.no_grad():
        for t in ddim.timesteps:
            out = bb(x, torch.full((4,), int(t)), ctx.expand(4, -1, -1), camera=cam, num_frames=4)
            x = ddim.step(out, int(t), x, eta=0.0).prev_sample
    torch.testing.assert_close(ours[0], ((x + 1) / 2).clamp(0, 1), atol=2e-5, rtol=0)
