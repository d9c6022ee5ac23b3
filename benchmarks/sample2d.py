"""Sampling overhead of `dreamdist3d sample` against the diffusers pipeline time, measured in one run.

    python benchmarks/sample2d.py [--preset tiny|sd21] [--device auto|cpu|cuda] [--dtype auto|fp32|fp16|bf16]
                                  [--n 16] [--steps 50] [--batch-size 4] [--cfg 7.5] [--repeats 1] [--threads 1]

Both paths use one pipeline object, the same prompt embeddings, negative prompt, per-image latent generators,
scheduler and batches (so they make the same images):
- bare: `pipe(prompt_embeds=E[batch], negative_prompt=[neg]*B, generator=[...], output_type="pil")` per batch —
  what a diffusers user runs, writing nothing;
- ours: the whole of `dreamdist3d sample` after loading: load + re-fit the distribution file (K=32 prompts through
  the text encoder, in fp32), the negative embedding, seeded draws, per-image statistics, PNG (tEXt) + JSON per
  image, contact sheet, run.json, embeddings file — everything except reading the model folder.
overhead = (ours − bare) / bare. The table also splits our run (time inside the pipeline vs. outside it).

Presets: `tiny` is the random test folder (`tiny_sd21_folder`, 32 px; runs anywhere in seconds, but its pipeline is
~10⁵× cheaper than SD 2.1 while the bookkeeping per image is not, so its ratio is a worst case). `sd21` is the real
SD 2.1 768-v architecture (865.9 M UNet, 340.4 M text encoder, 83.7 M VAE, v-prediction, DDIM) with random weights
built from configs in memory (nothing downloaded) — the configuration the < 2 % target is about; use it on a GPU.

The FLOP projection (always printed, computed on the meta device without weights) counts the full SD 2.1 768 model:
fit (K=32 prompts) + negative vs. UNet (cond+uncond) × steps + VAE decode per image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.distribution import DistributionSpec, PromptDistribution, PromptLearner  # noqa: E402
from dreamdist3d.sample2d.sd21 import (  # noqa: E402
    SampleSettings,
    SD21Sampler,
    _float32,
    dtype_name,
    image_seeds,
    resolve_device,
    resolve_dtype,
    sample_to_folder,
)
from dreamdist3d.text import ClipTokenizer, TextEncoder  # noqa: E402

K_PROMPTS, N_CTX = 32, 4  # the official train.sh defaults

SD21_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, layer_norm_eps=1e-5,
)
SD21_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
    steps_offset=1, prediction_type="v_prediction", timestep_spacing="leading",
)


def _hf_tokenizer(tmp: Path):
    """transformers CLIPTokenizer with SD 2.x settings (pad "!" = id 0) from our packaged BPE vocabulary."""
    from transformers import CLIPTokenizer

    tok = ClipTokenizer.default()
    d = tmp / "tokenizer"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(tok.encoder))
    merges = sorted(tok.ranks, key=tok.ranks.get)
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!",
        "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}))
    return CLIPTokenizer.from_pretrained(str(d))


def build_sampler(preset: str, device: torch.device, dtype: torch.dtype, tmp: Path) -> SD21Sampler:
    if preset == "tiny":
        from dreamdist3d.testing.checkpoints import tiny_sd21_folder

        folder = tiny_sd21_folder(tmp / "tiny-sd21", sample_size=16)
        return SD21Sampler.from_folder(folder, device=device, dtype=dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device (the weights' values do not change the timing)
        unet = UNet2DConditionModel(**SD21_UNET).to(dtype)
        vae = AutoencoderKL(**SD21_VAE).to(dtype)
        cfg = CLIPTextConfig(**SD21_TEXT)
        text = CLIPTextModel(cfg).to(dtype)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=_hf_tokenizer(tmp), unet=unet,
                                   scheduler=DDIMScheduler(**SD21_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return SD21Sampler(pipe, ClipTokenizer.default(), source="random SD 2.1 768-v architecture (benchmark)",
                       tokenizer_source="packaged CLIP BPE")


def make_distribution(sampler: SD21Sampler, path: Path) -> Path:
    with _float32(sampler.pipe.text_encoder):
        pl = PromptLearner(sampler.text_encoder, sampler.tokenizer, n_ctx=N_CTX, n_prompts=K_PROMPTS,
                           generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            pl.ctx.mul_(50)
        return PromptDistribution.from_learner(pl, backbone="benchmark").save(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(sampler: SD21Sampler, embeds: torch.Tensor, settings: SampleSettings) -> float:
    pipe, device = sampler.pipe, sampler.device
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, settings.n, settings.batch_size):
        idx = list(range(start, min(settings.n, start + settings.batch_size)))
        pipe(prompt_embeds=embeds[idx].to(device, sampler.dtype), negative_prompt=[settings.negative] * len(idx),
             generator=[torch.Generator().manual_seed(image_seeds(settings.seed, i)[1]) for i in idx],
             num_inference_steps=settings.steps, guidance_scale=settings.cfg, output_type="pil")
    sync(device)
    return time.perf_counter() - t0


def run_ours(sampler: SD21Sampler, dist: Path, settings: SampleSettings, out: Path) -> dict:
    sampler.timings.clear()
    sync(sampler.device)
    t0 = time.perf_counter()
    mixture = sampler.fit(DistributionSpec.from_lists([str(dist)]))
    sample_to_folder(sampler, mixture, settings, out, save_embeddings=True)
    sync(sampler.device)
    total = time.perf_counter() - t0
    return {"total": total, **dict(sampler.timings)}


def flop_projection(steps: int, k: int = K_PROMPTS) -> dict:
    """FLOPs of the full SD 2.1 768 model on the meta device: fit, negative, one image (cfg pair × steps + decode)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
        cfg = CLIPTextConfig(**SD21_TEXT)
        cfg._attn_implementation = "sdpa"
        enc = TextEncoder(CLIPTextModel(cfg))

    def count(fn) -> int:
        mode = FlopCounterMode(display=False)
        with mode, torch.no_grad():
            fn()
        return mode.get_total_flops()

    m = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
    unet_pair = count(lambda: unet(m(2, 4, 96, 96), torch.tensor([500, 500], device="meta"),
                                   encoder_hidden_states=m(2, 77, 1024)))
    decode = count(lambda: vae.decode(m(1, 4, 96, 96)))
    fit = count(lambda: enc(m(k, 77, 1024)))
    negative = count(lambda: enc(m(1, 77, 1024)))
    return {"unet_pair": unet_pair, "decode": decode, "fit": fit, "negative": negative,
            "per_image": unet_pair * steps + decode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["tiny", "sd21"], default=None, help="default: sd21 on CUDA, tiny on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats of each path (alternating); medians reported")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP projection of the full SD 2.1 model")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    preset = args.preset or ("sd21" if device.type == "cuda" else "tiny")
    settings = SampleSettings(n=args.n, steps=args.steps, cfg=args.cfg, batch_size=args.batch_size, negative="blurry")
    tmp = Path(tempfile.mkdtemp(prefix="dreamdist3d-bench-"))
    try:
        t0 = time.perf_counter()
        sampler = build_sampler(preset, device, dtype, tmp)
        dist = make_distribution(sampler, tmp / "dist.safetensors")
        build_s = time.perf_counter() - t0
        size = sampler.native_size
        # warm-up (kernels, allocator), then the embeddings the bare path uses: the same draws as ours
        mixture = sampler.fit(DistributionSpec.from_lists([str(dist)]))
        law = mixture.law()
        sampler.generate(sampler.draw(law, [0]), [0], sampler.negative_embeds("blurry"), steps=2, cfg=args.cfg)
        embeds = sampler.draw(law, [image_seeds(settings.seed, i)[0] for i in range(settings.n)]).float().cpu()
        bare, ours = [], []
        for r in range(args.repeats):
            bare.append(run_bare(sampler, embeds, settings))
            ours.append(run_ours(sampler, dist, settings, tmp / f"out{r}"))
        b = statistics.median(bare)
        o = {k: statistics.median(run.get(k, 0.0) for run in ours) for k in ours[0]}
        outside = o["total"] - o["pipeline"]
        where = (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"{os.cpu_count()} CPU cores, {args.threads} torch threads")
        info = (f"preset {preset}: {size}x{size}, {settings.n} images, {settings.steps} steps, batch "
                f"{settings.batch_size}, "
                f"cfg {settings.cfg:g}, distribution K={K_PROMPTS} n_ctx={N_CTX}; device {device} "
                f"({where}), "
                f"{dtype_name(dtype)}, torch {torch.__version__}; {args.repeats} repeat(s), medians; build "
                f"{build_s:.1f}s")
        print(info)
        print("| path | total s | in pipeline s | fit s | negative s | draw s | write s (critical path) | outside "
              "pipeline s |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| bare diffusers calls | {b:.3f} | {b:.3f} | – | – | – | – | – |")
        print(f"| dreamdist3d sample | {o['total']:.3f} | {o['pipeline']:.3f} | {o.get('fit', 0):.3f} | "
              f"{o.get('negative', 0):.4f} | {o.get('draw', 0):.4f} | {o.get('write', 0):.3f} | {outside:.3f} |")
        print(f"overhead vs bare diffusers in this run: {(o['total'] - b) / b:+.2%}   "
              f"time outside the pipeline / time inside it: {outside / o['pipeline']:.2%}")
        if not args.no_flops:
            f = flop_projection(settings.steps)
            per = f["per_image"]
            print(f"FLOP projection, full SD 2.1 768 ({settings.steps} steps, cfg pair per step): per image "
                  f"{per / 1e12:.1f} TFLOP (UNet pair {f['unet_pair'] / 1e12:.2f} × {settings.steps} + decode "
                  f"{f['decode'] / 1e12:.2f}); fit K={K_PROMPTS} {f['fit'] / 1e12:.3f} TFLOP + negative "
                  f"{f['negative'] / 1e12:.3f}; fit+negative / pipeline = "
                  f"{(f['fit'] + f['negative']) / per:.2%} for 1 image, "
                  f"{(f['fit'] + f['negative']) / (per * settings.n):.3%} for {settings.n}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
