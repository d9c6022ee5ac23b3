"""Shared test helpers: the official reference fixtures in ../shared/reference (skip, with the reason, if absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("DREAMDIST3D_REFERENCE", REPO.parent / "shared" / "reference"))
DATASETS = REPO.parent / "shared" / "datasets"

# Tiny models: one intra-op thread is fastest, and on a shared 2-core machine 2 threads can be 5-20x slower.
torch.set_num_threads(1)


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (expected ../shared/reference beside the clone)")
    return path


def load_reference(name: str):
    """(tensors dict, json dict or None) of the fixture `name` (without extension)."""
    from safetensors.torch import load_file

    tensors = load_file(str(reference_path(f"{name}.safetensors")))
    js = REFERENCE / f"{name}.json"
    return tensors, (json.loads(js.read_text()) if js.exists() else None)


@pytest.fixture
def reference():
    return load_reference
