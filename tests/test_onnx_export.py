"""ONNX export: the graph computes the model's function, and runs without forgeloc or torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import forgeloc
from forgeloc.deploy import onnx as fonnx
from forgeloc.inference.predictor import Predictor
from forgeloc.io import CheckpointError

pytest.importorskip("onnxruntime")

TINY = ["unet_baseline_tiny", "sparsevit_tiny", "mesorch_tiny", "mesorch_p_tiny", "ncl_tiny", "gridnet_tiny"]


def _predictor(name: str) -> Predictor:
    torch.manual_seed(0)
    return Predictor(forgeloc.create_model(name))


@pytest.mark.parametrize("name", TINY)
def test_export_agrees_with_pytorch_at_any_batch_size(name, tmp_path):
    predictor = _predictor(name)
    result = fonnx.export_onnx(predictor, tmp_path)
    assert max(result.check["max_abs_diff"].values()) <= fonnx.ATOL
    model, config = fonnx.load_onnx(tmp_path)
    assert config.extra["onnx"]["opset"] == fonnx.OPSET and config.model == name
    torch_model = predictor.model
    gen = torch.Generator().manual_seed(7)
    if config.extra["onnx"]["outputs"] == ["block_logits"]:
        coef = torch.round(torch.randn(3, 64, 19, 26, generator=gen) * 5) * 2  # another batch and block count
        with torch.inference_mode():
            torch.testing.assert_close(model.block_logits(coef), torch_model.block_logits(coef), atol=1e-4, rtol=0)
        image = torch.randn(2, 3, 72, 88, generator=gen)
    else:
        size = model.input_size  # the size the graph was traced at
        assert size == predictor.input_size
        image = torch.randn(3, 3, size, size, generator=gen)
    with torch.inference_mode():
        ours, ref = model({"image": image}), torch_model({"image": image})
    torch.testing.assert_close(ours["pred_mask"], ref["pred_mask"], atol=1e-4, rtol=0)


def test_an_export_that_disagrees_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(fonnx, "ATOL", -1.0)  # no graph can agree this well
    with pytest.raises(fonnx.ExportError, match="disagrees with PyTorch"):
        fonnx.export_onnx(_predictor("unet_baseline_tiny"), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_training_free_detectors_have_nothing_to_export(tmp_path):
    with pytest.raises(fonnx.ExportError, match="training-free"):
        fonnx.export_onnx(forgeloc.load("copymove"), tmp_path)


def test_a_graph_from_another_export_is_refused(tmp_path):
    fonnx.export_onnx(_predictor("unet_baseline_tiny"), tmp_path / "a")
    fonnx.export_onnx(_predictor("ncl_tiny"), tmp_path / "b")
    (tmp_path / "a" / fonnx.ONNX_FILE).write_bytes((tmp_path / "b" / fonnx.ONNX_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="sha256"):
        fonnx.load_onnx(tmp_path / "a")
    with pytest.raises(CheckpointError, match="not an ONNX export"):
        fonnx.load_onnx(tmp_path)


def test_config_records_the_preprocessing_and_threshold(tmp_path):
    fonnx.export_onnx(forgeloc.load(), tmp_path)
    config = json.loads((tmp_path / fonnx.CONFIG_FILE).read_text())
    section = config["onnx"]
    assert config["input"]["mode"] == "native" and config["fuse"] == ["copymove"]
    assert config["threshold"] == 0.5 and config["calibration"]["high"] > config["calibration"]["low"]
    assert section["inputs"][0]["name"] == "coef" and "DCT" in section["inputs"][0]["meaning"]
    assert "JPEG stream" in section["predict"]["native"]
    fonnx.export_onnx(_predictor("sparsevit_tiny"), tmp_path / "vit")
    image_input = json.loads((tmp_path / "vit" / fonnx.CONFIG_FILE).read_text())["onnx"]["inputs"][0]
    assert image_input["normalization"]["mean"] == [0.485, 0.456, 0.406]


# A consumer with onnxruntime and numpy only: torch and forgeloc cannot be imported.
_CONSUMER = textwrap.dedent("""
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "forgeloc"):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())
    import numpy as np
    import onnxruntime as ort

    folder, sample, expected = sys.argv[1:4]
    config = json.load(open(folder + "/config.json"))
    sess = ort.InferenceSession(folder + "/" + config["onnx"]["file"], providers=["CPUExecutionProvider"])
    name = config["onnx"]["inputs"][0]["name"]
    out = sess.run(None, {name: np.load(sample)})[0]
    print("max diff", float(np.abs(out - np.load(expected)).max()))
    assert "torch" not in sys.modules and "forgeloc" not in sys.modules
""")


@pytest.mark.parametrize("name", ["sparsevit_tiny", "gridnet_tiny"])
def test_the_onnx_file_runs_without_forgeloc_or_torch(name, tmp_path):
    predictor = _predictor(name)
    fonnx.export_onnx(predictor, tmp_path / "export")
    gen = torch.Generator().manual_seed(3)
    if name.startswith("gridnet"):
        sample = torch.round(torch.randn(2, 64, 12, 17, generator=gen) * 5) * 2
        with torch.inference_mode():
            expected = predictor.model.block_logits(sample)
    else:
        size = predictor.model.input_size
        sample = torch.randn(2, 3, size, size, generator=gen)
        with torch.inference_mode():
            expected = predictor.model({"image": sample})["pred_mask"]
    np.save(tmp_path / "sample.npy", sample.numpy())
    np.save(tmp_path / "expected.npy", expected.numpy())
    (tmp_path / "consumer.py").write_text(_CONSUMER)
    run = subprocess.run([sys.executable, "-I", str(tmp_path / "consumer.py"), str(tmp_path / "export"),
                          str(tmp_path / "sample.npy"), str(tmp_path / "expected.npy")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.split("max diff")[1]) <= fonnx.ATOL


def _photos(folder):
    """A JPEG splice-like photo, a PNG and a grey JPEG: the native path's three kinds of input."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.normal(128, 30, (200, 264, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(base).save(folder / "a.jpg", quality=80)
    Image.fromarray(base[::-1]).save(folder / "b.png")
    Image.fromarray(base[..., 0]).save(folder / "c.jpg", quality=90)
    return folder


def test_predict_with_onnxruntime_gives_the_pytorch_results(tmp_path):
    from forgeloc.inference.batch import predict_files

    photos = _photos(tmp_path / "photos")
    fonnx.export_onnx(forgeloc.load(), tmp_path / "export")
    runs = {}
    for backend, detector in (("torch", forgeloc.load()), ("onnxruntime", forgeloc.load(tmp_path / "export"))):
        predict_files(detector, [photos], tmp_path / backend, report=False)
        runs[backend] = json.loads((tmp_path / backend / "results.json").read_text())["results"]
    assert [r["name"] for r in runs["torch"]] == [r["name"] for r in runs["onnxruntime"]] == ["a.jpg", "b.png", "c.jpg"]
    for ours, ref in zip(runs["onnxruntime"], runs["torch"], strict=True):
        assert abs(ours["score"] - ref["score"]) <= 1e-4
        assert abs(ours["tampered_fraction"] - ref["tampered_fraction"]) <= 1e-3
        assert ours["verdict"] == ref["verdict"] and ours["mode"] == ref["mode"]
    assert forgeloc.load(tmp_path / "export").model_name == "gridnet"


def test_backend_choice_errors_are_clear(tmp_path):
    fonnx.export_onnx(_predictor("unet_baseline_tiny"), tmp_path / "export")
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        forgeloc.load(tmp_path / "export", backend="torch")
    with pytest.raises(ValueError, match="forgeloc export default"):
        forgeloc.load(backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        forgeloc.load(tmp_path / "export", backend="tensorrt")
