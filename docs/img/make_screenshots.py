"""Regenerate docs/img/serve.png and docs/img/report.png with a real checkpoint (needs Chromium + Playwright).

Usage (from the repository root)::

    forgeloc demo --out /tmp/demo                       # or: forgeloc predict PHOTOS --out /tmp/demo
    python docs/img/make_screenshots.py default /tmp/demo/photos/splice_coffee.jpg /tmp/demo/report.html docs/img

(``default`` is the shipped detector; any checkpoint folder works too.)

The screenshots are quantised to 256 colours so that each stays under 300 KB.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def save_small(png: bytes, path: Path) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB, {image.size[0]}x{image.size[1]}")


def main(checkpoint: str, photo: str, report: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "forgeloc", "serve", checkpoint, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 940})
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text("model ")
            page.set_input_files("#file-input", photo)
            page.wait_for_selector("#result:not([hidden])", timeout=600_000)
            page.fill("#opacity", "60")
            save_small(page.screenshot(full_page=True), out / "serve.png")
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(Path(report).resolve().as_uri())
            save_small(page.screenshot(), out / "report.png")
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:5])
