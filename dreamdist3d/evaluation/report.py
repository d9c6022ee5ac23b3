"""The eval report: `report.json` (everything), `report.md` (the table), `report.html` (what a person looks at).

report.html: the metrics table; a coverage-vs-precision scatter, one point per sample set (inline SVG, also written
as `coverage-precision.svg`); for a `dreamdist3d sweep --save-cells` folder (one set per row), coverage and precision
against γ or w (`sweep-<i>.svg`); the references as thumbnails; each sample set as a sheet of thumbnails, each labelled
with its nearest reference and the DINOv2 cosine to it. Thumbnails are JPEGs under `thumbs/`, named by content hash
(re-runs reuse them). Nothing is fetched from the network when the page is viewed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# (key in report.json, column title, format)
COLUMNS = (
    ("n", "n", "d"),
    ("fd_dinov2", "FD-DINOv2 ↓", ".1f"),
    ("kd_dinov2", "KD-DINOv2 ↓", ".4f"),
    ("kd_dinov2_std", "± std", ".4f"),
    ("precision", "precision ↑", ".3f"),
    ("recall", "recall ↑", ".3f"),
    ("density", "density ↑", ".3f"),
    ("coverage", "coverage ↑", ".3f"),
    ("diversity", "diversity", ".3f"),
    ("clip_i", "CLIP-I ↑", ".3f"),
    ("dino_i", "DINO-I ↑", ".3f"),
    ("clip_t", "CLIP-T ↑", ".3f"),
)
THUMB = 128


def _fmt(v: Any, f: str) -> str:
    if v is None:
        return "–"
    return format(v, f) if f != "d" else str(int(v))


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    """Header then one row per sample set, then the references' own row (diversity and CLIP-T only)."""
    rows = [["set"] + [c[1] for c in COLUMNS]]
    for s in report["sets"]:
        label = s["name"] + (f" (3D: {s['objects']} runs × {s['views']} views)" if s["kind"] == "3d" else "")
        rows.append([label] + [_fmt(s["metrics"].get(k), f) for k, _, f in COLUMNS])
    ref = report["refs"]["metrics"]
    rows.append(["references (themselves)"] + [_fmt(ref.get(k), f) if k in ref else "" for k, _, f in COLUMNS])
    return rows


def format_table(report: Dict[str, Any]) -> str:
    """The metrics as a Markdown table."""
    rows = table_rows(report)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def scatter_svg(points: Sequence[Dict[str, Any]], x: str = "coverage", y: str = "precision", size: int = 360) -> str:
    """An SVG scatter of y against x (both in [0, 1]), one point per entry of `points` (dicts with `name` and the two
    keys; entries with a null/nan value are listed as not plotted). A legend at the right names every point (labels
    beside points would overlap where points coincide); each point also has a tooltip."""
    pad = 48
    w = size - 2 * pad
    legend_w = 260
    width = size + legend_w

    def px(v: float) -> float:
        return pad + max(0.0, min(1.0, v)) * w

    def py(v: float) -> float:
        return size - pad - max(0.0, min(1.0, v)) * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}" viewBox="0 0 {width} {size}" '
             f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{size}" fill="white"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{px(t):.1f}" y1="{py(0):.1f}" x2="{px(t):.1f}" y2="{py(1):.1f}" stroke="#ddd"/>')
        parts.append(f'<line x1="{px(0):.1f}" y1="{py(t):.1f}" x2="{px(1):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{py(0) + 14:.1f}" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{px(0) - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<rect x="{pad}" y="{pad}" width="{w}" height="{w}" fill="none" stroke="#444"/>')
    parts.append(f'<text x="{size / 2:.0f}" y="{size - 12}" text-anchor="middle">{html.escape(x)} →</text>')
    parts.append(f'<text x="14" y="{size / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {size / 2:.0f})">'
                 f'{html.escape(y)} →</text>')
    missing, shown = [], 0
    for i, p in enumerate(points):
        if any(p.get(k) is None or p[k] != p[k] for k in (x, y)):  # null or nan
            missing.append(p["name"])
            continue
        c = PALETTE[i % len(PALETTE)]
        cx, cy = px(p[x]), py(p[y])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}" fill-opacity="0.8"><title>'
                     f'{html.escape(p["name"])}: {x} {p[x]:.3f}, {y} {p[y]:.3f}</title></circle>')
        ly = pad + 6 + 16 * shown
        parts.append(f'<rect x="{size + 4}" y="{ly - 8}" width="9" height="9" fill="{c}"/>'
                     f'<text x="{size + 18}" y="{ly}" fill="#222">{html.escape(p["name"])} '
                     f'({p[x]:.2f}, {p[y]:.2f})</text>')
        shown += 1
    if missing:
        parts.append(f'<text x="{pad}" y="{pad - 8}" fill="#a00">not plotted (too few images): '
                     f'{html.escape(", ".join(missing))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def sweep_groups(report: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Sets that are rows of one `dreamdist3d sweep` (numeric γ or w), by sweep, sorted by value."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for s in report["sets"]:
        sw = s.get("sweep")
        if sw and sw.get("value") is not None:
            groups.setdefault(sw["group"], []).append(s)
    return {g: sorted(v, key=lambda s: s["sweep"]["value"]) for g, v in groups.items()}


def sweep_svg(sets: Sequence[Dict[str, Any]], keys: Sequence[str] = ("coverage", "precision"), size=(420, 300)) -> str:
    """Line plot of metrics in [0, 1] against the sweep's parameter (γ or w), one line per metric."""
    W, H = size
    pad_l, pad_r, pad_t, pad_b = 48, 90, 16, 40
    xs = [s["sweep"]["value"] for s in sets]
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1.0
    param = sets[0]["sweep"]["param"]

    def px(v: float) -> float:
        return pad_l + (v - x0) / span * (W - pad_l - pad_r)

    def py(v: float) -> float:
        return H - pad_b - max(0.0, min(1.0, v)) * (H - pad_t - pad_b)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             f'font-family="sans-serif" font-size="11">', f'<rect width="{W}" height="{H}" fill="white"/>']
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{px(x0):.1f}" y1="{py(t):.1f}" x2="{px(x1):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{px(x0) - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for v in xs:
        parts.append(f'<text x="{px(v):.1f}" y="{H - pad_b + 14}" text-anchor="middle">{v:g}</text>')
    parts.append(f'<text x="{(pad_l + W - pad_r) / 2:.0f}" y="{H - 8}" text-anchor="middle">{html.escape(param)} '
                 '→</text>')
    for i, key in enumerate(keys):
        c = PALETTE[i % len(PALETTE)]
        pts = [(px(s["sweep"]["value"]), py(s["metrics"][key])) for s in sets if s["metrics"].get(key) is not None]
        if not pts:
            continue
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{c}"/>' for a, b in pts]
        parts.append(f'<text x="{pts[-1][0] + 8:.1f}" y="{pts[-1][1] + 4:.1f}" fill="{c}">{html.escape(key)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_thumbs(out: Path, items: Sequence[Any]) -> List[str]:
    """JPEG thumbnails (longest side THUMB) under out/thumbs/, named by content hash; returns relative paths."""
    import hashlib

    folder = out / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for it in items:
        name = hashlib.sha256(it.key.encode()).hexdigest()[:20] + ".jpg"
        p = folder / name
        if not p.is_file():
            im = it.load()
            im.thumbnail((THUMB, THUMB))
            im.save(p, quality=88)
        paths.append(f"thumbs/{name}")
    return paths


def _figure(src: str, caption: str, title: Optional[str] = None) -> str:
    t = f' title="{html.escape(title)}"' if title else ""
    return (f'<figure{t}><img src="{html.escape(src)}" loading="lazy" alt="{html.escape(caption)}">'
            f"<figcaption>{caption}</figcaption></figure>")


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}
.sheet{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;width:130px;font-size:11px}
figure img{width:128px;height:128px;object-fit:contain;background:#eee;border:1px solid #ccc}
figcaption{overflow-wrap:anywhere}.note{color:#a00}.small{color:#666;font-size:12px}"""


def render_html(report: Dict[str, Any], svg: str) -> str:
    rows = table_rows(report)
    e = html.escape
    models = ", ".join(f"{k} <code>{e(v['folder'])}</code>" for k, v in report["models"].items())
    h = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>dreamdist3d eval</title>',
         f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>', "<h1>dreamdist3d eval</h1>",
         f'<p class="small">references: <code>{e(report["refs"]["folder"])}</code> ({report["refs"]["n"]} images)'
         + (f'; prompt: “{e(report["prompt"])}”' if report.get("prompt") else "")
         + f"; models: {models}"
         + f'; device {e(report["device"])}; {report["cache"]["embedded"]} image features computed, '
         f'{report["cache"]["from_cache"]} from the cache.</p>',
         "<h2>Metrics</h2><table>", "<tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>"]
    h += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
    h.append("</table>")
    h.append('<p class="small">FD/KD and precision/recall/density/coverage (k=5, Naeem et al. 2020) on DINOv2 CLS '
             "features; diversity = mean pairwise 1−cos (DINOv2); CLIP-I / DINO-I = mean cosine to the references; "
             "CLIP-T = mean cosine to the prompt. KD is an unbiased estimate, so it can be slightly negative when "
             "the sets are alike. With a few images per set every number is noisy: compare sets of equal size "
             "against the same references.</p>")
    for n in report.get("notes", []):
        h.append(f'<p class="note">{e(n)}</p>')
    h += ["<h2>Coverage vs precision</h2>", svg]
    for group, sets in sweep_groups(report).items():
        h += [f"<h2>Sweep: {e(group)}</h2>", sweep_svg(sets)]
    h.append(f'<h2>References ({report["refs"]["n"]})</h2><div class="sheet">')
    h += [_figure(im["thumb"], e(im["name"])) for im in report["refs"]["images"]]
    h.append("</div>")
    for s in report["sets"]:
        m = s["metrics"]
        h.append(f'<h2>{e(s["name"])}</h2><p class="small"><code>{e(s["folder"])}</code> — {s["metrics"]["n"]} images'
                 + (f' ({s["objects"]} 3D runs × {s["views"]} turntable views)' if s["kind"] == "3d" else "")
                 + f'; coverage {_fmt(m["coverage"], ".2f")}, precision {_fmt(m["precision"], ".2f")}, '
                 f'FD-DINOv2 {_fmt(m["fd_dinov2"], ".1f")}</p><div class="sheet">')
        for im in s["images"]:
            cap = f'{e(im["name"])}<br>→ {e(im["nearest_ref"])} ({im["nearest_cos"]:.2f})'
            h.append(_figure(im["thumb"], cap, title=f'nearest reference by DINOv2 cosine: {im["nearest_ref"]}'))
        h.append("</div>")
    h.append("</body></html>")
    return "\n".join(h)


def render_md(report: Dict[str, Any]) -> str:
    md = ["# dreamdist3d eval", "", f"References: `{report['refs']['folder']}` ({report['refs']['n']} images)."
          + (f" Prompt: \"{report['prompt']}\"." if report.get("prompt") else ""), "", format_table(report), ""]
    md += ["FD/KD and precision/recall/density/coverage (k=5) on DINOv2 features; KD is an unbiased estimate (it can "
           "be "
           "slightly negative for alike sets); with a few images per set every number is noisy.", ""]
    md += [f"- {n}" for n in report.get("notes", [])]
    md += ["", "![coverage vs precision](coverage-precision.svg)", ""]
    md += [f"![sweep {g}](sweep-{i}.svg)" for i, g in enumerate(sweep_groups(report))]
    md += ["", "Nearest reference (DINOv2 cosine) per image:", ""]
    for s in report["sets"]:
        md.append(f"- **{s['name']}**: " + "; ".join(f"{im['name']} → {im['nearest_ref']} ({im['nearest_cos']:.2f})"
                                                 for im in s["images"]))
    md += ["", "The pictures: report.html."]
    return "\n".join(md) + "\n"


def write_report(report: Dict[str, Any], out: Path, refs: Any, sets: Sequence[Any]) -> Dict[str, Path]:
    """Thumbnails, coverage-precision.svg, report.json, report.md, report.html under `out`. `refs`/`sets`: the
    `ImageSet`s the report was computed from (for the thumbnails); `report` gains the thumbnail paths."""
    from dreamdist3d.io import atomic_path

    out = Path(out)
    for im, thumb in zip(report["refs"]["images"], write_thumbs(out, refs.items)):
        im["thumb"] = thumb
    for s, imgs in zip(report["sets"], sets):
        for im, thumb in zip(s["images"], write_thumbs(out, imgs.items)):
            im["thumb"] = thumb
    svg = scatter_svg([{"name": s["name"], **s["metrics"]} for s in report["sets"]])
    files = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html",
             "svg": out / "coverage-precision.svg"}
    texts = {"json": json.dumps(report, indent=1, ensure_ascii=False), "md": render_md(report),
             "html": render_html(report, svg), "svg": svg}
    for i, sets in enumerate(sweep_groups(report).values()):
        files[f"sweep{i}"], texts[f"sweep{i}"] = out / f"sweep-{i}.svg", sweep_svg(sets)
    for key, path in files.items():
        with atomic_path(path) as tmp:
            tmp.write_text(texts[key] + ("" if texts[key].endswith("\n") else "\n"), encoding="utf-8")
    return files


__all__ = ["COLUMNS", "format_table", "render_html", "render_md", "scatter_svg", "sweep_groups", "sweep_svg",
           "table_rows", "write_report",
           "write_thumbs"]
