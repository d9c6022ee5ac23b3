"""custom/threestudio-dreamdistribution inside a REAL threestudio checkout, on a CPU: a check run by hand (CI has no
threestudio checkout; `tests/test_custom_extension.py` runs the same flow against a stand-in).

    python tests/threestudio_checkout_check.py THREESTUDIO_DIR WORKDIR

Run it with the python of an environment with threestudio's packages (diffusers 0.19.3, transformers 4.28.1, torch,
pytorch-lightning, … and dreamdist3d installed with `pip install --no-deps -e .`; `threestudio-contract.md` in the
reference notes lists the set), after the README's install step (`cp -r custom/threestudio-dreamdistribution
THREESTUDIO_DIR/custom/`). threestudio imports CUDA-only packages (tinycudann, nerfacc, nvdiffrast, …) at import
time: this script writes stand-ins for them into WORKDIR/stubs that raise when used, which nothing below does.

What it does, as threestudio's `launch.py` would: loads every `custom/` module with threestudio's own loader, reads
the extension's example config with threestudio's `load_config` (our resolvers: the tag, the trial timestamp, the
checks of the settings), builds the prompt processor found in threestudio's registry and calls it; then checks that
its embeddings equal dreamdist3d's own processor's for the same settings, and that a misspelt key and a missing file
are refused while the config is read. Prints each step; exit code 0 when all hold.
"""

from __future__ import annotations

import filecmp
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXTENSION = "threestudio-dreamdistribution"
CONFIG = f"custom/{EXTENSION}/configs/dreamdistribution-mvdream-sd21.yaml"

# stand-ins for the CUDA-only packages `import threestudio` reaches: classes that raise when built (estimators.py
# subclasses nerfacc's, so they must be classes), tinycudann's free_temporary_memory a no-op
RAISING = '''
class _Missing:
    def __init__(self, *a, **k):
        raise RuntimeError(f"{__name__} is a stand-in (threestudio_checkout_check.py): not usable on this machine")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Missing,), {})
'''
STUBS = {
    "torchvision/__init__.py": '__version__ = "0.28.0"\n' + RAISING,
    "torchvision/transforms/__init__.py": RAISING,
    "torchvision/transforms/functional.py": RAISING,
    "torchvision/models/__init__.py": RAISING,
    "tinycudann/__init__.py": "def free_temporary_memory():\n    pass\n" + RAISING,
    **{name: RAISING for name in ("nerfacc/__init__.py", "nerfacc/data_specs.py", "nerfacc/pdf.py",
                                  "nerfacc/volrend.py", "nerfacc/estimators/__init__.py",
                                  "nerfacc/estimators/base.py", "nvdiffrast/__init__.py",
                                  "nvdiffrast/torch/__init__.py", "envlight/__init__.py",
                                  "controlnet_aux/__init__.py")},
}


def write_stubs(folder: Path) -> None:
    for name, text in STUBS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main(threestudio_dir: Path, work: Path) -> int:
    from dreamdist3d.testing.assets import write_tiny_assets

    work.mkdir(parents=True, exist_ok=True)
    installed = threestudio_dir / "custom" / EXTENSION
    if not (installed / "__init__.py").is_file():
        print(f"FAIL: {installed} is missing: cp -r {REPO / 'custom' / EXTENSION} {threestudio_dir / 'custom'}/")
        return 1
    cmp = filecmp.dircmp(REPO / "custom" / EXTENSION, installed, ignore=["__pycache__"])
    if cmp.diff_files or cmp.left_only:
        print(f"note: {installed} differs from this checkout's ({cmp.diff_files + cmp.left_only}); checking it as "
              "it is")
    ckpt, dist = write_tiny_assets(work / "tiny")
    write_stubs(work / "stubs")
    sys.path[:0] = [str(work / "stubs"), str(threestudio_dir)]
    os.chdir(threestudio_dir)  # threestudio's loader reads ./custom, its config paths are relative to the checkout
    sys.argv = ["launch.py"]

    import threestudio
    import threestudio.utils.base as ts_base
    from threestudio.utils.config import load_config

    import launch as ts_launch

    ts_base.get_device = lambda: torch.device("cpu")  # threestudio's processors ask for cuda:0 there
    ts_launch.load_custom_modules()
    ok = True

    def check(cond: bool, what: str) -> None:
        nonlocal ok
        ok &= bool(cond)
        print(("ok:   " if cond else "FAIL: ") + what, flush=True)

    check("dreamdistribution-prompt-processor" in threestudio.__modules__,
          "threestudio's custom/ loader registered dreamdistribution-prompt-processor")
    settings = [f"system.prompt_processor.distribution={dist}", f"system.guidance.ckpt_path={ckpt}", "seed=3"]
    cfg = load_config(CONFIG, cli_args=settings, n_gpus=1)
    check(cfg.trial_dir.startswith("outputs/") and f"{Path(dist).stem}-seed3@" in cfg.trial_dir,
          f"threestudio's load_config read the example config: trial folder {cfg.trial_dir}")
    processor = threestudio.find(cfg.system.prompt_processor_type)(cfg.system.prompt_processor)
    out = processor()
    elev, azi, dist_ = torch.full((4,), 10.0), torch.tensor([0.0, 90.0, 180.0, 270.0]), torch.ones(4)
    theirs = out.get_text_embeddings(elev, azi, dist_, view_dependent_prompting=False)
    check(tuple(theirs.shape)[0] == 8 and theirs.shape[1] == 77, f"embeddings {tuple(theirs.shape)} (cond + uncond)")
    sample = Path(cfg.trial_dir) / "prompt_sample.safetensors"
    check(sample.is_file(), f"the drawn sample is kept in the trial folder ({sample})")
    again = threestudio.find(cfg.system.prompt_processor_type)(cfg.system.prompt_processor)()  # as on resume=
    check(torch.equal(again.get_text_embeddings(elev, azi, dist_, view_dependent_prompting=False), theirs),
          "a second processor of the same trial (a resumed run) reads the sample back: the same embeddings")

    from dreamdist3d.lift3d.prompt_processor import DreamDistributionPromptProcessor

    pp = cfg.system.prompt_processor
    ours = DreamDistributionPromptProcessor({"distribution": str(dist), "pretrained_model_name_or_path": str(ckpt),
                                             "seed": 3, "negative_prompt": pp.negative_prompt})()
    mine = ours.get_text_embeddings(elev, azi, dist_, view_dependent_prompting=False)
    diff = float((mine - theirs).abs().max())
    check(diff == 0.0, f"equal to dreamdist3d's own processor's embeddings (max |difference| {diff:g})")

    for bad, expected in ((["system.prompt_processor.distrubution=x"], "did you mean system.prompt_processor."
                           "distribution"), ([f"system.prompt_processor.distribution={work / 'nope.safetensors'}"],
                                             "does not exist")):
        try:
            load_config(CONFIG, cli_args=[*settings, *bad], n_gpus=1)
            check(False, f"{bad[0]} refused")
        except Exception as e:  # omegaconf wraps our error in an InterpolationResolutionError
            check(expected in str(e), f"{bad[0]} refused while the config is read: {str(e).splitlines()[-1][:160]}")
    print("all checks hold" if ok else "some checks failed")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1])
        raise SystemExit(2)
    raise SystemExit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
