"""One MVDream SDS training step of the 3D runner: seconds per step and peak memory, ours vs a plain-MLP NeRF.

    python benchmarks/sds_step.py [--device cpu|cuda] [--res 64 256] [--steps N] [--width-scale S]
                                  [--samples-per-ray N] [--threads T] [--json FILE]

Workload: exactly `MVDreamSystem.training_step` + backward + AdamW step of configs/dreamdist-mvdream.yaml (no
shading): a batch of 4 views (one object, n_view 4) rendered at res² with `nerf-volume-renderer`, the guidance
resizing to 256², encoding through the SD VAE with gradient, the multi-view UNet on [cond, uncond] × 4 views
(8 rows of 4×32×32 latents), CFG 50, recon loss with std rescale 0.5, then backward into the field and one AdamW
step with threestudio's parameter groups. Random weights everywhere (no checkpoint); the prompt embeddings are
random (1, 77, 1024) tensors. One warm-up step, then `--steps` timed steps (occupancy grid refreshed every 16 steps
as in training, so the timed steps are ordinary ones).

Fields compared in the same run:
- ours: `implicit-volume` (pure-torch multi-resolution hash grid, threestudio's 16 levels × 2 features, 2^19
  table) + `nerf-volume-renderer` with the pure-torch 32³ occupancy grid and α/transmittance pruning (threestudio's
  defaults);
- baseline: a plain NeRF MLP — the same `implicit-volume` with a `Frequency` encoding (6 octaves) and a 4×64 ReLU
  MLP, rendered with dense stratified samples (no occupancy grid, no pruning), i.e. what a pure-PyTorch NeRF does
  without an acceleration structure.

Sizes: on CUDA the real ones (UNet model_channels 320, SD VAE, 512 samples per ray). On CPU ("reduced") the UNet and
VAE widths are scaled by `--width-scale` (default 0.2: model_channels 64, VAE channels ×1/4) and both fields use 64
samples per ray, so a step takes seconds; depths, resolutions and token counts stay real.

Peak memory: CUDA — `torch.cuda.max_memory_allocated()` over the timed steps (weights included: what the step
needs). CPU — every case runs in a fresh subprocess that reports its peak resident set (`ru_maxrss`) growth from
just before the warm-up, so one case's peak never hides another's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIELDS = ("hashgrid", "mlp")
FIELD_NAMES = {"hashgrid": "ours: hash grid + occupancy grid", "mlp": "baseline: plain MLP, dense samples"}


def _unet_config(width_scale: float) -> dict:
    from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG

    cfg = dict(MVDREAM_SD21_CONFIG)
    if width_scale < 1:
        cfg["model_channels"] = max(64, int(round(320 * width_scale / 64)) * 64)
    return cfg


def _vae_config(width_scale: float) -> dict:
    from dreamdist3d.backbones.mvdream import SD21_VAE_CONFIG

    cfg = dict(SD21_VAE_CONFIG)
    if width_scale < 1:
        cfg["block_out_channels"] = [max(32, c // 4) for c in SD21_VAE_CONFIG["block_out_channels"]]
    return cfg


def build_backbone(width_scale: float, device: torch.device):
    from dreamdist3d.backbones.base import Backbone
    from dreamdist3d.backbones.multiview_unet import MultiViewUNet
    from dreamdist3d.backbones.schedule import NoiseSchedule
    from dreamdist3d.backbones.vae import build_vae

    g = torch.Generator().manual_seed(0)
    unet = MultiViewUNet(**_unet_config(width_scale))
    vae = build_vae(_vae_config(width_scale))
    with torch.no_grad():  # random, non-trivial weights (the zero-initialised output layers included)
        for m in (unet, vae):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5 if p.ndim > 1 else 0.02))
    return Backbone(name="mvdream-random", tokenizer=None, text_encoder=None, unet=unet,
                    schedule=NoiseSchedule.scaled_linear("epsilon", style="ldm"), resolution=256, vae=vae,
                    supports_camera=True)


class RandomPrompt:
    def __init__(self, device):
        g = torch.Generator().manual_seed(1)
        self.cond = torch.randn(1, 77, 1024, generator=g).to(device)
        self.uncond = torch.randn(1, 77, 1024, generator=g).to(device)

    def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
        B = elevation.shape[0]
        return torch.cat([self.cond.expand(B, -1, -1), self.uncond.expand(B, -1, -1)])


def system_config(field: str, samples: int) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                             "dreamdist-mvdream.yaml")))
    sys_cfg = cfg["system"]
    sys_cfg["renderer"] = {"radius": 1.0, "num_samples_per_ray": samples}
    sys_cfg["geometry"]["pos_encoding_config"]["backend"] = "torch"
    if field == "mlp":
        sys_cfg["geometry"]["pos_encoding_config"] = {"otype": "Frequency", "n_frequencies": 6}
        sys_cfg["geometry"]["mlp_network_config"] = {"otype": "VanillaMLP", "activation": "ReLU",
                                                     "output_activation": "none",
                                                     "n_neurons": 64, "n_hidden_layers": 4}
        sys_cfg["renderer"].update(grid_prune=False, prune_alpha_threshold=False)
        sys_cfg["optimizer"]["params"]["geometry.encoding"] = {"lr": 0.01}  # (no parameters: kept for the same groups)
    sys_cfg["prompt_processor"] = {}  # not built: random prompt embeddings stand in for the sample
    sys_cfg["guidance"] = {"pretrained_model_name_or_path": "<random>", "guidance_scale": 50.0,
                           "min_step_percent": 0.02,
                           "max_step_percent": 0.98, "recon_loss": True, "recon_std_rescale": 0.5}
    return cfg


def dense_mlp_bytes(res: int, samples: int, views: int = 4) -> float:
    """Activation memory the dense baseline keeps for backward: every sample through two 4×64 MLPs (+ encodings)."""
    per_sample = 4 * (2 * 5 * 64 + 36 + 3 * 16)  # float32: hidden activations of both MLPs, encoding, misc
    return views * res * res * samples * per_sample


def run_case(res: int, field: str, args) -> dict:
    from dreamdist3d.lift3d.data import RandomMultiviewCameraDataModule
    from dreamdist3d.lift3d.guidance import MultiviewDiffusionGuidance
    from dreamdist3d.lift3d.system import MVDreamSystem

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = system_config(field, args.samples_per_ray)
    data = dict(cfg["data"], batch_size=4, width=res, height=res, resolution_milestones=[])
    dm = RandomMultiviewCameraDataModule(data, where="data")
    system = MVDreamSystem(cfg["system"], device=device, build_guidance=False)
    backbone = build_backbone(args.width_scale, device)
    system.guidance = MultiviewDiffusionGuidance(cfg["system"]["guidance"], backbone=backbone, device=device,
                                                 where="system.guidance")
    system.prompt_utils = RandomPrompt(device)
    optim, _ = system.configure_optimizers()
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    system.train()
    n_params = sum(p.numel() for p in system.parameters())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(i):
        system.do_update_step(0, 100 + i)
        dm.do_update_step(0, 100 + i)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in dm.train_batch().items()}
        sync()
        t0 = time.perf_counter()
        ctx = amp if amp is not None else torch.autocast("cpu", enabled=False)
        with ctx:
            out = system(batch)
            sync()
            t1 = time.perf_counter()
            g = system.guidance(out["comp_rgb"], system.prompt_utils, **batch)
            sync()
            t2 = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(g["loss_sds"]).backward()
            scaler.step(optim)
            scaler.update()
        else:
            g["loss_sds"].backward()
            optim.step()
        sync()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    system.do_update_step(0, 0)  # occupancy grid from the blob at step 0, as in training
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(0)  # warm-up
    times = [step(i + 1) for i in range(args.steps)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    tot = [sum(t) for t in times]
    return {
        "res": res, "field": field, "s_per_step": sum(tot) / len(tot),
        "render_s": sum(t[0] for t in times) / len(times), "guidance_s": sum(t[1] for t in times) / len(times),
        "backward_s": sum(t[2] for t in times) / len(times), "peak_mib": peak, "field_params": n_params,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--res", type=int, nargs="+", default=[64, 256])
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=FIELDS)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--width-scale", type=float, default=None,
                   help="UNet/VAE width scale (default 1 on CUDA, 0.2 on CPU)")
    p.add_argument("--samples-per-ray", type=int, default=None, help="default 512 on CUDA, 64 on CPU")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--max-baseline-gib", type=float, default=None,
                   help="skip a dense-MLP case whose activations alone exceed this (default 8 on CPU, none on CUDA)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "res,field" in a child process
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (20 if cuda else 2)
    args.width_scale = args.width_scale if args.width_scale is not None else (1.0 if cuda else 0.2)
    args.samples_per_ray = args.samples_per_ray or (512 if cuda else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        res, field = args.case.split(",")
        print("RESULT " + json.dumps(run_case(int(res), field, args)), flush=True)
        return 0
    results = []
    limit = args.max_baseline_gib if args.max_baseline_gib is not None else (None if cuda else 8.0)
    for res in args.res:
        for field in args.fields:
            need = dense_mlp_bytes(res, args.samples_per_ray) / 2**30
            if field == "mlp" and limit is not None and need > limit:
                results.append({"res": res, "field": field,
                                "skipped": f"not run: needs ≥ {need:.0f} GiB of activations"})
                print(f"  skipped: {res}² {field} (≥ {need:.0f} GiB)", file=sys.stderr, flush=True)
                continue
            try:
                if cuda:
                    results.append(run_case(res, field, args))
                    torch.cuda.empty_cache()
                else:  # a fresh process per case: clean peak-RSS numbers
                    cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{res},{field}", "--device",
                           args.device,
                           "--steps", str(args.steps), "--width-scale", str(args.width_scale),
                           "--samples-per-ray",
                           str(args.samples_per_ray)] + (["--threads", str(args.threads)] if args.threads else [])
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                    if out.returncode != 0 or not line:
                        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                        return 1
                    results.append(json.loads(line[0][len("RESULT "):]))
            except torch.cuda.OutOfMemoryError as e:  # report and go on with the other cases
                torch.cuda.empty_cache()
                results.append({"res": res, "field": field,
                                "skipped": f"CUDA out of memory ({str(e).splitlines()[0][:80]})"})
                continue
            r = results[-1]
            print(f"  done: {res}² {field}: {r['s_per_step']:.3f} s/step", file=sys.stderr, flush=True)
    threads = torch.get_num_threads() if not args.threads else args.threads
    dev = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {threads} torch threads)"
    print(f"SDS step, {dev}, torch {torch.__version__}, {platform.machine()}")
    print(f"UNet width-scale {args.width_scale} (model_channels {_unet_config(args.width_scale)['model_channels']}), "
          f"batch 4 views → 8 UNet rows of 4×32×32, {args.samples_per_ray} samples/ray, {args.steps} timed steps after "
          "1 warm-up")
    print("| render | field | s/step | render s | guidance s | backward+step s | peak MiB | time baseline/ours | mem "
          "baseline/ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in args.res:
        rows = {r["field"]: r for r in results if r["res"] == res}
        base = rows.get("mlp")
        for field in args.fields:
            r = rows[field]
            if "skipped" in r:
                print(f"| 4×{res}² | {FIELD_NAMES[field]} | {r['skipped']} | | | | | | |")
                continue
            ok = base is not None and "skipped" not in base
            tr = f"{base['s_per_step'] / r['s_per_step']:.2f}×" if ok else "-"
            mr = f"{base['peak_mib'] / max(r['peak_mib'], 1e-9):.2f}×" if ok else "-"
            print(f"| 4×{res}² | {FIELD_NAMES[field]} | {r['s_per_step']:.3f} | {r['render_s']:.3f} | "
                  f"{r['guidance_s']:.3f} | "
                  f"{r['backward_s']:.3f} | {r['peak_mib']:.0f} | {tr} | {mr} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
