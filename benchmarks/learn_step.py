"""One DreamDistribution learning step: ours against an official-equivalent step, same model, same numbers.

    python benchmarks/learn_step.py [--device cpu|cuda] [--dtype fp32|bf16] [--backbone mvdream|sd21]
                                    [--steps N] [--unet-width C] [--text-width W] [--vae-width V] [--resolution R]

Workload: B=4 reference images, K=32 prompts of n_ctx=4, R=4 reparameterised samples per image (the official
train.sh), AdamW + grad clip 1.0. MVDream (default): MVDream's 256 px (32×32 latents), 2D mode (camera None, one
frame), ε-prediction. `--backbone sd21`: SD 2.1's UNet topology at 768 px (96×96 latents), v-prediction.

Model (random weights, seeded): the real depths with reduced widths on CPU —
- UNet: `MultiViewUNet` with MVDream's sd-v2.1-base-4view config (4 levels, 2 ResBlocks each, transformers at ×1/×2/×4,
  64-channel heads) and model_channels 320 → `--unet-width` (CPU default 64, i.e. ×0.2);
  for sd21 diffusers' `UNet2DConditionModel` with SD 2.1's blocks at the same scaled width;
- text encoder: OpenCLIP ViT-H/14's text tower as MVDream uses it ("penultimate": 23 of 24 layers, 77 tokens, MLP 4×,
  64-wide heads) with width 1024 → `--text-width` (CPU default 192, ×0.1875 — scaled no more than the UNet, so the
  text encoder's share of the step is not overstated);
- VAE encoder: SD's (4 levels, 2 ResBlocks each) with widths 128/256/512/512 → ×`--vae-width`/128 (CPU default 32:
  ×0.25, the smallest that GroupNorm(32) allows).
On CUDA the defaults are the real widths (1024 / 320 / 128).

Baseline ("official-equivalent", written out below in `official_step`, the arithmetic of the official train.py +
PromptLearner.forward): the VAE encodes the batch every step (`latent_dist.sample()·0.18215`); the K prompts are
stacked for each of the B items and the text encoder runs on B·K = 128 sequences; μ, σ, ortho per item; float32.
Ours (`our_step`): the step of `dreamdist3d.recipes.learn` — latents drawn from the posterior cached once
(`LatentCache`), the K prompts encoded once (`distribution_loss(mode="fast")`). Both use the same attention kernels
(the official code uses xformers; here both use PyTorch SDPA in the UNet and the same text encoder module), the same
UNet, the same random draws (a per-step CPU generator); the first step's loss of both is printed as a check.

Objectives (skipped with `--no-objectives`): our step with `wta`/`softmin` + low-rank samples and with `assign`, whose
B items are images of a set of `--images` N (prompt k belongs to image k mod N), whose UNet runs each distinct
image-prompt row once and whose text encoder runs all 77 positions only for the drawn prompts (the others up to their
EOS, for the orthogonality term); its baseline `assign_every_row_step` is the step as it was, every sample its own
row and all K prompts encoded whole.

Each variant runs in a fresh subprocess: 1 warm-up step, then `--steps` timed steps. Peak memory: CPU — the process'
peak resident set `ru_maxrss` (absolute, and its growth from just before the warm-up); CUDA —
`torch.cuda.max_memory_allocated()`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.backbones.base import Backbone  # noqa: E402
from dreamdist3d.backbones.schedule import NoiseSchedule  # noqa: E402
from dreamdist3d.distribution import PromptLearner  # noqa: E402
from dreamdist3d.learn.data import LatentCache, ReferenceSet  # noqa: E402
from dreamdist3d.learn.loss import (  # noqa: E402
    assigned_prompts,
    denoiser_rows,
    distribution_loss,
    min_snr_weights,
    official_snr,
)
from dreamdist3d.text import ClipTokenizer, TextEncoder  # noqa: E402

B, K, R, N_CTX = 4, 32, 4, 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------- the model
def build_backbone(args, device, dtype) -> Backbone:
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    from transformers import CLIPTextConfig

    torch.manual_seed(0)
    w = args.text_width
    text = TextEncoder.from_config(CLIPTextConfig(
        vocab_size=49408, hidden_size=w, intermediate_size=4 * w, num_attention_heads=max(1, w // 64),
        num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=w, layer_norm_eps=1e-5))
    v = args.vae_width
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(v, 2 * v, 4 * v, 4 * v),
                        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=args.resolution)
    mc = args.unet_width
    if args.backbone == "mvdream":
        from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG, MultiViewUNet

        unet = MultiViewUNet(**dict(MVDREAM_SD21_CONFIG, model_channels=mc, context_dim=w))
        schedule = NoiseSchedule.scaled_linear("epsilon", style="ldm")
    else:
        from diffusers import UNet2DConditionModel

        from dreamdist3d.backbones.sd21 import DiffusersUNetAdapter

        chans = (mc, 2 * mc, 4 * mc, 4 * mc)
        unet = DiffusersUNetAdapter(UNet2DConditionModel(
            sample_size=args.resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=chans, attention_head_dim=tuple(max(1, c // 64) for c in chans),  # SD 2.1: heads of 64
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=w,
            use_linear_projection=True, norm_num_groups=32))
        schedule = NoiseSchedule.scaled_linear("v_prediction", style="diffusers")
    bb = Backbone(name=args.backbone, tokenizer=ClipTokenizer.default(), text_encoder=text, unet=unet,
                  schedule=schedule,
                  resolution=args.resolution, vae=vae, supports_camera=args.backbone == "mvdream")
    bb.to(device=device, dtype=None if dtype == torch.float32 else dtype)
    for m in (bb.unet, bb.vae, bb.text_encoder):
        m.eval().requires_grad_(False)
    if args.channels_last == "on":  # both variants: the recipe's default layout for the UNet (and the VAE here)
        bb.unet.to(memory_format=torch.channels_last)
        bb.vae.to(memory_format=torch.channels_last)
    return bb


def step_randomness(step: int, latent_shape, dim: int):
    """The draws of one step, in the recipe's order: timesteps, ε (B,R,77,D), posterior ε, diffusion noise."""
    g = torch.Generator().manual_seed(1000 + step)
    t = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn((B, R, 77, dim), generator=g)
    z_eps = torch.randn(latent_shape, generator=g)
    noise = torch.randn(latent_shape, generator=g)
    return t, eps, z_eps, noise


# ---------------------------------------------------------------------------------------------------- the two steps
def official_step(bb: Backbone, learner: PromptLearner, opt, images: torch.Tensor, step: int, dev, autocast) -> float:
    """train.py's inner loop (VAE encode, prompt learner per item, UNet on (b n) rows, min-SNR, ortho), written out."""
    hl = bb.latent_size
    t, eps, z_eps, noise = step_randomness(step, (B, 4, hl, hl), learner.ctx.shape[-1])
    t, eps, z_eps, noise = t.to(dev), eps.to(dev), z_eps.to(dev), noise.to(dev)
    with torch.no_grad(), autocast():  # vae.encode(pixel_values).latent_dist.sample() * scaling_factor
        post = bb.vae.encode(images).latent_dist
        latents = (post.mean.float() + post.std.float() * z_eps) * bb.scale_factor
    ac = bb.schedule.alphas_cumprod.to(dev)
    a = ac[t].view(B, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    target = noise if bb.schedule.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    with autocast():
        # PromptLearner.forward: ctx[cls_idx] for every item -> B·K sequences through the text encoder
        x, eos = learner.input_embeddings()  # (K, 77, D) = concat_custom(ctx, prefix, suffix)
        x = x.unsqueeze(0).expand(B, *x.shape).reshape(B * K, *x.shape[1:])
        hidden = bb.text_encoder(x).view(B, K, 77, -1)
        pooled = torch.nn.functional.normalize(hidden[:, :, eos], dim=-1)  # (B, K, D)
        cos2 = (pooled @ pooled.transpose(1, 2)) ** 2
        ortho = ((cos2.sum((1, 2)) - cos2.diagonal(dim1=1, dim2=2).sum(-1)) / (K * (K - 1))).mean()
        mu, sigma = hidden.mean(1), hidden.std(1)
        prompts = (mu[:, None] + eps * sigma[:, None]).reshape(B * R, 77, -1)  # rearrange "b n l d -> (b n) l d"
        rows = noisy.repeat_interleave(R, 0)  # repeat "b c h w -> (b n) c h w"
        t_rows = t.repeat_interleave(R)
        pred = bb(rows, t_rows, prompts, camera=None, num_frames=1).view(B, R, 4, hl, hl)
    snr = (ac[t_rows].sqrt() / (1 - ac[t_rows]).sqrt()) ** 2
    w = (torch.stack([snr, 5.0 * torch.ones_like(snr)], 1).min(1)[0] / snr).view(B, R)
    mse = torch.nn.functional.mse_loss(pred.float(), target.float()[:, None].expand_as(pred), reduction="none")
    loss = (mse.mean((2, 3, 4)) * w).mean() + 1e-3 * ortho.float()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([learner.ctx], 1.0)
    opt.step()
    value = float(loss)
    del post, latents, noisy, hidden, prompts, pred, loss
    gc.collect()  # train.py ends every step with gc.collect() (+ cuda empty_cache/synchronize on GPU)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
    return value


# variant -> (objective, covariance) of our step
OUR_VARIANTS = {"ours": ("official", "diag"), "ours-wta-lowrank": ("wta", "lowrank"),
                "ours-softmin-lowrank": ("softmin", "lowrank"), "ours-assign": ("assign", "lowrank")}


def step_draws(step: int, dim: int, objective: str, covariance: str, n_images: int):
    """Our step's draws from the per-step generator: timesteps, ε or (assign) the prompt of each sample, and the
    generator (the posterior and diffusion noise come after). `assign`: the B items are images of a set of n_images,
    prompt k belongs to image k mod n_images (the latents are the B benchmark images whatever the index: same cost)."""
    g = torch.Generator().manual_seed(1000 + step)  # step_randomness's draws, the posterior one inside cache.sample
    t = torch.randint(0, 1000, (B,), generator=g)
    eps, index = torch.randn((B, R, 77, dim), generator=g), None
    if covariance == "lowrank":
        eps = eps[..., 0, :K]  # (B, R, K) coefficients
    if objective == "assign":
        images = torch.randint(0, n_images, (B,), generator=g)
        eps, index = None, assigned_prompts(images, torch.randint(0, 1000, (B, R), generator=g), K, n_images)
    return t, eps, index, g


def our_step(bb: Backbone, learner: PromptLearner, opt, cache: LatentCache, step: int, dev, autocast,
             objective: str = "official", covariance: str = "diag", n_images: int = B) -> float:
    """The recipe's step: cached posterior, K prompts encoded once (under `assign` each distinct image-prompt row
    once); the objective/covariance of the variant."""
    t, eps, index, g = step_draws(step, learner.ctx.shape[-1], objective, covariance, n_images)
    latents = cache.sample(torch.arange(B), None, g)
    noise = torch.randn(latents.shape, generator=g)
    with autocast():
        out = distribution_loss(learner, bb, bb.schedule, latents, noise.to(dev), t.to(dev),
                                None if eps is None else eps.to(dev), mode="fast", objective=objective,
                                covariance=covariance, prompt_index=None if index is None else index.to(dev))
    opt.zero_grad(set_to_none=True)
    out.total.backward()
    torch.nn.utils.clip_grad_norm_([learner.ctx], 1.0)
    opt.step()
    return float(out.total)


def assign_every_row_step(bb: Backbone, learner: PromptLearner, opt, cache: LatentCache, step: int, dev, autocast,
                          n_images: int) -> float:
    """Baseline for `assign`: our step as it was before `denoiser_rows` and `encode_rows`, written out: all 77 states
    of all K prompts, and every sample (b, r) its own UNet row, B·R rows, also where samples of one image drew the same
    prompt."""
    t, _, index, g = step_draws(step, learner.ctx.shape[-1], "assign", "lowrank", n_images)
    latents = cache.sample(torch.arange(B), None, g)
    noise = torch.randn(latents.shape, generator=g)
    t, noise, index = t.to(dev), noise.to(dev), index.to(dev)
    sched = bb.schedule
    with autocast():
        hidden, pooled = learner.encode()  # (K, 77, D)
        noisy = sched.add_noise(latents, noise, t)
        context = hidden[index].reshape(B * R, *hidden.shape[1:])  # row (b, r): prompt index[b, r]
        pred = bb(noisy.repeat_interleave(R, 0), t.repeat_interleave(R), context, camera=None,
                  num_frames=1).view(B, R, *latents.shape[1:])
    target = sched.target(latents, noise, t).float()
    mse = torch.nn.functional.mse_loss(pred.float(), target[:, None].expand_as(pred), reduction="none")
    w = min_snr_weights(official_snr(sched.alphas_cumprod, t.repeat_interleave(R)), 5.0).view(B, R)
    loss = (mse.mean((2, 3, 4)) * w).mean() + 1e-3 * learner.orthogonal_loss(pooled)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([learner.ctx], 1.0)
    opt.step()
    return float(loss)


def mean_distinct_rows(steps: int, n_images: int) -> float:
    """UNet rows per step of our `assign` step over the benchmark's steps (B·R = 16 for every other step)."""
    counts = []
    for i in range(steps + 1):
        _, _, index, _ = step_draws(i, 1, "assign", "lowrank", n_images)
        counts.append(len(denoiser_rows(B, R, index, K)[0]))
    return sum(counts) / len(counts)


# ---------------------------------------------------------------------------------------------------- worker / main
def worker(args) -> dict:
    dev = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype != torch.float32 else _null
    bb = build_backbone(args, dev, dtype)
    g = torch.Generator().manual_seed(5)
    images = (torch.rand((B, 3, args.resolution, args.resolution), generator=g) * 2 - 1).to(dev, dtype)
    learner = PromptLearner(bb.text_encoder, bb.tokenizer, n_ctx=N_CTX, n_prompts=K,
                            generator=torch.Generator().manual_seed(0))
    learner.ctx = torch.nn.Parameter(learner.ctx.detach().float())
    opt = torch.optim.AdamW([learner.ctx], lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_setup = time.perf_counter()
    if args.variant != "official":  # one-off cost of our steps: encode every image once (counted separately)
        cache = LatentCache.build(bb, ReferenceSet(images.float().cpu(), [None] * B), flip=False, device=dev)
    if args.variant in OUR_VARIANTS:
        objective, covariance = OUR_VARIANTS[args.variant]
        step_fn = lambda i: our_step(bb, learner, opt, cache, i, dev, autocast, objective,  # noqa: E731
                                     covariance, args.images)
    elif args.variant == "assign-every-row":
        step_fn = lambda i: assign_every_row_step(bb, learner, opt, cache, i, dev, autocast, args.images)  # noqa: E731
    else:
        step_fn = lambda i: official_step(bb, learner, opt, images, i, dev, autocast)  # noqa: E731
    sync()
    setup = time.perf_counter() - t_setup
    first_loss = step_fn(0)  # warm-up (and the equivalence check)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(1, args.steps + 1):
        step_fn(i)
    sync()
    sec = (time.perf_counter() - t0) / args.steps
    cpu_sec = (time.process_time() - c0) / args.steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else rss / 1024
    return dict(variant=args.variant, sec=sec, cpu_sec=cpu_sec, setup=setup, first_loss=first_loss, peak_mb=peak,
                growth_mb=(rss - rss0) / 1024, params={
                    "unet": sum(p.numel() for p in bb.unet.parameters()),
                    "text": sum(p.numel() for p in bb.text_encoder.parameters()),
                    "vae_encoder": sum(p.numel() for p in bb.vae.encoder.parameters())})


def count_flops(args, real: bool) -> dict:
    """Matmul/conv FLOPs (fwd+bwd as the steps need them) of the three parts, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    a = argparse.Namespace(**vars(args))
    a.channels_last = "off"
    if real:
        a.unet_width, a.text_width, a.vae_width = 320, 1024, 128
        a.resolution = 256 if a.backbone == "mvdream" else 768
    meta = torch.device("meta")
    with meta:
        bb = build_backbone(a, meta, torch.float32)
    out = {}
    for name, n in (("text_K", K), ("text_BK", B * K)):
        x = torch.randn(n, 77, a.text_width, device=meta, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            bb.text_encoder(x).sum().backward()
        out[name] = fc.get_total_flops()
    hl = bb.latent_size
    ctx = torch.randn(B * R, 77, a.text_width, device=meta, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        bb(torch.randn(B * R, 4, hl, hl, device=meta), torch.zeros(B * R, dtype=torch.long, device=meta),
           ctx).sum().backward()
    out["unet"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        bb.vae.encode(torch.randn(B, 3, a.resolution, a.resolution, device=meta))
    out["vae"] = fc.get_total_flops()
    x = torch.randn(K, N_CTX + 2, a.text_width, device=meta, requires_grad=True)  # SOS, ctx, EOS: up to the EOS
    with FlopCounterMode(display=False) as fc:
        bb.text_encoder(x).sum().backward()
    out["text_K_eos"] = fc.get_total_flops()
    out["official"] = out["text_BK"] + out["unet"] + out["vae"]
    out["ours"] = out["text_K"] + out["unet"]
    # assign: n distinct rows (and as many drawn prompts) per step; FLOPs are linear in the number of sequences/rows
    n = mean_distinct_rows(200, args.images)
    out["assign_rows"] = n
    out["assign_before"] = out["text_K"] + out["unet"]
    out["assign_ours"] = out["text_K_eos"] + out["text_K"] * n / K + out["unet"] * n / (B * R)
    out["widths"] = f"UNet {a.unet_width}, text {a.text_width}, VAE {a.vae_width}, {a.resolution} px"
    return out


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--backbone", default="mvdream", choices=["mvdream", "sd21"])
    p.add_argument("--steps", type=int, default=None, help="timed steps after 1 warm-up (CPU default 3, CUDA 10)")
    p.add_argument("--unet-width", type=int, default=None, help="model_channels (real 320; CPU default 64)")
    p.add_argument("--text-width", type=int, default=None, help="text width (real 1024; CPU default 192)")
    p.add_argument("--vae-width", type=int, default=None, help="first VAE width (real 128; CPU default 32)")
    p.add_argument("--resolution", type=int, default=None, help="image size (mvdream 256, sd21 768)")
    p.add_argument("--channels-last", default="on", choices=["on", "off"],
                   help="UNet/VAE convolutions channels-last in BOTH variants (the recipe's default)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--flops-only", action="store_true", help="only the FLOP table (no timing)")
    p.add_argument("--no-objectives", action="store_true",
                   help="skip the objective table (wta/softmin with low-rank samples, assign vs the official "
                        "objective)")
    p.add_argument("--images", type=int, default=14,
                   help="`assign` rows: the reference set's size N (prompt k belongs to image k mod N; toy sets 12–14, "
                        "the paper 5–20; default 14)")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.steps = args.steps or (3 if cpu else 10)
    args.unet_width = args.unet_width or (64 if cpu else 320)
    args.text_width = args.text_width or (192 if cpu else 1024)
    args.vae_width = args.vae_width or (32 if cpu else 128)
    args.resolution = args.resolution or (256 if args.backbone == "mvdream" else 768)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(worker(args)))
        return 0

    if args.flops_only:
        print_flops(args)
        return 0
    rows = {}
    variants = ["official", "ours"] + ([] if args.no_objectives else
                                       [v for v in OUR_VARIANTS if v != "ours"] + ["assign-every-row"])
    for variant in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
            ("device", "dtype", "backbone", "steps", "unet_width", "text_width", "vae_width", "resolution",
             "channels_last", "images")]
        if args.threads:
            cmd.append(f"--threads={args.threads}")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        rows[variant] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {variant}: {rows[variant]['sec']:.2f} s/step", file=sys.stderr)

    off, ours = rows["official"], rows["ours"]
    rel = abs(off["first_loss"] - ours["first_loss"]) / abs(off["first_loss"])
    if cpu:
        dev = f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    else:
        dev = torch.cuda.get_device_name()
    pr = ours["params"]
    print(f"DreamDistribution learning step, {args.backbone} {args.resolution} px, B={B} K={K} R={R} n_ctx={N_CTX}, "
          f"{args.dtype}; {dev}; torch {torch.__version__}")
    print(f"widths: UNet model_channels {args.unet_width} ({pr['unet'] / 1e6:.1f} M), text {args.text_width} × 23 "
          "layers "
          f"({pr['text'] / 1e6:.1f} M), VAE encoder {args.vae_width} ({pr['vae_encoder'] / 1e6:.1f} M); "
          f"channels-last {args.channels_last} (both); {args.steps} timed steps after 1 warm-up")
    print(f"check: first-step loss official {off['first_loss']:.6f}, ours {ours['first_loss']:.6f} (rel diff "
          f"{rel:.1e})")
    mem = "peak CUDA alloc MiB" if not cpu else "peak RSS MiB (Δ in steps)"
    print(f"| step | wall s/step | CPU s/step | steps/s (CPU time) | {mem} | one-off setup s |")
    print("|---|---|---|---|---|---|")
    for name, r in (("official-equivalent (B·K text, VAE every step)", off), ("ours (K text once, cached latents)",
                                                                              ours)):
        m = f"{r['peak_mb']:.0f}" + ("" if not cpu else f" (+{r['growth_mb']:.0f})")
        print(f"| {name} | {r['sec']:.2f} | {r['cpu_sec']:.2f} | {1 / r['cpu_sec']:.3f} | {m} | {r['setup']:.2f} |")
    print(f"speed-up ours/official: wall {off['sec'] / ours['sec']:.2f}×, process CPU time "
          f"{off['cpu_sec'] / ours['cpu_sec']:.2f}×; peak memory official/ours: "
          f"{off['peak_mb'] / ours['peak_mb']:.2f}×")
    if not args.no_objectives:
        print()
        print("Objective cost, relative to our step with the official objective (B·R UNet rows; `assign` runs the "
              f"distinct image-prompt rows, {mean_distinct_rows(args.steps, args.images):.1f} of {B * R} per step on "
              f"average with N = {args.images} images; goal ≤ 1.3×):")
        print("| objective + covariance | wall s/step | CPU s/step | CPU time vs ours |")
        print("|---|---|---|---|")
        every = rows["assign-every-row"]
        for label, r in [(" + ".join(OUR_VARIANTS[v]), rows[v]) for v in OUR_VARIANTS] + [
                ("assign + lowrank as before: every sample its own row, all K prompts' 77 states", every)]:
            print(f"| {label} | {r['sec']:.2f} | {r['cpu_sec']:.2f} | {r['cpu_sec'] / ours['cpu_sec']:.2f}× |")
        mine = rows["ours-assign"]
        rel_a = abs(every["first_loss"] - mine["first_loss"]) / abs(every["first_loss"])
        print(f"assign, distinct rows / every row: {every['sec'] / mine['sec']:.2f}× wall, "
              f"{every['cpu_sec'] / mine['cpu_sec']:.2f}× CPU time; first-step loss {mine['first_loss']:.6f} vs "
              f"{every['first_loss']:.6f} (rel diff {rel_a:.1e})")
    print()
    print_flops(args)
    return 0


def print_flops(args) -> None:
    tf = lambda v: f"{v / 1e12:.3f} T"  # noqa: E731
    counts = {real: count_flops(args, real) for real in (False, True)}
    label = lambda real: ("real: " if real else "benchmarked: ") + counts[real]["widths"]  # noqa: E731
    print("FLOPs per step (matmul/conv, fwd + the backward the step needs; torch FlopCounterMode on the meta device):")
    print("| widths | text K | text B·K | UNet B·R rows | VAE encode B | official | ours | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for real, f in counts.items():
        print(f"| {label(real)} | {tf(f['text_K'])} | {tf(f['text_BK'])} | {tf(f['unet'])} | {tf(f['vae'])} | "
              f"{tf(f['official'])} | {tf(f['ours'])} | {f['official'] / f['ours']:.2f}× |")
    print()
    print(f"`assign`, N = {args.images} images: the step as it was (K prompts whole, B·R rows) against ours (K prompts "
          "up to their EOS, the drawn ones whole, the distinct rows; 200 steps' draws):")
    print("| widths | text K to EOS | distinct rows / step | as before | ours | ratio |")
    print("|---|---|---|---|---|---|")
    for real, f in counts.items():
        print(f"| {label(real)} | {tf(f['text_K_eos'])} | {f['assign_rows']:.1f} | {tf(f['assign_before'])} | "
              f"{tf(f['assign_ours'])} | {f['assign_before'] / f['assign_ours']:.2f}× |")


if __name__ == "__main__":
    raise SystemExit(main())
