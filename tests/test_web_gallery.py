"""The gallery page (without a browser: tests/test_gallery_browser.py opens it in one) and the local server."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import numpy as np

from dreamdist3d.cli import main


def _run(folder: Path) -> None:
    import imageio.v2 as imageio
    import trimesh
    from PIL import Image

    (folder / "save" / "it4-test").mkdir(parents=True)
    w = imageio.get_writer(str(folder / "save" / "it4-test.mp4"), fps=10, codec="libx264", macro_block_size=1)
    for f in range(6):
        frame = np.full((32, 32, 3), 40 * f, np.uint8)
        w.append_data(frame)
        Image.fromarray(frame).save(folder / "save" / "it4-test" / f"{f}.png")
    w.close()
    (folder / "export").mkdir()
    box = trimesh.creation.box()
    for fmt in ("glb", "obj", "ply"):
        box.export(folder / "export" / f"model.{fmt}")


def test_gallery_page_and_server(tmp_path):
    from dreamdist3d.lift3d.gallery import build_gallery
    from dreamdist3d.web.serve import make_server

    out = tmp_path / "gallery"
    for s in (0, 1):
        _run(out / "runs" / f"seed{s}")
    refs = tmp_path / "refs"
    refs.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(refs / "a.png")
    (out / "runs" / "seed1" / "anchor").mkdir()  # seed 1 is an anchored run: its 4-view sample beside the turntable
    Image.new("RGB", (64, 64), (30, 200, 30)).save(out / "runs" / "seed1" / "anchor" / "anchor.png")
    res = build_gallery(out, [0, 1], n_frames=3, title="two boxes", references=refs)
    page = res["html"].read_text()
    assert page.count("<model-viewer") == 2 and page.count("<video") == 2
    assert page.count('<img class="anchor"') == 1 and 'src="runs/seed1/anchor/anchor.png"' in page
    assert 'src="runs/seed1/export/model.glb"' in page and 'href="runs/seed0/export/model.ply"' in page
    assert 'src="references/a.png"' in page and (out / "references" / "a.png").is_file()  # copied into the folder
    assert (out / "static" / "model-viewer.min.js").stat().st_size > 500_000
    assert "LICENSE-model-viewer.txt" in page and (out / "static" / "LICENSE-model-viewer.txt").is_file()
    assert "https://" not in page.replace("http://www.w3.org", "")  # no CDN

    server = make_server(out, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        for path, mime in (("gallery.html", "text/html"), ("runs/seed0/export/model.glb", "model/gltf-binary"),
                           ("static/model-viewer.min.js", "text/javascript"), ("runs/seed0/save/it4-test.mp4",
                                                                               "video/mp4")):
            with urllib.request.urlopen(base + path) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(mime), (path, r.headers["Content-Type"])
    finally:
        server.shutdown()
        server.server_close()


def test_serve_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "nowhere" in capsys.readouterr().err
