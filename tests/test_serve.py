"""The web API (FastAPI TestClient): predictions, refusals with clear messages, limits, no files written;
model label, verdict band, custody facts and per-cue panels in the JSON."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
import threading
import time
import warnings

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from test_predict import COVERAGE_PNG, PixelModel

import forgeloc
from forgeloc.data.io import read_image
from forgeloc.detectors import CUES
from forgeloc.inference import Predictor
from forgeloc.inference.predictor import VERDICTS
from forgeloc.inference.server import create_app

fastapi = pytest.importorskip("fastapi")
with warnings.catch_warnings():  # Starlette's notice about httpx vs httpx2 is not ours to fix
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


def _png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _decode(data_url: str) -> Image.Image:
    header, payload = data_url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture()
def client():
    predictor = Predictor(PixelModel(), input_size=32, threshold=0.5)
    app = create_app(predictor, max_upload_mb=0.5, max_pixels=2_000_000, display_side=64)
    with TestClient(app) as c:
        yield c


def test_health_info_and_page(client):
    assert client.get("/api/health").json() == {"status": "ok", "model": "PixelModel"}
    info = client.get("/api/info").json()
    assert info["threshold"] == 0.5 and info["input_size"] == 32 and info["max_upload_mb"] == 0.5
    assert len(info["colormap_stops"]) >= 8
    assert "unvalidated model" in info["label"] and info["version"] == forgeloc.__version__
    assert info["weights_sha256"] is None and "not calibrated" in info["bands"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text and 'id="opacity"' in page.text
    for element in ("model-label", "busy", "verdict", "cues", "custody", "bands"):
        assert f'id="{element}"' in page.text, element
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: the page works offline
    for name, kind in [("app.js", "javascript"), ("style.css", "css")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 500
        assert "http://" not in r.text and "https://" not in r.text
    assert client.get("/static/..%2Fserver.py").status_code == 404
    assert client.get("/static/server.py").status_code == 404


def test_predict_on_a_real_png(client):
    path = shared_path(*COVERAGE_PNG)
    r = client.post("/api/predict", content=path.read_bytes(), headers={"X-Filename": "my%20photo.png"})
    assert r.status_code == 200, r.text
    body = r.json()
    photo = read_image(path)
    h, w = photo.shape[:2]
    assert (body["width"], body["height"]) == (w, h) and body["name"] == "my photo.png" and body["stem"] == "my photo"
    assert 0.0 <= body["score"] <= 1.0 and 0.0 <= body["tampered_fraction"] <= 1.0
    assert body["mode"] == "resize"  # auto: the model was trained on resized inputs
    assert body["verdict"] is None and body["verdict_class"] == "v-uncalibrated"
    assert body["verdict_text"] == f"{body['score']:.2f} (uncalibrated score)"
    assert "unvalidated model" in body["model_label"] and body["cue_panels"] == [] and "cues" not in body
    custody = body["custody"]
    assert custody["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert custody["bytes"] == path.stat().st_size
    assert custody["mode"] == "resize" and custody["mode_reason"].startswith("resize: the whole photo resized")
    assert "auto: the model was trained on inputs resized" in custody["mode_reason"]
    assert custody["streams"] == ["pixels"]
    expected = Predictor(PixelModel(), input_size=32).predict(photo)
    assert body["score"] == pytest.approx(expected.score, abs=1e-6)
    assert body["tampered_fraction"] == pytest.approx(expected.tampered_fraction, abs=1e-6)
    mask = np.asarray(_decode(body["images"]["mask"]))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}  # full resolution, 0/255
    np.testing.assert_array_equal(mask == 255, expected.mask)
    layer = _decode(body["images"]["layer"])
    assert layer.mode == "RGBA" and max(layer.size) == 64  # display copies are downscaled
    assert max(_decode(body["images"]["photo"]).size) == 64 and max(_decode(body["images"]["heatmap"]).size) == 64
    resized = client.post("/api/predict?mode=resize&threshold=0.9", content=_png(20, 30))
    assert resized.json()["mode"] == "resize" and resized.json()["threshold"] == 0.9


def test_refusals_have_clear_messages(client):
    r = client.post("/api/predict", content=b"hello, I am a text file", headers={"X-Filename": "notes.txt"})
    assert r.status_code == 415 and r.json()["detail"].startswith("not an image: notes.txt")
    r = client.post("/api/predict", content=b"<!DOCTYPE html><html></html>", headers={"X-Filename": "page.jpg"})
    assert r.status_code == 415 and "HTML document" in r.json()["detail"]
    r = client.post("/api/predict", content=b"")
    assert r.status_code == 400 and "empty upload" in r.json()["detail"]
    r = client.post("/api/predict", files={"file": ("a.png", _png(8, 8), "image/png")})
    assert r.status_code == 415 and "raw bytes" in r.json()["detail"]
    r = client.post("/api/predict?mode=crop", content=_png(8, 8))
    assert r.status_code == 422 and "mode" in r.json()["detail"]
    r = client.post("/api/predict?threshold=2", content=_png(8, 8))
    assert r.status_code == 422 and "threshold" in r.json()["detail"]


def test_upload_size_limit_declared_and_streamed(client):
    big = b"\x89PNG" + bytes(600 * 1024)
    r = client.post("/api/predict", content=big)
    assert r.status_code == 413 and "limit is 0.5 MB" in r.json()["detail"]
    def chunks():  # no Content-Length: the server counts what it reads and stops at the limit
        for _ in range(64):
            yield bytes(64 * 1024)

    r = client.post("/api/predict", content=chunks())
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_pixel_limit(client):
    # 1500 × 1400 = 2.1 MP > 2 MP, yet a tiny PNG file (decompression-bomb shape).
    buf = io.BytesIO()
    Image.new("L", (1500, 1400)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    r = client.post("/api/predict", content=buf.getvalue(), headers={"X-Filename": "bomb.png"})
    assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_uploads_never_touch_the_disk(tmp_path, monkeypatch):
    # Over 1 MB: where a multipart parser would roll the upload over into a temporary file.
    upload = _png(800, 800)
    assert len(upload) > 1_200_000
    # With cues too: their maps and facts are computed from the bytes in memory.
    predictor = Predictor(PixelModel(), input_size=32, cues=["ela", "metadata", "jpeg_adq"])
    app = create_app(predictor, max_upload_mb=4)
    work, temp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    opened: list[str] = []
    real_open = open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+"):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    with TestClient(app) as client:
        r = client.post("/api/predict?mode=resize", content=upload, headers={"X-Filename": "x.png"})
        assert r.status_code == 200, r.text
        assert [p["name"] for p in r.json()["cue_panels"]] == ["ela", "metadata", "jpeg_adq"]
        assert client.post("/api/predict", content=b"junk").status_code == 415
    assert os.listdir(work) == [] and os.listdir(temp) == []
    assert opened == []


def test_one_prediction_at_a_time():
    class SlowModel(PixelModel):
        active = 0
        most = 0

        def forward(self, batch):
            SlowModel.active += 1
            SlowModel.most = max(SlowModel.most, SlowModel.active)
            time.sleep(0.05)
            try:
                return super().forward(batch)
            finally:
                SlowModel.active -= 1

    app = create_app(Predictor(SlowModel(), input_size=32))
    statuses = []
    with TestClient(app) as c:
        def post():
            statuses.append(c.post("/api/predict?mode=resize", content=_png(30, 30)).status_code)

        threads = [threading.Thread(target=post) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200, 200, 200]
    assert SlowModel.most == 1


def _jpeg_with_exif(h: int, w: int) -> bytes:
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0131] = "Nikon", "Adobe Photoshop CC"
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85, exif=exif)
    return buf.getvalue()


def test_cue_panels_verdict_and_custody_in_the_json():
    cues = ["ela", "metadata", "jpeg_adq", "noise"]
    predictor = Predictor(PixelModel(), input_size=32, cues=cues,
                          calibration={"low": 0.2, "high": 0.6, "method": "unit test bands"})
    app = create_app(predictor, display_side=96)
    upload, png = _jpeg_with_exif(120, 200), _png(40, 60)
    with TestClient(app) as c:
        info = c.get("/api/info").json()
        assert info["calibration"]["low"] == 0.2 and "score ≥ 0.60" in info["bands"]
        assert "unit test bands" in info["bands"]
        assert info["cues"] == cues
        body = c.post("/api/predict?mode=resize", content=upload, headers={"X-Filename": "cam.jpg"}).json()
        png_body = c.post("/api/predict?mode=resize", content=png, headers={"X-Filename": "s.png"}).json()
    assert body["verdict"] in VERDICTS and body["verdict_text"] == f"{body['verdict']} ({body['score']:.2f})"
    assert body["verdict_class"] == {VERDICTS[0]: "v-clear", VERDICTS[1]: "v-inconclusive",
                                     VERDICTS[2]: "v-likely"}[body["verdict"]]
    assert body["custody"]["sha256"] == hashlib.sha256(upload).hexdigest() and body["custody"]["bytes"] == len(upload)
    assert body["custody"]["sha256_of"] == "bytes received" and "(as requested)" in body["custody"]["mode_reason"]
    # The cue summaries (to_dict) and one panel per cue, in the order they ran.
    assert set(body["cues"]) == set(cues) and body["cues"]["ela"]["kind"] == "visual_aid"
    panels = {p["name"]: p for p in body["cue_panels"]}
    assert [p["name"] for p in body["cue_panels"]] == cues
    for name, panel in panels.items():
        assert panel["look_for"] == CUES[name].look_for and panel["ignore"] == CUES[name].ignore
    assert panels["ela"]["kind_label"] == "visual aid, not a detector" and panels["ela"]["score"] is None
    assert panels["noise"]["kind_label"] == "detector" and 0.0 <= panels["noise"]["score"] <= 1.0
    for name in ("ela", "noise", "jpeg_adq"):
        image = _decode(panels[name]["image"])
        assert image.format == "JPEG" and image.size == (96, round(96 * 120 / 200)), (name, image.size)
    facts = dict(map(tuple, panels["metadata"]["facts"]))
    assert panels["metadata"]["image"] is None and facts["camera"] == "Nikon"
    assert "Adobe Photoshop CC" in facts["software"] and facts["JPEG quantization"].startswith("quality ≈ 85")
    adq = {p["name"]: p for p in png_body["cue_panels"]}["jpeg_adq"]
    assert adq["applicable"] is False and adq["image"] is None and adq["reason"].startswith("not a JPEG file")
