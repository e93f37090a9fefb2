"""Turning a heatmap into pictures people can read: colour map, overlay, mask, PNG/JPEG bytes.

* The heatmap is drawn with matplotlib's ``inferno`` colour map (its table is built in here):
  perceptually uniform (equal steps in probability look like equal steps in colour), readable in
  greyscale and by people with the common colour-vision deficiencies, unlike ``jet``.
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


#: matplotlib's ``inferno`` sampled at 256 points (``rint(cmap(linspace(0, 1, 256))[:, :3] * 255)``),
#: 256 RGB triples in hex: predicting needs no matplotlib (tests check it against matplotlib's table).
_INFERNO_HEX = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)


@functools.lru_cache(maxsize=4)
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """A ``256×3`` uint8 lookup table sampled from a matplotlib colour map (``inferno`` is built in;
    any other name needs matplotlib)."""
    if name == "inferno":
        lut = np.frombuffer(bytes.fromhex("".join(_INFERNO_HEX)), dtype=np.uint8).reshape(256, 3).copy()
    else:
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
