"""The toy demo's gallery and an eval report in a real headless browser (Debian's chromium), through the local
server: wait for every GLB viewer to load, take a screenshot, fail on console errors, failed requests or an empty
viewer (the viewer's pixels are checked, not only the DOM). Skipped, with the reason, where no chromium is
installed (`.ci/run` installs it when it can).

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated JSON on file
descriptors 3 and 4), so no websocket or browser-automation package is needed.

Screenshots: set DREAMDIST3D_SCREENSHOTS=DIR to keep them (the README's pictures come from here), or run
`python tests/test_gallery_browser.py FOLDER PAGE OUT.png` on any served folder.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROME = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)),
              None)
FLAGS = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--hide-scrollbars", "--window-size=1280,1200"]


class Browser:
    """Headless chromium over the DevTools pipe: `page(url)` opens a tab and returns its session id."""

    def __init__(self, exe: str, profile: Path) -> None:
        r_in, self._w = os.pipe()  # we write -> chromium reads fd 3
        self._r, w_out = os.pipe()  # chromium writes fd 4 -> we read

        def child_fds():  # move both ends out of the way first: either may itself be fd 3 or 4
            import fcntl

            a, b = fcntl.fcntl(r_in, fcntl.F_DUPFD, 10), fcntl.fcntl(w_out, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"], preexec_fn=child_fds,
                                     close_fds=False, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(r_in)
        os.close(w_out)
        self._buf, self._id = b"", 0
        self.events: List[Dict[str, Any]] = []

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()}); see {self.log.name}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None, timeout: float = 30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def page(self, url: str) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.evaluate(session, expression)
            if v:
                return v
            errors = self.errors(session)
            assert not errors, errors  # a failed load never finishes: say why at once
            self.pump(0.25)
        raise TimeoutError(f"waited {timeout} s for: {expression}")

    def screenshot(self, session: str) -> np.ndarray:
        from PIL import Image

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def errors(self, session: str) -> List[str]:
        """Console errors, uncaught exceptions and failed requests of that tab."""
        out = []
        for m in self.events:
            if m.get("sessionId") != session:
                continue
            p = m.get("params", {})
            if m.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m.get("method") == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"request failed: {p.get('errorText')}")
            elif m.get("method") == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self.log.close()


def serve(folder: Path):
    from dreamdist3d.web.serve import make_server

    server = make_server(folder, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


VIEWERS_LOADED = ("(() => { const v = [...document.querySelectorAll('model-viewer')];"
                  " return v.length > 0 && v.every(e => e.loaded && e.modelIsVisible); })()")
VIEWER_RECTS = ("JSON.stringify([...document.querySelectorAll('model-viewer')].map(e => {"
                " const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }))")


def coverage(crop: np.ndarray) -> float:
    """Fraction of a viewer's pixels that differ from its background (the median colour): an empty canvas is one
    flat colour, so an object must cover some pixels."""
    crop = crop.astype(float)
    bg = np.median(crop.reshape(-1, 3), axis=0)
    return float((np.abs(crop - bg).sum(-1) > 30).mean())


def test_the_pixel_check_tells_an_empty_viewer():  # no browser needed
    blank = np.full((200, 200, 3), 255, np.uint8)
    assert coverage(blank) == 0.0
    drawn = blank.copy()
    drawn[80:120, 80:120] = (200, 40, 40)
    assert coverage(drawn) == pytest.approx(0.04)


def check_page(browser: Browser, url: str, shot: Optional[Path] = None, viewers: bool = True) -> np.ndarray:
    """Open `url`, wait for its images (and GLB viewers), fail on errors or blank viewers; return the screenshot."""
    session = browser.page(url)
    browser.wait_for(session, "document.readyState === 'complete' && [...document.images].every(i => i.complete "
                              "&& i.naturalWidth > 0)")
    if viewers:
        browser.wait_for(session, VIEWERS_LOADED, timeout=90)
        browser.pump(1.5)  # a few frames of rendering
    img = browser.screenshot(session)
    if shot is not None:
        from PIL import Image

        shot.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(shot)
    errors = browser.errors(session)
    assert not errors, errors
    if viewers:
        dpr = browser.evaluate(session, "window.devicePixelRatio") or 1
        rects = json.loads(browser.evaluate(session, VIEWER_RECTS))
        for x, y, w, h in rects:
            x0, y0 = int(x * dpr) + 2, int(y * dpr) + 2
            crop = img[y0:y0 + int(h * dpr) - 4, x0:x0 + int(w * dpr) - 4].astype(float)
            assert crop.size, f"viewer at {(x, y)} is outside the screenshot {img.shape}"
            covered = coverage(crop)
            assert covered > 0.005, f"viewer at {(x, y)} looks empty ({covered:.4f} of its pixels differ)"
    return img


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROME is None:
        pytest.skip("no chromium/chrome executable on PATH (apt-get install chromium; .ci/run does it where it can)")
    b = Browser(CHROME, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def _screenshot_path(name: str) -> Optional[Path]:
    d = os.environ.get("DREAMDIST3D_SCREENSHOTS")
    return Path(d) / name if d else None


@pytest.mark.slow
def test_toy_demo_gallery_in_a_browser(browser, tmp_path):
    import torch

    from dreamdist3d.backbones.toy import build_toy_backbone, small_test_config
    from dreamdist3d.backbones.toy_weights import save_toy_backbone
    from dreamdist3d.launch import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights = tmp_path / "tiny-toy.safetensors"
        save_toy_backbone(build_toy_backbone(small_test_config(), seed=0), weights)
        out = tmp_path / "demo"
        assert main(["--config", str(REPO / "configs/toy/dreamdist-toy.yaml"), f"weights={weights}", f"out={out}",
                     "progress=false", "steps=3", "n_2d=2", "n_4view=1", "sample_steps=2", "n_3d=2", "steps_3d=4",
                     "isosurface_resolution=32"]) == 0
    finally:
        torch.set_num_threads(n)
    gallery = out / "3d"
    page = (gallery / "gallery.html").read_text()
    assert page.count("<model-viewer") == 2 and page.count("<video") == 2 and "static/model-viewer.min.js" in page
    assert len(list((gallery / "references").glob("*.png"))) > 0
    server, url = serve(gallery)
    try:
        check_page(browser, url + "gallery.html", _screenshot_path("gallery.png"))
    finally:
        server.shutdown()
        server.server_close()


def test_eval_report_in_a_browser(browser, tmp_path):
    """report.html: every thumbnail loads, the scatter is there, no errors."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_eval_cli import _write_images

    from dreamdist3d.evaluation.pipeline import EvalSpec, run_eval
    from dreamdist3d.testing.encoders import write_tiny_encoders

    models = write_tiny_encoders(tmp_path / "models", ("dinov2", "clip"))
    _write_images(tmp_path / "refs", 8, seed=0)
    _write_images(tmp_path / "samples", 7, seed=1)
    out = tmp_path / "report"
    run_eval(EvalSpec(refs=str(tmp_path / "refs"), samples=[str(tmp_path / "samples")], dinov2=str(models["dinov2"]),
                      clip=str(models["clip"]), out=str(out), device="cpu", progress=False, kid_subsets=5))
    server, url = serve(out)
    try:
        img = check_page(browser, url + "report.html", _screenshot_path("report.png"), viewers=False)
    finally:
        server.shutdown()
        server.server_close()
    assert img.std() > 10  # thumbnails and text, not a blank page


if __name__ == "__main__":  # python tests/test_gallery_browser.py FOLDER PAGE OUT.png [--no-viewers]
    folder, page_name, shot = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if CHROME is None:
        sys.exit("no chromium on PATH")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        b = Browser(CHROME, Path(tmp) / "profile")
        srv, base = serve(folder)
        try:
            check_page(b, base + page_name, shot, viewers="--no-viewers" not in sys.argv)
            print(f"ok: {shot}")
        finally:
            srv.shutdown()
            srv.server_close()
            b.close()
