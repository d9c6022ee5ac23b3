"""Seconds per 3D object: the feed-forward lift (`--lift lgm`: 4-view sample -> reconstructor -> Gaussians ->
turntable, meshes) against a text-to-3D run of the same prompt sample (the config's SDS, anchored or not), measured in
the same run on the same seeds.

    python benchmarks/lift.py [--threads 1]                           # the toy world (toy backbone, toy reconstructor)
    python benchmarks/lift.py --config configs/dreamdist-mvdream.yaml --mvdream sd-v2.1-base-4view.pt \\
        --lgm model_fp16_fixrot.safetensors --device cuda [--sds-steps 1000] [--caption "a DSLR photo of a toy robot"]

Each object is one seed of a caption made a K=1 distribution (`PromptDistribution.from_caption`: every prompt sample
is the caption, so no learned file is needed). Per seed: `recipes.reconstruct.lift_lgm` (its stages: prompt sample,
the 4-view sample, reconstruction, meshes (with `--meshes`), the turntable of `--views` views) and
`recipes.lift3d.run_3d` with `--sds-steps` steps (default: the config's; the real config's 10,000 steps take most of
an hour on a GPU, so give a smaller number there and read the table as a lower bound of the SDS side). The loaded
backbone and reconstructor are shared; model loading is not timed; the first seed of each side is a warm-up, not in
the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamdist3d.distribution import PromptDistribution  # noqa: E402
from dreamdist3d.recipes.lift3d import load_config, load_guidance_backbone, run_3d  # noqa: E402
from dreamdist3d.recipes.reconstruct import lift_lgm  # noqa: E402
from dreamdist3d.runs import pick_device  # noqa: E402

TOY_CONFIG = "configs/toy/toy-3d.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=TOY_CONFIG, help=f"3D config (default {TOY_CONFIG})")
    p.add_argument("--mvdream", default=None, help="MVDream checkpoint (real config; sets system.guidance.*)")
    p.add_argument("--lgm", default=None, help="reconstructor (default: the config's system.anchor.reconstructor)")
    p.add_argument("--caption", default="a small red cone with a yellow ball on top",
                   help="the caption of every object (a K=1 distribution)")
    p.add_argument("--seeds", type=int, default=3, help="objects per side, after one warm-up (default 3)")
    p.add_argument("--views", type=int, default=120, help="turntable views of both sides (default 120)")
    p.add_argument("--sds-steps", type=int, default=None, help="steps of the SDS side (default: the config's)")
    p.add_argument("--meshes", action="store_true", help="the feed-forward side also writes its meshes")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, key="--device")
    flags = [*([f"system.guidance.pretrained_model_name_or_path={args.mvdream}"] if args.mvdream else []),
             *([f"system.anchor.reconstructor={args.lgm}"] if args.lgm else [])]
    with tempfile.TemporaryDirectory() as tmp:
        base = ["system.prompt_processor.distribution=x.safetensors", *flags]
        cfg = load_config(args.config, base, make_dirs=False)
        backbone = load_guidance_backbone(args.config, base, device=device)
        dist = Path(tmp) / "caption.safetensors"
        PromptDistribution.from_caption(args.caption, backbone.text_encoder, backbone.tokenizer,
                                        backbone=backbone.name).save(dist)

        def settings(seed: int, side: str):
            return [f"system.prompt_processor.distribution={dist}", f"seed={seed}", f"exp_root_dir={tmp}",
                    f"name={side}", f"tag=seed{seed}", "use_timestamp=false", f"data.n_test_views={args.views}",
                    "trainer.enable_progress_bar=false", "trainer.val_check_interval=0", *flags,
                    *([f"trainer.max_steps={args.sds_steps}"] if args.sds_steps else [])]

        ff, sds = [], []
        for seed in range(args.seeds + 1):
            res = lift_lgm(args.config, backbone, overrides=settings(seed, "lgm"), device=str(device),
                           formats="glb,obj,ply" if args.meshes else "")
            ff.append(res.seconds)
            t0 = time.perf_counter()
            run_3d(args.config, backbone=backbone, mode="train", overrides=settings(seed, "sds"), device=str(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            sds.append(time.perf_counter() - t0)
    ff, sds = ff[1:], sds[1:]
    steps = args.sds_steps or cfg.trainer.get("max_steps")
    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    print(f"3D objects of '{args.caption}', {args.config}, {dev}, torch {torch.__version__}; {args.seeds} seeds after "
          f"a warm-up, {args.views}-view turntables{', meshes' if args.meshes else ''}")
    print("| lift | stage | s/object (mean ± sd) |")
    print("|---|---|---|")
    for stage in ff[0]:
        vals = [s[stage] for s in ff]
        print(f"| feed-forward (lgm) | {stage} | {statistics.fmean(vals):.2f} ± {statistics.pstdev(vals):.2f} |")
    print(f"| text-to-3D run ({steps} steps) | total | {statistics.fmean(sds):.2f} ± {statistics.pstdev(sds):.2f} |")
    ratio = statistics.fmean(sds) / statistics.fmean(s["total"] for s in ff)
    print(f"run / feed-forward: {ratio:.1f}×; feed-forward objects per hour: "
          f"{3600 / statistics.fmean(s['total'] for s in ff):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
