"""Predicting on photos: :class:`Predictor` (a loaded model + how to feed it) and :class:`Prediction`.

::

    import forgeloc
    model = forgeloc.load("runs/quickstart")            # a run / checkpoint folder naming its model
    model = forgeloc.load("sparsevit", checkpoint="sparsevit.safetensors")
    result = model.predict("photo.jpg")                 # path, bytes, numpy array or PIL image
    result.score, result.tampered_fraction, result.heatmap.shape == result.image.shape[:2]
    result.save("out/")                                 # heatmap / overlay / mask PNGs + JSON

Two ways to feed an image of any size to a model trained on ``S × S`` inputs (``S`` = the model's
fixed ``input_size``, else the size recorded in the checkpoint, else 512):

* ``mode="resize"``: resize to ``S × S`` with ``cv2.INTER_LINEAR`` (exactly what training and
  ``forgeloc test`` do), predict, resize the prediction back to the image's size (bilinear);
* ``mode="tile"``: slide ``S × S`` windows over the image at full resolution with 50 % overlap and
  blend them (:mod:`forgeloc.inference.tiling`);
* ``mode="auto"`` (default): the photo is fed as the checkpoint was trained: ``resize`` for a
  model trained on resized inputs (the paper models: their published numbers were all measured
  on 512² resized inputs), ``tile`` for one trained with IMDLBenCo's ``pad`` input mode (it never
  saw a resized image). ``tile`` stays one option away; on a 12 MP photo it runs about 130 windows
  instead of one (docs/inference.md has the times).

Image score: the model's own ``pred_label`` when it has an image head (in tile mode: the largest
over the windows), otherwise the reduction the checkpoint records (``image_score``, default
``"max"``) of the predicted map, computed as :func:`forgeloc.metrics.functional.reduce_image_score`
does. In resize mode it is taken on the model-resolution map, exactly as ``forgeloc test`` does,
so the two report the same number for the same image.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

import forgeloc.inference.tiling as tiling
import forgeloc.inference.visualize as viz
from forgeloc.data.io import DEFAULT_MAX_PIXELS, DecompressionBombError, ImageReadError, read_image
from forgeloc.data.normalization import normalize
from forgeloc.detectors import run_cue
from forgeloc.detectors.base import CueResult, ImageInput
from forgeloc.engine.runtime import autocast_context
from forgeloc.inference.outputs import output_files
from forgeloc.io import check_input_mode, check_threshold, resolve_device

__all__ = ["MODES", "Prediction", "PredictionCancelledError", "PredictionFailure", "Predictor", "ProgressFn",
           "WorkPlan", "load"]

MODES = ("auto", "resize", "tile")
#: What ``auto`` does, per training input mode, in words (reports and ``describe()``).
AUTO_RULES = {
    "resize": "resize, as the model was trained (its inputs were resized to its input size)",
    "pad": "tile at full resolution, as the model was trained (padded, never resized, inputs)",
}
_AMP = {None: "none", "none": "none", "bf16": "bf16", "fp16": "fp16"}

#: ``progress(done, total, stage)``, called while one image is predicted: ``stage`` is ``"windows"``
#: (``done`` of ``total`` model windows run; ``(0, total)`` comes before the first one) or ``"cues"``
#: (``done`` of ``total`` training-free cues run, in the order they finish). A callback that raises
#: stops the prediction there, between two windows or when a cue finishes: raise
#: :class:`PredictionCancelledError` to cancel.
ProgressFn = Callable[[int, int, str], None]


class PredictionCancelledError(Exception):
    """Raised by a progress callback to stop a prediction at its next window or cue."""


def _no_progress(done: int, total: int, stage: str) -> None:
    """The progress callback of a caller that passed none."""


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Prediction:
    """What the model says about one image; every array is at the image's own resolution.

    ``heatmap``: float32 ``H×W`` tamper probability in [0, 1]; ``mask``: ``heatmap > threshold``
    (strict); ``score``: the image score (see the module docstring for its definition);
    ``tampered_fraction``: the share of ``mask`` pixels; ``image``: the uint8 RGB photo as read
    (EXIF orientation applied); ``mode``: ``"resize"`` or ``"tile"`` (what ``auto`` chose).
    """

    heatmap: np.ndarray
    score: float
    threshold: float
    image: np.ndarray
    name: str
    source: str | None = None
    mode: str = "resize"
    score_source: str = "max"
    model: str = ""
    windows: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    #: What the model read: ``["pixels"]`` or ``["jpeg_dct"]`` (the file's own DCT coefficients).
    streams: list[str] = field(default_factory=lambda: ["pixels"])
    #: Training-free cues run on this image, by name (heatmaps at the image's resolution).
    cues: dict[str, CueResult] = field(default_factory=dict)
    #: Which maps the heatmap fuses (``["model"]``, ``["model", "copymove"]``, ...).
    fused: list[str] = field(default_factory=lambda: ["model"])
    #: The calibrated reading of ``score`` (one of :data:`VERDICTS`), or ``None`` for a model
    #: without calibration.
    verdict: str | None = None
    #: What this model is and how far it has been validated, in one line (see :func:`model_label`).
    model_label: str = ""
    #: How the file was read, when the user should know (``"animated GIF: frame 1 of 12 analysed"``).
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        return self.heatmap > self.threshold

    @property
    def tampered_fraction(self) -> float:
        return float(np.count_nonzero(self.mask)) / max(1, self.mask.size)

    @property
    def height(self) -> int:
        return int(self.heatmap.shape[0])

    @property
    def width(self) -> int:
        return int(self.heatmap.shape[1])

    def overlay(self, alpha: float = 0.5, outline: bool = True) -> np.ndarray:
        """The photo with the heatmap blended in (opacity ``alpha × heat``) and the mask outlined."""
        return viz.overlay(self.image, self.heatmap, alpha, self.mask if outline else None)

    def heatmap_rgb(self) -> np.ndarray:
        """The heatmap through the ``inferno`` colour map, ``H×W×3`` uint8."""
        return viz.colorize(self.heatmap)

    def mask_uint8(self) -> np.ndarray:
        """The mask as ``H×W`` uint8, 255 = tampered."""
        return viz.mask_to_uint8(self.mask)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "name": self.name,
            "path": self.source,
            "width": self.width,
            "height": self.height,
            "score": round(float(self.score), 6),
            "score_source": self.score_source,
            "tampered_fraction": round(self.tampered_fraction, 6),
            "threshold": self.threshold,
            "mode": self.mode,
            "windows": self.windows,
            "model": self.model,
            "verdict": self.verdict,
            "model_label": self.model_label,
            "streams": list(self.streams),
            "fused": list(self.fused),
            **({"cues": {k: c.to_dict() for k, c in self.cues.items()}} if self.cues else {}),
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def save(self, folder: str | Path, stem: str | None = None, write_json: bool = True) -> dict[str, str]:
        """Write ``<stem>_heatmap.png``, ``<stem>_overlay.png``, ``<stem>_predmask.png`` (0/255; not
        ``_mask``, which datasets read as ground truth) and
        ``<stem>.json`` into ``folder``; return the written paths by kind."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = stem or Path(self.name).stem or "image"
        targets = output_files(folder, stem)
        files = {
            "heatmap": viz.write_png(targets["heatmap"], self.heatmap_rgb()),
            "overlay": viz.write_png(targets["overlay"], self.overlay()),
            "mask": viz.write_png(targets["mask"], self.mask_uint8()),
        }
        out = {k: str(v) for k, v in files.items()}
        if write_json:
            path = folder / f"{stem}.json"
            path.write_text(json.dumps({**self.to_dict(), "files": out}, indent=2))
            out["json"] = str(path)
        return out

    def __repr__(self) -> str:
        return (
            f"Prediction(name={self.name!r}, size={self.width}x{self.height}, score={self.score:.4f}, "
            f"tampered_fraction={self.tampered_fraction:.4f}, threshold={self.threshold}, mode={self.mode!r})"
        )


@dataclass
class PredictionFailure:
    """An input that could not be predicted (unreadable file, too many pixels, ...)."""

    name: str
    source: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.source, "error": self.error}


@dataclass(frozen=True)
class WorkPlan:
    """How much work one image will take, known before it is decoded (:meth:`Predictor.plan`):
    its size, the mode ``auto`` resolves to, the model windows to run (1 in resize mode, 0 without
    a model) and the training-free cues that run after them."""

    height: int
    width: int
    mode: str
    windows: int
    cues: int


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def _array_to_rgb(arr: np.ndarray, where: str) -> np.ndarray:
    """An RGB(A)/grey numpy array → ``H×W×3`` uint8 (same policy as :func:`forgeloc.data.io.read_image`)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"{where}: expected an HxW, HxWx3 (RGB) or HxWx4 (RGBA) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            finite = finite * 255.0
        arr = np.clip(np.rint(finite), 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)  # the 16-bit rule of forgeloc.data.io: keep the high byte
    elif arr.dtype != np.uint8:
        raise ValueError(f"{where}: unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 4:
        rgb, a = arr[:, :, :3].astype(np.uint16), arr[:, :, 3:4].astype(np.uint16)
        # Composite on white, the rule read_image applies to files with transparency.
        return np.ascontiguousarray(((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8))
    return np.ascontiguousarray(arr)


def _describe(item: Any) -> tuple[str, str | None]:
    """``(display name, path or None)`` of an input."""
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name or str(item), str(item)
    name = getattr(item, "filename", None) or getattr(item, "name", None)
    if isinstance(name, str) and name:
        return Path(name).name, name
    if isinstance(item, np.ndarray):
        return "array", None
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes", None
    return type(item).__name__, None


def image_size(item: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of an input as it will be predicted (EXIF orientation applied), read from
    a file's header: nothing is decoded. Raises like :func:`read_image` for an unreadable file."""
    from forgeloc.data.io import image_info

    if isinstance(item, np.ndarray):
        if item.ndim < 2:
            raise ValueError(f"{_describe(item)[0]}: expected an image array, got shape {item.shape}")
        return int(item.shape[0]), int(item.shape[1])
    if hasattr(item, "getexif") and hasattr(item, "size"):  # a PIL image: rotated as load_input does
        width, height = item.size
        return (width, height) if int(item.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8) else (height, width)
    where = _describe(item)[0]
    if hasattr(item, "read") and not isinstance(item, (bytes, bytearray, memoryview)):
        if not (hasattr(item, "seek") and hasattr(item, "tell")):
            raise TypeError(f"{where}: a stream that cannot seek cannot be planned without consuming it")
        start = item.tell()
        try:
            info = image_info(item, max_pixels=max_pixels, name=where)
        finally:
            item.seek(start)
    else:
        info = image_info(item, max_pixels=max_pixels, name=where if not isinstance(item, (str, os.PathLike))
                          else None)
    return info.height, info.width


def _check_pixels(width: int, height: int, max_pixels: int, where: str) -> None:
    if width * height > max_pixels:
        raise DecompressionBombError(where, f"too many pixels: {width}x{height} exceeds max_pixels={max_pixels:,}")


def load_input(item: Any, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """Any supported input → ``H×W×3`` uint8 RGB. Paths and bytes go through :func:`read_image`."""
    where = name or _describe(item)[0]
    if isinstance(item, np.ndarray):
        if item.ndim >= 2:
            _check_pixels(item.shape[1], item.shape[0], max_pixels, where)
        return _array_to_rgb(item, where)
    if isinstance(item, torch.Tensor):
        raise TypeError(f"{where}: pass images as numpy arrays, paths or bytes, not torch tensors")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        _check_pixels(item.width, item.height, max_pixels, where)
        from PIL import ImageOps

        from forgeloc.data.io import pil_to_rgb  # same mode policy as files (alpha on white, 16-bit high byte)

        item.load()
        # As for files: the photo the user sees, with its EXIF orientation applied.
        return pil_to_rgb(ImageOps.exif_transpose(item), where, alpha="white")
    return read_image(item, max_pixels=max_pixels, name=name)


def _file_bytes(item: Any, where: str) -> bytes | None:
    """The raw bytes of a path, bytes or binary-file input (``None`` for arrays and PIL images)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        try:
            return Path(item).read_bytes()
        except OSError as err:
            raise ImageReadError(where, err.strerror or str(err)) from None
    read = getattr(item, "read", None)
    if callable(read):
        data = read()
        return data if isinstance(data, bytes) else None
    return None


def load_image_input(item: Any, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> ImageInput:
    """Any supported input → :class:`~forgeloc.detectors.base.ImageInput`: the RGB pixels (as
    :func:`load_input`) and, for files and bytes, the original bytes, format and EXIF orientation
    (what compression cues and the JPEG stream of a model read)."""
    where = name or _describe(item)[0]
    data = None if isinstance(item, np.ndarray) else _file_bytes(item, where)
    if data is None:
        return ImageInput(rgb=load_input(item, max_pixels, name=name), name=where)
    rgb = read_image(data, max_pixels=max_pixels, name=where)
    from PIL import Image

    from forgeloc.data.io import count_frames, frames_note

    fmt, orientation, notes = None, 1, ()
    try:
        with warnings.catch_warnings():  # "Corrupt EXIF data" is not the user's concern here
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # header only: decoding already succeeded above
                fmt = img.format
                orientation = int(img.getexif().get(0x0112, 1) or 1)
                notes = tuple(n for n in [frames_note(fmt, count_frames(img))] if n)  # GIF: frame 1 of N
    except Exception:  # a header Pillow parsed once cannot fail here; stay safe for odd EXIF
        pass
    return ImageInput(rgb=rgb, data=data, format=fmt, orientation=orientation if 1 <= orientation <= 8 else 1,
                      name=where, notes=notes)



#: The three readings of a calibrated image score, from least to most suspicious.
VERDICTS = ("no evidence found", "inconclusive", "likely manipulated")


def verdict_for(score: float, calibration: dict[str, Any] | None) -> str | None:
    """The calibrated reading of an image score: below ``calibration["low"]`` "no evidence found",
    from ``low`` to below ``high`` "inconclusive", from ``high`` on "likely manipulated".
    ``None`` without a calibration (a model nobody calibrated gets no verdict in words)."""
    if not calibration:
        return None
    if score >= float(calibration["high"]):
        return VERDICTS[2]
    return VERDICTS[1] if score >= float(calibration["low"]) else VERDICTS[0]


def model_label(name: str, card: dict[str, Any] | None, train_kind: str | None = None) -> str:
    """One line saying what the model is and how far it was validated, shown in every output.

    A checkpoint with a model card (``config.json["card"]``) shows the card's headline; the
    quickstart's demo model says so; any other checkpoint is an *unvalidated model*."""
    if card and card.get("headline"):
        return f"{card.get('title', name)}: {card['headline']}"
    if train_kind == "quickstart" or name == "unet_baseline":
        return f"{name} - demo model: trained for minutes on synthetic images, not for real cases"
    return f"{name} - unvalidated model: no model card with measured numbers on real photos"


#: Threads that run one photo's training-free cues side by side (each takes up to about a second on
#: a 12 MP photo, and they do not depend on one another), never more than PyTorch's thread count
#: (``--threads``); more threads would mostly add memory.
CUE_THREADS = min(4, os.cpu_count() or 1)
#: Side of the windows a native-resolution model reads (a multiple of 8: windows stay on the grid).
NATIVE_WINDOW = 2048
#: Overlap of those windows (a multiple of 8), so that every block sees some context on all sides.
NATIVE_OVERLAP = 256


def native_windows(height: int, width: int) -> list[tuple[slice, slice]]:
    """Block-aligned windows covering an image: one window when it fits, else windows of
    ``NATIVE_WINDOW`` pixels overlapping by ``NATIVE_OVERLAP``, the last one of each row/column
    stretched (by fewer than 8 pixels) to reach the far edge."""
    def spans(length: int) -> list[slice]:
        if length <= NATIVE_WINDOW:
            return [slice(0, length)]
        step = NATIVE_WINDOW - NATIVE_OVERLAP
        starts = sorted({*range(0, length - NATIVE_WINDOW, step), (length - NATIVE_WINDOW) // 8 * 8})
        return [slice(a, length if a == starts[-1] else a + NATIVE_WINDOW) for a in starts]

    return [(ys, xs) for ys in spans(height) for xs in spans(width)]


def fuse_maps(
    heat: np.ndarray, score: float, cues: list[CueResult], with_model: bool = True
) -> tuple[np.ndarray, float, list[str]]:
    """forgeloc's fusion rule: the pixelwise **maximum** of the model's map and each applicable
    fused cue's map, and the maximum of their scores.

    Why the maximum: the fused cues find different manipulations (a learned local-trace model
    finds splices; copy-move matching finds copies inside the photo, which carry the same traces as
    their surroundings), so evidence from either should show, and each map is already
    conservative on untouched photos (each cue's false-alarm rate is measured in docs/detectors.md).
    Returns the fused map, score and the names of what was fused (``"model"`` first, when
    ``with_model``; without a model, ``heat``/``score`` are zeros and the cues alone decide).
    """
    fused = ["model"] if with_model else []
    for cue in cues:
        if not cue.applicable or cue.heatmap is None:
            continue
        heat = np.maximum(heat, cue.heatmap.astype(np.float32, copy=False))
        if cue.score is not None:
            score = max(score, float(cue.score))
        fused.append(cue.name)
    return heat, score, fused

# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------
class Predictor:
    """A model ready to predict on photos of any size (see the module docstring).

    Args:
        model: a :class:`~forgeloc.models.base.ForgeryModel` (put in eval mode and moved to ``device``).
        input_size: side ``S`` of the model's square input (default: the model's fixed
            ``input_size``, else 512).
        input_mode: how the checkpoint was trained (``"resize"`` or ``"pad"``; ``pad`` makes
            ``auto`` always tile and pads small tiles with black, as in training).
        threshold: default binarisation threshold for masks (``heatmap > threshold``).
        image_score: reduction giving the image score when the model has no image head.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        amp: ``None`` or ``"bf16"`` (CPU or GPU) / ``"fp16"`` (GPU) autocast.
        tile_overlap: fraction of the window shared by neighbouring tiles.
        max_pixels: images declaring more pixels are refused before decoding.
        info: free-form metadata shown in reports (checkpoint path, ...).
        calibration: ``{"low": a, "high": b, ...}``: the image-score bands of :func:`verdict_for`
            (recorded by a calibrated checkpoint; ``None``: no verdict in words).
        cues: training-free cues (:mod:`forgeloc.detectors`) to run on every image and report
            next to the model's map (``Prediction.cues``).
        fuse: cues whose maps are fused into the heatmap by the documented rule
            :func:`fuse_maps` (they run whether or not they are listed in ``cues``).
    """

    def __init__(
        self,
        model: nn.Module | None,
        *,
        input_size: int | None = None,
        input_mode: str = "resize",
        threshold: float = 0.5,
        image_score: str = "max",
        device: str | torch.device | None = None,
        amp: str | None = None,
        tile_overlap: float = tiling.DEFAULT_OVERLAP,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        info: dict[str, Any] | None = None,
        cues: Iterable[str] = (),
        fuse: Iterable[str] = (),
        calibration: dict[str, Any] | None = None,
    ) -> None:
        from forgeloc.detectors import get_cue
        from forgeloc.metrics.image import IMAGE_SCORES

        if amp not in _AMP:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {image_score!r}")
        check_input_mode(input_mode)
        check_threshold(threshold)
        self.device = resolve_device(device)
        self.amp = _AMP[amp]
        autocast_context(self.device, self.amp)  # fails now, not at the first image, for fp16 on CPU
        fixed = getattr(model, "input_size", None)
        size = int(fixed or input_size or 512)
        divisor = int(getattr(model, "size_divisor", 1) or 1)
        if size % divisor:
            raise ValueError(f"input size {size} is not a multiple of the model's size divisor {divisor}")
        if model is None and not tuple(fuse):
            raise ValueError("a Predictor needs a model, or at least one training-free detector to fuse")
        self.model = None if model is None else model.to(self.device).eval()
        if self.model is not None and self.device.type == "cpu" and self.amp == "none":
            from forgeloc.models.fusion import fuse_for_inference

            fuse_for_inference(self.model)  # the CPU inference kernels; model.train() undoes it
        self.input_size = size
        self.input_mode = input_mode
        self.threshold = float(threshold)
        self.image_score = image_score
        self.tile_overlap = float(tile_overlap)
        tiling.window_grid(size, size, size, self.tile_overlap)  # validates the overlap
        self.max_pixels = int(max_pixels)
        self.fuse = tuple(fuse)
        self.model_name = "+".join(self.fuse) if model is None else str(getattr(model, "model_name",
                                                                                   type(model).__name__))
        self.info = {"model": self.model_name, **(info or {})}
        if calibration is not None and not 0.0 <= float(calibration["low"]) <= float(calibration["high"]) <= 1.0:
            raise ValueError(f"calibration needs 0 <= low <= high <= 1, got {calibration}")
        self.calibration = calibration
        self.label = (f"{self.model_name}: training-free detector (its numbers on real photos: docs/detectors.md)"
                      if model is None else model_label(self.model_name, self.info.get("card"),
                                                        self.info.get("train_kind")))
        self.cues = tuple(dict.fromkeys([*self.fuse, *cues]))  # fused cues always run; order kept
        for name in self.cues:
            get_cue(name)  # unknown names fail now, not at the first image
        for name in self.fuse:
            if get_cue(name).kind != "detector":
                raise ValueError(f"{name!r} is a {get_cue(name).kind}, not a detector: it cannot be fused")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        model: str | None = None,
        *,
        threshold: float | None = None,
        image_score: str | None = None,
        input_size: int | None = None,
        device: str | torch.device | None = None,
        amp: str | None = None,
        tile_overlap: float = tiling.DEFAULT_OVERLAP,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cues: Iterable[str] | None = None,
        fuse: Iterable[str] | None = None,
        backend: str | None = None,
        **model_kwargs: Any,
    ) -> Predictor:
        """Load a run folder, checkpoint folder or weights file (``model`` names the architecture
        when no ``config.json`` does); the recorded input size/mode, threshold and image score are
        used unless overridden (precedence: :meth:`~forgeloc.io.CheckpointConfig.resolve`).

        ``backend``: ``"torch"``, ``"onnxruntime"`` (an ONNX export folder written by
        ``forgeloc export``; same pre- and post-processing, see :mod:`forgeloc.deploy.onnx`), or
        ``None`` to pick ``onnxruntime`` for an export folder and ``torch`` otherwise."""
        net, recorded = _load_network(checkpoint, model, backend, device, model_kwargs)
        settings = recorded.resolve(model_input_size=getattr(net, "input_size", None), input_size=input_size,
                                    threshold=threshold, image_score=image_score, device=device)
        return cls(
            net,
            input_size=settings.input_size,
            input_mode=settings.input_mode,
            threshold=settings.threshold,
            image_score=settings.image_score,
            device=settings.device,
            amp=amp,
            tile_overlap=tile_overlap,
            max_pixels=max_pixels,
            info={"checkpoint": recorded.checkpoint, "epoch": recorded.extra.get("epoch"),
                  "train_kind": (recorded.extra.get("train_config") or {}).get("kind"),
                  **({"card": recorded.card} if recorded.card is not None else {})},
            calibration=recorded.calibration,
            cues=(recorded.cues or ()) if cues is None else cues,
            fuse=(recorded.fuse or ()) if fuse is None else fuse,
        )

    def describe(self) -> dict[str, Any]:
        """Model, checkpoint and settings, for reports and the web API."""
        return {
            **self.info,
            "label": self.label,
            "calibration": self.calibration,
            "fused": list(self.fuse),
            "cues": list(self.cues),
            "input_size": self.input_size,
            "input_mode": self.input_mode,
            "threshold": self.threshold,
            "image_score": self.image_score if not self._has_image_head else "pred_label",
            "device": str(self.device),
            "amp": self.amp,
            "tile_overlap": self.tile_overlap,
            "auto_rule": self.auto_rule,
        }

    @property
    def auto_rule(self) -> str:
        """What ``mode="auto"`` does with this predictor's model, in words."""
        if self.model is None:
            return "no learned model: the training-free detectors read the photo as it is"
        if self.native:
            return "native resolution: the whole photo in block-aligned windows, never resized"
        return AUTO_RULES[self.input_mode]

    @property
    def _has_image_head(self) -> bool:
        return bool(getattr(self.model, "has_image_head", False))

    def choose_mode(self, height: int, width: int, mode: str = "auto") -> str:
        """What ``mode`` means for an image of this size: ``"resize"`` or ``"tile"`` (``auto``: as the
        checkpoint was trained, whatever the size; see :data:`AUTO_RULES`)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "auto":
            return mode
        return "tile" if self.input_mode == "pad" else "resize"

    def count_windows(self, height: int, width: int, mode: str = "auto") -> tuple[str, int]:
        """``(mode used, model windows run)`` for an image of this size: 1 in resize mode, the tile
        grid in tile mode, the block-aligned windows of a native-resolution model, 0 without a model."""
        if self.model is None:
            return "native", 0
        if self.native:
            return "native", len(native_windows(height, width))
        chosen = self.choose_mode(height, width, mode)
        if chosen == "resize":
            return chosen, 1
        s = self.input_size  # tile_predict pads a smaller image up to one window
        return chosen, len(tiling.window_grid(max(height, s), max(width, s), s, self.tile_overlap))

    def plan(self, image: Any, mode: str = "auto") -> WorkPlan:
        """The work :meth:`predict` will do on ``image`` (:class:`WorkPlan`), from the file's header
        only, so that a caller can show the total, or an estimate, before the work starts."""
        height, width = image_size(image, self.max_pixels)
        chosen, windows = self.count_windows(height, width, mode)
        return WorkPlan(height, width, chosen, windows, len(self.cues))

    # -- forward -----------------------------------------------------------------------------------
    def _forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``N×S×S×3`` uint8 → (``N×S×S`` float32 probabilities, ``N`` pred_label or None)."""
        batch = torch.stack([normalize(c) for c in crops]).to(self.device)
        with torch.inference_mode():
            with autocast_context(self.device, self.amp):
                out = self.model({"image": batch})
            pred = out["pred_mask"]
            if pred.ndim != 4 or pred.shape[1] != 1 or tuple(pred.shape[-2:]) != tuple(batch.shape[-2:]):
                raise RuntimeError(f"{self.model_name} returned pred_mask of shape {tuple(pred.shape)} for input "
                                   f"{tuple(batch.shape)}; the contract is (B, 1, H, W) at input resolution")
            probs = self._finite(pred[:, 0]).clamp(0.0, 1.0).cpu().numpy()
            label = out.get("pred_label")
            labels = self._finite(label).reshape(-1).cpu().numpy() if isinstance(label, torch.Tensor) else None
        return probs, labels

    def _finite(self, output: torch.Tensor) -> torch.Tensor:
        """``output`` as float32, or a clear error when the model produced NaN or infinity (a NaN
        map would read as "nothing flagged", and a NaN score is not even valid JSON)."""
        output = output.float()
        if not bool(torch.isfinite(output).all()):
            raise FloatingPointError(f"{self.model_name} produced NaN or infinite values for this image: its output "
                                     "cannot be trusted (check the weights, or run without --amp)")
        return output

    def _reduce(self, prob: np.ndarray) -> float:
        if self.image_score == "max":
            # Same value as reduce_image_score(…, "max") without its float64 copy of a huge map.
            return float(prob.max())
        if self.image_score == "topk_mean":
            # reduce_image_score's top-1 % mean, by partial selection instead of a full sort.
            flat = prob.reshape(-1)
            k = max(1, math.ceil(flat.size * 0.01))
            return float(np.partition(flat, flat.size - k)[flat.size - k:].astype(np.float64).mean())
        from forgeloc.metrics.functional import reduce_image_score

        return float(reduce_image_score(torch.from_numpy(prob)[None, None], None, self.image_score).item())

    def _score(self, prob_native: np.ndarray, label: float | None) -> tuple[float, str]:
        if label is not None:
            return float(label), "pred_label"
        return self._reduce(prob_native), self.image_score

    def _predict_resized(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float, str]]:
        s = self.input_size
        crops = np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_LINEAR) for im in images])
        probs, labels = self._forward(crops)
        out = []
        for i, (im, prob) in enumerate(zip(images, probs, strict=True)):
            h, w = im.shape[:2]
            score, source = self._score(prob, None if labels is None else labels[i])
            heat = prob if (h, w) == (s, s) else cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append((np.clip(heat, 0.0, 1.0, out=heat).astype(np.float32, copy=False), score, source))
        return out

    def _predict_tiled(self, image: np.ndarray, batch_size: int,
                       progress: ProgressFn = _no_progress) -> tuple[np.ndarray, float, str, int]:
        padding = "black" if self.input_mode == "pad" else "reflect"
        total = self.count_windows(*image.shape[:2], mode="tile")[1]
        done = 0
        progress(0, total, "windows")

        def forward_counting(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            nonlocal done
            out = self._forward(crops)
            done += len(crops)
            progress(done, total, "windows")  # between two batches of windows: where a cancel stops
            return out

        heat, label, n = tiling.tile_predict(
            image, forward_counting, self.input_size, overlap=self.tile_overlap, batch_size=batch_size,
            padding=padding,
        )
        score, source = self._score(heat, label)
        return heat, score, source, n

    def _run_cues(self, image: ImageInput, progress: ProgressFn) -> dict[str, CueResult]:
        """The training-free cues, side by side on up to :data:`CUE_THREADS` threads, reporting each
        one done (some take a second on a large photo). Each cue is a function of the image alone and
        OpenCV and NumPy release the GIL, so the results are those of running them one after another,
        sooner. Another cue starts only once the progress callback has returned for a finished one,
        so a callback that raises (a cancel) starts no further cue; those already running finish."""
        if not self.cues:
            return {}
        names = iter(self.cues)
        done: dict[str, CueResult] = {}
        progress(0, len(self.cues), "cues")
        workers = max(1, min(len(self.cues), CUE_THREADS, torch.get_num_threads()))  # --threads 1 stays 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            running = {pool.submit(run_cue, name, image): name for name in itertools.islice(names, workers)}
            while running:
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()
                    progress(len(done), len(self.cues), "cues")
                    name = next(names, None)
                    if name is not None:
                        running[pool.submit(run_cue, name, image)] = name
        return {name: done[name] for name in self.cues}

    # -- public API --------------------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        mode: str = "auto",
        threshold: float | None = None,
        *,
        name: str | None = None,
        batch_size: int = 4,
        progress: ProgressFn | None = None,
    ) -> Prediction:
        """Predict on one image: a path, raw bytes, a binary file object, an RGB numpy array
        (uint8 ``H×W×3``, ``H×W`` grey, ``H×W×4`` RGBA, uint16, or float in [0, 1]) or a PIL image.

        ``threshold`` defaults to the checkpoint's (else 0.5); ``batch_size`` = windows per forward
        pass in tile mode; ``progress``: a :data:`ProgressFn` called as the windows and cues run.
        """
        result = next(self.iter_predict([image], batch_size=batch_size, mode=mode, threshold=threshold,
                                        names=None if name is None else [name], progress=progress))
        assert isinstance(result, Prediction)  # errors are raised, not yielded, by default
        return result

    def predict_batch(
        self, items: Iterable[Any], batch_size: int = 4, mode: str = "auto", threshold: float | None = None,
        progress: ProgressFn | None = None,
    ) -> list[Prediction]:
        """Predict on many images with batched forward passes; results in input order. ``progress``
        is called for each image in turn (its windows, then its cues; see :meth:`iter_predict`)."""
        return [r for r in self.iter_predict(items, batch_size=batch_size, mode=mode, threshold=threshold,
                                             progress=progress)
                if isinstance(r, Prediction)]

    def iter_predict(
        self,
        items: Iterable[Any],
        *,
        batch_size: int = 4,
        mode: str = "auto",
        threshold: float | None = None,
        skip_errors: bool = False,
        names: Iterable[str] | None = None,
        progress: ProgressFn | None = None,
    ) -> Iterator[Prediction | PredictionFailure]:
        """Yield one result per input, in order, reading only ``batch_size`` images at a time.

        Images predicted in resize mode share forward passes (``batch_size`` per pass); a tiled
        image runs its windows ``batch_size`` at a time. With ``skip_errors=True`` an unreadable
        input yields a :class:`PredictionFailure` instead of raising.

        ``progress`` (a :data:`ProgressFn`) counts each image's own work, image after image: its
        windows (``(1, 1)`` for an image of a shared resize pass), then its cues; an exception it
        raises (:class:`PredictionCancelledError`) ends the iteration.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        thr = check_threshold(self.threshold if threshold is None else threshold)
        name_iter = iter(names) if names is not None else None
        chunk: list[tuple[Any, str]] = []
        for item in items:
            label = next(name_iter, None) if name_iter is not None else None
            chunk.append((item, label or _describe(item)[0]))
            if len(chunk) == batch_size:
                yield from self._run_chunk(chunk, batch_size, mode, thr, skip_errors, progress or _no_progress)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk, batch_size, mode, thr, skip_errors, progress or _no_progress)

    def _run_chunk(
        self, chunk: list[tuple[Any, str]], batch_size: int, mode: str, threshold: float, skip_errors: bool,
        progress: ProgressFn,
    ) -> Iterator[Prediction | PredictionFailure]:
        loaded: list[ImageInput | PredictionFailure] = []
        for item, name in chunk:
            try:
                loaded.append(load_image_input(item, self.max_pixels, name=_describe(item)[1] or name))
            except (ImageReadError, ValueError, TypeError) as err:
                if not skip_errors:
                    raise
                reason = err.reason if isinstance(err, ImageReadError) else str(err)
                loaded.append(PredictionFailure(name, _describe(item)[1], reason))
        resized = [] if self.native or self.model is None else [
            i for i, im in enumerate(loaded)
            if isinstance(im, ImageInput) and self.choose_mode(im.height, im.width, mode) == "resize"]
        resized_out = dict(zip(resized, self._predict_resized([loaded[i].rgb for i in resized]), strict=True)) \
            if resized else {}
        for i, ((item, name), im) in enumerate(zip(chunk, loaded, strict=True)):
            if isinstance(im, PredictionFailure):
                yield im
                continue
            streams = ["pixels"]
            if self.model is None:  # training-free detectors only: their fused maps are the result
                heat, score, source = np.zeros((im.height, im.width), np.float32), 0.0, "detectors"
                chosen, windows = "native", 0
            elif i in resized_out:
                heat, score, source = resized_out.pop(i)
                chosen, windows = "resize", 1
                progress(1, 1, "windows")
            elif self.native:
                heat, score, source, windows, streams = self._predict_native(im, progress)
                chosen = "native"
            else:
                heat, score, source, windows = self._predict_tiled(im.rgb, batch_size, progress)
                chosen = "tile"
            cues = self._run_cues(im, progress)
            # Chain of custody: the hash of the very bytes that were decoded (not a re-read file).
            custody = {} if im.data is None else {"sha256": hashlib.sha256(im.data).hexdigest(),
                                                  "file_size": len(im.data)}
            heat, score, fused = fuse_maps(heat, score, [cues[n] for n in self.fuse], with_model=self.model is not None)
            yield Prediction(
                heatmap=heat, score=score, threshold=threshold, image=im.rgb, name=name,
                source=_describe(item)[1], mode=chosen, score_source=source, model=self.model_name,
                windows=windows, streams=streams, cues=cues, fused=fused,
                verdict=verdict_for(score, self.calibration), model_label=self.label, extra=custody,
                notes=list(im.notes),
            )

    # -- native-resolution models (block-grid traces: never resized) -------------------------------
    @property
    def native(self) -> bool:
        """Whether the model reads traces that resizing would destroy (``native_resolution``)."""
        return bool(getattr(self.model, "native_resolution", False))

    def _jpeg_dct(self, image: ImageInput) -> np.ndarray | None:
        """The file's DCT coefficients for a JPEG in its stored orientation, else ``None`` (the
        model then reads the decoded pixels)."""
        if not image.is_jpeg or image.orientation != 1:
            return None
        from forgeloc.data.jpeg import dct_grid

        return dct_grid(image.data, image.height, image.width)

    def _forward_native(self, rgb: np.ndarray, dct: np.ndarray | None) -> np.ndarray:
        if dct is None:
            batch: dict[str, Any] = {"image": normalize(rgb)[None].to(self.device)}
        else:
            # A model that reads the file's coefficients takes only the image's size from the
            # pixels: a zero-stride stand-in saves normalising megapixels nobody reads.
            image = torch.zeros((), device=self.device).expand(1, 3, *rgb.shape[:2])
            batch = {"image": image, "dct": torch.from_numpy(dct)[None].to(self.device),
                     "dct_valid": torch.ones(1, dtype=torch.bool, device=self.device)}
        with torch.inference_mode(), autocast_context(self.device, self.amp):
            pred = self.model(batch)["pred_mask"]
        return self._finite(pred[0, 0]).clamp(0.0, 1.0).cpu().numpy()

    def _predict_native(self, image: ImageInput,
                        progress: ProgressFn = _no_progress) -> tuple[np.ndarray, float, str, int, list[str]]:
        """The whole photo at its own resolution, in block-aligned windows of at most
        ``NATIVE_WINDOW`` pixels a side (averaged where they overlap)."""
        dct = self._jpeg_dct(image)
        H, W = image.height, image.width
        heat = np.zeros((H, W), np.float32)
        count = np.zeros((H, W), np.float32)
        spans = native_windows(H, W)
        progress(0, len(spans), "windows")
        windows = 0
        for ys, xs in spans:
            sub = None if dct is None else dct[:, ys.start // 8: -(-ys.stop // 8), xs.start // 8: -(-xs.stop // 8)]
            heat[ys, xs] += self._forward_native(image.rgb[ys, xs], sub)
            count[ys, xs] += 1
            windows += 1
            progress(windows, len(spans), "windows")
        heat /= count
        return heat, self._reduce(heat), self.image_score, windows, ["jpeg_dct" if dct is not None else "pixels"]

    def __repr__(self) -> str:
        return (f"Predictor(model={self.model_name!r}, input_size={self.input_size}, threshold={self.threshold}, "
                f"device={str(self.device)!r})")


#: What runs the network: PyTorch, or onnxruntime on an ONNX export (``forgeloc export``).
BACKENDS = ("torch", "onnxruntime")


def _load_network(checkpoint: str | os.PathLike, model: str | None, backend: str | None,
                  device: str | torch.device | None, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The network and its recorded config, from a checkpoint (PyTorch) or an ONNX export folder."""
    from forgeloc.deploy.onnx import is_onnx_export, load_onnx

    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    exported = is_onnx_export(checkpoint)
    if backend == "onnxruntime" or (backend is None and exported):
        if not exported:
            raise ValueError(f"{checkpoint}: the onnxruntime backend runs an ONNX export; make one first with "
                             f"`forgeloc export {checkpoint} --format onnx --out DIR`, then pass DIR")
        if resolve_device(device).type != "cpu" or model or model_kwargs:
            raise ValueError("an ONNX export runs on the CPU as exported: no --device other than cpu, no --model "
                             "and no model options")
        return load_onnx(checkpoint)
    if exported:
        raise ValueError(f"{checkpoint} is an ONNX export: run it with backend='onnxruntime' "
                         "(forgeloc predict --backend onnxruntime)")
    from forgeloc.models.factory import load_checkpoint

    return load_checkpoint(checkpoint, model=model, **model_kwargs)


#: The name that selects the detector shipped inside the package (``forgeloc.load()``).
DEFAULT_DETECTOR = "default"


def default_detector_path() -> Path:
    """The folder of the packaged default detector (``model.safetensors`` + ``config.json``)."""
    return Path(__file__).resolve().parent.parent / "weights" / "default"


def load(
    model_or_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    amp: str | None = None,
    threshold: float | None = None,
    **kwargs: Any,
) -> Predictor:
    """A :class:`Predictor`.

    * ``forgeloc.load()`` (or ``load("default")``): the default detector shipped with forgeloc
      (``docs/models/default.md``): no download, no checkpoint to find;
    * ``forgeloc.load(PATH)``: a run folder or checkpoint folder whose ``config.json`` names the
      model;
    * ``forgeloc.load("sparsevit", checkpoint=PATH)``: a model name and its weights (any file
      :func:`forgeloc.create_model` reads: safetensors, the authors' ``.pth``);
    * ``forgeloc.load("copymove")``: a training-free detector (``forgeloc detectors`` lists them).

    * ``forgeloc.load(DIR)`` for an ONNX export folder (``forgeloc export``): the graph runs in
      onnxruntime (``backend="onnxruntime"``, the ``[onnx]`` extra).

    Other keyword arguments go to :meth:`Predictor.from_checkpoint` (``image_score``,
    ``input_size``, ``tile_overlap``, ``max_pixels``, ``cues``, ``fuse``, ``backend``) or to the
    model constructor.
    """
    if model_or_checkpoint is None or str(model_or_checkpoint) == DEFAULT_DETECTOR:
        if checkpoint is not None:
            raise ValueError("the default detector ships its own weights: pass no checkpoint")
        if kwargs.get("backend") == "onnxruntime":
            raise ValueError("the default detector ships PyTorch weights: export it with `forgeloc export default "
                             "--format onnx --out DIR`, then run DIR with the onnxruntime backend")
        return Predictor.from_checkpoint(default_detector_path(), device=device, amp=amp, threshold=threshold,
                                         **kwargs)
    if checkpoint is None:
        from forgeloc.detectors import CUES

        name = str(model_or_checkpoint)
        path = Path(model_or_checkpoint)
        if name in CUES and not path.exists():
            if kwargs.pop("backend", None) == "onnxruntime":
                raise ValueError(f"{name} is a training-free detector: it has no network to run in onnxruntime")
            fuse = [name, *[f for f in kwargs.pop("fuse", None) or () if f != name]]
            return Predictor(None, fuse=fuse, device=device, threshold=0.5 if threshold is None else threshold,
                             info={"detector": "training-free"}, **kwargs)
        if not path.exists():
            from forgeloc.models.registry import list_models

            if name in list_models():
                raise ValueError(
                    f"forgeloc.load({name!r}) needs trained weights: pass "
                    f"checkpoint=PATH (a forgeloc checkpoint folder or the authors' weights file; "
                    "docs/models lists where each paper's authors publish theirs)"
                )
            raise FileNotFoundError(f"{path}: no such checkpoint (a run folder, checkpoint folder or weights file)")
        return Predictor.from_checkpoint(path, device=device, amp=amp, threshold=threshold, **kwargs)
    return Predictor.from_checkpoint(
        checkpoint, model=str(model_or_checkpoint), device=device, amp=amp, threshold=threshold, **kwargs
    )
