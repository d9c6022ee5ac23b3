"""Reference images for learning: decoding rules, folder errors, multi-view sets and the latent cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.learn.data import (
    LatentCache,
    ReferenceDataError,
    list_images,
    load_image,
    load_multiview_sets,
    load_reference_images,
    load_references,
)

DATA = Path(__file__).parent / "data" / "cathedral_small"


def _halves(path, size=(16, 8), fmt="PNG", **save):
    """left half red, right half blue."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2] = (255, 0, 0)
    arr[:, size[0] // 2 :] = (0, 0, 255)
    Image.fromarray(arr).save(path, format=fmt, **save)
    return path


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img = load_image(_halves(tmp_path / "rot.png", exif=exif.tobytes()), 8)
    assert img.shape == (3, 8, 8)
    # displayed upright the red half is on top; the centre square keeps 4 red rows over 4 blue rows
    torch.testing.assert_close(img[:, :3].mean((1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(img[:, 5:].mean((1, 2)), torch.tensor([-1.0, -1.0, 1.0]), atol=0.05, rtol=0)
    plain = load_image(_halves(tmp_path / "plain.png"), 8)  # no EXIF: red left, blue right
    torch.testing.assert_close(plain[:, :, :3].mean((1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.05, rtol=0)


def test_transparency_gray_palette_webp_and_crop(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, alpha 0 on the left half, 255 on the right
    rgba[:, 4:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png", 8)
    torch.testing.assert_close(img[:, :, :3], torch.ones(3, 8, 3), atol=1e-6, rtol=0)  # transparent -> white
    torch.testing.assert_close(img[:, :, 5:].mean((1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=1e-6, rtol=0)

    Image.fromarray(np.full((10, 30), 64, dtype=np.uint8), "L").save(tmp_path / "g.jpg")
    g = load_image(tmp_path / "g.jpg", 6)
    assert g.shape == (3, 6, 6) and torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])
    assert abs(g.mean().item() - (64 / 127.5 - 1)) < 0.02

    pal = Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "P")
    pal.putpalette([0, 255, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    torch.testing.assert_close(load_image(tmp_path / "p.png", 4), torch.ones(3, 4, 4), atol=1e-6, rtol=0)

    _halves(tmp_path / "w.webp", fmt="WEBP", lossless=True)
    w = load_image(tmp_path / "w.webp", 8)
    assert w[0, :, 0].mean() > 0.9 and w[2, :, -1].mean() > 0.9  # centre crop of a wide image keeps both halves

    Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(tmp_path / "b.bmp")  # a folder eval also reads
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.bmp", "g.jpg", "p.png", "w.webp"]
    torch.testing.assert_close(load_image(tmp_path / "b.bmp", 4), torch.ones(3, 4, 4), atol=1e-6, rtol=0)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ReferenceDataError, match="does not exist"):
        load_reference_images(tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ReferenceDataError, match="no reference images.*notes.txt"):
        load_reference_images(tmp_path / "empty", 8)
    one = tmp_path / "one"
    one.mkdir()
    _halves(one / "a.png")
    with pytest.raises(ReferenceDataError, match="1 usable reference image.*at least 2"):
        load_reference_images(one, 8)

    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        _halves(bad / f"ok{i}.png")
    (bad / "zero.jpg").write_bytes(b"")
    with pytest.raises(ReferenceDataError, match=r"zero\.jpg.*empty \(0 bytes\).*--skip-bad"):
        load_reference_images(bad, 8)
    (bad / "zero.jpg").unlink()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ReferenceDataError, match=r"broken\.png"):
        load_reference_images(bad, 8)
    with pytest.warns(UserWarning, match="broken.png"):
        refs = load_reference_images(bad, 8, skip_bad=True)
    assert len(refs) == 3 and len(refs.skipped) == 1 and "broken.png" in refs.skipped[0]


def test_cathedral_copies_load():
    refs = load_reference_images(DATA, 16)
    assert refs.images.shape == (5, 3, 16, 16)
    assert refs.images.min() >= -1 and refs.images.max() <= 1 and refs.images.std() > 0.2


def _multiview_folder(root: Path, n_objects=2, size=8):
    for o in range(n_objects):
        d = root / f"obj{o}"
        d.mkdir(parents=True)
        views = []
        for v in range(4):
            arr = np.full((size, size, 3), 40 * v + 10 * o, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{v:03d}.png")
            entry = {"file": f"{v:03d}.png"}
            if o == 0:
                entry.update(elevation=15, azimuth=90 * v)
            else:
                entry["camera"] = get_camera(4, 15, 0)[v].tolist()
            views.append(entry)
        (d / "cameras.json").write_text(json.dumps({"views": views}))
    return root


def test_multiview_sets(tmp_path):
    root = _multiview_folder(tmp_path / "mv")
    refs = load_references(root, 8, multiview=True)
    assert refs.images.shape == (2, 4, 3, 8, 8) and refs.cameras.shape == (2, 4, 16)
    torch.testing.assert_close(refs.cameras[0], get_camera(4, 15, 0), atol=1e-6, rtol=0)
    torch.testing.assert_close(refs.cameras[1], get_camera(4, 15, 0), atol=0, rtol=0)
    assert abs(refs.images[1, 2].mean().item() - ((80 + 10) / 127.5 - 1)) < 1e-5  # view order kept
    with pytest.raises(ReferenceDataError, match="multi-view object folders"):
        load_references(root, 8, multiview=False)
    spec = json.loads((root / "obj1" / "cameras.json").read_text())
    spec["views"] = spec["views"][:3]
    (root / "obj1" / "cameras.json").write_text(json.dumps(spec))
    with pytest.raises(ReferenceDataError, match=r"obj1.cameras\.json.*exactly 4.*or pass --skip-bad to leave this "
                                                 r"object out"):
        load_multiview_sets(root, 8)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "loose.png")  # one plain image beside the objects
    with pytest.raises(ReferenceDataError, match=r"1 usable reference image.*sub-folders hold multi-view objects: "
                                                 r"learn from them with --mode 4view"):
        load_references(root, 8, multiview=False)
    with pytest.warns(UserWarning, match="obj1"):
        assert len(load_multiview_sets(root, 8, skip_bad=True)) == 1


class _CountingBackbone:
    """posterior() of a tiny diffusers VAE, counting images encoded."""

    def __init__(self):
        from dreamdist3d.backbones.vae import build_vae
        from dreamdist3d.testing.checkpoints import tiny_vae_config

        torch.manual_seed(0)
        self.vae = build_vae(tiny_vae_config(16)).eval()
        self.scale_factor = 0.18215
        self.device = torch.device("cpu")
        self.encoded = 0

    @torch.no_grad()
    def posterior(self, images):
        self.encoded += images.shape[0]
        d = self.vae.encode(images).latent_dist
        return d.mean, d.std


def test_latent_cache_encodes_once_and_samples_like_ldm():
    refs = load_reference_images(DATA, 16)
    bb = _CountingBackbone()
    cache = LatentCache.build(bb, refs, flip=True)
    assert bb.encoded == 2 * len(refs)  # each image and its mirror, once
    assert cache.mean.shape == (5, 2, 4, 8, 8)
    with torch.no_grad():
        d = bb.vae.encode(refs.images[[3]].flip(-1)).latent_dist
    torch.testing.assert_close(cache.mean[3, 1], d.mean[0], atol=1e-5, rtol=0)
    idx, flips = torch.tensor([3, 0]), torch.tensor([True, False])
    z = cache.sample(idx, flips, torch.Generator().manual_seed(7))
    eps = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    ref = 0.18215 * (cache.mean[idx, flips.long()] + cache.std[idx, flips.long()] * eps)
    torch.testing.assert_close(z, ref, atol=0, rtol=0)
    for _ in range(3):
        cache.sample(idx, flips, torch.Generator().manual_seed(1))
    assert bb.encoded == 10  # sampling never re-encodes

    class Pixel:
        vae, scale_factor, device = None, 1.0, torch.device("cpu")

        def posterior(self, images):
            return images, torch.zeros_like(images)

    pc = LatentCache.build(Pixel(), refs, flip=True)
    assert pc.std is None
    torch.testing.assert_close(pc.sample(torch.tensor([1]), torch.tensor([True])), refs.images[[1]].flip(-1), atol=0,
                               rtol=0)
