"""The one DDIM sampler (η = 0, classifier-free guidance), for every `Backbone`: MVDream 4-view previews
(`sample2d.mvdream_preview.sample_views`), learning previews (`learn.preview`) and the toy sampler
(`backbones.toy.sample_toy`) all call `ddim_sample`.

It is MVDream's sampler (`t2i.py` + LDM `DDIMSampler`) written for any schedule and prediction type:
- timesteps `range(0, T, T // S) + 1`, descending (981, 961, …, 1 for S = 50 of T = 1000): LDM's
  `make_ddim_timesteps("uniform")`, diffusers' `DDIMScheduler` with `timestep_spacing="leading"`, `steps_offset=1`;
- the ᾱ of the step after the last one is ᾱ_0 (`set_alpha_to_one=False`), ᾱ read from the backbone's own schedule;
- guidance batch `[uncond, cond]` (MVDream's order), camera rows passed to both halves, output
  `uncond + cfg·(cond − uncond)` in the model's own output space (ε or v);
- a step is x0 = `schedule.predict_x0`, ε = `schedule.predict_eps`, x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev)·ε,
  in float32 with float32 ᾱ: the same operations, in the same order, as diffusers' `DDIMScheduler.step(eta=0)`
  (`make_ddim_scheduler` builds that scheduler; tests compare the two). With `clip_x0`, x0 is clamped to [-1, 1] and
  ε recomputed from the clamped x0 (diffusers' `clip_sample` + `use_clipped_model_output`), as pixel-space samplers do;
- initial noise (n·F, C, h, w) float32 from a CPU generator (`torch.Generator().manual_seed(seed)`, or the
  `generator` given), drawn at once for all samples and then cut into batches of `max_batch` samples, so the
  result does not depend on the batch size (beyond float rounding) nor on the device. With `noise_seeds` (one per
  sample) sample j's noise (F, C, h, w) comes from its own generator seeded `noise_seeds[j]`, so a sample's images
  do not depend on which other samples share the call (the previews' rule: `sample2d.mvdream_preview`); for n = 1
  `noise_seeds=[s]` and `seed=s` draw the same numbers.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.schedule import NoiseSchedule


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """(steps,) int64 descending DDIM timesteps: 981, 961, …, 1 for 50 steps of 1000; 751, 501, 251, 1 for 4."""
    T = int(num_train_timesteps)
    if not 1 <= steps <= T:
        raise ValueError(f"DDIM steps must be in 1..{T}, got {steps}")
    ts = torch.arange(0, T, T // steps, dtype=torch.int64)[:steps] + 1
    return ts.clamp(max=T - 1).flip(0)  # clamp: steps == T would otherwise ask for timestep T


def ddim_step(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    model_out: torch.Tensor,
    t: int,
    t_prev: Optional[int],
    clip_x0: bool = False,
) -> torch.Tensor:
    """One η = 0 DDIM step from timestep `t` to `t_prev` (None: past the last step, ᾱ_prev = ᾱ_0). float32."""
    ac = schedule.alphas_cumprod
    t_b = torch.full((x.shape[0],), int(t), dtype=torch.long)
    x0 = schedule.predict_x0(x, model_out, t_b)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        a_t = ac[int(t)].to(x.device)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    else:
        eps = schedule.predict_eps(x, model_out, t_b)
    a_prev = ac[int(t_prev) if t_prev is not None else 0].to(x.device)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


@torch.no_grad()
def ddim_sample(
    backbone: Backbone,
    context: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = 50,
    cfg: float = 7.5,
    camera: Optional[torch.Tensor] = None,
    num_frames: int = 1,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    noise_seeds: Optional[Sequence[int]] = None,
    clip_x0: bool = False,
    max_batch: Optional[int] = None,
    return_latents: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """n samples of F = `num_frames` views for conditioning `context` (n,77,D) and negative `uncond` (77,D)|(1,77,D).

    camera: (F, 16) cameras of the F views (one set, repeated for every sample), or None (no camera input).
    Noise from `noise_seeds` (one CPU generator per sample) if given, else from `generator`, else from a CPU
    generator seeded with `seed`. `max_batch` samples per UNet call
    (2·F·max_batch rows; None: all at once). Returns images (n, F, 3, H, W) float32 in [0, 1] on CPU, decoded per
    batch, or with `return_latents` the final latents (n, F, C, h, w) float32 on CPU."""
    if context.ndim != 3:
        raise ValueError(f"context must be (n, 77, D), got {tuple(context.shape)}")
    n, F = context.shape[0], int(num_frames)
    device, dtype = backbone.device, backbone.text_encoder.dtype
    schedule = backbone.schedule
    if camera is not None:
        camera = camera.reshape(-1, camera.shape[-1])
        if camera.shape[0] != F:
            raise ValueError(f"camera must have num_frames={F} rows, got {camera.shape[0]}")
        camera = camera.to(device, dtype)
    c, s = backbone.latent_channels, backbone.latent_size
    if noise_seeds is not None:
        if len(noise_seeds) != n:
            raise ValueError(f"{len(noise_seeds)} noise seeds for {n} samples")
        noise = torch.cat([torch.randn((F, c, s, s), generator=torch.Generator().manual_seed(int(k)),
                                       dtype=torch.float32) for k in noise_seeds])
    else:
        g = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        noise = torch.randn((n * F, c, s, s), generator=g, dtype=torch.float32)
    ts = ddim_timesteps(schedule.num_train_timesteps, steps).tolist()
    uncond = uncond.reshape(1, *uncond.shape[-2:]).to(device, dtype)
    max_batch = n if not max_batch else int(max_batch)

    outs: List[torch.Tensor] = []
    for start in range(0, n, max_batch):
        b = min(max_batch, n - start)
        x = noise[start * F:(start + b) * F].to(device)
        cond = context[start:start + b].to(device, dtype).repeat_interleave(F, dim=0)  # (b·F, 77, D)
        ctx_in = torch.cat([uncond.expand_as(cond), cond])  # [uncond, cond]
        cam_in = None if camera is None else camera.repeat(2 * b, 1)
        iterator = ts
        if progress:
            from tqdm import tqdm

            iterator = tqdm(ts, desc=f"DDIM samples {start + 1}-{start + b}/{n}", leave=False)
        for i, t in enumerate(iterator):
            t_in = torch.full((2 * b * F,), int(t), device=device, dtype=torch.long)
            out = backbone(torch.cat([x, x]).to(dtype), t_in, ctx_in, camera=cam_in, num_frames=F).float()
            out_u, out_c = out.chunk(2)
            model_out = out_u + cfg * (out_c - out_u)
            x = ddim_step(schedule, x, model_out, t, ts[i + 1] if i + 1 < len(ts) else None, clip_x0=clip_x0)
        if return_latents:
            outs.append(x.cpu())
        else:
            img = backbone.decode_latents(x).float()
            outs.append(((img + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
    out = torch.cat(outs)
    return out.reshape(n, F, *out.shape[1:])


def make_ddim_scheduler(schedule: NoiseSchedule, steps: int):
    """diffusers' `DDIMScheduler` equal to `ddim_sample`'s steps (leading spacing, offset 1, ᾱ_prev(last) = ᾱ_0,
    the schedule's own ᾱ and prediction type), for parity checks against diffusers."""
    from diffusers import DDIMScheduler

    if steps < 1 or steps > schedule.num_train_timesteps:
        raise ValueError(f"steps must be in 1..{schedule.num_train_timesteps}, got {steps}")
    cfg = dict(schedule.diffusers_config())
    cfg.update(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    sched = DDIMScheduler(**cfg)
    sched.alphas_cumprod = schedule.alphas_cumprod.clone().float()  # the backbone's exact ᾱ (MVDream: float64-made)
    sched.final_alpha_cumprod = sched.alphas_cumprod[0]
    sched.set_timesteps(steps)
    return sched


__all__ = ["ddim_sample", "ddim_step", "ddim_timesteps", "make_ddim_scheduler"]
