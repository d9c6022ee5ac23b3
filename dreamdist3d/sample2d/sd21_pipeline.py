"""Stable Diffusion 2.1 pipeline loading for `dreamdist3d.sample2d.sd21`: `--device` / `--dtype` resolution, the
local diffusers folder check (`check_sd21_folder`), the pipeline itself (`load_sd21_pipeline`: no hub, no safety
checker, optional scheduler swap and memory savers), our tokenizer for the folder (`tokenizer_for`), and running the
text encoder in float32."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import torch

from dreamdist3d.hf_loading import quiet_hf_loading
from dreamdist3d.text import ClipTokenizer

PathLike = Union[str, Path]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}


# ---------------------------------------------------------------------------------------------- device and dtype
def resolve_device(name: Optional[str] = "auto") -> torch.device:
    """`--device`: "auto" → cuda when this torch sees a GPU, else cpu (`dreamdist3d.runs.pick_device`)."""
    from dreamdist3d.runs import pick_device

    return pick_device(name, key="--device")


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    """"auto" → fp16 on CUDA, fp32 elsewhere; else one of fp32, fp16, bf16."""
    if name in (None, "", "auto"):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------------------------- loading
def check_sd21_folder(folder: PathLike, config_key: str = "--sd21") -> Path:
    """The folder, after checking it is a complete local diffusers SD 2.1 folder (error names what is missing)."""
    from dreamdist3d.backbones.sd21 import SUBFOLDERS, _check_folder

    folder = Path(folder)
    _check_folder(folder, config_key)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder / 'model_index.json'} not found (set by {config_key}): a diffusers pipeline folder has "
            f"model_index.json beside {', '.join(s + '/' for s in SUBFOLDERS)}"
        )
    return folder


def load_sd21_pipeline(
    folder: PathLike,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    scheduler: Optional[str] = None,
    attention_slicing: bool = False,
    vae_tiling: bool = False,
):
    """diffusers `StableDiffusionPipeline` from a local folder (no hub, no safety checker), on `device` in `dtype`.

    `scheduler` (ddim, pndm, euler, euler-a, dpm++) replaces the folder's scheduler, built from its config.
    `attention_slicing` / `vae_tiling` turn on diffusers' memory savers for small GPUs."""
    folder = check_sd21_folder(folder)
    with quiet_hf_loading():  # the import too: transformers asks for torchvision there, which we never install
        import diffusers
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), local_files_only=True, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    if scheduler:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)} (or leave it out for "
                             "the folder's)")
        pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    return pipe


def tokenizer_for(folder: PathLike) -> Tuple[ClipTokenizer, str]:
    """Our tokenizer from the folder's `tokenizer/` (vocab.json + merges.txt); folders saved by transformers 5 keep
    only tokenizer.json, then the packaged CLIP BPE (the same vocabulary as SD 2.1's) is used. Returns (tok, source)."""
    sub = Path(folder) / "tokenizer"
    if (sub / "vocab.json").is_file() and (sub / "merges.txt").is_file():
        return ClipTokenizer.from_folder(sub), str(sub)
    return ClipTokenizer.default(), "packaged CLIP BPE (no vocab.json/merges.txt in the folder)"


@contextlib.contextmanager
def float32_weights(module: torch.nn.Module) -> Iterator[None]:
    """Run `module` in float32 inside the block; half weights go up and back down exactly (fp16/bf16 ⊂ fp32)."""
    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        yield
        return
    module.to(torch.float32)
    try:
        yield
    finally:
        module.to(dtype)


def attention_sliced(pipe) -> bool:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    try:
        return any(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
    except Exception:  # pragma: no cover - processors API changed
        return False
