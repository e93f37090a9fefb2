"""``forgeloc serve`` as a real subprocess, driven by a real headless Chromium (Playwright).

Needs the Debian ``chromium`` package at /usr/bin/chromium (Playwright cannot download its own
browsers here); skipped with that reason otherwise. Screenshots go to ``test-artifacts/``.

The served checkpoint records cues and a calibration (as a packaged detector does), so the page
shows the model label, the verdict band and one panel per cue.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared_path
from PIL import Image
from test_predict import COVERAGE_PNG, make_tiny_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
SERVED_CUES = ["ela", "metadata", "jpeg_adq", "noise"]
BUSY = "busy: one prediction at a time; try again when it finishes, or cancel it"
VERDICT = re.compile(r"^(no evidence found|inconclusive|likely manipulated) \(\d\.\d\d\)$")
#: The process id of each running test server, by URL (to read its CPU time).
SERVER_PIDS: dict[str, int] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint whose config.json records cues to run and calibration bands."""
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny", size=64)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(cues=SERVED_CUES, calibration={"low": 0.3, "high": 0.7, "method": "browser test bands"})
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def _serve(ckpt: Path, tmp_path_factory):
    """``python -m forgeloc serve CKPT`` on a free port; yields its base URL, stops it afterwards."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgeloc", "serve", str(ckpt), "--port", str(port), "--max-upload-mb", "1",
             "--max-pixels", "4000000"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path_factory.mktemp("serve_cwd"),
        )
    url = f"http://127.0.0.1:{port}"
    SERVER_PIDS[url] = proc.pid
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"forgeloc serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"forgeloc serve did not answer /api/health in 120 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    """``python -m forgeloc serve`` on a free port with a tiny checkpoint; yields its base URL."""
    yield from _serve(checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def long_run_checkpoint(tmp_path_factory) -> Path:
    """32-px windows of a wider tiny model: a 2000² photo is 15,376 windows, over ten seconds of
    work, so that a click on Cancel seconds after the start lands while the windows still run."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("serve_long") / "tiny32", size=32, widths=(16, 32, 64))


@pytest.fixture(scope="module")
def long_run_server(tmp_path_factory, long_run_checkpoint):
    yield from _serve(long_run_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


@pytest.mark.browser
def test_upload_result_slider_download_and_errors(server, browser, tmp_path, checkpoint):
    ARTIFACTS.mkdir(exist_ok=True)
    photo = shared_path(*COVERAGE_PNG)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _watch_errors(page)
    page.goto(server + "/")
    expect = pytest.importorskip("playwright.sync_api").expect  # waits without eval(): the page's CSP forbids it
    expect(page.locator("#model-info")).to_contain_text("unet_baseline_tiny")

    # 1. file picker (resize mode: the tiny model would need 81 windows to tile this photo)
    page.select_option("#mode", "resize")
    with page.expect_response(re.compile(r".*/api/predict.*")) as response_info:
        page.set_input_files("#file-input", str(photo))
    assert response_info.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    # The same upload through the JSON API directly (the browser's copy of a large body is not kept).
    request = urllib.request.Request(server + "/api/predict?mode=resize", data=photo.read_bytes(), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as r:
        body = json.load(r)
    assert page.text_content("#score") == f"{body['score']:.3f}"
    assert page.text_content("#fraction").endswith("%")
    assert page.text_content("#result-name") == photo.name
    assert page.text_content("#mode-used") == "resize"
    for img in ("#overlay-photo", "#overlay-layer", "#heatmap"):
        assert page.eval_on_selector(img, "e => e.complete && e.naturalWidth > 0"), img

    # Model identity, verdict band, chain of custody, one panel per cue.
    label = page.locator("#model-label")
    expect(label).to_be_visible()
    expect(label).to_contain_text("unet_baseline_tiny - unvalidated model")
    expect(page.locator("#result-model")).to_contain_text("unvalidated model")
    expect(page.locator("#bands")).to_contain_text("browser test bands")
    verdict = page.locator("#verdict")
    expect(verdict).to_be_visible()
    assert VERDICT.match(verdict.text_content()), verdict.text_content()
    assert verdict.text_content() == f"{body['verdict']} ({body['score']:.2f})"
    cls = {"no evidence found": "v-clear", "inconclusive": "v-inconclusive", "likely manipulated": "v-likely"}
    assert cls[body["verdict"]] in verdict.get_attribute("class").split()
    colour = page.eval_on_selector("#verdict", "e => getComputedStyle(e).backgroundColor")
    assert colour not in ("rgba(0, 0, 0, 0)", "rgb(238, 238, 238)")  # coloured by its band
    expect(page.locator("#custody")).to_contain_text(hashlib.sha256(photo.read_bytes()).hexdigest())
    weights = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    expect(page.locator("#model-facts")).to_contain_text(weights)
    cues = page.locator("#cues .cue")
    expect(cues).to_have_count(len(SERVED_CUES))
    assert cues.evaluate_all("c => c.map(x => x.dataset.cue)") == SERVED_CUES
    assert page.is_visible("#cues-section")
    for name in SERVED_CUES:
        panel = page.locator(f'#cues .cue[data-cue="{name}"]')
        expect(panel).to_contain_text("What to look for:")
        expect(panel).to_contain_text("What to ignore:")
    expect(page.locator('.cue[data-cue="ela"]')).to_contain_text("visual aid, not a detector")
    expect(page.locator('.cue[data-cue="jpeg_adq"]')).to_contain_text("not applicable: not a JPEG file")
    expect(page.locator('.cue[data-cue="metadata"] dl.facts')).to_contain_text("camera")
    for name in ("ela", "noise"):
        assert page.eval_on_selector(f'.cue[data-cue="{name}"] img', "e => e.complete && e.naturalWidth > 0"), name

    # 2. the opacity slider drives the overlay layer's opacity
    opacity = "e => getComputedStyle(e).opacity"
    assert page.eval_on_selector("#overlay-layer", opacity) == "0.7"
    page.fill("#opacity", "20")
    assert page.eval_on_selector("#overlay-layer", opacity) == "0.2"
    assert page.text_content("#opacity-value") == "20 %"
    page.fill("#opacity", "100")
    assert page.eval_on_selector("#overlay-layer", opacity) == "1"

    # 3. the mask download: a full-resolution 0/255 PNG named after the photo
    link = page.locator("#download-mask")
    assert link.get_attribute("download") == f"{photo.stem}_predmask.png"
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / "mask.png"
    download_info.value.save_as(saved)
    mask = np.asarray(Image.open(saved))
    assert mask.shape == (body["height"], body["width"]) and set(np.unique(mask)) <= {0, 255}
    page.screenshot(path=str(ARTIFACTS / "serve.png"))

    # 4. drag and drop (a dispatched drop event carrying a real File)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(buf, "PNG")
    page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(buf.getvalue()).decode(),
    )
    expect(page.locator("#result-name")).to_have_text("dropped.png")
    assert page.text_content("#size") == "80 × 48"

    # 5. a non-image is refused with a clear message, shown to the person
    page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                "buffer": b"these are my notes, not a photo"}])
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("not an image: notes.txt")
    assert page.is_hidden("#result")
    page.screenshot(path=str(ARTIFACTS / "serve_error.png"))
    # Only the refused upload's HTTP 415 may be logged; no script error, no CSP violation.
    assert all("415" in e for e in errors), errors
    page.close()


@pytest.mark.browser
def test_report_renders_sorts_and_does_not_run_injected_code(browser, tmp_path):
    from test_report import HOSTILE, _entries

    from forgeloc.inference.report import write_report

    ARTIFACTS.mkdir(exist_ok=True)
    path = write_report(tmp_path / "report.html", _entries(tmp_path), {"model": "pixel"})
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _watch_errors(page)
    page.goto(path.as_uri())
    names = page.eval_on_selector_all("td.name", "cells => cells.map(c => c.textContent)")
    assert HOSTILE in names  # shown as text
    assert page.evaluate("window.pwned === undefined")
    scores = lambda: [float(v) for v in page.eval_on_selector_all(  # noqa: E731
        "td.score", "cells => cells.map(c => c.dataset.value)")]
    assert scores() == sorted(scores(), reverse=True)
    page.click("th[data-col='5'] button")
    assert scores() == sorted(scores())
    page.click("th[data-col='4'] button")
    assert page.eval_on_selector_all("td.name", "c => c.map(x => x.textContent)")[0] == sorted(names)[-1]
    page.screenshot(path=str(ARTIFACTS / "report.png"))
    assert page.evaluate("window.pwned === undefined") and errors == [], errors
    page.close()


def _png_bytes(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.browser
def test_new_upload_clears_the_result_and_a_second_one_while_busy_is_refused_visibly(server, browser):
    expect = pytest.importorskip("playwright.sync_api").expect
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _watch_errors(page)
    page.goto(server + "/")
    page.select_option("#mode", "resize")
    page.set_input_files("#file-input", files=[{"name": "before.png", "mimeType": "image/png",
                                                "buffer": _png_bytes(40, 60, 1)}])
    expect(page.locator("#result-name")).to_have_text("before.png", timeout=60_000)
    expect(page.locator("#cues .cue")).to_have_count(len(SERVED_CUES))

    # Hold the next prediction request in the browser, so that it is still running for the second upload.
    held = []
    page.route(re.compile(r".*/api/predict.*"), lambda route: held.append(route))
    page.set_input_files("#file-input", files=[{"name": "first.png", "mimeType": "image/png",
                                                "buffer": _png_bytes(48, 64, 2)}])
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    expect(page.locator("#status")).to_contain_text("Analysing first.png")
    # The previous result is gone as soon as the new photo is sent.
    expect(page.locator("#result")).to_be_hidden()
    assert page.text_content("#verdict") == "" and page.locator("#cues .cue").count() == 0
    assert page.get_attribute("#overlay-photo", "src") is None
    assert page.is_hidden("#busy")

    # A second photo while the first runs: a visible message, and no request.
    page.set_input_files("#file-input", files=[{"name": "second.png", "mimeType": "image/png",
                                                "buffer": _png_bytes(30, 30, 3)}])
    busy = page.locator("#busy")
    expect(busy).to_be_visible()
    expect(busy).to_have_text(BUSY)
    page.wait_for_timeout(300)
    assert len(held) == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_busy.png"))

    held[0].continue_()
    expect(page.locator("#result-name")).to_have_text("first.png", timeout=60_000)
    expect(busy).to_be_hidden()
    expect(page.locator("#cues .cue")).to_have_count(len(SERVED_CUES))
    page.unroute(re.compile(r".*/api/predict.*"))
    assert errors == [], errors
    page.close()


def _jpeg_with_exif(h: int, w: int, seed: int = 0) -> bytes:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "<b>EOS</b>"
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.browser
def test_report_cue_panels_verdicts_and_hashes_in_the_browser(browser, tmp_path):
    from test_predict import PixelModel

    from forgeloc.inference import Predictor
    from forgeloc.inference.report import report_entry, write_report

    expect = pytest.importorskip("playwright.sync_api").expect
    cues = ["ela", "metadata", "jpeg_adq"]
    predictor = Predictor(PixelModel(), input_size=32, cues=cues, calibration={"low": 0.3, "high": 0.6})
    inputs = {"camera.jpg": _jpeg_with_exif(90, 120), "screen.png": _png_bytes(40, 64, 4),
              "second <i>.png": _png_bytes(30, 50, 5)}
    paths = []
    for name, data in inputs.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    entries = [report_entry(predictor.predict(p, mode="resize"), requested_mode="resize") for p in paths]
    report = write_report(tmp_path / "report.html", entries, {"model": "pixel"}, describe=predictor.describe(),
                          command=["forgeloc", "predict", "x", "--report"])
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = _watch_errors(page)
    page.goto(report.as_uri())
    expect(page.locator("#model-label")).to_be_visible()
    expect(page.locator("#model-label")).to_contain_text("unvalidated model")
    chips = page.locator("#results td.score .verdict")
    expect(chips).to_have_count(len(inputs))
    for text in chips.all_text_contents():
        assert VERDICT.match(text), text

    def by_name() -> dict[str, str]:  # photo name → the SHA-256 shown in its own details
        return dict(page.eval_on_selector_all("tbody.entry", """bodies => bodies.map(b => [
            b.querySelector('td.name').textContent, b.querySelector('code.sha256').textContent])"""))

    expected = {name: hashlib.sha256(data).hexdigest() for name, data in inputs.items()}
    assert by_name() == expected
    # Cue panels: present in every photo's details, maps decoded only once the details are opened.
    assert page.locator("section.cue").count() == len(cues) * len(inputs)
    first = page.locator("tbody.entry").first
    assert first.locator("img[data-src]").count() >= 1 and not first.locator("section.cue").first.is_visible()
    first.locator("summary").click()
    expect(first.locator('section.cue[data-cue="ela"]')).to_contain_text("visual aid, not a detector")
    expect(first.locator('section.cue[data-cue="ela"]')).to_contain_text("What to look for:")
    assert first.locator("img[data-src]").count() == 0
    assert first.locator('section.cue[data-cue="ela"] img').evaluate("e => e.complete && e.naturalWidth > 0")
    page.click("#expand-all")
    expect(page.locator('tbody.entry section.cue[data-cue="metadata"] dl.facts').first).to_be_visible()
    expect(page.locator("section.cue", has_text="not applicable: not a JPEG file")).to_have_count(2)
    # Sorting moves each photo's details with it.
    page.click("th[data-col='4'] button")
    names = page.eval_on_selector_all("td.name", "c => c.map(x => x.textContent)")
    assert names == sorted(inputs, reverse=True) and by_name() == expected
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_cues.png"), full_page=True)
    assert page.evaluate("typeof window.pwned") == "undefined" and errors == [], errors
    page.close()


def test_live_server_refuses_a_declared_oversize_upload_before_reading_it(server):
    """Headers announce 100 MB, no body follows: the 413 must come back at once."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: 104857600\r\n\r\n" + bytes(1024))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"limit is 1 MB" in reply


def _gradient_png(side: int) -> bytes:
    """A smooth ``side × side`` photo: a few KB as PNG (under the served 1 MB limit), many windows to tile."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    flat = np.full((side, side), 90, np.uint8)
    image = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)), flat], 2)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.browser
def test_progress_of_a_tiled_run_and_cancel_stops_the_work(long_run_server, browser, long_run_checkpoint):
    from forgeloc.inference import Predictor

    server = long_run_server
    expect = pytest.importorskip("playwright.sync_api").expect
    photo = _gradient_png(2000)
    total = Predictor.from_checkpoint(long_run_checkpoint).plan(photo, "tile").windows
    assert total > 3000 and len(photo) < 1024 * 1024
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _watch_errors(page)
    page.goto(server + "/")
    page.select_option("#mode", "tile")
    page.set_input_files("#file-input", files=[{"name": "large.png", "mimeType": "image/png", "buffer": photo}])
    box = page.locator("#progress-box")
    expect(box).to_be_visible()
    expect(page.locator("#cancel")).to_be_enabled()

    # Progress events: the windows done / total reach the page while the photo is tiled.
    expect(box).to_have_attribute("data-state", "running", timeout=60_000)
    expect(page.locator("#progress-text")).to_have_text(re.compile(rf"^window [1-9][0-9]* of {total}"), timeout=30_000)
    assert page.get_attribute("#progress", "max") == str(total)
    assert 0 < int(box.get_attribute("data-windows-done")) < total

    # A second photo while this one runs: a visible message, and this run goes on.
    page.set_input_files("#file-input", files=[{"name": "second.png", "mimeType": "image/png",
                                                "buffer": _png_bytes(30, 30, 3)}])
    expect(page.locator("#busy")).to_have_text(BUSY)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_progress.png"))

    # Cancel: the job ends early and the server's CPU goes quiet.
    page.click("#cancel")
    status = page.locator("#status")
    expect(status).to_contain_text("Cancelled", timeout=30_000)
    done = int(re.search(rf"cancelled after (\d+) of {total} windows", status.text_content()).group(1))
    assert done < total // 2, (done, total)
    expect(box).to_be_hidden()
    assert page.is_hidden("#result") and page.is_hidden("#error")
    before = _cpu_seconds(SERVER_PIDS[server])
    time.sleep(1.5)
    busy_cpu = _cpu_seconds(SERVER_PIDS[server]) - before
    assert busy_cpu < 0.4, f"the server used {busy_cpu:.2f} s of CPU in 1.5 s after the cancel"

    # The server is free again: the next photo is analysed at once.
    page.select_option("#mode", "resize")
    page.set_input_files("#file-input", files=[{"name": "after.png", "mimeType": "image/png",
                                                "buffer": _png_bytes(40, 60, 5)}])
    expect(page.locator("#result-name")).to_have_text("after.png", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Analysed after.png")
    # Only the cancelled upload's HTTP 409 may be logged.
    assert all("409" in e for e in errors), errors
    page.close()
