"""The core install: ``pip install forgeloc`` (no extras) predicts, and a missing extra says which one.

The extras' packages are made unimportable in a child process (``sys.modules[name] = None`` makes
``import name`` raise ``ModuleNotFoundError`` and ``importlib.util.find_spec`` return None), which is
what a core-only environment looks like to forgeloc. ``.ci/run`` checks the same in a real fresh
virtual environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from forgeloc.extras import EXTRA_OF_MODULE

REPO = Path(__file__).resolve().parents[1]
#: Everything an extra installs (and the packages those pull in that forgeloc could reach for).
NOT_IN_CORE = sorted({*EXTRA_OF_MODULE, "sklearn", "httpx"})
BLOCK = f"import sys\nfor _n in {NOT_IN_CORE!r}:\n    sys.modules[_n] = None\n"


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_load_and_predict_without_any_extra(tmp_path):
    photo = _photo(tmp_path)
    code = (
        "import forgeloc\n"
        f"result = forgeloc.load().predict({str(photo)!r})\n"
        "result.save('out')\n"
        "print('score', result.score)\n"
        f"assert not [m for m in {NOT_IN_CORE!r} if sys.modules.get(m) is not None]\n"
    )
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "score" in done.stdout
    assert (tmp_path / "out" / "photo_heatmap.png").is_file()


def test_predict_command_without_any_extra(tmp_path):
    photo = _photo(tmp_path)
    code = ("import runpy\n"
            f"sys.argv = ['forgeloc', 'predict', {str(photo)!r}, '--out', 'results']\n"
            "runpy.run_module('forgeloc', run_name='__main__')\n")
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "results.json").is_file()
    assert (tmp_path / "results" / "report.html").is_file()


def test_serve_without_the_serve_extra_prints_the_install_hint(tmp_path):
    code = "import runpy\nsys.argv = ['forgeloc', 'serve']\nrunpy.run_module('forgeloc', run_name='__main__')\n"
    done = _run(code, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "forgeloc serve needs the serve extra" in done.stderr
    assert "pip install 'forgeloc[serve]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_train_without_the_train_extra_prints_the_install_hint(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: unet_baseline}\n")
    code = ("import runpy\n"
            f"sys.argv = ['forgeloc', 'train', '--config', {str(config)!r}]\n"
            "runpy.run_module('forgeloc', run_name='__main__')\n")
    done = _run(code, tmp_path)
    assert "Traceback" not in done.stderr + done.stdout
    assert "pip install 'forgeloc[train]'" in done.stderr


def test_built_in_inferno_table_is_matplotlibs():
    from matplotlib import colormaps

    from forgeloc.inference.visualize import colormap_lut

    rgba = colormaps["inferno"](np.linspace(0.0, 1.0, 256))
    np.testing.assert_array_equal(colormap_lut("inferno"), np.rint(rgba[:, :3] * 255.0).astype(np.uint8))
