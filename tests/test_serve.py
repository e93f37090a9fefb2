"""The web API (FastAPI TestClient): predictions, refusals with clear messages, limits, no files written."""

from __future__ import annotations

import base64
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

from forgeloc.data.io import read_image
from forgeloc.inference import Predictor
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
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text and 'id="opacity"' in page.text
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
    assert body["mode"] == "tile"  # auto: 424 px > 2 × 32
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
    app = create_app(Predictor(PixelModel(), input_size=32), max_upload_mb=4)
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
