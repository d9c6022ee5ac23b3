"""custom/threestudio-dreamdistribution in threestudio's own environment: diffusers 0.19.3, transformers 4.28.1,
huggingface_hub < 0.26 (threestudio's pins), in a second interpreter named by DREAMDIST3D_PINS_PYTHON (.ci/run
builds that venv). The assets are made here with the current packages, the extension runs there
(tests/threestudio_pins_check.py), and its embeddings must equal this environment's within the parity tolerance."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import F32
from threestudio_pins_check import CASES, case_config, tiny_distribution

PINS_PYTHON = os.environ.get("DREAMDIST3D_PINS_PYTHON")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not PINS_PYTHON,
    reason="DREAMDIST3D_PINS_PYTHON is not set: it names the python of a second environment with threestudio's pins "
    "(diffusers==0.19.3 transformers==4.28.1 'huggingface_hub<0.26', dreamdist3d installed with --no-deps; .ci/run "
    "builds one)",
)


def _version(text: str):
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2])


def test_extension_under_threestudio_pins(tmp_path):
    from dreamdist3d.lift3d.prompt_processor import DreamDistributionPromptProcessor as OurProcessor
    from dreamdist3d.testing.assets import write_tiny_assets
    from dreamdist3d.testing.checkpoints import tiny_sd21_folder

    write_tiny_assets(tmp_path / "mv")
    tiny_sd21_folder(tmp_path / "sd21new", seed=1)  # saved by the current transformers: no `text_model.` key prefix
    tiny_distribution(tmp_path / "sd21new", tmp_path / "sd21new-dist.safetensors", seed=1)

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([PINS_PYTHON, str(REPO / "tests" / "threestudio_pins_check.py"), str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the check failed in {PINS_PYTHON}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    report = json.loads((tmp_path / "pins-out.json").read_text())
    v = report["versions"]
    assert (_version(v["diffusers"]) < (0, 20) and _version(v["transformers"]) < (4, 36)
            and _version(v["huggingface_hub"]) < (0, 26)), (
        f"{PINS_PYTHON} is not an environment with threestudio's pins: {v}")

    from safetensors.torch import load_file

    theirs = load_file(str(tmp_path / "pins-out.safetensors"))
    elev, azi, dist = torch.tensor([10.0, 70.0, 0.0, 0.0]), torch.tensor([180.0, 0.0, 90.0, 0.0]), torch.ones(4)
    for name in CASES:
        cfg = case_config(name, tmp_path)
        seed = cfg.pop("seed")
        if "text_encoder_path" in cfg:
            cfg["pretrained_model_name_or_path"] = cfg.pop("text_encoder_path")
        ours = OurProcessor(cfg, seed=seed)()
        vd = bool(cfg.get("view_dependent_prompting"))
        want = {"text": ours.text_embeddings, "uncond": ours.uncond_text_embeddings,
                "guidance": ours.get_text_embeddings(elev, azi, dist, view_dependent_prompting=vd)}
        if vd:
            want["vd"] = ours.text_embeddings_vd
        for key, value in want.items():
            torch.testing.assert_close(theirs[f"{name}.{key}"], value, **F32, msg=lambda m: f"{name}.{key}: {m}")
    assert set(theirs) == {f"{n}.{k}" for n in CASES for k in ("text", "uncond", "guidance")} | {"sd21new.vd"}
