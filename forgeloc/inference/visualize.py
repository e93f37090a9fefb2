"""Turning a heatmap into pictures people can read: colour map, overlay, mask, PNG/JPEG bytes.

* The heatmap is drawn with matplotlib's ``inferno`` colour map: perceptually uniform (equal
  steps in probability look like equal steps in colour), readable in greyscale and by people with
  the common colour-vision deficiencies, unlike ``jet``.
* The overlay blends that colour onto the photo with a *per-pixel* opacity ``alpha × heat``: where
  the model sees nothing the photo is left untouched, and suspicious regions glow. The outline of
  the binary mask (``heat > threshold``) is drawn in cyan, a colour ``inferno`` never uses.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "COLORMAP",
    "OUTLINE_COLOR",
    "colorize",
    "colorize_fit",
    "colormap_css_gradient",
    "colormap_lut",
    "encode_jpeg",
    "encode_png",
    "heat_layer_rgba",
    "mask_to_uint8",
    "overlay",
    "resize_to_fit",
    "write_png",
]

#: The colour map used for every heatmap forgeloc draws.
COLORMAP = "inferno"
#: Colour of the mask outline on overlays (RGB); absent from ``inferno``, so it stays visible.
OUTLINE_COLOR = (0, 255, 255)


@functools.lru_cache(maxsize=4)
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """A ``256×3`` uint8 lookup table sampled from a matplotlib colour map."""
    from matplotlib import colormaps  # imported here: matplotlib costs ~0.2 s to import

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    lut = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _heat_index(heat: np.ndarray) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be HxW, got shape {heat.shape}")
    return np.rint(np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize(heat: np.ndarray, cmap: str = COLORMAP) -> np.ndarray:
    """``H×W`` probabilities in [0, 1] → ``H×W×3`` uint8 RGB through the colour map."""
    return colormap_lut(cmap)[_heat_index(heat)]


def colorize_fit(heat: np.ndarray, max_side: int | None, cmap: str = COLORMAP) -> np.ndarray:
    """:func:`colorize` of the heatmap downscaled to ``max_side`` first (cheaper than colouring the
    full-resolution map and shrinking the RGB picture; area interpolation averages the values)."""
    heat = np.asarray(heat)
    if heat.dtype not in (np.float32, np.float64):
        heat = heat.astype(np.float32)
    return colorize(resize_to_fit(np.nan_to_num(heat, nan=0.0), max_side), cmap)


def colormap_css_gradient(stops: int = 9, cmap: str = COLORMAP, direction: str = "to right") -> str:
    """A CSS ``linear-gradient(...)`` of the colour map (for legends: 0 on the left, 1 on the right)."""
    lut = colormap_lut(cmap)
    idx = np.rint(np.linspace(0, 255, max(2, stops))).astype(int)
    parts = [f"rgb({r},{g},{b}) {100 * i / 255:.1f}%" for i, (r, g, b) in zip(idx, lut[idx].tolist(), strict=True)]
    return f"linear-gradient({direction}, {', '.join(parts)})"


def heat_layer_rgba(heat: np.ndarray, cmap: str = COLORMAP) -> np.ndarray:
    """``H×W×4`` uint8: the coloured heatmap with alpha = heat, to lay over the photo in a browser.

    Stacked over the photo with CSS ``opacity: a`` it gives exactly :func:`overlay` with ``alpha=a``
    (without the outline), so a slider can change the opacity without a round trip to the server.
    """
    idx = _heat_index(heat)
    out = np.empty((*idx.shape, 4), dtype=np.uint8)
    out[..., :3] = colormap_lut(cmap)[idx]
    out[..., 3] = idx
    return out


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """A boolean mask → ``H×W`` uint8 with 255 = tampered, 0 = authentic (the datasets' convention)."""
    return np.where(np.asarray(mask, dtype=bool), np.uint8(255), np.uint8(0))


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
    cmap: str = COLORMAP,
) -> np.ndarray:
    """The photo with the coloured heatmap blended in, opacity ``alpha × heat`` per pixel.

    ``mask`` (optional, boolean ``H×W``) has its outline drawn in :data:`OUTLINE_COLOR`, about
    1/500 of the image's longer side thick.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay needs an HxWx3 uint8 image, got {image.dtype}{image.shape}")
    if image.shape[:2] != np.shape(heat):
        raise ValueError(f"image {image.shape[:2]} and heatmap {np.shape(heat)} differ in size")
    idx = _heat_index(heat)
    # out = photo·(1 − a) + colour·a with a = alpha·heat per pixel; OpenCV's blend avoids HxWx3 float copies.
    weight = idx.astype(np.float32) * np.float32(alpha / 255.0)
    out = cv2.blendLinear(np.ascontiguousarray(image), colormap_lut(cmap)[idx], 1.0 - weight, weight)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask {m.shape} and image {image.shape[:2]} differ in size")
        if m.any():
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            thickness = max(1, round(max(m.shape) / 500))
            cv2.drawContours(out, contours, -1, OUTLINE_COLOR, thickness)
    return out


def resize_to_fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (area interpolation) so the longer side is at most ``max_side``; never upscale."""
    if max_side is None:
        return image
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes of an ``H×W`` (grey), ``H×W×3`` (RGB) or ``H×W×4`` (RGBA) uint8 array."""
    ok, buf = cv2.imencode(".png", _to_bgr(image), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported layouts, checked by callers
        raise ValueError(f"could not encode a PNG of shape {image.shape}")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an ``H×W×3`` RGB uint8 array (for thumbnails)."""
    ok, buf = cv2.imencode(".jpg", _to_bgr(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise ValueError(f"could not encode a JPEG of shape {image.shape}")
    return buf.tobytes()


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` as a PNG (bytes written by Python, so any file name works, unlike cv2.imwrite)."""
    path = Path(path)
    path.write_bytes(encode_png(image))
    return path
