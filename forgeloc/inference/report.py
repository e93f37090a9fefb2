"""One self-contained HTML file summarising a prediction run, to open in any browser or send on.

Everything is inside the file: thumbnails are embedded as base64 JPEGs (downscaled to
:data:`THUMB_SIDE` pixels on the longer side, so a few hundred images stay a few megabytes), the
style sheet and the small table-sorting script are inline, and nothing is fetched from the
network. Every string that comes from outside (file names, paths, error messages, checkpoint
paths) is HTML-escaped, and a Content-Security-Policy allows only the report's own script (by
hash), so a file named ``<script>…`` cannot run code in the reader's browser.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgeloc.inference import visualize as viz
from forgeloc.inference.predictor import Prediction, PredictionFailure

__all__ = ["THUMB_SIDE", "ReportEntry", "render_report", "report_entry", "write_report"]

#: Longer side, in pixels, of the thumbnails embedded in a report.
THUMB_SIDE = 480


@dataclass
class ReportEntry:
    """What the report shows for one image (thumbnails already encoded, so photos can be freed)."""

    name: str
    path: str | None
    width: int
    height: int
    score: float
    tampered_fraction: float
    mode: str
    photo_jpeg: bytes
    overlay_jpeg: bytes
    files: dict[str, str] = field(default_factory=dict)


def report_entry(
    prediction: Prediction,
    overlay: np.ndarray | None = None,
    files: Mapping[str, str] | None = None,
    thumb_side: int = THUMB_SIDE,
    name: str | None = None,
) -> ReportEntry:
    """Thumbnails and numbers of one prediction; pass ``overlay`` if you already computed it."""
    over = overlay if overlay is not None else prediction.overlay()
    return ReportEntry(
        name=name or prediction.name,
        path=prediction.source,
        width=prediction.width,
        height=prediction.height,
        score=float(prediction.score),
        tampered_fraction=prediction.tampered_fraction,
        mode=prediction.mode,
        photo_jpeg=viz.encode_jpeg(viz.resize_to_fit(prediction.image, thumb_side), 80),
        overlay_jpeg=viz.encode_jpeg(viz.resize_to_fit(over, thumb_side), 80),
        files=dict(files or {}),
    )


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:1.5em;margin:0 0 4px}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:.9em;margin:12px 0;
 background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px}
.meta dt{color:#666}.meta dd{margin:0;word-break:break-all}
.note{font-size:.85em;color:#555;max-width:70em}
table{border-collapse:collapse;background:#fff;margin-top:12px}
th,td{border-bottom:1px solid #e3e3e3;padding:6px 10px;text-align:left;vertical-align:middle}
th{background:#f0f0f0;position:sticky;top:0}
th button{font:inherit;font-weight:600;background:none;border:0;cursor:pointer;padding:0}
th button::after{content:" \\2195";color:#999}
th[aria-sort=ascending] button::after{content:" \\2191";color:#000}
th[aria-sort=descending] button::after{content:" \\2193";color:#000}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.name{max-width:22em;word-break:break-all}
img.thumb{max-width:240px;max-height:240px;display:block;cursor:zoom-in}
img.thumb.big{max-width:90vw;max-height:90vh;cursor:zoom-out}
.bar{height:6px;background:#eee;border-radius:3px;margin-top:3px;width:90px}
.bar span{display:block;height:6px;border-radius:3px;background:#b5367a}
.failures{background:#fff4f4;border:1px solid #e0b4b4;border-radius:6px;padding:8px 14px;margin-top:16px}
.failures li{word-break:break-all}
"""

# Sorts the table by the clicked column (numbers by data-value, text by locale); no libraries.
_SCRIPT = """
document.querySelectorAll("th[data-col] button").forEach(function (btn) {
  btn.addEventListener("click", function () {
    var th = btn.parentElement, table = th.closest("table"), body = table.tBodies[0];
    var col = Number(th.dataset.col), numeric = th.dataset.type === "num";
    var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return dir * c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.querySelectorAll("img.thumb").forEach(function (img) {
  img.addEventListener("click", function () { img.classList.toggle("big"); });
});
""".strip()


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _row(entry: ReportEntry, rank: int) -> str:
    pct = 100.0 * entry.tampered_fraction
    name = _esc(entry.name)
    path = _esc(entry.path or entry.name)
    return (
        "<tr>"
        f'<td class="num" data-value="{rank}">{rank}</td>'
        f'<td data-value="{name}"><img class="thumb" alt="photo {name}" src="{_data_url(entry.photo_jpeg)}"></td>'
        f'<td data-value="{name}"><img class="thumb" alt="overlay {name}" src="{_data_url(entry.overlay_jpeg)}"></td>'
        f'<td class="name" data-value="{name}" title="{path}">{name}</td>'
        f'<td class="num score" data-value="{entry.score:.6f}">{entry.score:.3f}'
        f'<div class="bar"><span style="width:{100 * min(max(entry.score, 0.0), 1.0):.1f}%"></span></div></td>'
        f'<td class="num" data-value="{entry.tampered_fraction:.6f}">{pct:.2f} %</td>'
        f'<td class="num" data-value="{entry.width * entry.height}">{entry.width}×{entry.height}</td>'
        f'<td data-value="{_esc(entry.mode)}">{_esc(entry.mode)}</td>'
        "</tr>"
    )


def render_report(
    entries: Iterable[ReportEntry],
    info: Mapping[str, Any],
    failures: Iterable[PredictionFailure] = (),
    title: str = "forgeloc report",
) -> str:
    """The report's HTML (rows sorted by score, highest first; click a header to re-sort)."""
    rows = sorted(entries, key=lambda e: (-e.score, e.name))
    failures = list(failures)
    generated = _dt.datetime.now(_dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in info.items() if v not in (None, ""))
    meta += f"<dt>images</dt><dd>{len(rows)} predicted, {len(failures)} failed</dd>"
    meta += f"<dt>generated</dt><dd>{generated}</dd>"
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    failure_html = ""
    if failures:
        items = "".join(f"<li><b>{_esc(f.source or f.name)}</b>: {_esc(f.error)}</li>" for f in failures)
        failure_html = f'<section class="failures"><h2>Not analysed ({len(failures)})</h2><ul>{items}</ul></section>'
    columns = [("#", "num"), ("Photo", ""), ("Overlay", ""), ("Name", "text"), ("Score", "num"),
               ("Tampered area", "num"), ("Size", "num"), ("Mode", "text")]
    cells = []
    for i, (label, kind) in enumerate(columns):
        if not kind:
            cells.append(f"<th>{label}</th>")
            continue
        initial = ' aria-sort="descending"' if label == "Score" else ""
        cells.append(f'<th data-col="{i}" data-type="{kind}"{initial}><button type="button">{label}</button></th>')
    header = "".join(cells)
    body = "".join(_row(e, i + 1) for i, e in enumerate(rows))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{_esc(title)}</h1>
<dl class="meta">{meta}</dl>
<p class="note">Score: how strongly the model believes the image was manipulated (0 to 1; not a calibrated
probability). Tampered area: share of pixels whose heatmap value exceeds the threshold. In the overlay,
brighter colour = more suspicious and the cyan line outlines the thresholded region. A model's output
is a lead to examine, not proof; models miss manipulations unlike those they were trained on and can
flag genuine images. Click a column header to sort, a picture to enlarge it.</p>
<table id="results"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
{failure_html}
<script>{_SCRIPT}</script>
</body></html>
"""


def write_report(
    path: str | Path,
    entries: Iterable[ReportEntry],
    info: Mapping[str, Any],
    failures: Iterable[PredictionFailure] = (),
    title: str = "forgeloc report",
) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(entries, info, failures, title), encoding="utf-8")
    return path
