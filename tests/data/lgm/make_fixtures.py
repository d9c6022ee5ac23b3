"""Make the LGM parity fixtures in this folder by running the official LGM code (3DTopia/LGM) on CPU, float32.

Rerun from the repo root (needs git, torch, numpy, safetensors; none of LGM's own requirements):

    python tests/data/lgm/make_fixtures.py --lgm-git PATH --kiui-git PATH [--out tests/data/lgm]

`--lgm-git` / `--kiui-git` are git directories (bare or not) of github.com/3DTopia/LGM and github.com/ashawkey/kiuikit
that contain the commits below; the script `git archive`s them into a temporary folder and imports the official code
from there. Nothing of it is copied into this repository.

Official code run:
- LGM `FIXED_COMMIT` (HEAD at the time of writing; it contains 9a0797c "fix rotation normalization":
  `rot_act = lambda x: F.normalize(x, dim=-1)`) gives `gaussians_fixed`.
- LGM `LEGACY_COMMIT` (the parent of 9a0797c; `rot_act = F.normalize`, i.e. dim=1 of the (B, N, 4) rotations: over
  the Gaussians, not over the quaternion) gives `gaussians_legacy`, from the same weights and inputs.
- kiui `KIUI_COMMIT` (v0.2.6, what LGM used in March 2024): only `op.dot`, `op.length`, `op.safe_normalize`,
  `cam.look_at` and `cam.orbit_camera` are needed (the camera poses of `LGM.prepare_default_rays` and the ray
  normalisation of `core.utils.get_rays`). Their source is cut out of the real files with `ast` into a stand-in
  `kiui` package, because the real package imports cv2 and more at import time.
Stubbed (never called on this path): `diff_gaussian_rasterization` (the CUDA renderer; `core.models.GaussianRenderer`
is replaced because its constructor allocates on "cuda"), `kiui.lpips` (`lambda_lpips=0` so LPIPS is never built),
`roma` (camera jitter, training only), `tyro` (the CLI helper `core.options` calls at import). xformers is absent, so
`MemEffAttention` runs the plain `Attention.forward` (q·scale @ kᵀ, softmax, @ v). torchvision is absent: the official
input normalisation `TF.normalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)` is written out as (x - mean) / std.

Weights: the official constructor, then every parameter overwritten by `dreamdist3d.testing.lgm.reference_weights`
(numpy's frozen legacy `RandomState(seed)`, one `standard_normal(shape)` per parameter of `named_parameters()` in
order, the rule of ../shared/reference/README.md: GroupNorm weight 1+0.1r, bias 0.1r; ndim >= 2: r·1.5/sqrt(fan_in);
other 0.1r; rounded to float16). They are NOT stored: the json lists the parameters (name, shape, in order) and the
sha256 of their float16 bytes, and the tests regenerate them bit for bit (1.1 M parameters would be 2 MB). The model
itself runs in float32.

Files written:
- `lgm-tiny-a.safetensors` + `.json`: `images` (B,4,3,2S,2S) uint8 (the model sees images / 255),
  `rays_elev0` / `rays_elev20` (4,6,S,S) = `LGM.prepare_default_rays(elevation=0 / 20)` (kiui's elevation: +20 puts the
  cameras BELOW the equator), `input` (B,4,9,S,S) as infer.py/app.py build it (bilinear resize to S, ImageNet
  normalisation, rays of object 0 at elevation 0 and of object 1 at 20, float32), `raw` (B,4,14,s,s) =
  `model.conv(model.unet(input))` reshaped as `forward_gaussians` does, `gaussians_fixed` / `gaussians_legacy`
  (B, 4·s·s, 14) = `forward_gaussians(input)` [pos 3, opacity 1, scale 3, rotation 4, rgb 3].
- `lgm-keys.json`: key -> [shape..., dtype] of `LGM(opt).state_dict()` for the official `big`, `small` and `tiny`
  Options (built under `torch.device("meta")`), i.e. exactly what the released checkpoints hold: `LGM.state_dict()`
  drops the `lpips_loss.*` keys and LGM's `main.py` saves that (accelerate `save_model`), so `model_fp16.safetensors`
  is `unet.*` + `conv.*`.

The json records the measured drift: a rerun, 2 threads vs 1, and the official attention
replaced by `F.scaled_dot_product_attention`; and that every top-level block is alive (perturbing it changes the
output).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root: dreamdist3d.testing.lgm
from dreamdist3d.testing.lgm import TINY_LGM_CONFIG, reference_weights, weights_digest  # noqa: E402

FIXED_COMMIT = "fe8d12cff8c827df7bb77a3c8e8b37408cb6fe4c"
LEGACY_COMMIT = "310e0dced01a1b6cee83cc9ba92daca0fe67749c"  # parent of 9a0797c "fix rotation normalization"
KIUI_COMMIT = "122291b24be1df76a14f155b944fe7088758583b"  # kiui 0.2.6
ROT_FIXED = "self.rot_act = lambda x: F.normalize(x, dim=-1)"
ROT_LEGACY = "self.rot_act = F.normalize\n"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# The official Options of the tiny model: dreamdist3d.testing.lgm.TINY_LGM_CONFIG, the release's U-Net shape at 16².
TINY_A = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY_LGM_CONFIG.to_dict().items() if k in (
    "input_size", "down_channels", "down_attention", "mid_attention", "up_channels", "up_attention", "splat_size",
    "output_size")}
SEED_WEIGHTS = 0
SEED_IMAGES = 1
BATCH = 2


# ---------------------------------------------------------------------------------------------- official sources
def export_tree(git_dir: Path, commit: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    data = subprocess.run(["git", f"--git-dir={git_dir}", "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def cut_functions(source: str, names) -> str:
    """The source text of the top-level functions `names` of a module, in file order."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = {n.name: "\n".join(lines[n.lineno - 1 : n.end_lineno]) for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"kiui source lacks {missing}")
    return "\n\n\n".join(found[n] for n in names)


def write_stubs(kiui_tree: Path, dest: Path) -> None:
    """Stand-in packages: kiui (real op/cam functions, cut out of kiui 0.2.6), and empty renderer/roma/tyro."""
    head = ("import numpy as np\nimport torch\nfrom typing import Union\nfrom torch import Tensor\n"
            "from numpy import ndarray\n")
    (dest / "kiui").mkdir(parents=True)
    (dest / "kiui" / "__init__.py").write_text("from . import op, cam\n")
    op = cut_functions((kiui_tree / "kiui/op.py").read_text(), ["dot", "length", "safe_normalize"])
    (dest / "kiui" / "op.py").write_text(head + "\n\n" + op + "\n")
    cam = cut_functions((kiui_tree / "kiui/cam.py").read_text(), ["look_at", "orbit_camera"])
    (dest / "kiui" / "cam.py").write_text(head + "from kiui.op import safe_normalize\n\n\n" + cam + "\n")
    (dest / "kiui" / "lpips.py").write_text(
        "class LPIPS:\n    def __init__(self, *a, **k):\n        raise RuntimeError('stub')\n")
    (dest / "diff_gaussian_rasterization").mkdir()
    (dest / "diff_gaussian_rasterization" / "__init__.py").write_text(
        "class GaussianRasterizationSettings:\n    pass\n\n\nclass GaussianRasterizer:\n    pass\n"
    )
    (dest / "roma").mkdir()
    (dest / "roma" / "__init__.py").write_text("")
    (dest / "tyro").mkdir()
    (dest / "tyro" / "__init__.py").write_text("from . import extras\n")
    (dest / "tyro" / "extras.py").write_text(
        "def subcommand_type_from_defaults(defaults, descriptions=None):\n    return None\n")


@contextlib.contextmanager
def official(tree: Path, stubs: Path):
    """Import the official `core` package from `tree` (and the stubs); forget it afterwards."""
    sys.path[:0] = [str(tree), str(stubs)]
    try:
        import core.models as models  # noqa: F401  (the official module)
        import core.options as options

        models.GaussianRenderer = lambda opt: None  # its constructor allocates on "cuda"
        yield models, options
    finally:
        del sys.path[:2]
        for name in [m for m in sys.modules if m == "core" or m.startswith("core.")]:
            del sys.modules[name]


# ---------------------------------------------------------------------------------------------- weights and inputs
def build(models, options, opt_kwargs, seed=SEED_WEIGHTS):
    """The official LGM of these Options with `reference_weights` (every parameter, float16-exact)."""
    model = models.LGM(options.Options(**opt_kwargs, lambda_lpips=0.0)).eval()
    params = [(k, tuple(p.shape)) for k, p in model.named_parameters()]
    if [k for k, _ in params] != list(model.state_dict()):
        raise SystemExit("the official LGM has buffers or an unexpected parameter order")
    model.load_state_dict(reference_weights(params, seed), strict=True)
    return model, params


def official_input(images: torch.Tensor, rays: torch.Tensor, size: int) -> torch.Tensor:
    """infer.py / app.py: (4,3,h,w) [0,1] -> bilinear to size -> ImageNet normalise -> cat rays -> (4,9,S,S)."""
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return torch.cat([(x - mean) / std, rays], dim=1)


def raw_and_gaussians(model, x: torch.Tensor):
    with torch.no_grad():
        B = x.shape[0]
        s = model.opt.splat_size
        raw = model.conv(model.unet(x.view(-1, *x.shape[2:]))).reshape(B, 4, 14, s, s)
        return raw, model.forward_gaussians(x)


def sdpa_forward(self, x):
    """The official Attention.forward with the core replaced by F.scaled_dot_product_attention (for the drift)."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(out.transpose(1, 2).reshape(B, N, C))


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lgm-git", type=Path, required=True)
    p.add_argument("--kiui-git", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    from safetensors.torch import load_file, save_file

    tmp = Path(tempfile.mkdtemp(prefix="lgm-fixtures-"))
    fixed_tree = export_tree(args.lgm_git, FIXED_COMMIT, tmp / "lgm-fixed")
    legacy_tree = export_tree(args.lgm_git, LEGACY_COMMIT, tmp / "lgm-legacy")
    kiui_tree = export_tree(args.kiui_git, KIUI_COMMIT, tmp / "kiui")
    stubs = tmp / "stubs"
    write_stubs(kiui_tree, stubs)
    torch.set_num_threads(1)

    S = TINY_A["input_size"]
    g = torch.Generator().manual_seed(SEED_IMAGES)
    images_u8 = torch.randint(0, 256, (BATCH, 4, 3, 2 * S, 2 * S), generator=g, dtype=torch.uint8)
    images = images_u8.float() / 255
    out: dict = {}
    measured: dict = {}
    with official(fixed_tree, stubs) as (models, options):
        model, params = build(models, options, TINY_A)
        if ROT_FIXED not in (fixed_tree / "core/models.py").read_text():
            raise SystemExit("FIXED_COMMIT does not hold the rotation fix")
        rays0 = model.prepare_default_rays("cpu", elevation=0)
        rays20 = model.prepare_default_rays("cpu", elevation=20)
        x = torch.stack([official_input(images[0], rays0, S), official_input(images[1], rays20, S)])
        raw, fixed = raw_and_gaussians(model, x)
        digest = weights_digest(model.state_dict())
        n_params = sum(p.numel() for p in model.parameters())
        # drift: rerun, default thread count, SDPA in place of the official attention
        measured["rerun"] = max_diff(raw_and_gaussians(model, x)[0], raw)
        torch.set_num_threads(2)
        measured["threads_2_vs_1"] = max_diff(raw_and_gaussians(model, x)[0], raw)
        torch.set_num_threads(1)
        Attention = sys.modules["core.attention"].Attention
        plain = Attention.forward
        Attention.forward = sdpa_forward
        sd_raw, sd_g = raw_and_gaussians(model, x)
        Attention.forward = plain
        measured["sdpa"] = {"raw": max_diff(sd_raw, raw), "gaussians": max_diff(sd_g, fixed),
                            "max_abs_raw": float(raw.abs().max())}
        # every top-level block is alive
        alive = {}
        for name in ["unet.conv_in"] + [f"unet.down_blocks.{i}" for i in range(len(model.unet.down_blocks))] + [
            "unet.mid_block"] + [f"unet.up_blocks.{i}" for i in range(len(model.unet.up_blocks))] + [
                "unet.conv_out", "conv"]:
            mod = model.get_submodule(name)
            saved = {k: v.clone() for k, v in mod.state_dict().items()}
            with torch.no_grad():
                for prm in mod.parameters():
                    prm.add_(0.05)
            alive[name] = max_diff(raw_and_gaussians(model, x)[0], raw)
            mod.load_state_dict(saved)
        measured["perturb_block_changes_raw_by"] = alive
        # the big/small/tiny key sets of the release
        keys = {}
        for cfg in ("big", "small", "tiny"):
            opt = dataclasses.replace(options.config_defaults[cfg], lambda_lpips=0.0)
            with torch.device("meta"):
                m = models.LGM(opt)
            keys[cfg] = {
                "options": {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt) if f.name in (
                    "input_size", "down_channels", "down_attention", "mid_attention", "up_channels", "up_attention",
                    "splat_size", "output_size", "fovy", "znear", "zfar", "cam_radius")},
                "n_params": sum(t.numel() for t in m.parameters()),
                "keys": {k: [*v.shape, str(v.dtype).replace("torch.", "")] for k, v in m.state_dict().items()},
            }
    with official(legacy_tree, stubs) as (models, options):
        if ROT_LEGACY not in (legacy_tree / "core/models.py").read_text():
            raise SystemExit("LEGACY_COMMIT does not hold the original rotation normalisation")
        model, _ = build(models, options, TINY_A)
        raw_l, legacy = raw_and_gaussians(model, x)
        if max_diff(raw_l, raw) != 0.0:
            raise SystemExit("the legacy commit's U-Net differs from the fixed one's")

    out.update(images=images_u8, rays_elev0=rays0, rays_elev20=rays20, input=x, raw=raw, gaussians_fixed=fixed,
               gaussians_legacy=legacy)
    args.out.mkdir(parents=True, exist_ok=True)
    st = args.out / "lgm-tiny-a.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(st))
    # reload into a fresh official module: bit-identical
    back = load_file(str(st))
    with official(fixed_tree, stubs) as (models, options):
        model, _ = build(models, options, TINY_A)
        r2, g2 = raw_and_gaussians(model, back["input"])
        measured["reload"] = max(max_diff(r2, raw), max_diff(g2, fixed))
    meta = {
        "official": {"repo": "github.com/3DTopia/LGM", "fixed_commit": FIXED_COMMIT, "legacy_commit": LEGACY_COMMIT,
                     "kiui_repo": "github.com/ashawkey/kiuikit", "kiui_commit": KIUI_COMMIT},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_A.items()},
        "fovy": 49.1, "cam_radius": 1.5,
        "seeds": {"weights": SEED_WEIGHTS, "images": SEED_IMAGES},
        "weights": "dreamdist3d.testing.lgm.reference_weights(parameters, seeds.weights): not stored, regenerated",
        "weights_sha256": digest,
        "n_tensors": len(params), "n_params": n_params,
        "parameters": [[k, list(shape)] for k, shape in params],
        "elevation_of_object": [0, 20],
        "calls": {
            "rays_elevN": "model.prepare_default_rays('cpu', elevation=N)",
            "images": "uint8; the model saw images / 255",
            "input[b]": "cat([(interpolate(images[b] / 255, (S,S), bilinear) - mean) / std, rays_elev{0|20}], 1)",
            "raw": "model.conv(model.unet(input.view(B*4, 9, S, S))).reshape(B, 4, 14, s, s)",
            "gaussians_fixed": "model.forward_gaussians(input) at fixed_commit",
            "gaussians_legacy": "model.forward_gaussians(input) at legacy_commit (same weights)",
        },
        "measured_max_abs_diff": measured,
    }
    (args.out / "lgm-tiny-a.json").write_text(json.dumps(meta, indent=1) + "\n")
    (args.out / "lgm-keys.json").write_text(json.dumps(
        {"official": meta["official"], "torch": torch.__version__, "configs": keys}, indent=0) + "\n")
    print(json.dumps(measured, indent=1))
    print("wrote", st, st.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
