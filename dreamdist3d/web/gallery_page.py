"""The gallery page: references beside the generated objects, each object as the 4-view sample it was anchored to (an
anchored run's `anchor/anchor.png`, the views `preview` shows for its seed), its turntable video and an interactive
GLB viewer (`<model-viewer>`, vendored in `dreamdist3d/web/static/`, copied beside the page: no CDN at view time),
with the prompt sample's settings and links to its OBJ/GLB/PLY.

Browsers refuse to fetch a GLB from a file:// page, so the page is meant to be opened through a local server:
`dreamdist3d serve DIR` (the page says so when opened from file://).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dreamdist3d.io import IMAGE_SUFFIXES

STATIC_FILES = ("model-viewer.min.js", "LICENSE-model-viewer.txt")


@dataclass
class GalleryObject:
    seed: int
    step: int
    video: Path
    meshes: Dict[str, Path] = field(default_factory=dict)  # "glb" / "obj" / "ply" -> file
    settings: Dict[str, Any] = field(default_factory=dict)  # the prompt sample's settings
    anchor: Optional[Path] = None  # the 2×2 grid of the 4-view sample an anchored run fitted


def find_anchor(run: Path) -> Optional[Path]:
    """The anchor grid of an anchored run (`anchor/anchor.png`), None for an SDS-only run."""
    p = run / "anchor" / "anchor.png"
    return p if p.is_file() else None


def save_step(path: Path) -> int:
    """The step of a run's `save/it<step>-…` file or folder (`it150-test.mp4`, `it150-export`)."""
    return int(path.name[2:].split("-")[0])


def find_meshes(run: Path) -> Dict[str, Path]:
    """A run's exported meshes, by format: `export/model.*` (the toy demo, `--lift lgm`), `save/export/model.*`
    (`dreamdist3d export RUN`) or the newest `save/it<step>-export/model.*` (`launch.py --export`, `gallery`)."""
    stepped = sorted((run / "save").glob("it*-export"), key=save_step, reverse=True) if (run / "save").is_dir() else []
    out: Dict[str, Path] = {}
    for folder in (run / "export", run / "save" / "export", *stepped):
        for fmt in ("glb", "obj", "ply"):
            p = folder / f"model.{fmt}"
            if fmt not in out and p.is_file():
                out[fmt] = p
    return out


def prompt_sample_settings(run: Path) -> Dict[str, Any]:
    """The settings recorded in a run's `prompt_sample.safetensors` (distribution files with weight and γ,
    prefix/suffix, seed); {} when the run has none."""
    p = run / "prompt_sample.safetensors"
    if not p.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("dreamdist3d", "{}"))
    except Exception:  # a foreign or damaged file: the page shows no settings rather than failing
        return {}
    files = [{"file": Path(x.get("path", "")).name, "weight": x.get("weight"), "gamma": x.get("scale")}
             for x in meta.get("files", [])]
    return {"distributions": files, "prefix": meta.get("prefix"), "suffix": meta.get("suffix"),
            "seed": meta.get("seed")}


def copy_static(out: Path) -> Path:
    """Copy the vendored viewer (and its licence) to out/static/; returns that folder."""
    dest = out / "static"
    dest.mkdir(parents=True, exist_ok=True)
    src = resources.files("dreamdist3d.web").joinpath("static")
    for name in STATIC_FILES:
        data = src.joinpath(name).read_bytes()
        target = dest / name
        if not target.is_file() or target.stat().st_size != len(data):
            target.write_bytes(data)
    return dest


def copy_references(out: Path, references: Sequence[Path]) -> List[Path]:
    """References outside `out` are copied to out/references/ so the served folder holds everything the page shows."""
    res = []
    for p in map(Path, references):
        if out.resolve() in p.resolve().parents:
            res.append(p)
            continue
        dest = out / "references" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
        res.append(dest)
    return res


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _settings_text(s: Dict[str, Any]) -> str:
    if not s:
        return ""
    parts = []
    for d in s.get("distributions", []):
        parts.append(f"{d['file']} (w {d['weight']:g}, γ {d['gamma']:g})" if d.get("weight") is not None
                     and d.get("gamma") is not None else str(d.get("file")))
    if s.get("prefix"):
        parts.append(f"prefix “{s['prefix']}”")
    if s.get("suffix"):
        parts.append(f"suffix “{s['suffix']}”")
    return "; ".join(parts)


CSS = """body{font-family:sans-serif;background:#fafafa;margin:1.5em;color:#222}
.refs,.objects{display:flex;flex-wrap:wrap;gap:12px}.refs img{width:96px;height:96px;object-fit:contain;
image-rendering:pixelated;background:#fff;border:1px solid #ddd}.card{background:#fff;border:1px solid #ddd;
padding:8px}.views{display:flex;gap:8px}video,model-viewer,img.anchor{width:180px;height:180px;
background:#fff;border:1px solid #eee}img.anchor{image-rendering:pixelated}
model-viewer::part(default-progress-bar){display:none}.meta{font-size:12px;color:#555}
.warn{background:#fee;border:1px solid #c00;padding:8px}"""


def write_gallery_page(out: Path, objects: Sequence[GalleryObject], references: Sequence[Path] = (), title: str = "",
                       grid_png: Optional[Path] = None) -> Path:
    """Write out/gallery.html (and out/static/): references, then one card per object."""
    out = Path(out)
    copy_static(out)
    e = html.escape
    cards = []
    for o in objects:
        glb = o.meshes.get("glb")
        viewer = (f'<model-viewer src="{e(_rel(glb, out))}" camera-controls auto-rotate interaction-prompt="none" '
                  f'shadow-intensity="0" alt="seed {o.seed}: 3D object"></model-viewer>' if glb else
                  '<div class="meta">no GLB exported (run `dreamdist3d export RUN`)</div>')
        links = " · ".join(f'<a href="{e(_rel(p, out))}" download>{fmt.upper()}</a>' for fmt,
                           p in sorted(o.meshes.items()))
        settings = _settings_text(o.settings)
        anchor = (f'<img class="anchor" src="{e(_rel(o.anchor, out))}" alt="seed {o.seed}: the 4-view sample it '
                  f'was anchored to" title="the 4-view sample this object was fitted to (preview --seed {o.seed})">'
                  if o.anchor else "")
        cards.append(
            f'<div class="card" data-seed="{o.seed}"><div class="views">{anchor}'
            f'<video src="{e(_rel(o.video, out))}" autoplay loop muted playsinline></video>{viewer}</div>'
            f'<div class="meta">seed {o.seed} · step {o.step}' + (f" · {e(settings)}" if settings else "")
            + (f"<br>{links}" if links else "") + "</div></div>")
    references = copy_references(out, references)
    refs = "".join(f'<img src="{e(_rel(p, out))}" alt="{e(p.name)}" title="{e(p.name)}">' for p in references)
    page = "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>dreamdist3d gallery</title>',
        '<link rel="icon" href="data:,">',
        f"<style>{CSS}</style>", '<script type="module" src="static/model-viewer.min.js"></script></head><body>',
        '<div id="file-warning" class="warn" hidden>Opened from a file: browsers refuse to load the 3D models this '
        "way. Serve the folder instead: <code>dreamdist3d serve " + e(str(out)) + "</code></div>",
        "<script>if (location.protocol === 'file:') document.getElementById('file-warning').hidden = false;</script>",
        f"<h1>{e(title or 'dreamdist3d gallery')}</h1>",
        *([f"<h2>References ({len(references)})</h2><div class='refs'>{refs}</div>"] if references else []),
        f"<h2>Generated objects ({len(objects)})</h2>",
        "<p class='meta'>Each object: the 4-view sample it was anchored to (anchored runs: the views "
        "<code>dreamdist3d preview</code> shows for its seed), its turntable and the exported mesh (drag to turn it). "
        "One prompt sample per seed.</p>",
        f"<div class='objects'>{''.join(cards)}</div>",
        *([f"<h2>Turntable frames</h2><img src='{e(_rel(grid_png, out))}' style='max-width:100%'>"]
          if grid_png else []),
        "<p class='meta'>Viewer: &lt;model-viewer&gt; 4.4.0 (Apache-2.0, bundles three.js, MIT), served from "
        "<a href='static/LICENSE-model-viewer.txt'>static/</a>.</p>",
        "</body></html>", ""])
    path = out / "gallery.html"
    path.write_text(page, encoding="utf-8")
    return path


def reference_images(folder: Optional[Path]) -> List[Path]:
    """The images of a reference folder, sorted ([] when there is none)."""
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


__all__ = ["GalleryObject", "copy_static", "find_anchor", "find_meshes", "prompt_sample_settings", "reference_images",
           "write_gallery_page"]
