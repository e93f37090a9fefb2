"""``forgeloc serve``: a small local web page and JSON API around one loaded model.

Design (see ``docs/inference.md``):

* FastAPI + uvicorn, one process, one model loaded at start-up; predictions run one at a time
  behind a lock (a model is not safe to call from several threads at once, and two large images
  at once would double the memory), at most :data:`MAX_IN_FLIGHT` uploads are held at a time;
* the page is three static files shipped in the package (no CDN, works offline), served with a
  strict Content-Security-Policy;
* uploads are the *raw file bytes* in the request body (``fetch(url, {body: file})`` or
  ``curl --data-binary @photo.jpg``), not multipart: multipart parsers spool large parts to
  temporary files, and nothing from an upload may touch the disk. The body is read in chunks and
  the request is refused with 413 as soon as it exceeds ``max_upload_bytes`` (at once when the
  ``Content-Length`` header says so); the pixel count is checked from the image header before
  decoding (``read_image(max_pixels=...)``), and a non-image is refused with 415 and the reason;
* nothing from an upload is stored or executed: bytes → decoded array → prediction → PNGs in the
  JSON response, all in memory, dropped when the response is sent.

The prediction's JSON (``POST /api/predict``) is :meth:`Prediction.to_dict` (with the cue
summaries under ``cues``) plus: ``verdict_text`` / ``verdict_class`` (the verdict band in words
and its colour), ``custody`` (SHA-256 and size of the bytes received, dimensions, the mode used and
why, what the model read), ``cue_panels`` (one per cue, :meth:`report.CuePanel.to_json`: the map as
a JPEG ``data:`` URL of at most :data:`CUE_DISPLAY_SIDE` pixels, "not applicable" reasons, facts,
"What to look for" / "What to ignore") and ``images`` (photo, heatmap layer, heatmap, full-size
mask). ``GET /api/info`` adds the model label, model card, calibration bands, forgeloc version and
the weights' SHA-256.
"""

import base64
import hashlib
import importlib.resources
import threading
import time
import urllib.parse
from pathlib import PurePath
from typing import Any

from forgeloc.data.io import DecompressionBombError, ImageReadError
from forgeloc.inference import report
from forgeloc.inference import visualize as viz
from forgeloc.inference.predictor import MODES, Predictor

__all__ = ["CUE_DISPLAY_SIDE", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_MB", "MAX_IN_FLIGHT", "create_app", "serve"]

DEFAULT_MAX_UPLOAD_MB = 20.0
#: 50 megapixels: every current camera; far below Pillow's 179 MP bomb limit, which a public page should not allow.
DEFAULT_MAX_PIXELS = 50_000_000
#: Uploads held in memory at the same time (the rest are told to retry: 503).
MAX_IN_FLIGHT = 4
#: Longer side of the pictures sent back for display (the mask download stays at full resolution).
DISPLAY_SIDE = 1600
#: Longer side of the cue maps sent back (coloured JPEGs; a cue's map carries no finer detail).
CUE_DISPLAY_SIDE = 1024

_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _static_file(name: str) -> bytes:
    return importlib.resources.files("forgeloc.inference").joinpath("static", name).read_bytes()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _clean_name(raw: str | None) -> str:
    """The upload's display name: percent-decoded, without folders or control characters, ≤ 120 chars."""
    if not raw:
        return "upload"
    name = urllib.parse.unquote(raw)
    name = PurePath(name.replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:120].strip()
    return name or "upload"


def create_app(
    predictor: Predictor,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    display_side: int = DISPLAY_SIDE,
) -> Any:
    """The FastAPI application serving ``predictor`` (see the module docstring for the API)."""
    # No ``from __future__ import annotations`` in this module: FastAPI reads the route signatures
    # annotations at run time, and ``Request`` is imported here, not at module level.
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response

    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    predictor.max_pixels = int(max_pixels)
    lock = threading.Lock()
    in_flight = {"n": 0}
    counter_lock = threading.Lock()

    app = FastAPI(title="forgeloc", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    def static(name: str) -> Response:
        return Response(_static_file(name), media_type=_STATIC[name])

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static_route(name: str) -> Response:
        if name not in _STATIC:
            return error(404, "not found")
        return static(name)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name}

    described = predictor.describe()
    try:
        weights = report.weights_sha256(described.get("checkpoint"))
    except OSError:
        weights = None
    import forgeloc

    identity = {
        "label": described.get("label") or predictor.model_name,
        "version": forgeloc.__version__,
        "weights_sha256": weights,
        "bands": report.verdict_bands(described.get("calibration")),
    }

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        lut = viz.colormap_lut()
        stops = [f"rgb({r},{g},{b})" for r, g, b in lut[:: 255 // 8].tolist()]
        return {
            **{k: v for k, v in predictor.describe().items() if v is not None},
            **identity,
            "max_upload_mb": max_upload_mb,
            "max_pixels": predictor.max_pixels,
            "modes": list(MODES),
            "colormap": viz.COLORMAP,
            "colormap_stops": stops,
        }

    def run_prediction(data: bytes, name: str, mode: str, threshold: float | None) -> dict[str, Any]:
        start = time.perf_counter()
        with lock:
            result = predictor.predict(data, mode=mode, threshold=threshold, name=name)
        photo = viz.resize_to_fit(result.image, display_side)
        heat_small = viz.resize_to_fit(result.heatmap, display_side)
        stem = PurePath(name).stem or "upload"
        panels = report.cue_panels(result, min(display_side, CUE_DISPLAY_SIDE))
        payload = {
            **result.to_dict(),
            "path": None,
            "stem": stem,
            "elapsed_s": round(time.perf_counter() - start, 3),
            "verdict_text": report.verdict_text(result.score, result.verdict),
            "verdict_class": report.verdict_class(result.verdict),
            "custody": {
                "sha256": hashlib.sha256(data).hexdigest(),
                "sha256_of": "bytes received",
                "bytes": len(data),
                "width": result.width,
                "height": result.height,
                "mode": result.mode,
                "mode_reason": report.mode_reason(result, mode, predictor.input_size),
                "windows": result.windows,
                "streams": list(result.streams),
                "fused": list(result.fused),
            },
            "cue_panels": [p.to_json() for p in panels],
            "display_size": [int(photo.shape[1]), int(photo.shape[0])],
            "images": {
                "photo": _data_url("image/jpeg", viz.encode_jpeg(photo, 90)),
                "layer": _data_url("image/png", viz.encode_png(viz.heat_layer_rgba(heat_small))),
                "heatmap": _data_url("image/png", viz.encode_png(viz.colorize(heat_small))),
                "mask": _data_url("image/png", viz.encode_png(result.mask_uint8())),
            },
        }
        return payload

    @app.post("/api/predict")
    async def predict(request: Request, mode: str = "auto", threshold: float | None = None) -> Any:
        if mode not in MODES:
            return error(422, f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            return error(422, f"threshold must be in [0, 1], got {threshold}")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/"):
            return error(415, "send the image file's raw bytes as the request body (e.g. curl --data-binary "
                              "@photo.jpg), not a multipart form")
        declared = request.headers.get("content-length")
        limit_msg = f"upload too large: the limit is {max_upload_mb:g} MB"
        if declared is not None:
            try:
                if int(declared) > max_bytes:
                    return error(413, f"{limit_msg}, this file is {int(declared) / 2**20:.1f} MB")
            except ValueError:
                return error(400, "invalid Content-Length header")
        with counter_lock:
            if in_flight["n"] >= MAX_IN_FLIGHT:
                return error(503, "the server is busy with other images; try again in a moment")
            in_flight["n"] += 1
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    return error(413, limit_msg)
                chunks.append(chunk)
            data = b"".join(chunks)
            del chunks
            if not data:
                return error(400, "empty upload: send the image file's bytes as the request body")
            name = _clean_name(request.headers.get("x-filename"))
            try:
                payload = await run_in_threadpool(run_prediction, data, name, mode, threshold)
            except DecompressionBombError as err:
                return error(413, f"image too large: {err.reason}")
            except ImageReadError as err:
                return error(415, f"not an image: {name} {err.reason}")
            return JSONResponse(payload)
        finally:
            with counter_lock:
                in_flight["n"] -= 1

    return app


def serve(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    log_level: str = "info",
) -> None:
    """Run the page with uvicorn (one process) until interrupted."""
    import uvicorn

    app = create_app(predictor, max_upload_mb=max_upload_mb, max_pixels=max_pixels)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, server_header=False,
                # Request bodies beyond the limit are refused by the app; this bounds the headers too.
                h11_max_incomplete_event_size=64 * 1024)
