"""The threestudio extension's code paths, run in a second interpreter with threestudio's pinned packages.

`tests/test_threestudio_pins.py` runs this file with the python named by DREAMDIST3D_PINS_PYTHON (diffusers 0.19.3,
transformers 4.28.1, huggingface_hub < 0.26, torch, and dreamdist3d installed with --no-deps):

    python tests/threestudio_pins_check.py WORKDIR

WORKDIR holds what the main environment (current diffusers/transformers) made: `mv/tiny-mvdream.pt` and
`mv/tiny-dist.safetensors` (write_tiny_assets), `sd21new/` (tiny_sd21_folder, saved by transformers 5.x) and
`sd21new-dist.safetensors`. Here, with the old packages, it makes its own tiny MVDream checkpoint (the VAE converter)
and SD 2.1 folder + distribution (`old/`), loads custom/threestudio-dreamdistribution through the threestudio
stand-in, builds the prompt processor for every (text encoder, distribution) pair and from the example yaml, checks
shapes, resume and refusals, and writes the embeddings to WORKDIR/pins-out.safetensors (+ pins-out.json) for the
test to compare with the main environment's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# (case, config of the processor, relative to WORKDIR) — shared with the test, which recomputes them in the main env
CASES = {
    "mv": {"distribution": "mv/tiny-dist.safetensors", "text_encoder_path": "mv/tiny-mvdream.pt", "seed": 3,
           "scale": 1.5, "negative_prompt": "ugly"},
    "sd21new": {"distribution": "sd21new-dist.safetensors", "pretrained_model_name_or_path": "sd21new", "seed": 2,
                "negative_prompt": "blurry", "view_dependent_prompting": True},
    "sd21old": {"distribution": "old/sd21-dist.safetensors", "pretrained_model_name_or_path": "old/sd21", "seed": 1,
                "suffix": "in the snow"},
}


def case_config(name: str, work: Path) -> dict:
    cfg = dict(CASES[name])
    for key in ("distribution", "text_encoder_path", "pretrained_model_name_or_path"):
        if key in cfg:
            cfg[key] = str(work / cfg[key])
    return cfg


def tiny_distribution(source, path, seed: int = 0) -> Path:
    """A distribution 'learned' against the text encoder of `source` (random wide context vectors, as
    write_tiny_assets makes), saved at `path`."""
    from dreamdist3d.backbones.load import load_text_side
    from dreamdist3d.distribution import PromptDistribution, PromptLearner

    tok, enc = load_text_side(str(source))
    learner = PromptLearner(enc, tok, n_ctx=4, n_prompts=6, prefix="a photo of",
                            generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        learner.ctx.mul_(20.0)
    PromptDistribution.from_learner(learner, backbone=f"tiny sd21 {source}", source="tests").save(path)
    return Path(path)


def main(work: Path) -> None:
    torch.set_num_threads(1)
    import diffusers
    import huggingface_hub
    import transformers

    sys.path.insert(0, str(HERE))
    from threestudio_standin import EXTENSION, fake_threestudio, install, load_config, load_custom_module

    from dreamdist3d.backbones.load import load_text_side
    from dreamdist3d.backbones.mvdream import load_mvdream
    from dreamdist3d.backbones.sd21 import load_sd21
    from dreamdist3d.testing.checkpoints import tiny_sd21_folder, write_tiny_mvdream_checkpoint

    report = {"versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "huggingface_hub": huggingface_hub.__version__},
              "shapes": {}}
    print("versions:", report["versions"], flush=True)

    # 1. assets written and read with the old packages
    old = work / "old"
    ckpt = old / "tiny-mvdream.pt"
    write_tiny_mvdream_checkpoint(ckpt, seed=5)
    bb = load_mvdream(ckpt)  # UNet, the LDM->diffusers VAE converter, the OpenCLIP text tower
    tok, enc = load_text_side(str(ckpt))
    ids = tok(["a photo of a cat"])
    with torch.no_grad():
        assert torch.equal(bb.text_encoder.encode_ids(ids), enc.encode_ids(ids)), (
            "load_text_side != load_mvdream text side")
        z = bb.encode_images(torch.zeros(1, 3, bb.resolution, bb.resolution))
    report["shapes"]["old_mvdream_latent"] = list(z.shape)
    tiny_sd21_folder(old / "sd21", seed=3)
    sd = load_sd21(old / "sd21")
    report["shapes"]["old_sd21_resolution"] = sd.resolution
    tiny_distribution(old / "sd21", old / "sd21-dist.safetensors", seed=3)

    # 2. the extension, loaded as threestudio's launch.py does, through the stand-in
    install(fake_threestudio())
    load_custom_module(EXTENSION)
    import threestudio

    cls = threestudio.find("dreamdistribution-prompt-processor")
    base = sys.modules["threestudio.models.prompt_processors.base"]
    tensors = {}
    elev, azi, dist = torch.tensor([10.0, 70.0, 0.0, 0.0]), torch.tensor([180.0, 0.0, 90.0, 0.0]), torch.ones(4)
    for name in CASES:
        cfg = {**case_config(name, work), "sample_path": str(work / "samples" / f"{name}.safetensors")}
        out = cls(cfg)()
        assert isinstance(out, base.PromptProcessorOutput), type(out)
        d = out.text_embeddings.shape[-1]
        assert out.text_embeddings.shape == (1, 77, d) and out.uncond_text_embeddings.shape == (1, 77, d)
        assert out.text_embeddings_vd.shape == (4, 77, d) and out.text_embeddings.dtype == torch.float32
        vd = bool(cfg.get("view_dependent_prompting"))
        emb = out.get_text_embeddings(elev, azi, dist, view_dependent_prompting=vd)
        assert emb.shape == (8, 77, d), emb.shape
        tensors[f"{name}.text"] = out.text_embeddings
        tensors[f"{name}.uncond"] = out.uncond_text_embeddings
        tensors[f"{name}.guidance"] = emb
        if vd:
            tensors[f"{name}.vd"] = out.text_embeddings_vd
        again = cls(cfg)()  # resumed: the saved sample is read back
        assert torch.equal(again.text_embeddings, out.text_embeddings)
        try:
            cls({**cfg, "seed": cfg["seed"] + 1})
        except ValueError as e:
            assert "seed" in str(e), e
        else:
            raise AssertionError("a changed seed with the same sample file was not refused")
        report["shapes"][name] = list(emb.shape)

    # 3. the example yaml as launch.py reads it (omegaconf as threestudio pins it)
    yaml = EXTENSION / "configs" / "dreamdistribution-mvdream-sd21.yaml"
    mv = case_config("mv", work)
    cfg = load_config(str(yaml), cli_args=[f"exp_root_dir={work / 'outputs'}",
                                           f"system.prompt_processor.distribution={mv['distribution']}",
                                           f"system.guidance.ckpt_path={mv['text_encoder_path']}", "seed=3",
                                           "system.prompt_processor.scale=1.5",
                                           "system.prompt_processor.negative_prompt=ugly"],
                      n_gpus=1)
    pp = cfg.system.prompt_processor
    assert cfg.tag == "tiny-dist-seed3" and pp.sample_path == f"{cfg.trial_dir}/prompt_sample.safetensors", (
        cfg.tag, pp.sample_path)
    out = cls(pp)()
    assert Path(pp.sample_path).is_file()
    assert torch.equal(out.text_embeddings, tensors["mv.text"]), (
        "the yaml's processor differs from the same settings given directly")
    # what is unset is named, the checkpoint first (the processor reads its text encoder from it too)
    for args, expected in (([], "system.guidance.ckpt_path is not set"),
                           ([f"system.guidance.ckpt_path={mv['text_encoder_path']}"],
                            "system.prompt_processor.distribution is not set")):
        try:
            load_config(str(yaml), cli_args=[f"exp_root_dir={work / 'outputs'}", *args], n_gpus=1)
        except Exception as e:  # omegaconf wraps the resolver's error
            assert expected in str(e), e
        else:
            raise AssertionError(f"the yaml with {args} was accepted")

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(work / "pins-out.safetensors"))
    (work / "pins-out.json").write_text(json.dumps(report, indent=1))
    print("ok:", json.dumps(report["shapes"]), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
