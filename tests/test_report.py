"""The HTML report: self-contained, complete, sorted by score, safe against hostile file names; model
label, verdict bands, per-cue panels and chain-of-custody facts (hashes equal hashlib's)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html as html_lib
import io
import re

import numpy as np
import pytest
from PIL import Image
from test_predict import PixelModel

import forgeloc
from forgeloc.detectors import CUES
from forgeloc.inference import PredictionFailure, Predictor
from forgeloc.inference.report import (
    CUE_SIDE,
    THUMB_SIDE,
    render_report,
    report_entry,
    verdict_text,
    write_report,
)

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
    srcs = re.findall(r'(?<![-\w])src="([^"]*)"', html)  # photo | overlay | heatmap per image
    assert len(srcs) == 3 * len(entries) and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    # Thumbnails are downscaled: the 1200×900 photo is embedded at THUMB_SIDE on its longer side.
    sizes = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in srcs]
    assert max(max(s) for s in sizes) == THUMB_SIDE and (THUMB_SIDE, THUMB_SIDE * 3 // 4) in sizes

    # Rows in descending score order in the markup.
    scores = [float(v) for v in re.findall(r'class="num score" data-value="([0-9.]+)"', html)]
    assert len(scores) == len(entries) and scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(sorted((e.score for e in entries), reverse=True), abs=1e-6)
    # Sortable: the Score header is a button, the script is inline.
    assert re.search(r'<th data-col="5" data-type="num" aria-sort="descending"><button', html)
    # One <tbody> per image (its details travel with its row when sorting).
    assert html.count('<tbody class="entry">') == len(entries)

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


# --------------------------------------------------------------------------------------------------
# Model identity, verdict bands, chain of custody, cue panels
# --------------------------------------------------------------------------------------------------
def _uniform(colour: tuple[int, int, int], h: int = 20, w: int = 30) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = colour
    return image


COLOURS = {"green": (0, 255, 0), "grey": (128, 128, 128), "red": (255, 0, 0)}  # PixelModel: ~0.02 / 0.53 / 0.93


def test_verdict_bands_in_three_colours_and_uncalibrated_scores():
    plain = Predictor(PixelModel(), input_size=32)
    scores = {k: plain.predict(_uniform(c), mode="resize").score for k, c in COLOURS.items()}
    assert scores["green"] < scores["grey"] < scores["red"]
    calibration = {"low": (scores["green"] + scores["grey"]) / 2, "high": (scores["grey"] + scores["red"]) / 2,
                   "method": "test quantiles", "data": "three colours"}
    calibrated = Predictor(PixelModel(), input_size=32, calibration=calibration)
    entries = [report_entry(calibrated.predict(_uniform(c), mode="resize", name=f"{k}.png"))
               for k, c in COLOURS.items()]
    html = render_report(entries, {"model": "pixel"}, describe=calibrated.describe())
    chips = re.findall(r'<span class="verdict (v-[a-z]+)">([^<]+)</span></?', html.split('id="results"')[1])
    assert [c for c, _ in chips] == ["v-likely", "v-inconclusive", "v-clear"]  # sorted by score, highest first
    assert [t for _, t in chips] == [f"likely manipulated ({scores['red']:.2f})",
                                     f"inconclusive ({scores['grey']:.2f})",
                                     f"no evidence found ({scores['green']:.2f})"]
    bands = re.search(r'<p class="bands" id="bands">(.*?)</p>', html, re.S).group(1)
    assert f"score &lt; {calibration['low']:.2f}" in bands and f"score ≥ {calibration['high']:.2f}" in bands
    assert "test quantiles" in bands and "three colours" in bands
    # Three distinct colours for the three verdicts, defined in the style sheet.
    styles = {cls: re.search(rf"\.{cls}\{{color:(#[0-9a-f]+)", html).group(1)
              for cls in ("v-clear", "v-inconclusive", "v-likely")}
    assert len(set(styles.values())) == 3

    uncal = render_report([report_entry(plain.predict(_uniform(COLOURS["grey"]), mode="resize"))], {},
                          describe=plain.describe())
    assert f"{scores['grey']:.2f} (uncalibrated score)" in uncal and "v-uncalibrated" in uncal
    assert "not calibrated" in re.search(r'id="bands">(.*?)</p>', uncal, re.S).group(1)
    assert verdict_text(0.87, "likely manipulated") == "likely manipulated (0.87)"
    assert verdict_text(0.05, None) == "0.05 (uncalibrated score)"


def test_model_label_and_card_in_the_header(tmp_path):
    entries = _entries(tmp_path)[:1]
    unvalidated = Predictor(PixelModel(), input_size=32)
    html = render_report(entries, {"model": "pixel"}, describe=unvalidated.describe())
    label = re.search(r'<p class="model-label warn" id="model-label">Model: ([^<]*)</p>', html).group(1)
    assert "unvalidated model" in label and label.startswith("PixelModel")
    assert html.index('id="model-label"') < html.index('id="results"')
    # Without describe(), the predictions' own label is shown.
    assert "unvalidated model" in re.search(r'id="model-label">(.*?)</p>', render_report(entries, {})).group(1)
    demo = Predictor(PixelModel(), input_size=32, info={"train_kind": "quickstart"})
    demo_html = render_report(entries, {}, describe=demo.describe())
    assert "demo model" in re.search(r'id="model-label">(.*?)</p>', demo_html).group(1)
    card = {"title": "GridNet v1", "headline": "F1 0.61 on CASIA v1 <real photos>",
            "metrics": {"pixel_f1": 0.6123, "image_auc": 0.88}, "validated_on": ["CASIA v1", "Columbia"]}
    carded = Predictor(PixelModel(), input_size=32, info={"card": card})
    html = render_report(entries, {}, describe=carded.describe())
    label = re.search(r'<p class="model-label" id="model-label">Model: ([^<]*)</p>', html).group(1)
    assert "GridNet v1" in label and "unvalidated" not in label
    card_html = re.search(r'<div class="card">(.*?)</div>', html, re.S).group(1)
    assert "F1 0.61 on CASIA v1 &lt;real photos&gt;" in card_html
    assert "metrics: pixel_f1" in card_html and "0.6123" in card_html and "CASIA v1; Columbia" in card_html


def test_chain_of_custody_hashes_sizes_modes_and_run(tmp_path):
    ckpt = tmp_path / "ckpt"  # a checkpoint folder: its model.safetensors is what the weights hash covers
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(np.random.default_rng(3).bytes(4096))
    predictor = Predictor(PixelModel(), input_size=32, info={"checkpoint": str(ckpt)})
    padded = Predictor(PixelModel(), input_size=32, input_mode="pad")  # trained on padded inputs: auto tiles
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    folder.mkdir()
    photo_png, photo_jpg = folder / "a.png", folder / "b <odd>.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo_png)
    Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)).save(photo_jpg, quality=90)
    upload = photo_png.read_bytes()
    array = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    entries = [
        report_entry(predictor.predict(photo_png), requested_mode="auto", input_size=predictor.input_size),
        report_entry(predictor.predict(photo_jpg, mode="auto"), requested_mode="auto", input_size=32),
        report_entry(padded.predict(photo_jpg.read_bytes(), name="padded.jpg"), requested_mode="auto", input_size=32),
        report_entry(predictor.predict(upload, name="upload.png", mode="tile"), data=upload, requested_mode="tile"),
        report_entry(predictor.predict(array, name="array", mode="resize")),
    ]
    command = ["forgeloc", "predict", str(ckpt), "b <odd>.jpg", "--report"]
    path = write_report(tmp_path / "out" / "report.html", entries, {"model": "tiny"}, describe=predictor.describe(),
                        command=command)
    html = path.read_text(encoding="utf-8")

    hashes = dict(re.findall(r'<td class="name" data-value="([^"]*)".*?<code class="sha256">([0-9a-f]{64})</code>',
                             html, re.S))
    assert hashes[photo_png.name] == hashlib.sha256(photo_png.read_bytes()).hexdigest()
    assert hashes[html_lib.escape(photo_jpg.name)] == hashlib.sha256(photo_jpg.read_bytes()).hexdigest()
    assert hashes["upload.png"] == hashlib.sha256(upload).hexdigest()
    assert hashes["array"] == hashlib.sha256(array.tobytes()).hexdigest()
    assert "(bytes received)" in html and "decoded RGB pixels (no file)" in html
    assert f"({photo_jpg.stat().st_size:,} bytes)" in html and "150×90 px" in html
    # The mode and why: auto fed each photo as its model was trained; tile was asked for once.
    assert re.search(r"tile: \d+ overlapping windows at full resolution \(auto: the model was trained on padded, "
                     r"never resized, inputs \(32² px; the photo is 150×90\)\)", html)
    for size in ("50×40", "150×90"):
        assert ("resize: the whole photo resized to the model&#x27;s input (auto: the model was trained on inputs "
                f"resized to its input size (32² px; the photo is {size}))") in html
    assert "(as requested)" in html and "model read</dt><dd>decoded pixels" in html

    run = dict(re.findall(r'<dt>([^<]*)</dt><dd class="run-[a-z]+">([^<]*)</dd>', html))
    assert run["forgeloc version"] == forgeloc.__version__
    weights = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert run["weights SHA-256"] == f"{weights} (model.safetensors)"
    assert run["command"] == html_lib.escape("forgeloc predict " + str(ckpt) + " 'b <odd>.jpg' --report")
    assert run["model"] == "PixelModel" and "unvalidated model" in run["model label"]
    # A checkpoint given as the weights file itself.
    alone = render_report([], {"checkpoint": str(ckpt / "model.safetensors")})
    assert f"{weights} (model.safetensors)" in alone
    date = dt.datetime.fromisoformat(run["date (UTC)"].replace("Z", "+00:00"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["date (UTC)"])
    assert abs((dt.datetime.now(dt.timezone.utc) - date).total_seconds()) < 600
    assert render_report(entries, {}, command="forgeloc predict x").count("forgeloc predict x") == 1

    # The colour legend: the colour map's gradient with the threshold marked.
    legend = re.search(r'<p class="legend">(.*?)</p>', html, re.S).group(1)
    assert "linear-gradient(to right, rgb(0,0,4) 0.0%" in legend
    assert 'class="thr" style="left:calc(50.0% - 1px)"' in legend


def test_full_resolution_files_are_linked_relative_to_the_report(tmp_path):
    entry = _entries(tmp_path)[1]  # the hostile name
    out = tmp_path / "out"
    entry.files = {"heatmap": str(out / "x y_heatmap.png"), "overlay": str(out / "sub" / "x#y_overlay.png"),
                   "mask": str(tmp_path / "elsewhere" / "m.png"), "json": "/abs/a.json"}
    html = write_report(out / "report.html", [entry], {}).read_text(encoding="utf-8")
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["x%20y_heatmap.png", "sub/x%23y_overlay.png"]  # outside the report's folder: not linked
    assert "full-resolution heatmap" in html and "full-resolution overlay" in html
    assert "full-resolution mask" not in html
    # render_report without files_base keeps relative paths as given.
    entry.files = {"heatmap": "x_heatmap.png", "javascript:alert(1)": "javascript:alert(1)"}
    hrefs = re.findall(r'href="([^"]*)"', render_report([entry], {}))
    assert hrefs == ["x_heatmap.png", "javascript%3Aalert%281%29"]


def _jpeg_with_exif(h: int, w: int, seed: int = 0) -> bytes:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "EOS <5D>", "GIMP 2.10"
    exif[0x0132] = "2020:01:02 03:04:05"
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def test_cue_panels_maps_facts_reasons_and_guidance(tmp_path):
    cues = ["noise", "ela", "metadata", "jpeg_adq"]
    predictor = Predictor(PixelModel(), input_size=32, cues=cues)
    jpeg = tmp_path / "camera.jpg"
    jpeg.write_bytes(_jpeg_with_exif(600, 1400))
    png = tmp_path / "screen.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(png)
    entries = [report_entry(predictor.predict(p, mode="resize")) for p in (jpeg, png)]
    html = write_report(tmp_path / "report.html", entries, {}, describe=predictor.describe()).read_text("utf-8")

    bodies = re.findall(r'<tbody class="entry">(.*?)</tbody>', html, re.S)
    assert len(bodies) == 2
    for body in bodies:
        panels = re.findall(r'<section class="cue" data-cue="([a-z_]+)">', body)
        assert panels == cues
        assert body.count("<b>What to look for:</b>") == len(cues) and body.count("<b>What to ignore:</b>") == len(cues)
        for cue in cues:
            assert html_lib.escape(CUES[cue].look_for) in body and html_lib.escape(CUES[cue].ignore) in body
        assert "<details class=\"more\">" in body  # collapsed: cue maps decode only when opened
    by_name = {re.search(r'<td class="name" data-value="([^"]*)"', b).group(1): b for b in bodies}
    ela = re.search(r'data-cue="ela">(.*?)</section>', by_name["camera.jpg"], re.S).group(1)
    assert "(visual aid, not a detector)" in ela and "never used for the score" in ela
    assert "(detector)" in re.search(r'data-cue="noise">(.*?)</section>', by_name["camera.jpg"], re.S).group(1)
    adq_png = re.search(r'data-cue="jpeg_adq">(.*?)</section>', by_name["screen.png"], re.S).group(1)
    assert "not applicable: not a JPEG file" in adq_png and "<img" not in adq_png
    facts = re.search(r'data-cue="metadata">.*?<dl class="facts">(.*?)</dl>', by_name["camera.jpg"], re.S).group(1)
    assert "<dt>camera</dt><dd>Canon EOS &lt;5D&gt;</dd>" in facts and "GIMP 2.10" in facts
    assert "last written 2020:01:02 03:04:05" in facts and "<dt>thumbnail</dt><dd>none embedded</dd>" in facts
    assert "quality ≈ 90" in facts and "<dt>hint</dt>" in facts
    score = re.search(r'data-cue="noise">.*?<b class="cue-score">([0-9.]+)</b>', by_name["camera.jpg"], re.S)
    noise = next(c for c in entries[0].cues if c.name == "noise")
    assert score and float(score.group(1)) == pytest.approx(noise.score, abs=1e-3)
    # Maps: lazily decoded (data-src), JPEG, coloured, downscaled to CUE_SIDE on the longer side.
    maps = re.findall(r'data-src="(data:image/jpeg;base64,[^"]+)"', by_name["camera.jpg"])
    assert len(maps) == 3  # noise, ela, jpeg_adq (metadata is facts)
    sizes = [Image.open(io.BytesIO(base64.b64decode(m.split(",", 1)[1]))).size for m in maps]
    assert all(s == (CUE_SIDE, round(CUE_SIDE * 600 / 1400)) for s in sizes), sizes
    assert len(html) < 600_000
