"""Sliding-window ("tiled") prediction at full resolution, blended without seams.

A large photo shrunk to the model's 512×512 input loses the very traces forensic models look at
(resampling, noise, JPEG grids). Tiling runs the model on ``window × window`` crops of the image
at its own resolution instead:

* window origins along each axis start at 0, advance by ``stride = window − round(overlap ·
  window)``, and the last window is pushed back to end exactly at the image border, so every
  pixel is covered and no window hangs over the edge (:func:`window_starts`);
* each window's prediction is weighted by a separable raised-cosine (Hann) window
  ``w(t) = sin²(π (t + ½) / window)``, which is largest in the window's centre — where a
  convolutional or attention model has full context — and falls towards the edges, where zero
  padding and missing context make predictions least reliable. The blended heatmap is
  ``Σ wᵢ pᵢ / Σ wᵢ``; the weights never reach zero, so border pixels covered by one window get
  exactly that window's value;
* the default overlap is half a window: then every pixel lies at least a quarter window from the
  edge of some window, and those sin² weights sum to a constant along each axis. Models learn
  that image borders are rarely tampered and darken a band along their input's edges; with a
  quarter-window overlap that band shows through as a grid wherever neighbouring windows meet
  (seen with the 128-px quickstart model), at 1.8× instead of 4× the pixels in model passes;
* because the origins form a grid and the weight is separable, ``Σ wᵢ`` is the outer product of
  two 1-D sums: only the output heatmap (one float32 ``H×W`` array) and a batch of windows are
  ever held in memory, whatever the image size;
* an image smaller than the window along an axis is padded at the bottom/right (reflected, or
  black like IMDLBenCo's training-time padding) and the prediction is cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import cv2
import numpy as np

__all__ = ["DEFAULT_OVERLAP", "blend_weights", "pad_to_window", "tile_predict", "window_grid", "window_starts"]

#: ``(batch of windows N×S×S×3 uint8) → (N×S×S float32 probabilities, N image scores or None)``
WindowFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


# Half a window: see the module docstring for why not less.
DEFAULT_OVERLAP = 0.5


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Origins of windows of size ``window`` covering ``[0, length)`` with step ``stride``.

    The last window ends exactly at ``length``; when ``length <= window`` there is one window at 0
    (the caller pads the image to ``window``).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} larger than the window {window} would leave gaps")
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    starts = [min(i * stride, length - window) for i in range(n)]
    return sorted(set(starts))


def window_grid(height: int, width: int, window: int, overlap: float = DEFAULT_OVERLAP) -> list[tuple[int, int]]:
    """``(y, x)`` origins of all windows for an image (row-major), with ``overlap`` in [0, 1)."""
    stride = _stride(window, overlap)
    return [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]


def _stride(window: int, overlap: float) -> int:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, window - round(overlap * window))


def blend_weights(window: int) -> np.ndarray:
    """The 1-D raised-cosine weight ``sin²(π (t + ½) / window)``, float64, strictly positive."""
    t = np.arange(window, dtype=np.float64)
    return np.sin(np.pi * (t + 0.5) / window) ** 2


def pad_to_window(image: np.ndarray, window: int, padding: str = "reflect") -> np.ndarray:
    """Pad ``image`` at the bottom/right so both sides are at least ``window`` (no copy if not needed).

    ``padding``: ``"reflect"`` (mirror without repeating the border pixel; repeated as often as
    needed for tiny images) or ``"black"`` (zero pixels, as IMDLBenCo's ``pad`` input mode).
    """
    h, w = image.shape[:2]
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if not pad_h and not pad_w:
        return image
    if padding == "black":
        border, value = cv2.BORDER_CONSTANT, 0
    elif padding == "reflect":
        # OpenCV's REFLECT_101 needs at least 2 pixels to mirror; a 1-pixel side is replicated.
        border, value = (cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE), 0
    else:
        raise ValueError(f"padding must be 'reflect' or 'black', got {padding!r}")
    return cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, border, value=value)


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def tile_predict(
    image: np.ndarray,
    predict_windows: WindowFn,
    window: int,
    *,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 4,
    padding: str = "reflect",
) -> tuple[np.ndarray, float | None, int]:
    """Blend window predictions over an ``H×W×3`` uint8 image.

    Returns the ``H×W`` float32 heatmap, the largest per-window image score (``None`` when the
    model gives none) and the number of windows run.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"tile_predict needs an HxWx3 image, got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    h, w = image.shape[:2]
    canvas = pad_to_window(image, window, padding)
    ch, cw = canvas.shape[:2]
    stride = _stride(window, overlap)
    ys, xs = window_starts(ch, window, stride), window_starts(cw, window, stride)
    weight_1d = blend_weights(window)
    weight_2d = np.outer(weight_1d, weight_1d).astype(np.float32)

    acc = np.zeros((ch, cw), dtype=np.float32)
    best_score: float | None = None
    origins = [(y, x) for y in ys for x in xs]
    for group in _batches(origins, batch_size):
        crops = np.stack([canvas[y:y + window, x:x + window] for y, x in group])
        probs, scores = predict_windows(crops)
        if probs.shape != (len(group), window, window):
            raise ValueError(f"window predictions have shape {probs.shape}, expected {(len(group), window, window)}")
        for (y, x), p in zip(group, probs, strict=True):
            acc[y:y + window, x:x + window] += p * weight_2d
        if scores is not None:
            top = float(np.max(scores))
            best_score = top if best_score is None else max(best_score, top)

    # Σ weights over a grid of separable windows = outer product of the per-axis sums.
    row_sum = np.zeros(ch, dtype=np.float64)
    col_sum = np.zeros(cw, dtype=np.float64)
    for y in ys:
        row_sum[y:y + window] += weight_1d
    for x in xs:
        col_sum[x:x + window] += weight_1d
    heat = acc[:h, :w]
    heat /= row_sum[:h, None].astype(np.float32)
    heat /= col_sum[None, :w].astype(np.float32)
    np.clip(heat, 0.0, 1.0, out=heat)
    if heat.base is not None and (ch, cw) != (h, w):
        heat = np.ascontiguousarray(heat)  # drop the padded border's memory
    return heat, best_score, len(origins)
