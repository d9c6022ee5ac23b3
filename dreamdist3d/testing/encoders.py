"""Tiny random image encoders written as local transformers folders (`save_pretrained`), the layout
`dreamdist3d eval --dinov2/--clip/--dino` and `preview --pick --features dinov2=DIR` load: hidden 32, 2 layers,
32 px images, with matching image-processor configs. Random weights: for plumbing, not for real features."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=8)


def write_tiny_encoders(root: Path, kinds: Sequence[str] = ("dinov2", "clip", "dino"),
                        seed: int = 0) -> Dict[str, Path]:
    """Write one folder per kind under `root`; returns {kind: folder}."""
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(seed)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    crop = {"height": 32, "width": 32}
    folders = {k: Path(root) / k for k in kinds}
    if "dinov2" in folders:
        Dinov2Model(Dinov2Config(**TINY)).save_pretrained(folders["dinov2"])
        BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop, image_mean=mean,
                          image_std=std).save_pretrained(folders["dinov2"])
    if "clip" in folders:
        text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                    vocab_size=49408, max_position_embeddings=77)
        CLIPModel(CLIPConfig(text_config=text, vision_config=dict(TINY), projection_dim=16)).save_pretrained(
            folders["clip"])
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop).save_pretrained(folders["clip"])
    if "dino" in folders:
        ViTModel(ViTConfig(**TINY), add_pooling_layer=False).save_pretrained(folders["dino"])
        ViTImageProcessor(size=crop, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folders["dino"])
    return folders


__all__ = ["TINY", "write_tiny_encoders"]
