"""ONNX export of a forgeloc detector, and a model that runs the exported graph with onnxruntime.

What the graph holds
--------------------
* **Image models** (SparseViT, Mesorch, Mesorch-P, NCL, the U-Net baseline): the whole network,
  ``image (B,3,S,S) -> pred_mask (B,1,S,S)`` (plus ``pred_label (B,)`` for models with an image
  head). ``image`` is RGB scaled to [0, 1], minus the ImageNet mean, divided by its std. Fitting a
  photo to ``S × S`` (resize or tiles) and reducing the map to a score stay outside the graph and
  are written down in ``config.json`` (``onnx.predict``).
* **Block-grid models** (GridNet, the default detector): the learned part,
  ``coef (B,64,h,w) -> block_logits (B,1,h,w)``, where ``coef`` holds the DCT coefficients of the
  photo's 8×8 luma blocks. Where they come from is data-dependent and stays in forgeloc: a JPEG's
  own dequantized coefficients, or, for other files, the DCT of the pixels on the block grid that
  :func:`forgeloc.models.gridnet.estimate_grid_offset` finds. The onnxruntime backend runs those
  steps in Python around the graph, so ``predict --backend onnxruntime`` gives the same results.

How it is exported
------------------
``torch.onnx.export`` with the TorchScript-based exporter at opset :data:`OPSET` (ONNX 1.12;
onnxruntime 1.12 or newer reads it). Opset 17 is the first with a native ``LayerNormalization``,
which the transformers use. The batch axis is dynamic (and the block axes of ``coef``).

Nothing is exported unchecked: before anything is written, onnxruntime runs the graph on seeded
inputs at two batch sizes and must agree with PyTorch within :data:`ATOL` on every output; if it
does not, :class:`ExportError` says by how much and no file is left behind.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgeloc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from forgeloc.extras import require
from forgeloc.io import CheckpointConfig, CheckpointError, atomic_write
from forgeloc.models.base import ForgeryModel

#: The ONNX opset of every export (see the module docstring for why 17).
OPSET = 17
#: The largest absolute difference between onnxruntime and PyTorch an export may show.
ATOL = 1e-4
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
#: Version of the ``onnx`` section of config.json.
FORMAT_VERSION = 1


class ExportError(RuntimeError):
    """An export that cannot be made, or whose graph does not compute the model's function."""


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`~forgeloc.extras.MissingExtraError` naming the pip command."""
    require("onnx", "the onnxruntime backend", "onnxruntime")
    import onnxruntime

    return onnxruntime


# -- what is traced -----------------------------------------------------------------------------------
class _ImageGraph(nn.Module):
    """``image -> pred_mask[, pred_label]`` of a model that speaks the batch-dict contract."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_label = bool(getattr(model, "has_image_head", False))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model({"image": image})
        return (out["pred_mask"], out["pred_label"]) if self.has_label else (out["pred_mask"],)


class _BlockGraph(nn.Module):
    """``coef -> block_logits``: the learned part of a block-grid model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, coef: torch.Tensor) -> torch.Tensor:
        return self.model.block_logits(coef)


@dataclass(frozen=True)
class _GraphSpec:
    graph: nn.Module
    inputs: list[dict[str, Any]]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    samples: list[torch.Tensor]  # seeded inputs: the first is traced, all are checked


def _image_spec(model: nn.Module, size: int) -> _GraphSpec:
    graph = _ImageGraph(model).eval()
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(b, 3, size, size, generator=gen) for b in (1, 2)]
    outputs = ["pred_mask", "pred_label"] if graph.has_label else ["pred_mask"]
    spec = {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB",
            "normalization": {"scale": 1 / 255, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "formula": "(pixel / 255 - mean) / std, per channel"}}
    dynamic = {"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    return _GraphSpec(graph, [spec], outputs, dynamic, samples)


def _block_spec(model: nn.Module) -> _GraphSpec:
    graph = _BlockGraph(model).eval()
    gen = torch.Generator().manual_seed(0)
    # Coefficient-like values: whole multiples of typical quantization steps, mostly small.
    samples = [torch.round(torch.randn(b, 64, h, w, generator=gen) * 4) * 3 for b, h, w in ((1, 37, 50), (2, 21, 30))]
    spec = {"name": "coef", "shape": ["batch", 64, "blocks_y", "blocks_x"], "dtype": "float32",
            "meaning": "DCT-II coefficients (orthonormal, JPEG scale) of the 8x8 luma blocks, channel 8*u+v "
                       "for vertical frequency u and horizontal v; luma Y = 0.299 R + 0.587 G + 0.114 B "
                       "in 0..255, minus 128 as in JPEG"}
    dynamic = {"coef": {0: "batch", 2: "blocks_y", 3: "blocks_x"}, "block_logits": {0: "batch", 2: "blocks_y",
                                                                                     3: "blocks_x"}}
    return _GraphSpec(graph, [spec], ["block_logits"], dynamic, samples)


def _graph_spec(model: nn.Module, size: int) -> _GraphSpec:
    # The wrappers start in eval mode: the exporter restores the wrapper's mode after tracing,
    # recursively, and a wrapper left in train mode would switch the model's BatchNorms to batch
    # statistics.
    if getattr(model, "native_resolution", False):
        if not callable(getattr(model, "block_logits", None)):
            raise ExportError(f"{model_name(model)} reads native-resolution traces but has no block_logits() "
                              "to export; its export is not implemented")
        return _block_spec(model)
    return _image_spec(model, size)


def model_name(model: nn.Module) -> str:
    return str(getattr(model, "model_name", type(model).__name__))


# -- export -------------------------------------------------------------------------------------------
def _trace(spec: _GraphSpec) -> bytes:
    """The ONNX bytes of ``spec.graph`` (the faithful PyTorch path: fast CPU kernels are for
    inference in PyTorch, the graph must hold plain operators)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.enable_grad():
        # The TorchScript exporter warns about its own deprecation and about traced shape
        # arithmetic; the check below is what proves the graph right, not the absence of warnings.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.graph, (spec.samples[0],), buffer, dynamo=False, opset_version=OPSET,
            input_names=[s["name"] for s in spec.inputs], output_names=spec.outputs,
            dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
        )
    return buffer.getvalue()


def session(onnx_bytes_or_path: bytes | str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads; default: torch's thread count)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    source = str(onnx_bytes_or_path) if isinstance(onnx_bytes_or_path, Path) else onnx_bytes_or_path
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _check(spec: _GraphSpec, onnx_bytes: bytes) -> dict[str, Any]:
    """Run the graph in onnxruntime and in PyTorch on every sample; the largest difference per output."""
    sess = session(onnx_bytes)
    worst: dict[str, float] = dict.fromkeys(spec.outputs, 0.0)
    for sample in spec.samples:
        with torch.inference_mode():
            ref = spec.graph(sample)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(spec.outputs, {spec.inputs[0]["name"]: sample.numpy()})
        for name, r, g in zip(spec.outputs, ref, got, strict=True):
            if tuple(g.shape) != tuple(r.shape):
                raise ExportError(f"the exported graph gives {name} of shape {tuple(g.shape)} for input "
                                  f"{tuple(sample.shape)}, PyTorch {tuple(r.shape)}")
            worst[name] = max(worst[name], float(np.abs(g.astype(np.float64) - r.double().numpy()).max()))
    bad = {k: v for k, v in worst.items() if not v <= ATOL}
    if bad:
        raise ExportError(f"onnxruntime disagrees with PyTorch by {bad} (allowed {ATOL:g}); not writing an "
                          "export that computes another function")
    return {"atol": ATOL, "max_abs_diff": worst, "inputs": [list(s.shape) for s in spec.samples]}


def _predict_notes(spec: _GraphSpec, settings: dict[str, Any]) -> dict[str, str]:
    """How ``forgeloc predict`` turns a photo into the graph's input and its output into a map."""
    if spec.outputs == ["block_logits"]:
        return {"native": "the whole photo at its own resolution, in block-aligned windows of at most 2048 px "
                          "(overlap 256, averaged); coef from the JPEG stream when the file is a JPEG in its "
                          "stored orientation, else from the pixels on the estimated grid; pred_mask = "
                          "sigmoid(block_logits) spread to pixels by bilinear interpolation between block "
                          "centres (forgeloc.models.gridnet.GridNet._to_pixels)"}
    size = settings["input_size"]
    return {
        "resize": f"RGB resized to {size}x{size} (bilinear, OpenCV INTER_LINEAR), pred_mask resized back (bilinear)",
        "tile": f"{size}x{size} windows with {settings['tile_overlap']:g} overlap, averaged; used when the longer "
                f"side exceeds 2 x {size} px" + (" (always: the model was trained with pad)"
                                                 if settings["input_mode"] == "pad" else ""),
        "score": f"image score = {settings['image_score']} of pred_mask; tampered where pred_mask >= "
                 f"{settings['threshold']:g}",
    }


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    onnx_file: Path
    config_file: Path
    check: dict[str, Any]


def export_onnx(predictor: Any, out_dir: str | Path, *, source: str | None = None) -> ExportResult:
    """Export ``predictor``'s model (a :class:`forgeloc.inference.predictor.Predictor`) to
    ``out_dir/model.onnx`` with ``out_dir/config.json``, after checking the graph (module docstring).

    The config keeps every field of the checkpoint's own config.json that ``predict`` acts on
    (threshold, input size and mode, image score, calibration, cues, model card) and adds an ``onnx``
    section describing the graph's inputs, outputs and pre- and post-processing.
    """
    require("onnx", "forgeloc export --format onnx", "onnx", "onnxruntime")
    model = getattr(predictor, "model", None)
    if model is None:
        raise ExportError(f"{predictor.model_name} is a training-free detector: there is no network to export")
    # A copy in plain float32 eval form: the predictor's own model may be fused for CPU inference
    # (forgeloc.models.fusion), and the graph must hold the plain operators.
    from forgeloc.models.fusion import unfuse

    model = unfuse(copy.deepcopy(model)).float().eval()
    spec = _graph_spec(model, predictor.input_size)
    onnx_bytes = _trace(spec)
    check = _check(spec, onnx_bytes)
    out = Path(out_dir)
    onnx_file = atomic_write(out / ONNX_FILE, lambda p: p.write_bytes(onnx_bytes))
    config = _export_config(predictor, model, spec, check, onnx_bytes, source)
    config_file = atomic_write(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=1, sort_keys=True)))
    return ExportResult(out, onnx_file, config_file, check)


def _export_config(predictor: Any, model: nn.Module, spec: _GraphSpec, check: dict[str, Any], onnx_bytes: bytes,
                   source: str | None) -> dict[str, Any]:
    settings = predictor.describe()
    info = predictor.info
    config: dict[str, Any] = {
        "format": "forgeloc-onnx", "model": model_name(model), "name": source or model_name(model),
        "threshold": predictor.threshold, "image_score": predictor.image_score,
        "input": {"size": predictor.input_size,
                  "mode": "native" if getattr(model, "native_resolution", False) else predictor.input_mode},
        "fuse": list(predictor.fuse), "cues": [c for c in predictor.cues if c not in predictor.fuse],
    }
    if predictor.calibration is not None:
        config["calibration"] = predictor.calibration
    if isinstance(info.get("card"), dict):
        config["card"] = info["card"]
    config["onnx"] = {
        "format_version": FORMAT_VERSION, "file": ONNX_FILE, "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "opset": OPSET, "exporter": f"torch.onnx (TorchScript) in torch {torch.__version__}",
        "inputs": spec.inputs, "outputs": spec.outputs, "check": check,
        # An image graph is traced at one size, whatever the model accepts in PyTorch.
        "model_attributes": {"input_size": None if spec.outputs == ["block_logits"] else predictor.input_size,
                             "size_divisor": int(getattr(model, "size_divisor", 1) or 1),
                             "has_image_head": bool(getattr(model, "has_image_head", False)),
                             "native_resolution": bool(getattr(model, "native_resolution", False))},
        "model_kwargs": dict(getattr(model, "model_kwargs", {}) or {}),
        "predict": _predict_notes(spec, settings),
    }
    return config


# -- the onnxruntime backend ----------------------------------------------------------------------------
class OnnxImageModel(ForgeryModel):
    """An exported image model run by onnxruntime, behind the batch-dict contract of
    :mod:`forgeloc.models.base` (so :class:`Predictor` uses it unchanged)."""

    def __init__(self, sess: Any, name: str, attributes: dict[str, Any]) -> None:
        super().__init__()
        self.session = sess
        self.model_name = name
        self.input_size = attributes.get("input_size")
        self.size_divisor = int(attributes.get("size_divisor", 1))
        self.has_image_head = bool(attributes.get("has_image_head", False))
        self.outputs = [o.name for o in sess.get_outputs()]

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        self.check_input_size(image)
        got = self.session.run(self.outputs, {"image": np.ascontiguousarray(image.float().cpu().numpy())})
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, got, strict=True)}


def _onnx_gridnet(sess: Any, name: str) -> ForgeryModel:
    """A GridNet whose learned part runs in onnxruntime; the grid estimation, the pixel DCT and
    the spreading of block values to pixels run in forgeloc's own code around it."""
    from forgeloc.models.gridnet import GridNet

    class OnnxGridNet(GridNet):
        def block_logits(self, coef: torch.Tensor) -> torch.Tensor:
            out = sess.run(["block_logits"], {"coef": np.ascontiguousarray(coef.float().cpu().numpy())})[0]
            return torch.from_numpy(out)

    # width=1: the shell's own (unused) layers stay tiny; only its fixed buffers are used.
    model = OnnxGridNet(width=1)
    model.model_name = name
    model.session = sess
    return model


def is_onnx_export(path: str | Path) -> bool:
    path = Path(path)
    folder = path.parent if path.suffix == ".onnx" else path
    return (folder / ONNX_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def load_onnx(path: str | Path, threads: int | None = None) -> tuple[ForgeryModel, CheckpointConfig]:
    """The model of an export folder (or its ``model.onnx``) and the folder's config.

    The config is read with the same bounds as a checkpoint's; the ``.onnx`` file must have the
    sha256 the config records (a file from another export would otherwise run with this one's
    threshold and preprocessing)."""
    path = Path(path)
    folder = path.parent if path.suffix == ".onnx" else path
    if not is_onnx_export(folder):
        raise CheckpointError(f"{folder}: not an ONNX export (needs {ONNX_FILE} and {CONFIG_FILE}; make one with "
                              "`forgeloc export CHECKPOINT --format onnx --out DIR`)")
    config = CheckpointConfig.from_json(folder / CONFIG_FILE)
    section = config.extra.get("onnx")
    if config.extra.get("format") != "forgeloc-onnx" or not isinstance(section, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: not the config of a forgeloc ONNX export")
    data = (folder / ONNX_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != section.get("sha256"):
        raise CheckpointError(f"{folder / ONNX_FILE}: its sha256 is not the one {CONFIG_FILE} records; "
                              "the graph and its settings come from different exports")
    sess = session(data, threads)
    name = config.model or "onnx"
    attributes = section.get("model_attributes") if isinstance(section.get("model_attributes"), dict) else {}
    if section.get("outputs") == ["block_logits"]:
        model = _onnx_gridnet(sess, name)
    else:
        model = OnnxImageModel(sess, name, attributes)
    model.model_kwargs = dict(section.get("model_kwargs") or {})
    return model, config.with_updates(checkpoint=str(folder / ONNX_FILE))
