"""The HTML report: self-contained, complete, sorted by score, and safe against hostile file names."""

from __future__ import annotations

import base64
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image
from test_predict import PixelModel

from forgeloc.inference import PredictionFailure, Predictor
from forgeloc.inference.report import THUMB_SIDE, render_report, report_entry, write_report

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">.png'


def _entries(tmp_path):
    predictor = Predictor(PixelModel(), input_size=32)
    rng = np.random.default_rng(0)
    names = ["plain.png", HOSTILE, 'quote"and&amp.png', "big.png"]
    sizes = [(40, 50), (30, 30), (20, 60), (900, 1200)]
    entries = []
    for i, (name, (h, w)) in enumerate(zip(names, sizes, strict=True)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[..., 0] = min(255, 60 * i)  # different red levels → different scores
        result = predictor.predict(image, name=name, mode="resize")
        entries.append(report_entry(result))
    return entries


def test_report_is_self_contained_complete_and_sorted(tmp_path):
    entries = _entries(tmp_path)
    failures = [PredictionFailure("bad<b>.jpg", "/x/bad<b>.jpg", "truncated or corrupt image data")]
    info = {"model": "pixel", "checkpoint": "/ckpt/<odd>", "threshold": 0.5}
    path = write_report(tmp_path / "report.html", entries, info, failures)
    html = path.read_text(encoding="utf-8")

    # Self-contained: no external URL, every image embedded.
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:|//|/)", html, re.I)
    assert "http://" not in html and "https://" not in html and "<link" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 2 * len(entries) and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    # Thumbnails are downscaled: the 1200×900 photo is embedded at THUMB_SIDE on its longer side.
    sizes = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in srcs]
    assert max(max(s) for s in sizes) == THUMB_SIDE and (THUMB_SIDE, THUMB_SIDE * 3 // 4) in sizes

    # Rows in descending score order in the markup.
    scores = [float(v) for v in re.findall(r'class="num score" data-value="([0-9.]+)"', html)]
    assert len(scores) == len(entries) and scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(sorted((e.score for e in entries), reverse=True), abs=1e-6)
    # Sortable: the Score header is a button, the script is inline.
    assert re.search(r'<th data-col="4" data-type="num" aria-sort="descending"><button', html)

    # Every image and the failure are listed, and the run information is at the top.
    for e in entries:
        assert f"{e.score:.3f}" in html
    assert "plain.png" in html and "big.png" in html and "1200×900" in html
    assert "truncated or corrupt image data" in html and "Not analysed (1)" in html
    assert html.index("pixel") < html.index("<table")


def test_file_names_cannot_inject_markup(tmp_path):
    html = render_report(_entries(tmp_path), {"checkpoint": "<iframe src=evil>"},
                         [PredictionFailure("<svg onload=alert(1)>", None, "<b>err</b>")])
    assert "<script>window.pwned" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert "onerror=\"window" not in html and "<img src=x" not in html
    assert "<iframe" not in html and "<svg" not in html and "<b>err" not in html
    assert "quote&quot;and&amp;amp.png" in html
    # Exactly one script element: ours, allowed by its hash in the Content-Security-Policy.
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp and "unsafe-inline'" not in csp.split(
        "script-src")[1]
