"""One self-contained HTML file summarising a prediction run, to open in any browser or send on.

What it shows:

* the **model's identity and reliability** at the top (:attr:`Prediction.model_label`: "unvalidated
  model" / "demo model" for checkpoints without a model card, the card's headline numbers when there
  is one), the **verdict bands** (``describe()["calibration"]``) and a **colour legend** of the
  heatmap with the mask threshold marked;
* a **chain-of-custody** block for the run (forgeloc version, model, weights SHA-256, command line,
  date in ISO 8601 UTC) and, per photo, the SHA-256 and size of the bytes that were analysed, its
  dimensions, the prediction mode and why it was chosen;
* one sortable row per photo (photo | overlay | heatmap side by side, click to enlarge; the
  verdict in words with its score, in three colours) and, under it, a collapsed ``<details>`` with
  the custody facts, links to the full-resolution files written next to the report, and **one
  panel per training-free cue** (its map, or "not applicable: <reason>", or its facts; its score;
  the registry's "What to look for" / "What to ignore" lines).

Everything is inside the file: pictures are embedded as base64 JPEGs, downscaled (thumbnails to
:data:`THUMB_SIDE`, cue maps to :data:`CUE_SIDE` pixels on the longer side) so a few hundred images
stay a few tens of megabytes; cue maps are decoded only when their ``<details>`` is opened (the
script moves ``data-src`` to ``src``). The style sheet and the small script are inline, and nothing
is fetched from the network. Every string that comes from outside (file names, paths, error
messages, metadata, checkpoint paths) is HTML-escaped, and a Content-Security-Policy allows only the
report's own script (by hash), so a file named ``<script>…`` cannot run code in the reader's browser.

The helpers that turn a prediction into words and panels (:func:`verdict_text`, :func:`cue_panels`,
:func:`mode_reason`, :func:`weights_sha256`, :func:`run_provenance`) are shared with the web page
(:mod:`forgeloc.inference.server`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import html
import os
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgeloc.inference import visualize as viz
from forgeloc.inference.predictor import VERDICTS, Prediction, PredictionFailure

__all__ = [
    "CUE_QUALITY",
    "CUE_SIDE",
    "KIND_LABELS",
    "THUMB_SIDE",
    "CuePanel",
    "ReportEntry",
    "cue_panels",
    "facts_rows",
    "mode_reason",
    "render_report",
    "report_entry",
    "run_provenance",
    "utc_now",
    "verdict_bands",
    "verdict_class",
    "verdict_text",
    "weights_sha256",
    "write_report",
]

#: Longer side, in pixels, of the thumbnails embedded in a report.
THUMB_SIDE = 480
#: Longer side, in pixels, of the cue maps embedded in a report (the page uses at most 1024).
CUE_SIDE = 512
#: JPEG quality of the embedded cue maps (ELA's fine texture is most of a report's size otherwise).
CUE_QUALITY = 70

#: How each kind of cue is named next to its panel.
KIND_LABELS = {"detector": "detector", "visual_aid": "visual aid, not a detector", "facts": "facts from the file"}

_VERDICT_CLASSES = dict(zip(VERDICTS, ("v-clear", "v-inconclusive", "v-likely"), strict=True))


# --------------------------------------------------------------------------------------------------
# Words: verdicts, bands, modes
# --------------------------------------------------------------------------------------------------
def verdict_text(score: float, verdict: str | None) -> str:
    """``"likely manipulated (0.87)"``; ``"0.87 (uncalibrated score)"`` without a verdict."""
    if verdict is None:
        return f"{score:.2f} (uncalibrated score)"
    return f"{verdict} ({score:.2f})"


def verdict_class(verdict: str | None) -> str:
    """CSS class of a verdict: ``v-clear`` / ``v-inconclusive`` / ``v-likely`` / ``v-uncalibrated``."""
    return _VERDICT_CLASSES.get(verdict, "v-uncalibrated") if verdict is not None else "v-uncalibrated"


def verdict_bands(calibration: Mapping[str, Any] | None) -> str:
    """The score bands of the three verdicts in one line (or why there are none)."""
    if not calibration:
        return ("this model is not calibrated: scores are shown as uncalibrated scores, with no verdict in words "
                "(a high score is not a probability of manipulation)")
    low, high = float(calibration["low"]), float(calibration["high"])
    text = (f"{VERDICTS[0]}: score < {low:.2f} · {VERDICTS[1]}: {low:.2f} ≤ score < {high:.2f} · "
            f"{VERDICTS[2]}: score ≥ {high:.2f}")
    how = "; ".join(str(calibration[k]) for k in ("method", "data") if calibration.get(k))
    return f"{text} ({how})" if how else text


def mode_reason(
    prediction: Prediction, requested_mode: str | None = None, input_size: int | None = None
) -> str:
    """Why the prediction ran the way it did, in words (the predictor's own reason when it records one)."""
    recorded = prediction.extra.get("mode_reason") if isinstance(prediction.extra, dict) else None
    if recorded:
        return str(recorded)
    reads = ("the file's own JPEG DCT coefficients" if "jpeg_dct" in prediction.streams else "the decoded pixels")
    if prediction.mode == "native":
        if prediction.windows == 0:
            return "no learned model: the training-free detectors' maps are the result"
        return (f"native resolution in {prediction.windows} window(s), never resized: the model reads block-grid "
                f"traces that resizing would destroy; it read {reads}")
    if requested_mode in ("resize", "tile"):
        why = "as requested"
    elif requested_mode == "auto":
        why = ("auto: the model was trained on padded, never resized, inputs" if prediction.mode == "tile"
               else "auto: the model was trained on inputs resized to its input size")
        if input_size:
            why += f" ({input_size}² px; the photo is {prediction.width}×{prediction.height})"
    else:
        why = ""
    how = (f"tile: {prediction.windows} overlapping windows at full resolution" if prediction.mode == "tile"
           else "resize: the whole photo resized to the model's input")
    return f"{how} ({why})" if why else how


# --------------------------------------------------------------------------------------------------
# Provenance: hashes, run information
# --------------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(Path(path))


def _weights_file(checkpoint: str | os.PathLike | None) -> Path | None:
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    return path if path.is_file() else None


def weights_sha256(checkpoint: str | os.PathLike | None) -> str | None:
    """SHA-256 of a checkpoint's weights (``model.safetensors`` of a folder, or the weights file
    itself); ``None`` when there is no such file. Cached per path, size and modification time."""
    path = _weights_file(checkpoint)
    if path is None:
        return None
    stat = path.stat()
    return _cached_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def utc_now() -> str:
    """The current time in ISO 8601 UTC, to the second (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _command_text(command: str | Sequence[str] | None) -> str | None:
    if command is None:
        return None
    if isinstance(command, str):
        return command
    return shlex.join(str(c) for c in command)


def run_provenance(
    describe: Mapping[str, Any] | None = None,
    command: str | Sequence[str] | None = None,
    date: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The run's chain-of-custody facts, in display order: forgeloc version, model, model label,
    checkpoint, weights SHA-256, command line, date (ISO 8601 UTC). ``describe`` is
    :meth:`Predictor.describe`; ``info`` a fallback for the model and checkpoint."""
    from forgeloc.version import __version__

    describe = describe or {}
    info = info or {}
    checkpoint = describe.get("checkpoint") or info.get("checkpoint")
    weights_file = _weights_file(checkpoint)
    try:
        weights = weights_sha256(checkpoint)
    except OSError:
        weights = None
    if checkpoint:
        checkpoint_text = str(checkpoint)
    elif describe.get("detector"):
        checkpoint_text = "none (training-free detectors)"
    else:
        checkpoint_text = "not recorded"
    out = {
        "forgeloc version": __version__,
        "model": str(describe.get("model") or info.get("model") or "not recorded"),
        "model label": str(describe.get("label") or info.get("label") or "not recorded"),
        "checkpoint": checkpoint_text,
        "weights SHA-256": (f"{weights} ({weights_file.name})" if weights and weights_file
                            else "not available (no weights file found)"),
        "command": _command_text(command) or "not recorded",
        "date (UTC)": date or utc_now(),
    }
    return out


def _input_hash(prediction: Prediction, data: bytes | None) -> tuple[str | None, int | None, str]:
    """(sha256, size in bytes, what was hashed) of one prediction's input."""
    if data is not None:
        return hashlib.sha256(data).hexdigest(), len(data), "bytes received"
    extra = prediction.extra if isinstance(prediction.extra, dict) else {}
    if extra.get("sha256"):
        size = extra.get("file_size")
        return str(extra["sha256"]), None if size is None else int(size), "file bytes read by the predictor"
    if prediction.source:
        path = Path(prediction.source)
        try:
            if path.is_file():
                return _sha256_file(path), path.stat().st_size, "file bytes"
        except OSError:
            pass
        return None, None, "file unreadable when the report was written"
    pixels = np.ascontiguousarray(prediction.image)
    return hashlib.sha256(pixels.tobytes()).hexdigest(), int(pixels.nbytes), "decoded RGB pixels (no file)"


# --------------------------------------------------------------------------------------------------
# Cue panels
# --------------------------------------------------------------------------------------------------
@dataclass
class CuePanel:
    """What a report or the page shows for one cue on one photo (its map already encoded)."""

    name: str
    kind: str
    applicable: bool
    reason: str
    score: float | None
    fused: bool
    look_for: str
    ignore: str
    map_jpeg: bytes | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    seconds: float | None = None

    @property
    def kind_label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def to_json(self) -> dict[str, Any]:
        """JSON for the web page (the map as a ``data:`` URL)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "kind_label": self.kind_label,
            "applicable": self.applicable,
            "reason": self.reason,
            "score": None if self.score is None else round(float(self.score), 6),
            "fused": self.fused,
            "look_for": self.look_for,
            "ignore": self.ignore,
            "image": None if self.map_jpeg is None else _data_url(self.map_jpeg),
            "facts": [list(row) for row in self.facts],
            "seconds": self.seconds,
        }


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _generic_rows(items: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    rows = []
    for key, value in items:
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            text = "; ".join(f"{k}: {v}" for k, v in value.items() if not isinstance(v, (list, dict)))
        elif isinstance(value, (list, tuple)):
            if len(value) > 12:
                continue  # tables of numbers (quantization steps ...) are for the JSON, not for reading
            text = "; ".join(str(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        if text:
            rows.append((str(key).replace("_", " "), _short(text)))
    return rows


def facts_rows(extra: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A facts cue's ``extra`` as ``(term, description)`` rows for a definition list: metadata's
    camera, software, dates, thumbnail, quantization and hints first, any other fact after."""
    extra = dict(extra)
    rows: list[tuple[str, str]] = []
    used = {"seconds", "readable", "has_exif"}
    exif = extra.get("exif") if isinstance(extra.get("exif"), dict) else {}
    if "exif" in extra or "format" in extra:
        used |= {"exif", "format", "width", "height", "xmp_creator_tool", "editing_software", "thumbnail",
                 "quantization", "png_text", "exif_problems", "hints"}
        fmt, w, h = extra.get("format"), extra.get("width"), extra.get("height")
        if fmt:
            rows.append(("file", f"{fmt}" + (f", {w}×{h} px as stored" if w and h else "")))
        camera = " ".join(str(exif[k]) for k in ("make", "model") if exif.get(k))
        rows.append(("camera", camera or "not recorded"))
        if exif.get("lens_model"):
            rows.append(("lens", str(exif["lens_model"])))
        software = [str(v) for v in (exif.get("software"), extra.get("xmp_creator_tool")) if v]
        rows.append(("software", "; ".join(dict.fromkeys(software)) or "not recorded"))
        editor = extra.get("editing_software")
        if isinstance(editor, dict) and editor.get("name"):
            rows.append(("editor named", f"{editor['name']} (in {editor.get('field', 'the file')})"))
        dates = [(label, exif.get(key)) for label, key in (("taken", "datetime_original"),
                                                          ("digitized", "datetime_digitized"),
                                                          ("last written", "datetime"))]
        rows.append(("dates", "; ".join(f"{label} {value}" for label, value in dates if value) or "not recorded"))
        rows += _generic_rows((k, v) for k, v in exif.items()
                              if k not in ("make", "model", "lens_model", "software", "datetime_original",
                                           "datetime_digitized", "datetime"))
        thumb = extra.get("thumbnail")
        if isinstance(thumb, dict):
            if not thumb.get("present"):
                text = "none embedded"
            elif not thumb.get("readable", True):
                text = "embedded but unreadable"
            else:
                size = f"{thumb.get('width')}×{thumb.get('height')} px" if thumb.get("width") else "embedded"
                diff = thumb.get("mean_difference")
                diff_text = f" (mean difference {diff:.3g})" if isinstance(diff, (int, float)) else ""
                text = f"{size}, {'DIFFERS from' if thumb.get('disagrees') else 'agrees with'} the photo{diff_text}"
            rows.append(("thumbnail", text))
        quant = extra.get("quantization")
        if isinstance(quant, dict):
            q = quant.get("quality")
            text = f"quality ≈ {q}" if q is not None else "read"
            if quant.get("note"):
                text += f": {quant['note']}"
            rows.append(("JPEG quantization", _short(text)))
        png_text = extra.get("png_text")
        if isinstance(png_text, dict) and png_text:
            rows.append(("PNG text", _short("; ".join(f"{k}: {v}" for k, v in png_text.items()))))
        problems = extra.get("exif_problems")
        if problems:
            rows.append(("EXIF problems", _short("; ".join(map(str, problems)))))
        for hint in extra.get("hints") or []:
            rows.append(("hint", _short(hint, 500)))
    rows += _generic_rows((k, v) for k, v in extra.items() if k not in used)
    return rows


def cue_panels(prediction: Prediction, side: int = CUE_SIDE, quality: int = 80) -> list[CuePanel]:
    """One :class:`CuePanel` per cue in ``prediction.cues`` (in the order they ran); maps are
    coloured like the heatmap and downscaled to ``side`` pixels on the longer side."""
    from forgeloc.detectors import CUES

    panels = []
    for name, cue in prediction.cues.items():
        info = CUES.get(name)
        kind = cue.kind or (info.kind if info else "detector")
        map_jpeg = None
        if cue.applicable and cue.heatmap is not None and kind != "facts":
            map_jpeg = viz.encode_jpeg(viz.colorize_fit(cue.heatmap, side), quality)
        extra = cue.extra if isinstance(cue.extra, dict) else {}
        seconds = extra.get("seconds")
        panels.append(CuePanel(
            name=name,
            kind=kind,
            applicable=bool(cue.applicable),
            reason=str(cue.reason or ""),
            score=None if cue.score is None else float(cue.score),
            fused=name in prediction.fused,
            look_for=info.look_for if info else "",
            ignore=info.ignore if info else "",
            map_jpeg=map_jpeg,
            facts=facts_rows(extra) if kind == "facts" and cue.applicable else [],
            seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
        ))
    return panels


# --------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------
@dataclass
class ReportEntry:
    """What the report shows for one image (pictures already encoded, so photos can be freed)."""

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
    heatmap_jpeg: bytes = b""
    verdict: str | None = None
    model_label: str = ""
    threshold: float = 0.5
    windows: int = 1
    streams: list[str] = field(default_factory=lambda: ["pixels"])
    fused: list[str] = field(default_factory=lambda: ["model"])
    mode_reason: str = ""
    sha256: str | None = None
    sha256_of: str = ""
    file_size: int | None = None
    cues: list[CuePanel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the file was read, e.g. "animated GIF: frame 1 of 12"


def report_entry(
    prediction: Prediction,
    overlay: np.ndarray | None = None,
    files: Mapping[str, str] | None = None,
    thumb_side: int = THUMB_SIDE,
    name: str | None = None,
    *,
    data: bytes | None = None,
    requested_mode: str | None = None,
    input_size: int | None = None,
    cue_side: int = CUE_SIDE,
) -> ReportEntry:
    """Thumbnails, cue panels and custody facts of one prediction.

    ``overlay``: pass it if you already computed it. ``files``: kind → path of the full-resolution
    files written for this image (``heatmap``, ``overlay``, ``mask``, ...), linked from the report;
    relative to the report's folder, or made so by ``render_report(files_base=...)``. ``data``: the
    bytes that were analysed, when the input was not a file on disk (an upload, bytes in memory);
    without it the SHA-256 is that of the predictor's record (``prediction.extra["sha256"]``), else
    of the file at ``prediction.source``, else of the decoded pixels (arrays). ``requested_mode``
    and ``input_size`` (``Predictor.input_size``) let the report say why a mode was chosen.
    """
    over = overlay if overlay is not None else prediction.overlay()
    sha, size, what = _input_hash(prediction, data)
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
        heatmap_jpeg=viz.encode_jpeg(viz.colorize_fit(prediction.heatmap, thumb_side), 80),
        verdict=prediction.verdict,
        model_label=prediction.model_label,
        threshold=float(prediction.threshold),
        windows=int(prediction.windows),
        streams=list(prediction.streams),
        fused=list(prediction.fused),
        mode_reason=mode_reason(prediction, requested_mode, input_size),
        sha256=sha,
        sha256_of=what,
        file_size=size,
        cues=cue_panels(prediction, cue_side, CUE_QUALITY),
        notes=list(prediction.notes),
    )


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:1.5em;margin:0 0 4px}
h2{font-size:1.1em;margin:18px 0 6px}
.model-label{font-size:1.1em;font-weight:600;margin:6px 0;padding:8px 12px;border-radius:6px;
 background:#eef3fb;border:1px solid #b9cbe8}
.model-label.warn{background:#fff4d6;border-color:#e2c26a}
.card{font-size:.9em;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 12px;margin:6px 0}
.card dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:4px 0}
.card dt{color:#666}.card dd{margin:0}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:.9em;margin:8px 0;
 background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px}
.meta dt{color:#666}.meta dd{margin:0;word-break:break-all}
.note{font-size:.85em;color:#555;max-width:70em}
.bands,.legend{font-size:.9em;margin:6px 0}
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:600;border:1px solid}
.v-clear{color:#17602d;background:#e3f3e8;border-color:#8cc79f}
.v-inconclusive{color:#7a4d00;background:#fff1cc;border-color:#e0b64a}
.v-likely{color:#a3161c;background:#fde3e3;border-color:#e59a9a}
.v-uncalibrated{color:#444;background:#eee;border-color:#bbb;font-weight:500}
.scale{display:inline-flex;align-items:center;gap:6px;vertical-align:middle}
.gradient{position:relative;display:inline-block;width:220px;height:12px;border-radius:3px}
.gradient .thr{position:absolute;top:-4px;bottom:-4px;width:2px;background:#00e5ff;box-shadow:0 0 0 1px #000}
table{border-collapse:collapse;background:#fff;margin-top:12px}
th,td{border-bottom:1px solid #e3e3e3;padding:6px 10px;text-align:left;vertical-align:middle}
tbody.entry tr.detail td{border-bottom:2px solid #cfcfd4;padding-top:0}
th{background:#f0f0f0;position:sticky;top:0;z-index:1}
th button{font:inherit;font-weight:600;background:none;border:0;cursor:pointer;padding:0}
th button::after{content:" \\2195";color:#999}
th[aria-sort=ascending] button::after{content:" \\2191";color:#000}
th[aria-sort=descending] button::after{content:" \\2193";color:#000}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.name{max-width:22em;word-break:break-all}
td.score{text-align:left}
.verdict{white-space:nowrap}
img.thumb{max-width:200px;max-height:200px;display:block;cursor:zoom-in}
img.thumb.big{max-width:90vw;max-height:90vh;cursor:zoom-out}
.bar{height:6px;background:#eee;border-radius:3px;margin-top:3px;width:90px}
.bar span{display:block;height:6px;border-radius:3px;background:#b5367a}
details.more summary{cursor:pointer;color:#444;font-size:.9em;padding:4px 0}
.custody{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:.85em;margin:6px 0}
.custody dt{color:#666}.custody dd{margin:0;word-break:break-all}
code.sha256{font-size:.95em}
.files a{margin-right:12px}
.cues{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px;margin:8px 0}
.cue{border:1px solid #ddd;border-radius:6px;padding:8px 10px;background:#fcfcfd;font-size:.85em}
.cue h3{font-size:1em;margin:0 0 4px}
.cue .kind{font-weight:400;color:#666;font-size:.9em}
.cue .kind.aid{color:#7a4d00}
.cue img{max-width:100%;display:block;margin:4px 0;cursor:zoom-in;background:#eee}
.cue img.big{max-width:90vw;cursor:zoom-out}
.cue .na{color:#666;font-style:italic}
.cue dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 10px;margin:4px 0}
.cue dt{color:#666}.cue dd{margin:0;word-break:break-word}
.cue p{margin:4px 0}
.tools button{font:inherit;font-size:.85em;margin-right:6px}
.failures{background:#fff4f4;border:1px solid #e0b4b4;border-radius:6px;padding:8px 14px;margin-top:16px}
.failures li{word-break:break-all}
"""

# Sorts the table by the clicked column (numbers by data-value, text by locale), one <tbody> per
# image so a photo's details travel with its row; decodes a photo's cue maps only when its details
# are opened; enlarges pictures on click. No libraries.
_SCRIPT = """
(function () {
  function load(root) {
    root.querySelectorAll("img[data-src]").forEach(function (img) {
      img.src = img.getAttribute("data-src");
      img.removeAttribute("data-src");
    });
  }
  document.querySelectorAll("details.more").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) { load(d); } });
  });
  function all(open) {
    document.querySelectorAll("details.more").forEach(function (d) { d.open = open; if (open) { load(d); } });
  }
  var expand = document.getElementById("expand-all"), collapse = document.getElementById("collapse-all");
  if (expand) { expand.addEventListener("click", function () { all(true); }); }
  if (collapse) { collapse.addEventListener("click", function () { all(false); }); }
  window.addEventListener("beforeprint", function () { all(true); });
  document.querySelectorAll("th[data-col] button").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var th = btn.parentElement, table = th.closest("table");
      var col = Number(th.dataset.col), numeric = th.dataset.type === "num";
      var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var bodies = Array.prototype.slice.call(table.tBodies);
      bodies.sort(function (a, b) {
        var x = a.rows[0].cells[col].dataset.value, y = b.rows[0].cells[col].dataset.value;
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return dir * c;
      });
      bodies.forEach(function (b) { table.appendChild(b); });
    });
  });
  document.addEventListener("click", function (e) {
    var img = e.target;
    if (img.tagName === "IMG" && (img.classList.contains("thumb") || img.closest(".cue"))) {
      img.classList.toggle("big");
    }
  });
})();
""".strip()


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _dl(rows: Iterable[tuple[str, str]], cls: str = "") -> str:
    body = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    return f'<dl class="{cls}">{body}</dl>' if cls else f"<dl>{body}</dl>"


def _file_href(path: str, base: str | os.PathLike | None) -> str | None:
    """A relative, percent-encoded link to a file written next to the report (``None``: not linkable)."""
    p = str(path)
    if base is not None:
        try:
            p = os.path.relpath(os.path.abspath(p), os.path.abspath(base))
        except ValueError:  # another drive on Windows
            return None
    p = p.replace(os.sep, "/")
    if not p or os.path.isabs(p) or p.startswith("/") or p.split("/", 1)[0] == "..":
        return None
    return urllib.parse.quote(p)


_FILE_LABELS = {"heatmap": "heatmap", "overlay": "overlay", "mask": "mask", "json": "JSON"}


def _cue_panel_html(panel: CuePanel, name: str) -> str:
    kind_cls = "kind aid" if panel.kind == "visual_aid" else "kind"
    fused = " · fused into the heatmap" if panel.fused else ""
    head = (f'<h3>{_esc(panel.name)} <span class="{kind_cls}">({_esc(panel.kind_label)}{fused})</span></h3>')
    if not panel.applicable:
        body = f'<p class="na">not applicable: {_esc(panel.reason or "no reason given")}</p>'
    elif panel.kind == "facts":
        body = _dl(panel.facts, "facts") if panel.facts else '<p class="na">no facts recorded</p>'
    elif panel.map_jpeg is not None:
        body = (f'<img alt="{_esc(panel.name)} map of {name}" '
                f'data-src="{_data_url(panel.map_jpeg)}">')
    else:
        body = '<p class="na">no map</p>'
    score = ""
    if panel.score is not None:
        score = f'<p>score <b class="cue-score">{panel.score:.3f}</b></p>'
    elif panel.kind == "visual_aid" and panel.applicable:
        score = "<p>no score: a visual aid is never used for the score</p>"
    if panel.reason and panel.applicable:
        score += f'<p class="na">{_esc(panel.reason)}</p>'
    guide = ""
    if panel.look_for:
        guide += f"<p><b>What to look for:</b> {_esc(panel.look_for)}</p>"
    if panel.ignore:
        guide += f"<p><b>What to ignore:</b> {_esc(panel.ignore)}</p>"
    return f'<section class="cue" data-cue="{_esc(panel.name)}">{head}{body}{score}{guide}</section>'


def _size_text(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n:,} bytes"
    unit = "KB" if n < 1024 * 1024 else "MB"
    value = n / 1024 if unit == "KB" else n / 1024 / 1024
    return f"{value:.1f} {unit} ({n:,} bytes)"


def _entry_html(entry: ReportEntry, rank: int, columns: int, files_base: str | os.PathLike | None) -> str:
    pct = 100.0 * entry.tampered_fraction
    name = _esc(entry.name)
    path = _esc(entry.path or entry.name)
    vcls = verdict_class(entry.verdict)
    vtext = _esc(verdict_text(entry.score, entry.verdict))
    heat_cell = (f'<img class="thumb" alt="heatmap {name}" src="{_data_url(entry.heatmap_jpeg)}">'
                 if entry.heatmap_jpeg else "")
    row = (
        "<tr>"
        f'<td class="num" data-value="{rank}">{rank}</td>'
        f'<td data-value="{name}"><img class="thumb" alt="photo {name}" src="{_data_url(entry.photo_jpeg)}"></td>'
        f'<td data-value="{name}"><img class="thumb" alt="overlay {name}" src="{_data_url(entry.overlay_jpeg)}"></td>'
        f'<td data-value="{name}">{heat_cell}</td>'
        f'<td class="name" data-value="{name}" title="{path}">{name}</td>'
        f'<td class="num score" data-value="{entry.score:.6f}" title="score {entry.score:.3f}">'
        f'<span class="verdict {vcls}">{vtext}</span>'
        f'<div class="bar"><span style="width:{100 * min(max(entry.score, 0.0), 1.0):.1f}%"></span></div></td>'
        f'<td class="num" data-value="{entry.tampered_fraction:.6f}">{pct:.2f} %</td>'
        f'<td class="num" data-value="{entry.width * entry.height}">{entry.width}×{entry.height}</td>'
        f'<td data-value="{_esc(entry.mode)}">{_esc(entry.mode)}</td>'
        "</tr>"
    )
    sha = (f'<code class="sha256">{_esc(entry.sha256)}</code> <span class="of">({_esc(entry.sha256_of)})</span>'
           if entry.sha256 else f"not available ({_esc(entry.sha256_of)})")
    streams = {"jpeg_dct": "the file's JPEG DCT coefficients", "pixels": "decoded pixels"}
    custody = (
        '<dl class="custody">'
        f"<dt>SHA-256</dt><dd>{sha}</dd>"
        f"<dt>file size</dt><dd>{_esc(_size_text(entry.file_size))}</dd>"
        f"<dt>dimensions</dt><dd>{entry.width}×{entry.height} px</dd>"
        f"<dt>source</dt><dd>{path}</dd>"
        f"<dt>mode</dt><dd>{_esc(entry.mode_reason or entry.mode)}</dd>"
        f"<dt>model read</dt><dd>{_esc(', '.join(streams.get(s, s) for s in entry.streams))}</dd>"
        f"<dt>heatmap fuses</dt><dd>{_esc(', '.join(entry.fused) or 'nothing')}</dd>"
        f"<dt>score</dt><dd>{entry.score:.4f} (mask threshold {entry.threshold:g})</dd>"
        + "".join(f'<dt>note</dt><dd class="note">{_esc(note)}</dd>' for note in entry.notes)
        + "</dl>"
    )
    links = []
    for kind, target in entry.files.items():
        href = _file_href(target, files_base)
        if href is not None:
            label = _FILE_LABELS.get(kind, kind)
            links.append(f'<a href="{_esc(href)}">full-resolution {_esc(label)}</a>')
    files_html = f'<p class="files">{"".join(links)}</p>' if links else ""
    cues_html = ""
    if entry.cues:
        panels = "".join(_cue_panel_html(p, name) for p in entry.cues)
        cues_html = f'<div class="cues">{panels}</div>'
    n_cues = len(entry.cues)
    summary = f"Details: chain of custody{f', {n_cues} cue panel(s)' if n_cues else ''}"
    detail = (f'<tr class="detail"><td colspan="{columns}"><details class="more"><summary>{summary}</summary>'
              f"{custody}{files_html}{cues_html}</details></td></tr>")
    return f'<tbody class="entry">{row}{detail}</tbody>'


def _card_html(card: Mapping[str, Any] | None) -> str:
    if not isinstance(card, Mapping) or not card:
        return ""
    title = card.get("title")
    headline = card.get("headline")
    rows = []
    for key, value in card.items():
        if key in ("title", "headline"):
            continue
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(v, (Mapping, list)):
                    rows.append((f"{key}: {k}", f"{v:.4g}" if isinstance(v, float) else str(v)))
        elif isinstance(value, (list, tuple)):
            if len(value) <= 12 and all(not isinstance(v, (Mapping, list)) for v in value):
                rows.append((str(key), "; ".join(map(str, value))))
        else:
            rows.append((str(key), f"{value:.4g}" if isinstance(value, float) else str(value)))
    head = f"<b>Model card{': ' + _esc(title) if title else ''}</b>"
    if headline:
        head += f" — {_esc(headline)}"
    return f'<div class="card">{head}{_dl(rows) if rows else ""}</div>'


def _legend_html(threshold: float | None) -> str:
    marker = ""
    if threshold is not None:
        marker = f'<span class="thr" style="left:calc({100 * float(threshold):.1f}% - 1px)"></span>'
    thr_text = f" · mask threshold {float(threshold):g} (cyan mark; outlined in cyan on overlays)" if (
        threshold is not None) else ""
    return (f'<p class="legend">Heatmap colours: <span class="scale"><span>0</span>'
            f'<span class="gradient" style="background:{viz.colormap_css_gradient()}">{marker}</span>'
            f"<span>1</span></span> (darker = less suspicious, brighter = more){thr_text}</p>")


def _setting_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


_COLUMNS = [("#", "num"), ("Photo", ""), ("Overlay", ""), ("Heatmap", ""), ("Name", "text"),
            ("Verdict (score)", "num"), ("Tampered area", "num"), ("Size", "num"), ("Mode", "text")]
#: Index of the score column (sorted on, highest first, by default).
SCORE_COLUMN = 5


def _report_threshold(threshold: Any, rows: list[ReportEntry]) -> float | None:
    """The threshold the legend shows: the one given, else the first entry's; None if not a number."""
    if threshold is None and rows:
        threshold = rows[0].threshold
    try:
        return None if threshold is None else float(threshold)
    except (TypeError, ValueError):
        return None


def _failures_html(failures: list[PredictionFailure]) -> str:
    if not failures:
        return ""
    items = "".join(f"<li><b>{_esc(f.source or f.name)}</b>: {_esc(f.error)}</li>" for f in failures)
    return f'<section class="failures"><h2>Not analysed ({len(failures)})</h2><ul>{items}</ul></section>'


def _header_html() -> str:
    """The results table's header: sortable columns as buttons, the score column sorted first."""
    cells = []
    for i, (col, kind) in enumerate(_COLUMNS):
        if not kind:
            cells.append(f"<th>{col}</th>")
            continue
        initial = ' aria-sort="descending"' if i == SCORE_COLUMN else ""
        cells.append(f'<th data-col="{i}" data-type="{kind}"{initial}><button type="button">{col}</button></th>')
    return "".join(cells)


def _verdict_key(calibration: Any, rows: list[ReportEntry]) -> tuple[str, str]:
    """The verdict chips (or "uncalibrated score") and the sentence on the score bands."""
    calibrated = bool(calibration) or any(e.verdict is not None for e in rows)
    chips = "".join(f'<span class="verdict {verdict_class(v)}">{_esc(v)}</span> ' for v in VERDICTS) if (
        calibrated) else '<span class="verdict v-uncalibrated">uncalibrated score</span> '
    bands = verdict_bands(calibration) if calibration or not calibrated else (
        "the model is calibrated, but its score bands were not given to this report")
    return chips, bands


# Over 60 lines only by the page's HTML template at its end; the parts are built by the helpers above.
def render_report(
    entries: Iterable[ReportEntry],
    info: Mapping[str, Any],
    failures: Iterable[PredictionFailure] = (),
    title: str = "forgeloc report",
    *,
    describe: Mapping[str, Any] | None = None,
    command: str | Sequence[str] | None = None,
    files_base: str | os.PathLike | None = None,
    date: str | None = None,
) -> str:
    """The report's HTML (photos sorted by score, highest first; click a header to re-sort).

    ``info``: the run's settings, shown as given. ``describe``: :meth:`Predictor.describe` (model
    label, model card, calibration bands, checkpoint → weights SHA-256). ``command``: the command
    line (``sys.argv`` or a string). ``files_base``: the report's folder, to turn the entries'
    ``files`` paths into relative links. ``date``: ISO 8601 UTC (default: now).
    """
    rows = sorted(entries, key=lambda e: (-e.score, e.name))
    failures = list(failures)
    describe = dict(describe or {})
    label = describe.get("label") or info.get("label") or next((e.model_label for e in rows if e.model_label), "")
    label = str(label) if label else "model label not recorded"
    # The same cautions the page highlights (static/app.js), plus a label that was never recorded.
    cautions = ("unvalidated", "demo model", "not a real-photo number", "not recorded")
    warn = " warn" if any(c in label for c in cautions) else ""
    calibration = describe.get("calibration", info.get("calibration"))
    threshold = _report_threshold(describe.get("threshold", info.get("threshold")), rows)

    settings = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(_setting_text(v))}</dd>" for k, v in info.items()
                       if v not in (None, "", [], ()) and not isinstance(v, Mapping))
    settings += f"<dt>images</dt><dd>{len(rows)} predicted, {len(failures)} failed</dd>"
    provenance = run_provenance(describe, command, date, info)
    run_html = "".join(
        f'<dt>{_esc(k)}</dt><dd class="run-{_esc(k.split()[0].lower())}">{_esc(v)}</dd>' for k, v in provenance.items())

    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    failure_html = _failures_html(failures)
    header = _header_html()
    body = "".join(_entry_html(e, i + 1, len(_COLUMNS), files_base) for i, e in enumerate(rows))
    chips, bands = _verdict_key(calibration, rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p class="model-label{warn}" id="model-label">Model: {_esc(label)}</p>
{_card_html(describe.get("card"))}
<p class="bands" id="bands">Verdicts: {chips}— {_esc(bands)}</p>
{_legend_html(threshold)}
<h2>Settings</h2>
<dl class="meta">{settings}</dl>
<h2>Run (chain of custody)</h2>
<dl class="meta run">{run_html}</dl>
<p class="note">Verdict: the model's image score read against its calibrated bands (above); without a
calibration the score is shown as an uncalibrated score (0 to 1, not a probability). Tampered area: share of
pixels whose heatmap value exceeds the threshold. In the overlay, brighter colour = more suspicious and the
cyan line outlines the thresholded region. A model's output is a lead to examine, not proof; models miss
manipulations unlike those they were trained on and can flag genuine images. Each photo's details hold its
SHA-256 (compare it with the file you hold), why it was analysed the way it was, and one panel per
training-free cue with what to look for and what to ignore. Click a column header to sort, a picture to
enlarge it.</p>
<p class="tools"><button type="button" id="expand-all">Open all details</button><button type="button"
id="collapse-all">Close all details</button></p>
<table id="results"><thead><tr>{header}</tr></thead>{body}</table>
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
    *,
    describe: Mapping[str, Any] | None = None,
    command: str | Sequence[str] | None = None,
    date: str | None = None,
) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8) and return the path; the entries' ``files``
    are linked relative to ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html_text = render_report(entries, info, failures, title, describe=describe, command=command,
                              files_base=path.parent, date=date)
    path.write_text(html_text, encoding="utf-8")
    return path
