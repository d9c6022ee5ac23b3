"""report.html for `dreamdist3d toyworld eval`, from the report.json (and sheet PNGs) the toy evaluator writes.

Per reference set: the metrics table (one row per method, calibration rows included), a coverage-vs-in-distribution
scatter (one point per method: coverage alone rewards spread, the in-distribution rate alone rewards collapse, so the
two are read together) and the sheet of every image with its verdict; then the claim check and the caption check.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List

from dreamdist3d.evaluation.report import CSS, scatter_svg

TOY_COLUMNS = ("n", "reject", "in_dist", "in_dist_acc", "coverage", "density", "precision", "recall", "diversity",
               "pix_div")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.3f}"
    return html.escape(str(v))


def render_toy_html(report: Dict[str, Any]) -> str:
    e = html.escape
    rows: List[Dict[str, Any]] = report.get("table", [])
    cfg = report.get("config", {})
    h = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>toy-world evaluation</title>',
         f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>', "<h1>Toy-world evaluation</h1>",
         f'<p class="small">backbone <code>{e(str(report.get("backbone", "")))}</code>; {cfg.get("n", "?")} samples '
         f'per method; learning {cfg.get("steps", "?")} steps (K={cfg.get("n_prompts", "?")} and K=1); DDIM '
         f'{cfg.get("sample_steps", "?")} steps, CFG {cfg.get("guidance", "?")}; k={cfg.get("k", 5)}.</p>']
    claims = report.get("claim") or {}
    if claims:
        h.append("<h2>Claim</h2><p>K=32 coverage higher than K=1 at an in-distribution rate at most 0.15 "
                 "below:</p><ul>")
        h += [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in claims.items()]
        h.append("</ul>")
    for name, info in (report.get("refsets") or {}).items():
        mine = [r for r in rows if r.get("refset") == name]
        h.append(f"<h2>{e(name)}</h2>")
        if info.get("description"):
            h.append(f'<p class="small">{e(str(info["description"]))}</p>')
        h.append("<table><tr><th>method</th>" + "".join(f"<th>{c}</th>" for c in TOY_COLUMNS) + "</tr>")
        h += ["<tr><td>" + e(str(r.get("method"))) + "</td>"
              + "".join(f"<td>{_cell(r.get(c))}</td>" for c in TOY_COLUMNS) + "</tr>" for r in mine]
        h.append("</table>")
        points = [{"name": str(r["method"]), "coverage": r.get("coverage"), "in_dist": r.get("in_dist")} for r in mine]
        h.append(scatter_svg(points, x="coverage", y="in_dist", size=420))
        sheet = Path(str(info.get("sheet", ""))).name
        if sheet:
            h.append(f'<p><img src="{e(sheet)}" alt="sheet {e(name)}" style="max-width:100%;image-rendering:pixelated">'
                     "</p><p class='small'>Border: green = in distribution, orange = accepted but outside, red = "
                     "rejected by the attribute reader.</p>")
    check = report.get("caption_check")
    if check:
        h.append("<h2>Caption check</h2><p class='small'>" + e(
            f"{check.get('n')} seen-world captions, {check.get('views')} view(s): accepted {check.get('accepted')}, "
            f"colour {check.get('colour')}, shape {check.get('shape')}, colour and shape "
            f"{check.get('colour_and_shape')}") + "</p>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"


def write_toy_html(out) -> Path:
    """out/report.html from out/report.json (written by `dreamdist3d.recipes.toy_eval.evaluate`)."""
    from dreamdist3d.io import atomic_path

    out = Path(out)
    report = json.loads((out / "report.json").read_text())
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render_toy_html(report), encoding="utf-8")
    return path


__all__ = ["render_toy_html", "write_toy_html"]
