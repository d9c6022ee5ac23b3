"""LGM checkpoint loading: the released `big` key set on the meta device, tiny float16 files through the loader, the
rotation normalisation choice, and the errors (each names the file and the setting it came from)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamdist3d.reconstruct import LGMCheckpointError, lgm_from_state_dict, load_lgm
from dreamdist3d.testing.lgm import TINY_LGM_CONFIG, tiny_lgm, write_tiny_lgm_checkpoint

DATA = Path(__file__).parent / "data" / "lgm"


def big_meta_state_dict():
    keys = json.loads((DATA / "lgm-keys.json").read_text())["configs"]["big"]["keys"]
    return {k: torch.empty(v[:-1], dtype=torch.float16, device="meta") for k, v in keys.items()}


def test_released_big_key_set_loads_strictly_on_meta():
    sd = big_meta_state_dict()
    assert len(sd) == 376
    model = lgm_from_state_dict(sd, "big", device="meta", source="model_fp16.safetensors (meta)")
    assert sum(p.numel() for p in model.parameters()) == 415_042_848
    assert all(p.device.type == "meta" and not p.requires_grad for p in model.parameters())
    extra = dict(sd, **{"lpips_loss.net.slice1.0.weight": torch.empty(64, 3, 3, 3, device="meta")})
    with pytest.raises(LGMCheckpointError, match=r"unexpected keys lpips_loss\.net\.slice1\.0\.weight"):
        lgm_from_state_dict(extra, "big", device="meta", source="with-lpips.safetensors")
    less = dict(sd)
    del less["unet.up_blocks.2.attns.1.attn.qkv.weight"]
    with pytest.raises(LGMCheckpointError, match=r"missing keys unet\.up_blocks\.2\.attns\.1\.attn\.qkv\.weight"):
        lgm_from_state_dict(less, "big", device="meta")
    with pytest.raises(LGMCheckpointError, match=r"'small' config(.|\n)*unexpected keys (.|\n)*unet\.up_blocks\.4"):
        lgm_from_state_dict(sd, "small", device="meta", source="model_fp16.safetensors")


def test_tiny_float16_file_round_trip(tmp_path):
    path = write_tiny_lgm_checkpoint(tmp_path / "tiny.safetensors", seed=4)
    model = load_lgm(path)  # config and rotation normalisation from the file's metadata
    assert model.config == TINY_LGM_CONFIG
    assert next(model.parameters()).dtype == torch.float32
    ref = tiny_lgm(seed=4)  # float16-exact weights: the float16 file loses nothing
    x = torch.randn(1, 4, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).to_lgm(), ref(x).to_lgm(), atol=0, rtol=0)
    half = load_lgm(path, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_rotation_normalisation_choice(tmp_path):
    bare = write_tiny_lgm_checkpoint(tmp_path / "model_fp16.safetensors", with_config=False)
    cfg = TINY_LGM_CONFIG.to_dict()
    assert load_lgm(bare, config=cfg).config.rotation_normalization == "legacy"  # the original release's name
    fix = write_tiny_lgm_checkpoint(tmp_path / "model_fp16_fixrot.safetensors", with_config=False)
    assert load_lgm(fix, config=cfg).config.rotation_normalization == "fixed"
    assert load_lgm(bare, config=cfg, rotation_normalization="fixed").config.rotation_normalization == "fixed"
    other = write_tiny_lgm_checkpoint(tmp_path / "mine.safetensors", with_config=False)
    with pytest.raises(LGMCheckpointError, match=r"mine\.safetensors \(set by --lgm\)(.|\n)*rotation_normalization="):
        load_lgm(other, config=cfg)
    with pytest.raises(LGMCheckpointError, match="must be one of"):
        load_lgm(other, config=cfg, rotation_normalization="dim1")


def test_errors_name_the_file_and_the_setting(tmp_path):
    missing = tmp_path / "model_fp16_fixrot.safetensors"
    with pytest.raises(FileNotFoundError, match=r"model_fp16_fixrot\.safetensors \(set by lift\.lgm\)"):
        load_lgm(missing, config_key="lift.lgm")
    path = write_tiny_lgm_checkpoint(tmp_path / "tiny.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LGMCheckpointError, match=r"cut\.safetensors \(set by --lgm\): the file is truncated"):
        load_lgm(tmp_path / "cut.safetensors")
    (tmp_path / "model.pt").write_bytes(b"not used")
    with pytest.raises(LGMCheckpointError, match=r"model\.pt \(set by --lgm\): LGM checkpoints are \.safetensors"):
        load_lgm(tmp_path / "model.pt")
    # a tiny file read as the released 'big' model: every problem listed, naming the file
    with pytest.raises(LGMCheckpointError, match=r"tiny\.safetensors \(set by --lgm\) does not fit the LGM of the "
                                                 r"'big' config(.|\n)*missing keys(.|\n)*wrong shape"):
        load_lgm(path, config="big")
    # one key missing / one key extra
    sd = {k: v.half() for k, v in tiny_lgm().state_dict().items()}
    meta = {"dreamdist3d_lgm_config": json.dumps(TINY_LGM_CONFIG.to_dict())}
    less = dict(sd)
    del less["conv.bias"]
    save_file(less, str(tmp_path / "less.safetensors"), metadata=meta)
    with pytest.raises(LGMCheckpointError, match=r"less\.safetensors(.|\n)*missing keys conv\.bias"):
        load_lgm(tmp_path / "less.safetensors")
    save_file(dict(sd, **{"model_ema.decay": torch.zeros(())}), str(tmp_path / "more.safetensors"), metadata=meta)
    with pytest.raises(LGMCheckpointError, match=r"more\.safetensors(.|\n)*unexpected keys model_ema\.decay"):
        load_lgm(tmp_path / "more.safetensors")
    save_file(sd, str(tmp_path / "badmeta.safetensors"), metadata={"dreamdist3d_lgm_config": "{oops"})
    with pytest.raises(LGMCheckpointError, match=r"badmeta\.safetensors(.|\n)*not JSON"):
        load_lgm(tmp_path / "badmeta.safetensors")
