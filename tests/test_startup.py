"""A one-photo ``forgeloc predict`` loads only what predicting needs.

A practitioner runs ``forgeloc predict photo.jpg`` once per photo, so every module imported on that
path is paid for on every photo. The web server, plotting, FLOP counting, TensorBoard, ONNX and the
training stack belong to other commands and must stay out of it (they cost seconds together).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

# Modules of other commands, by their top-level package name.
NOT_ON_THE_PREDICT_PATH = (
    "fastapi", "uvicorn", "starlette", "matplotlib", "fvcore", "tensorboard", "onnx", "onnxruntime",
    "albumentations", "skimage", "playwright", "pandas",
)

_PROGRAM = """
import json, sys
from forgeloc.cli import main
sys.argv = ["forgeloc", "predict", sys.argv[1], "--out", sys.argv[2]]
code = 0
try:
    main()
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_predict_imports_no_module_of_other_commands(tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(photo)
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, str(photo), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None)
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())  # it did predict
    assert "torch" in report["modules"]  # the check sees the process's imports
    assert sorted(set(report["modules"]) & set(NOT_ON_THE_PREDICT_PATH)) == []
