"""Issue 20, progress: the work known before it starts (``Predictor.plan``), a progress callback per
window and cue that can cancel, the CLI's window-counted bar and time estimate, the server's
progress / cancel endpoints, and ``--threads`` on ``forgeloc test``."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import PixelModel, _cli, make_tiny_checkpoint
from typer.testing import CliRunner

from forgeloc.inference import Predictor
from forgeloc.inference.predictor import PredictionCancelledError, image_size


def _jpeg(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class NativePixelModel(PixelModel):
    native_resolution = True


class SlowPixelModel(PixelModel):
    """Sleeps ``delay`` seconds per forward pass, so that a tiled prediction lasts long enough to watch."""

    def __init__(self, delay: float = 0.01) -> None:
        super().__init__()
        self.delay = delay

    def forward(self, batch):
        time.sleep(self.delay)
        return super().forward(batch)


# -- the library ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, mode, expected_mode", [((40, 50), "auto", "resize"), ((100, 150), "auto", "resize"),
                                                        ((100, 150), "tile", "tile"), ((20, 150), "tile", "tile"),
                                                        ((100, 150), "resize", "resize")])
def test_plan_counts_the_windows_predict_runs(shape, mode, expected_mode):
    predictor = Predictor(PixelModel(), input_size=32, cues=["noise"])
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    plan = predictor.plan(image, mode)
    events: list[tuple[int, int, str]] = []
    result = predictor.predict(image, mode=mode, progress=lambda *e: events.append(e))
    assert (plan.height, plan.width, plan.mode, plan.cues) == (*shape, expected_mode, 1)
    assert plan.windows == result.windows and result.mode == expected_mode
    windows = [e for e in events if e[2] == "windows"]
    assert windows[-1] == (plan.windows, plan.windows, "windows")
    assert [d for d, _, _ in windows] == sorted(d for d, _, _ in windows)  # never backwards
    if expected_mode == "tile":
        assert windows[0] == (0, plan.windows, "windows") and len(windows) == 1 + -(-plan.windows // 4)
    assert [e for e in events if e[2] == "cues"] == [(0, 1, "cues"), (1, 1, "cues")]


def test_plan_reads_only_the_header_and_applies_the_exif_rotation(tmp_path):
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the photo as seen is 30 wide, 70 high
    Image.fromarray(np.zeros((30, 70, 3), np.uint8)).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    stream = io.BytesIO(data)
    stream.seek(0)
    assert image_size(path) == image_size(data) == image_size(stream) == (70, 30)
    assert stream.tell() == 0  # the stream is left where it was, for the prediction to read
    predictor = Predictor(PixelModel(), input_size=32)
    assert predictor.plan(path, "tile").windows == 4  # 70 high, 30 wide: rows at 0, 16, 32 and 38; one column
    assert predictor.predict(path, mode="tile").height == 70


def test_native_models_report_every_window():
    predictor = Predictor(NativePixelModel())
    image = np.zeros((2100, 2100, 3), np.uint8)
    events: list[tuple[int, int, str]] = []
    result = predictor.predict(image, progress=lambda *e: events.append(e))
    assert predictor.plan(image).windows == result.windows == 4
    assert predictor.describe()["auto_rule"].startswith("native resolution")  # what the page says auto does
    assert events == [(i, 4, "windows") for i in range(5)]


def test_a_progress_callback_that_raises_stops_between_windows():
    model = PixelModel()
    predictor = Predictor(model, input_size=32)
    image = np.zeros((300, 300, 3), np.uint8)
    total = predictor.plan(image, "tile").windows

    def cancel_after_three_batches(done: int, total: int, stage: str) -> None:
        if done >= 12:
            raise PredictionCancelledError(f"stopped at {done} of {total}")

    with pytest.raises(PredictionCancelledError, match=f"stopped at 12 of {total}"):
        predictor.predict(image, mode="tile", progress=cancel_after_three_batches)
    assert len(model.calls) == 3 and total > 100


def test_cues_run_side_by_side_with_the_results_of_one_after_another():
    from forgeloc.detectors import run_cue
    from forgeloc.inference.predictor import load_image_input

    cues = ["noise", "ela", "jpeg_grid", "metadata"]
    data = _jpeg(240, 320)
    events: list[tuple[int, int, str]] = []
    result = Predictor(PixelModel(), input_size=32, cues=cues).predict(data, progress=lambda *e: events.append(e))
    assert list(result.cues) == cues  # in the checkpoint's order, whatever order they finished in
    for name in cues:
        alone = run_cue(name, load_image_input(data))
        assert result.cues[name].score == alone.score, name
        if alone.heatmap is not None:
            np.testing.assert_array_equal(result.cues[name].heatmap, alone.heatmap, err_msg=name)
    assert [e for e in events if e[2] == "cues"] == [(k, len(cues), "cues") for k in range(len(cues) + 1)]


def test_a_cancel_during_the_cues_stops_them(monkeypatch):
    import forgeloc.inference.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "CUE_THREADS", 1)  # one at a time: the cancel lands after the first
    started: list[str] = []
    real_run_cue = predictor_module.run_cue
    monkeypatch.setattr(predictor_module, "run_cue",
                        lambda name, image: started.append(name) or real_run_cue(name, image))

    def cancel_after_first_cue(done: int, total: int, stage: str) -> None:
        if stage == "cues" and done == 1:
            raise PredictionCancelledError("stopped during the cues")

    predictor = Predictor(PixelModel(), input_size=32, cues=["noise", "ela", "metadata"])
    with pytest.raises(PredictionCancelledError, match="during the cues"):
        predictor.predict(np.zeros((64, 64, 3), np.uint8), progress=cancel_after_first_cue)
    assert started == ["noise"]


@pytest.mark.parametrize("torch_threads, most", [(1, 1), (2, 2)])
def test_cues_run_on_no_more_threads_than_torch_is_given(monkeypatch, torch_threads, most):
    import forgeloc.inference.predictor as predictor_module

    lock, now, peak = threading.Lock(), [0], [0]
    real_run_cue = predictor_module.run_cue

    def counting(name, image):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)  # long enough for a second worker, if there is one, to start
        try:
            return real_run_cue(name, image)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(predictor_module, "run_cue", counting)
    monkeypatch.setattr(predictor_module, "CUE_THREADS", 4)
    predictor = Predictor(PixelModel(), input_size=32, cues=["noise", "ela", "metadata"])
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        predictor.predict(np.zeros((64, 64, 3), np.uint8))
    finally:
        torch.set_num_threads(previous)
    assert peak[0] == most


def test_batch_runs_pass_progress_through(tmp_path):
    from forgeloc.inference.batch import BatchPlan, BatchPrediction

    for i, shape in enumerate([(20, 20), (100, 100)]):
        Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(tmp_path / f"{i}.png")
    events: list[tuple[int, int, str]] = []
    plan = BatchPlan.from_inputs([str(tmp_path / "0.png"), str(tmp_path / "1.png")], tmp_path / "out")
    (tmp_path / "out").mkdir()
    BatchPrediction(Predictor(PixelModel(), input_size=32), plan, report=False, mode="tile",
                    progress=lambda *e: events.append(e)).run()
    assert events[0] == (0, 1, "windows") and (1, 1, "windows") in events and events[-1] == (36, 36, "windows")


# -- the command line -------------------------------------------------------------------------------------
class _FakeBar:
    def __init__(self) -> None:
        self.fields: dict = {}
        self.console = self
        self.printed: list[str] = []

    def add_task(self, description: str, total: int, **fields) -> int:
        self.fields = {"description": description, "total": total, "completed": 0, **fields}
        return 0

    def update(self, task: int, **fields) -> None:
        self.fields.update(fields)

    def print(self, text: str, **_options) -> None:
        self.printed.append(text)


def test_the_bar_moves_during_one_large_photo(tmp_path, monkeypatch):
    import forgeloc.cli.predict as cli_predict
    from forgeloc.inference.batch import BatchItem

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "large.png")
    files = [tmp_path / "small.png", tmp_path / "large.png", tmp_path / "missing.png"]
    predictor = Predictor(PixelModel(), input_size=32)
    large = predictor.plan(files[1], "tile").windows
    bar = _FakeBar()
    display = cli_predict.WindowProgress(bar, predictor, files, "tile")
    assert display.total == 1 + large + 1 and display.tiled == 1
    display.on_progress(1, 1, "windows")
    display.on_result(BatchItem(files[0], {}, None, 1, 3))
    seen = []
    monkeypatch.setattr(cli_predict, "ESTIMATE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(cli_predict, "ESTIMATE_MIN_SECONDS", 0.0)
    for done in range(0, large + 1, 4):
        display.on_progress(done, large, "windows")
        seen.append(bar.fields["completed"])
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 1 + (large // 4) * 4  # it moves within the photo
    assert bar.fields["description"] == "large.png"
    display.on_progress(0, 2, "cues")
    assert bar.fields["description"] == "large.png: cues 0/2"
    display.on_result(BatchItem(files[1], {}, None, 2, 3))
    assert bar.fields["completed"] == 1 + large and bar.fields["images"] == "2/3 images"
    assert len(bar.printed) == 1 and bar.printed[0].startswith("estimated time: about")
    assert "an estimate" in bar.printed[0]


def test_cli_predict_prints_the_window_count_and_an_estimate(tmp_path, monkeypatch):
    import forgeloc.cli.predict as cli_predict

    monkeypatch.setattr(cli_predict, "ESTIMATE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(cli_predict, "ESTIMATE_MIN_SECONDS", 0.0)
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", size=32, widths=(4,), steps=1)
    Image.fromarray(np.zeros((200, 240, 3), np.uint8)).save(tmp_path / "large.png")
    result = CliRunner().invoke(_cli(), ["predict", str(tmp_path / "large.png"), "--detector", str(ckpt), "--out",
                                         str(tmp_path / "out"), "--no-report", "--mode", "tile"])
    assert result.exit_code == 0, result.output
    windows = Predictor.from_checkpoint(ckpt).plan(tmp_path / "large.png", "tile").windows
    assert f"{windows} model windows to run" in result.output
    assert "estimated time: about" in result.output and "an estimate" in result.output
    assert f"{windows}/{windows}" in result.output


def test_cli_test_has_threads(tmp_path, monkeypatch):
    import typer

    from forgeloc.cli import test as test_command

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    test_command.register(app)
    seen = {}
    monkeypatch.setattr("forgeloc.engine.testing.run_test",
                        lambda *a, **k: seen.setdefault("threads", torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["test", "-k", str(tmp_path), "-d", str(tmp_path), "--out",
                                          str(tmp_path / "o"), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert seen == {"threads": 1}
        assert CliRunner().invoke(app, ["test", "-k", "x", "-d", "y", "--threads", "0"]).exit_code == 2
    finally:
        torch.set_num_threads(before)


# -- the server ----------------------------------------------------------------------------------------------
def _get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _post(port: int, path: str, body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_server_progress_and_cancel_stop_a_tiled_prediction():
    pytest.importorskip("fastapi")
    from test_server_hardening import _server, _wait_for

    model = SlowPixelModel()
    predictor = Predictor(model, input_size=32)
    upload = _png(400, 400)
    total = predictor.plan(upload, "tile").windows
    with _server(predictor) as (_srv, port, state, _):
        assert _get(port, "/api/progress?job=abcdefgh1234") == (200, {"state": "unknown"})
        assert _post(port, "/api/predict?job=bad%20id", upload)[0] == 422
        answer: dict = {}
        worker = threading.Thread(target=lambda: answer.update(
            zip(("status", "body"), _post(port, "/api/predict?mode=tile&job=abcdefgh1234", upload), strict=True)))
        worker.start()
        _wait_for(lambda: _get(port, "/api/progress?job=abcdefgh1234")[1].get("windows_done", 0) >= 8, 20,
                  "the first windows")
        status, body = _get(port, "/api/progress?job=abcdefgh1234")
        assert body["state"] == "running" and body["windows_total"] == total and body["ahead"] == 0
        assert _post(port, "/api/predict?job=abcdefgh1234", upload)[0] == 409  # the id is in use
        assert _post(port, "/api/cancel?job=abcdefgh1234") == (200, {"cancelled": True, "state": "running"})
        worker.join(20)
        assert answer["status"] == 409 and answer["body"]["cancelled"] is True
        assert answer["body"]["windows_total"] == total and answer["body"]["windows_done"] < total // 2
        calls = len(model.calls)
        time.sleep(0.3)
        assert len(model.calls) == calls  # the work has stopped
        assert state.cancelled == 1 and state.in_flight == 0
        assert _get(port, "/api/progress?job=abcdefgh1234") == (200, {"state": "unknown"})
        assert _post(port, "/api/cancel?job=abcdefgh1234")[0] == 404
        status, body = _post(port, "/api/predict?mode=resize&job=zyxwvuts9876", _png(30, 30))
        assert status == 200 and body["windows"] == 1  # the server is free again


def test_server_cancels_a_queued_upload_without_running_it():
    pytest.importorskip("fastapi")
    from test_server_hardening import _server, _wait_for

    model = SlowPixelModel(delay=0.02)
    with _server(Predictor(model, input_size=32)) as (_srv, port, state, _):
        answers: dict = {}

        def send(job: str, body: bytes, mode: str) -> None:
            answers[job] = _post(port, f"/api/predict?mode={mode}&job={job}", body)

        first = threading.Thread(target=send, args=("first-job", _png(300, 300), "tile"))
        first.start()
        _wait_for(lambda: _get(port, "/api/progress?job=first-job")[1].get("state") == "running", 20, "the first")
        second = threading.Thread(target=send, args=("second-job", _png(30, 30, 1), "resize"))
        second.start()
        _wait_for(lambda: _get(port, "/api/progress?job=second-job")[1].get("state") == "queued", 20, "the queue")
        assert _get(port, "/api/progress?job=second-job")[1]["ahead"] == 1
        calls = len(model.calls)
        _post(port, "/api/cancel?job=second-job")
        second.join(20)
        assert answers["second-job"][0] == 409 and "before it started" in answers["second-job"][1]["detail"]
        _post(port, "/api/cancel?job=first-job")
        first.join(20)
        assert answers["first-job"][0] == 409
        assert all(shape[-1] == 32 for shape in model.calls[calls:])  # the queued 30×30 resize never ran
        assert state.cancelled == 2
