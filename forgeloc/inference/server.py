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

Hardening (issue 19):

* slow clients: the body must arrive within ``body_timeout_s`` (30 s) plus one second per
  ``min_body_rate`` bytes received (64 KiB/s), else 408 and the upload slot is freed; this also ends
  a request whose ``Content-Length`` promises more than is sent;
* bounded work: the page refuses images over :data:`DEFAULT_MAX_PIXELS` (25 MP) before decoding.
  Predictions run one at a time on a dedicated daemon thread; an upload whose client has left before
  its turn is dropped without running, and a prediction whose client leaves while it runs is stopped
  at its next model window or cue (a cancellation flag the predictor's progress callback checks;
  one forward pass or one cue is not interrupted) and its result dropped. Shutdown does not wait for
  a running prediction (uvicorn's ``timeout_graceful_shutdown`` = :data:`SHUTDOWN_TIMEOUT_S`, and the
  daemon thread does not hold the process);
* a client that disconnects is logged in one line, not as an "Exception in ASGI application";
* DNS rebinding: when bound to a loopback address, requests whose ``Host`` is not ``localhost``,
  ``127.0.0.1`` or ``[::1]`` (any port) are refused with 400; cross-site POSTs: a POST whose
  ``Origin`` header is present and does not match ``Host`` is refused with 403 (``curl`` sends none).

Progress and cancel: the page names each upload with a random job id (``POST
/api/predict?job=ID``); ``GET /api/progress?job=ID`` says where it is (``state``: receiving, queued
with ``ahead`` predictions before it, running with ``windows_done`` / ``windows_total`` and
``cues_done`` / ``cues_total``, done, cancelled; ``unknown`` for an id the server does not hold) and
``POST /api/cancel?job=ID`` stops it between two windows: the upload is then answered 409 with
``"cancelled": true`` and how far it got. Only uploads in flight are tracked (at most
:data:`MAX_IN_FLIGHT`); an id is forgotten when its upload is answered.

The prediction's JSON (``POST /api/predict``) is :meth:`Prediction.to_dict` (with the cue
summaries under ``cues``) plus: ``verdict_text`` / ``verdict_class`` (the verdict band in words
and its colour), ``custody`` (SHA-256 and size of the bytes received, dimensions, the mode used and
why, what the model read), ``cue_panels`` (one per cue, :meth:`report.CuePanel.to_json`: the map as
a JPEG ``data:`` URL of at most :data:`CUE_DISPLAY_SIDE` pixels, "not applicable" reasons, facts,
"What to look for" / "What to ignore") and ``images`` (photo, heatmap layer, heatmap, full-size
mask). ``GET /api/info`` adds the model label, model card, calibration bands, forgeloc version and
the weights' SHA-256.
"""

import asyncio
import base64
import concurrent.futures
import hashlib
import importlib.resources
import logging
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

from forgeloc.data.io import DecompressionBombError, ImageReadError
from forgeloc.inference import report
from forgeloc.inference import visualize as viz
from forgeloc.inference.predictor import MODES, PredictionCancelledError, Predictor
from forgeloc.io import check_threshold

__all__ = ["CUE_DISPLAY_SIDE", "DEFAULT_BODY_TIMEOUT_S", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_MB",
           "DEFAULT_MIN_BODY_RATE", "LOCAL_HOSTS", "MAX_IN_FLIGHT", "SHUTDOWN_TIMEOUT_S", "create_app", "make_server",
           "serve"]

DEFAULT_MAX_UPLOAD_MB = 20.0
#: 25 megapixels: most cameras' full resolution; a 7000 × 7000 (49 MP) PNG of a few hundred KB held the model
#: for minutes at 50 MP. Far below Pillow's 179 MP bomb limit, which a public page should not allow.
DEFAULT_MAX_PIXELS = 25_000_000
#: Seconds a request body may take on top of ``size / DEFAULT_MIN_BODY_RATE`` before the request gets 408.
DEFAULT_BODY_TIMEOUT_S = 30.0
#: Bytes per second a long upload must keep up (beyond the first ``DEFAULT_BODY_TIMEOUT_S`` seconds).
DEFAULT_MIN_BODY_RATE = 64 * 1024
#: Seconds uvicorn waits for open requests on Ctrl+C / SIGTERM before cancelling them.
SHUTDOWN_TIMEOUT_S = 3
#: The ``Host`` names accepted when the server is bound to a loopback address (DNS-rebinding guard).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
#: Seconds between checks that the client of a waiting / running prediction is still connected.
DISCONNECT_POLL_S = 0.2
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


_LOOPBACK_BINDS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: A job id the page chooses for an upload (random; only a handle to follow or cancel it).
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
log = logging.getLogger("uvicorn.error")  # one line in the server's own log


class _PredictionWorker:
    """One daemon thread running jobs in order: a job cancelled before its turn is skipped; the thread
    never holds the process at exit (an anyio worker thread would, until the prediction ends)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="forgeloc-predict", daemon=True)
                self._thread.start()
            self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # the client left before its turn
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the waiting request
                future.set_exception(err)


class _Job:
    """One upload's prediction as the page follows it: where it is, how many windows and cues are
    done, and the flag that cancels it (checked by the predictor's progress callback, between windows)."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.state = "receiving"  # → queued → running → done | cancelled | failed
        self.windows_done = self.windows_total = self.cues_done = self.cues_total = 0
        self.stage = "windows"
        self.cancel = threading.Event()

    def progress(self, done: int, total: int, stage: str) -> None:
        """The predictor's progress callback: record, then stop here if the job was cancelled."""
        self.stage = stage
        if stage == "windows":
            self.windows_done, self.windows_total = done, total
        else:
            self.cues_done, self.cues_total = done, total
        if self.cancel.is_set():
            raise PredictionCancelledError(f"cancelled after {self.windows_done} of {self.windows_total} windows")

    def to_json(self, ahead: int) -> dict[str, Any]:
        return {"state": "cancelling" if self.cancel.is_set() and self.state in ("queued", "running") else self.state,
                "ahead": ahead, "stage": self.stage, "windows_done": self.windows_done,
                "windows_total": self.windows_total, "cues_done": self.cues_done, "cues_total": self.cues_total}


def _split_host(value: str) -> tuple[str, str] | None:
    """``Host`` header → (lower-case name, port or ""); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name, port


def _origin_matches(origin: str, host: str, scheme: str) -> bool:
    """Whether an ``Origin`` header names this server: the request's scheme, the ``Host`` header's name and port."""
    parts = urllib.parse.urlsplit(origin.strip().lower())
    if parts.scheme != scheme or not parts.netloc:
        return False
    default = "443" if parts.scheme == "https" else "80"
    a, b = _split_host(parts.netloc), _split_host(host)
    if a is None or b is None:
        return False
    return a[0] == b[0] and (a[1] or default) == (b[1] or default)


def _client(request: Any) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "client"


_SECURITY_HEADERS = [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                     (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]


class _Guard:
    """Pure ASGI middleware: ``Host`` check (400), cross-origin POST check (403), security headers on
    every response, and a client that disconnects logged in one line instead of a traceback."""

    def __init__(self, app: Any, hosts: set[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        refusal = None
        if self.hosts is not None:
            parsed = _split_host(host)
            if parsed is None or parsed[0] not in self.hosts:
                refusal = (400, f"unexpected Host header {host[:100]!r}: this local server answers only to "
                                "localhost, 127.0.0.1 and [::1]")
        origin = headers.get("origin")
        cross_origin = origin is not None and not _origin_matches(origin, host, scope.get("scheme", "http"))
        if refusal is None and scope["method"] == "POST" and cross_origin:
            refusal = (403, f"cross-origin request refused (Origin {origin[:100]!r} does not match "
                            f"Host {host[:100]!r})")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        if refusal is not None:
            import json

            body = json.dumps({"detail": refusal[1]}).encode()
            await send_with_headers({"type": "http.response.start", "status": refusal[0], "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send_with_headers({"type": "http.response.body", "body": body})
            return
        import anyio
        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, receive, send_with_headers)
        except (ClientDisconnect, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                ConnectionError) as err:
            client = scope.get("client")
            where = f"{client[0]}:{client[1]}" if client else "client"
            log.info("%s: client disconnected (%s %s: %s)", where, scope["method"], scope.get("path", ""),
                     type(err).__name__)


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


def prediction_payload(result: Any, data: bytes, name: str, mode: str, input_size: int, display_side: int,
                       elapsed_s: float) -> dict[str, Any]:
    """The JSON the page receives for one prediction: the summary, the verdict, the chain of
    custody, the cue panels and the display images as data URLs (nothing is written to disk)."""
    photo = viz.resize_to_fit(result.image, display_side)
    heat_small = viz.resize_to_fit(result.heatmap, display_side)
    panels = report.cue_panels(result, min(display_side, CUE_DISPLAY_SIDE))
    return {
        **result.to_dict(),
        "path": None,
        "stem": PurePath(name).stem or "upload",
        "elapsed_s": round(elapsed_s, 3),
        "verdict_text": report.verdict_text(result.score, result.verdict),
        "verdict_class": report.verdict_class(result.verdict),
        "custody": {
            # The predictor hashed the very bytes it decoded; no second pass over the upload.
            "sha256": result.extra.get("sha256") or hashlib.sha256(data).hexdigest(),
            "sha256_of": "bytes received",
            "bytes": len(data),
            "width": result.width,
            "height": result.height,
            "mode": result.mode,
            "mode_reason": report.mode_reason(result, mode, input_size),
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


# Over 60 lines only by its docstring and the route declarations FastAPI reads; the work is in _Site.
def create_app(
    predictor: Predictor,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    display_side: int = DISPLAY_SIDE,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    min_body_rate: float = DEFAULT_MIN_BODY_RATE,
    allowed_hosts: Iterable[str] | None = None,
) -> Any:
    """The FastAPI application serving ``predictor`` (see the module docstring for the API).

    ``body_timeout_s`` / ``min_body_rate``: a request body must arrive within ``body_timeout_s`` seconds
    plus one second per ``min_body_rate`` bytes received, else 408. ``allowed_hosts``: the ``Host``
    names accepted (any port; others get 400), e.g. :data:`LOCAL_HOSTS`; None accepts any ``Host``
    (:func:`serve` passes :data:`LOCAL_HOSTS` when bound to a loopback address).
    """
    # The routes are thin closures over this app's own _Site (the model lock, the prediction worker,
    # the counters), so several apps (tests) never share any of it.
    # No ``from __future__ import annotations`` in this module: FastAPI reads the route signatures
    # annotations at run time, and ``Request`` is imported here, not at module level.
    import contextlib

    from forgeloc.extras import require

    require("serve", "forgeloc's web page (forgeloc.inference.server)", "fastapi")
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    _check_limits(max_upload_mb, body_timeout_s, min_body_rate)
    predictor.max_pixels = int(max_pixels)
    site = _Site(predictor, max_upload_mb=max_upload_mb, display_side=display_side, body_timeout_s=body_timeout_s,
                 min_body_rate=min_body_rate)
    hosts = _host_names(allowed_hosts)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        site.worker.stop()

    app = FastAPI(title="forgeloc", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.forgeloc = site.state
    app.add_middleware(_Guard, hosts=hosts)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return _static_response("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static_route(name: str) -> Response:
        if name not in _STATIC:
            return _error(404, "not found")
        return _static_response(name)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return site.info()

    @app.post("/api/predict")
    async def predict(request: Request, mode: str = "auto", threshold: float | None = None,
                      job: str | None = None) -> Any:
        return await site.predict(request, mode, threshold, job)

    @app.get("/api/progress")
    def progress(job: str = "") -> dict[str, Any]:
        return site.progress(job)

    @app.post("/api/cancel")
    def cancel(job: str = "") -> Any:
        return site.cancel(job)

    return app


def _check_limits(max_upload_mb: float, body_timeout_s: float, min_body_rate: float) -> None:
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if body_timeout_s <= 0 or min_body_rate <= 0:
        raise ValueError(f"body_timeout_s and min_body_rate must be positive, got {body_timeout_s}, {min_body_rate}")


def _host_names(allowed_hosts: Iterable[str] | None) -> set[str] | None:
    """The ``Host`` names to accept, lower-cased (an IPv6 loopback also without its brackets)."""
    if allowed_hosts is None:
        return None
    hosts = {h.lower() for h in allowed_hosts}
    if "[::1]" in hosts:
        hosts.add("::1")
    return hosts


def _error(status: int, message: str, *, close: bool = False) -> Any:
    """A JSON error answer. ``close``: the body was not read to its end, so the connection cannot
    carry another request."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": message}, status_code=status, headers={"Connection": "close"} if close else None)


def _static_response(name: str) -> Any:
    from fastapi.responses import Response

    return Response(_static_file(name), media_type=_STATIC[name])


def _model_identity(predictor: Predictor) -> dict[str, Any]:
    """What ``/api/info`` says about the model, computed once (hashing the weights takes a moment)."""
    from forgeloc.version import __version__

    described = predictor.describe()
    try:
        weights = report.weights_sha256(described.get("checkpoint"))
    except OSError:
        weights = None
    return {
        "label": described.get("label") or predictor.model_name,
        "version": __version__,
        "weights_sha256": weights,
        "bands": report.verdict_bands(described.get("calibration")),
    }


class _Site:
    """One app's model, limits and counters, and what its routes do."""

    def __init__(self, predictor: Predictor, *, max_upload_mb: float, display_side: int, body_timeout_s: float,
                 min_body_rate: float) -> None:
        from types import SimpleNamespace

        self.predictor = predictor
        self.max_upload_mb = max_upload_mb
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.display_side = display_side
        self.body_timeout_s, self.min_body_rate = body_timeout_s, min_body_rate
        self.lock = threading.Lock()  # one prediction at a time
        self.counter_lock = threading.Lock()
        self.worker = _PredictionWorker()
        # Counters the tests (and a curious operator) can read: app.state.forgeloc.
        self.state = SimpleNamespace(in_flight=0, worker=self.worker, timed_out=0, dropped=0, disconnected=0,
                                     cancelled=0)
        self.jobs: dict[str, _Job] = {}  # the uploads in flight that the page follows, by job id
        self.active: dict[int, _Job] = {}  # every upload in flight (with or without an id), by arrival
        self.job_seq = 0
        self.identity = _model_identity(predictor)

    def info(self) -> dict[str, Any]:
        lut = viz.colormap_lut()
        stops = [f"rgb({r},{g},{b})" for r, g, b in lut[:: 255 // 8].tolist()]
        return {
            **{k: v for k, v in self.predictor.describe().items() if v is not None},
            **self.identity,
            "max_upload_mb": self.max_upload_mb,
            "max_pixels": self.predictor.max_pixels,
            "modes": list(MODES),
            "colormap": viz.COLORMAP,
            "colormap_stops": stops,
        }

    def run_prediction(self, data: bytes, name: str, mode: str, threshold: float | None, job: _Job) -> dict[str, Any]:
        if job.cancel.is_set():  # cancelled while queued, after its turn had come
            raise PredictionCancelledError("cancelled before it started")
        job.state = "running"
        start = time.perf_counter()
        with self.lock:
            result = self.predictor.predict(data, mode=mode, threshold=threshold, name=name, progress=job.progress)
        return prediction_payload(result, data, name, mode, self.predictor.input_size, self.display_side,
                                  time.perf_counter() - start)

    def progress(self, job_id: str) -> dict[str, Any]:
        """``GET /api/progress``: the job's state (``unknown`` when not in flight: not sent yet, or answered)."""
        job = self.jobs.get(job_id)
        if job is None:
            return {"state": "unknown"}
        ahead = sum(1 for other in list(self.active.values())
                    if other.seq < job.seq and other.state in ("queued", "running"))
        return job.to_json(ahead)

    def cancel(self, job_id: str) -> Any:
        """``POST /api/cancel``: raise the job's flag; a running prediction stops at its next window."""
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "no such prediction in progress (it may have finished)")
        job.cancel.set()
        log.info("prediction %s cancelled by its page (%s)", job_id[:12], job.state)
        return {"cancelled": True, "state": job.state}

    def refuse(self, request: Any, mode: str, threshold: float | None, job_id: str | None = None) -> Any:
        """The answer to a request refused before its body is read (bad options, multipart, a declared
        size over the limit, a job id in use), or None."""
        if job_id is not None and not _JOB_ID.match(job_id):
            return _error(422, "job must be 8 to 64 letters, digits, '-' or '_'")
        if job_id is not None and job_id in self.jobs:
            return _error(409, "this job id is already in use by another upload")
        if mode not in MODES:
            return _error(422, f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        try:
            if threshold is not None:
                check_threshold(threshold)
        except ValueError as err:
            return _error(422, str(err))
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/"):
            return _error(415, "send the image file's raw bytes as the request body (e.g. curl --data-binary "
                               "@photo.jpg), not a multipart form")
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return _error(413, f"{self.limit_message}, this file is {int(declared) / 2**20:.1f} MB",
                                  close=True)
            except ValueError:
                return _error(400, "invalid Content-Length header", close=True)
        return None

    @property
    def limit_message(self) -> str:
        return f"upload too large: the limit is {self.max_upload_mb:g} MB"

    async def predict(self, request: Any, mode: str, threshold: float | None, job_id: str | None = None) -> Any:
        """``POST /api/predict``: checks, then at most :data:`MAX_IN_FLIGHT` uploads held at once."""
        refusal = self.refuse(request, mode, threshold, job_id)
        if refusal is not None:
            return refusal
        with self.counter_lock:
            if self.state.in_flight >= MAX_IN_FLIGHT:
                return _error(503, "the server is busy with other images; try again in a moment")
            if job_id is not None and job_id in self.jobs:
                return _error(409, "this job id is already in use by another upload")
            self.state.in_flight += 1
            self.job_seq += 1
            job = self.active[self.job_seq] = _Job(self.job_seq)
            if job_id is not None:
                self.jobs[job_id] = job
        try:
            return await self.answer(request, mode, threshold, job)
        finally:
            with self.counter_lock:
                self.state.in_flight -= 1
                self.active.pop(job.seq, None)
                if job_id is not None:
                    self.jobs.pop(job_id, None)

    async def answer(self, request: Any, mode: str, threshold: float | None, job: _Job) -> Any:
        """Read the upload, predict, and answer with the JSON or the reason it was refused."""
        from fastapi.responses import JSONResponse, Response

        data = await self.read_body(request)
        if isinstance(data, Response):
            return data
        if not data:
            return _error(400, "empty upload: send the image file's bytes as the request body")
        name = _clean_name(request.headers.get("x-filename"))
        try:
            payload = await self.predict_while_connected(request, data, name, mode, threshold, job)
        except PredictionCancelledError as err:
            job.state = "cancelled"
            self.state.cancelled += 1
            return JSONResponse({"detail": f"{name}: {err}", "cancelled": True, "windows_done": job.windows_done,
                                 "windows_total": job.windows_total}, status_code=409)
        except DecompressionBombError as err:
            return _error(413, f"image too large: {err.reason}; this server analyses at most "
                               f"{self.predictor.max_pixels / 1e6:g} MP per image (forgeloc serve --max-pixels)")
        except ImageReadError as err:
            return _error(415, f"not an image: {name} {err.reason}")
        except FloatingPointError as err:  # the model's output is NaN: say so, never a score of NaN
            return _error(500, f"{name}: {err}")
        if payload is None:  # the client left: nobody to answer
            return Response(status_code=400)
        job.state = "done"
        return JSONResponse(payload)

    async def read_body(self, request: Any) -> Any:
        """The whole body (bytes), or the response to send: 413 (too large), 408 (too slow / shorter
        than declared), 400 (the client left: logged in one line)."""
        from fastapi.responses import Response

        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            remaining = start + self.body_timeout_s + size / self.min_body_rate - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except (TimeoutError, asyncio.TimeoutError):
                self.state.timed_out += 1
                log.warning("%s: upload too slow (%d bytes in %.0f s); answered 408", _client(request), size,
                            loop.time() - start)
                return _error(408, f"the upload was too slow: the body must arrive within {self.body_timeout_s:g} s "
                                   f"plus 1 s per {self.min_body_rate / 1024:g} KiB", close=True)
            if message["type"] == "http.disconnect":
                self.state.disconnected += 1
                log.info("%s: client disconnected during the upload (%d bytes received)", _client(request), size)
                return Response(status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return _error(413, self.limit_message, close=True)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def predict_while_connected(self, request: Any, data: bytes, name: str, mode: str,
                                      threshold: float | None, job: _Job) -> dict[str, Any] | None:
        """Run the prediction on the worker thread; None when the client leaves first (a prediction not
        yet started is skipped, a running one stops at its next window and its result is dropped).
        A job cancelled while queued raises :class:`PredictionCancelledError` at once."""
        job.state = "queued"
        future = self.worker.submit(self.run_prediction, data, name, mode, threshold, job)
        waiter = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
                if done:
                    return waiter.result()
                if job.cancel.is_set() and future.cancel():
                    raise PredictionCancelledError("cancelled before it started")
                if await request.is_disconnected():
                    job.cancel.set()  # a running prediction stops at its next window
                    started = not future.cancel()
                    self.state.dropped += 1
                    log.info("%s: client disconnected %s; result dropped", _client(request),
                             "during its prediction" if started else "before its prediction started")
                    return None
        finally:
            if not waiter.done():
                future.cancel()
                waiter.cancel()


def make_server(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    min_body_rate: float = DEFAULT_MIN_BODY_RATE,
    extra_hosts: Iterable[str] = (),
    log_level: str = "info",
    **uvicorn_options: Any,
) -> Any:
    """The ``uvicorn.Server`` :func:`serve` runs (``uvicorn_options`` override its settings, for tests).

    Bound to a loopback address, the server answers only to the ``Host`` names :data:`LOCAL_HOSTS` and
    ``extra_hosts`` (e.g. the public name a reverse proxy on the same machine passes on).
    """
    from forgeloc.extras import require

    require("serve", "forgeloc's web page (forgeloc.inference.server)", "uvicorn")
    import uvicorn

    local = host.lower() in _LOOPBACK_BINDS
    app = create_app(predictor, max_upload_mb=max_upload_mb, max_pixels=max_pixels, body_timeout_s=body_timeout_s,
                     min_body_rate=min_body_rate, allowed_hosts=[*LOCAL_HOSTS, *extra_hosts] if local else None)
    options: dict[str, Any] = {
        "host": host, "port": port, "workers": 1, "log_level": log_level, "server_header": False,
        # h11: the only HTTP implementation the limit below applies to (httptools is not a dependency).
        "http": "h11",
        # Request bodies beyond the limit are refused by the app; this bounds the headers too.
        "h11_max_incomplete_event_size": 64 * 1024,
        # Idle keep-alive connections are closed after 5 s (request bodies have their own deadline).
        "timeout_keep_alive": 5,
        # Ctrl+C / SIGTERM: open requests get this long, then they are cancelled (a running prediction
        # is left to its daemon thread, which does not hold the process).
        "timeout_graceful_shutdown": SHUTDOWN_TIMEOUT_S,
    }
    options.update(uvicorn_options)
    return uvicorn.Server(uvicorn.Config(app, **options))


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run the page with uvicorn (one process) until interrupted; ``options`` are
    :func:`make_server`'s (upload and pixel limits, body deadline, extra ``Host`` names, log level)."""
    make_server(predictor, host, port, **options).run()
