"""The JPEG stream of a file: its quantized DCT coefficients and quantization tables.

Compression cues (double quantization, grid alignment, the default detector's JPEG stream) read
the file's own coefficients rather than re-transforming decoded pixels: the coefficients are the
exact integers the encoder wrote, and the quantization table says which steps it used. Decoding
goes through libjpeg via `jpeglib <https://pypi.org/project/jpeglib/>`_, a core dependency (the
default detector reads the stream).
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

import numpy as np

__all__ = ["JpegStream", "JpegStreamError", "blocks_to_plane", "dct_grid", "read_jpeg_stream"]


class JpegStreamError(ValueError):
    """The bytes are not a JPEG whose DCT stream can be read."""


@dataclass(eq=False)
class JpegStream:
    """Luma (and, when present, chroma) DCT coefficients of one JPEG file.

    ``y``: int16 ``(H/8, W/8, 8, 8)`` quantized luma coefficients, block ``[i, j]`` covering pixels
    ``8i..8i+7 × 8j..8j+7`` of the *stored* image (before EXIF orientation), coefficient ``[u, v]``
    = vertical frequency ``u``, horizontal ``v`` (DC at ``[0, 0]``). ``qt_y``: the luma table,
    ``(8, 8)`` in the same layout. ``cb``/``cr``/``qt_c``: chroma, or ``None`` for greyscale files.
    ``height``/``width``: the stored image's size in pixels (the block grid may extend past it).
    """

    y: np.ndarray
    qt_y: np.ndarray
    cb: np.ndarray | None
    cr: np.ndarray | None
    qt_c: np.ndarray | None
    height: int
    width: int
    progressive: bool = False

    def dequantized_y(self) -> np.ndarray:
        """Luma coefficients times their quantization steps, float32 ``(H/8, W/8, 8, 8)``: the DCT of
        the decoded (level-shifted, unrounded) luma blocks."""
        return self.y.astype(np.float32) * self.qt_y.astype(np.float32)


def _require_jpeglib():
    try:
        import jpeglib
    except ImportError:
        raise ImportError(
            "reading a JPEG's DCT coefficients needs jpeglib, a dependency of forgeloc that is missing here: "
            "pip install jpeglib"
        ) from None
    return jpeglib


def read_jpeg_stream(data: bytes) -> JpegStream:
    """Read the DCT coefficients and quantization tables of a JPEG given as bytes.

    Raises :class:`JpegStreamError` when the bytes are not a readable baseline/progressive JPEG.
    The last two files read are kept: the default detector and the JPEG cues read the same photo's
    stream three times (a third of a second each at 12 MP). Their arrays are read-only.
    """
    if not data.startswith(b"\xff\xd8"):
        raise JpegStreamError("not a JPEG file (no SOI marker)")
    return _read_jpeg_stream(bytes(data))


@functools.lru_cache(maxsize=2)
def _read_jpeg_stream(data: bytes) -> JpegStream:
    jpeglib = _require_jpeglib()
    # jpeglib reads from a path only; the temporary file lives in memory-backed storage where
    # available and is removed at once.
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=".jpg", dir=folder) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            im = jpeglib.read_dct(tmp.name)
            y = np.asarray(im.Y)
            qt = np.asarray(im.qt)
            cb = None if im.Cb is None else np.asarray(im.Cb)
            cr = None if im.Cr is None else np.asarray(im.Cr)
            tbl = list(im.quant_tbl_no) if im.quant_tbl_no is not None else [0]
            height, width = int(im.height), int(im.width)
            progressive = bool(getattr(im, "progressive_mode", False))
        except Exception as err:  # libjpeg reports every defect as a generic error
            raise JpegStreamError(f"unreadable JPEG stream: {err}") from None
    qt_y = qt[tbl[0]].astype(np.int32)
    qt_c = qt[tbl[1]].astype(np.int32) if cb is not None and len(tbl) > 1 and tbl[1] < len(qt) else None
    y = y.astype(np.int16)
    for array in (y, qt_y, cb, cr, qt_c):  # shared by every caller of the cache: nobody may change them
        if array is not None:
            array.flags.writeable = False
    return JpegStream(y=y, qt_y=qt_y, cb=cb, cr=cr, qt_c=qt_c, height=height, width=width, progressive=progressive)


def blocks_to_plane(blocks: np.ndarray) -> np.ndarray:
    """``(Hb, Wb, 8, 8)`` block coefficients → ``(8·Hb, 8·Wb)`` plane, block ``[i, j]`` at pixels
    ``8i.., 8j..`` (the layout of a stride-8 blockwise DCT of the pixels)."""
    hb, wb = blocks.shape[:2]
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3).reshape(hb * 8, wb * 8))


def dct_grid(data: bytes, height: int, width: int) -> np.ndarray | None:
    """A JPEG file's dequantized luma coefficients as float32 ``(64, ⌈H/8⌉, ⌈W/8⌉)`` (channel
    ``8u + v``), the layout of a stride-8 blockwise DCT of the decoded luma; ``None`` when the bytes
    are not a readable JPEG or their stored size is not ``height × width``."""
    try:
        stream = read_jpeg_stream(data)
    except (JpegStreamError, ImportError):
        return None
    if (stream.height, stream.width) != (height, width):
        return None
    hb, wb = -(-height // 8), -(-width // 8)
    coef = stream.dequantized_y()[:hb, :wb]
    return np.ascontiguousarray(coef.reshape(hb, wb, 64).transpose(2, 0, 1))
