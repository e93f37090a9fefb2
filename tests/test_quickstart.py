"""The README's first command, as CI runs it: the quickstart trains the baseline on the CPU and
its held-out pixel F1 is clearly above the trivial all-tampered predictor, and close to the
number the README reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_quickstart_beats_the_trivial_predictor_as_the_readme_says(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "forgeloc", "quickstart", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "report" / "metrics.json").read_text())["results"]
    model, trivial = results["unet_baseline"], results["all-tampered (trivial)"]
    assert model["n_tampered"] > 0 and model["n_authentic"] > 0
    assert model["pixel_f1"] >= trivial["pixel_f1"] + 0.05, (model["pixel_f1"], trivial["pixel_f1"])
    assert model["pixel_auc"] >= 0.65
    assert (out / "report" / "samples.png").stat().st_size > 10_000
    assert (out / "run" / "checkpoints" / "epoch_0009" / "model.safetensors").is_file()
    # Its model card: the demo-model label first, then the held-out number it measured.
    for folder in (out / "run" / "checkpoints" / "epoch_0009", out / "run" / "best"):
        card = json.loads((folder / "config.json").read_text())["card"]
        assert card["headline"].startswith("demo model: trained for minutes on synthetic images")
        assert f"pixel F1 {model['pixel_f1']:.2f} on " in card["headline"]

    readme = (REPO / "README.md").read_text()
    reported = re.search(r"quickstart held-out pixel F1: \*\*([0-9.]+)\*\*", readme)
    assert reported, "the README must report the quickstart's held-out pixel F1"
    # CPU kernels differ between machines, so the run is reproducible only to a few hundredths.
    assert abs(model["pixel_f1"] - float(reported.group(1))) <= 0.05
