"""Reading images and masks so that a bad file is never silently turned into a wrong sample.

Every reader either returns exactly what the file holds, in one fixed layout, or raises an error
that names the file and says what is wrong with it:

* :func:`read_image` → ``H×W×3 uint8`` RGB, C-contiguous, EXIF orientation applied;
* :func:`read_mask` → ``H×W uint8`` in ``{0, 1}`` (IMDLBenCo's rule: RGB mean ``> 127.5``);
* :class:`ImageReadError` (missing, empty, not an image, truncated, too many pixels, ...),
  :class:`DecompressionBombError`, :class:`MaskError`, :class:`MaskSizeError`.

Mode policy (documented in ``docs/data.md``):

* grayscale ``L``/``1`` → replicated to 3 channels (``1`` → 0/255);
* 16-bit (``I;16*``, and ``I`` = 32-bit integer, clipped to 0..65535) → 8-bit by ``>> 8``, the
  same rule Pillow applies to 16-bit RGB files, so 16-bit gray and 16-bit colour agree;
* float ``F`` → values in [0, 1] are scaled by 255, otherwise clipped to [0, 255]; then rounded;
* images with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) are
  composited on **white** (a transparent pixel becomes 255, 255, 255). IMDLBenCo drops the alpha
  channel instead (``convert("RGB")``), which exposes whatever colour hides under transparency;
* masks ignore alpha (the RGB values decide, exactly like IMDLBenCo) and a warning is logged when
  a mask is not fully opaque, because some tools draw masks in the alpha channel;
* ``CMYK``, ``YCbCr``, ``HSV`` and the rest → Pillow's conversion to RGB.

Pixel limit: the pixel count from the file header is compared with ``max_pixels`` *before* any
pixel is decoded. The default, :data:`DEFAULT_MAX_PIXELS` = 178,956,970, is Pillow's own hard
limit (2 × ``PIL.Image.MAX_IMAGE_PIXELS``); a larger ``max_pixels`` cannot lift Pillow's limit
(raise ``PIL.Image.MAX_IMAGE_PIXELS`` in your application for that). forgeloc never changes
Pillow's global settings, and never sets ``ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "DecompressionBombError",
    "ImageInfo",
    "ImageReadError",
    "ImageSource",
    "MaskError",
    "MaskSizeError",
    "authentic_mask",
    "binarize_mask",
    "count_frames",
    "frames_note",
    "image_info",
    "mask_stats",
    "pil_to_rgb",
    "read_image",
    "read_mask",
    "read_mask_gray",
    "read_mask_rgb",
]

logger = logging.getLogger("forgeloc.data")

#: Pillow's hard decompression-bomb limit (2 × its warning limit of 89,478,485 pixels).
DEFAULT_MAX_PIXELS = 178_956_970

#: File extensions the dataset loaders accept (compared in lower case).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})

#: A path, raw bytes (e.g. an upload), or a binary file-like object.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]

_EXIF_ORIENTATION_TAG = 0x0112


class ImageReadError(ValueError):
    """An image (or mask) file could not be read; ``path`` names it, the message says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DecompressionBombError(ImageReadError):
    """The file declares more pixels than allowed (checked from the header, before decoding)."""


class MaskError(ValueError):
    """A mask is unusable; ``path`` is the mask file."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        super().__init__(message)


class MaskSizeError(MaskError):
    """A mask's size differs from its image's; both paths and both sizes are in the message.

    The message is for command-line users too, so it names no Python option; in Python,
    ``read_mask(..., resize=True)`` / ``ForgeryDataset(resize_masks=True)`` resize instead.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mask_size: tuple[int, int],
        image_path: str | os.PathLike | None,
        image_size: tuple[int, int],
    ) -> None:
        self.mask_size = mask_size
        self.image_size = image_size
        self.image_path = None if image_path is None else str(image_path)
        mw, mh = mask_size
        iw, ih = image_size
        image_desc = f"image {self.image_path}" if image_path is not None else "the image"
        message = (
            f"mask {path} is {mw}x{mh} (WxH) but {image_desc} is {iw}x{ih}; masks must match their "
            f"image pixel for pixel: resize the mask file to {iw}x{ih} (nearest neighbour), or check that it "
            "belongs to this image"
        )
        if (mw, mh) == (ih, iw):
            message += (
                ". The sizes are transposed: if the image is a JPEG with an EXIF rotation, the mask was "
                "probably drawn on the stored, unrotated pixels (read the image with exif_transpose=False)"
            )
        super().__init__(path, message)


# --------------------------------------------------------------------------------------------------
# Opening a source
# --------------------------------------------------------------------------------------------------
def _display_name(source: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


def _read_bytes(source: ImageSource, where: str) -> bytes:
    """All the bytes of ``source``; file-system problems become :class:`ImageReadError`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageReadError(where, "file not found")
        if path.is_dir():
            raise ImageReadError(where, "is a directory, not an image file")
        if not path.is_file():
            raise ImageReadError(where, "is not a regular file")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ImageReadError(where, f"cannot be read ({err.strerror or err})") from err
    elif hasattr(source, "read"):
        try:
            data = source.read()
        except OSError as err:
            raise ImageReadError(where, f"cannot be read ({err})") from err
        if not isinstance(data, (bytes, bytearray)):
            raise ImageReadError(where, "the stream must be opened in binary mode")
        data = bytes(data)
    else:
        raise TypeError(f"expected a path, bytes or a binary file object, got {type(source).__name__}")
    if not data:
        raise ImageReadError(where, "empty file (0 bytes)")
    return data


#: The first bytes of the formats forgeloc reads (WebP: "RIFF", 4 size bytes, "WEBP").
_MAGIC = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF8"), ("TIFF", b"II*\x00"),
          ("TIFF", b"MM\x00*"), ("BMP", b"BM"), ("WebP", b"RIFF"))


def _format_from_magic(data: bytes) -> str | None:
    """The format ``data`` starts like (a file cut inside its signature counts), else ``None``."""
    for name, magic in _MAGIC:
        head = data[: len(magic)]
        if len(head) >= 2 and magic.startswith(head):
            if name == "WebP" and len(data) >= 12 and data[8:12] != b"WEBP":
                continue
            return name
    return None


def _describe_unknown(data: bytes) -> str:
    """Why Pillow did not recognise ``data``, in words a user can act on."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    lowered = head.lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or (lowered.startswith(b"<") and b"<html" in lowered):
        return "is an HTML document, not an image (an error page saved by a failed download?)"
    if lowered.startswith(b"<?xml") or lowered.startswith(b"<svg"):
        return "is XML/SVG text; vector images are not supported"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "is a text file, not an image"
    fmt = _format_from_magic(data)
    if fmt is not None:  # e.g. a JPEG cut inside its header: Pillow cannot tell what it is any more
        return f"truncated or corrupt {fmt} (it starts like one, but its header is cut short or damaged)"
    hex_head = " ".join(f"{b:02x}" for b in data[:8])
    return f"is not a recognised image format (first bytes: {hex_head})"


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """Open ``data`` with Pillow and check the declared size; pixels are not decoded yet."""
    try:
        # Pillow warns above its soft limit; forgeloc applies its own limit just below instead.
        with _quiet_exif():  # Pillow reads the EXIF block's DPI while opening a JPEG
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise DecompressionBombError(
            where,
            f"too many pixels: {err} (Pillow's own hard limit; forgeloc's max_pixels cannot lift it)",
        ) from err
    except UnidentifiedImageError as err:
        raise ImageReadError(where, _describe_unknown(data)) from err
    except Exception as err:  # a malformed header can raise nearly anything inside a plugin
        fmt = _format_from_magic(data) or "image"
        raise ImageReadError(where, f"truncated or corrupt {fmt} header ({type(err).__name__}: {err})") from err
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageReadError(where, f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DecompressionBombError(
            where,
            f"too many pixels: {width}x{height} = {width * height:,} exceeds max_pixels={max_pixels:,} "
            "(a decompression bomb, or a genuine huge image: raise max_pixels if you trust the file)",
        )
    return img


def _decode(img: Image.Image, where: str, exif_transpose: bool) -> Image.Image:
    """Decode every pixel (so truncated files fail here) and apply the EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as err:
        reason = str(err) or type(err).__name__
        raise ImageReadError(where, f"truncated or corrupt image data ({reason})") from err
    # exif_transpose copies the image even when there is nothing to do: skip the common case.
    if exif_transpose and _orientation(img) != 1:
        try:
            with _quiet_exif():
                transposed = ImageOps.exif_transpose(img)
        except Exception as err:  # a broken EXIF block must not hide good pixels, but must be said
            logger.warning("%s: EXIF orientation unreadable (%s); using the stored orientation", where, err)
        else:
            if transposed is not None:
                img = transposed
    return img


@contextlib.contextmanager
def _quiet_exif() -> Iterator[None]:
    """Pillow warns ("Corrupt EXIF data", "Tag data larger than file") on the console when it parses
    a damaged EXIF block; the orientation is all forgeloc reads from it here, and the metadata cue
    reports the damage itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _orientation(img: Image.Image) -> int:
    try:
        with _quiet_exif():
            return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF: treated as "no rotation" (a warning comes from _decode)
        return 1


# --------------------------------------------------------------------------------------------------
# Mode conversion
# --------------------------------------------------------------------------------------------------
def _high_bits_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit (or wider integer) samples → 8-bit by keeping the high byte, like Pillow does for RGB."""
    return (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _single_channel_uint8(img: Image.Image) -> np.ndarray | None:
    """HxW uint8 for the high-depth single-channel modes Pillow's ``convert`` would clip."""
    if img.mode.startswith("I;16"):
        return _high_bits_to_uint8(np.asarray(img))
    if img.mode == "I":
        return _high_bits_to_uint8(np.asarray(img))
    if img.mode == "F":
        return _float_to_uint8(np.asarray(img))
    return None


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info)


def pil_to_rgb(img: Image.Image, where: str, *, alpha: str) -> np.ndarray:
    """Any Pillow mode → HxWx3 uint8. ``alpha``: ``"white"`` (composite) or ``"ignore"`` (drop)."""
    gray = _single_channel_uint8(img)
    if gray is not None:
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        if _has_alpha(img) and alpha == "white":
            rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
            rgb, a = rgba[:, :, :3], rgba[:, :, 3:4]
            # Rounded integer "over" operator onto white: rgb·a/255 + 255·(1 − a/255).
            out = (rgb * a + 255 * (255 - a) + 127) // 255
            return np.ascontiguousarray(out.astype(np.uint8))
        # np.array (not asarray): the caller gets a writeable array it owns.
        if img.mode == "RGB":
            rgb = np.array(img)
        elif img.mode == "1":
            rgb = np.array(img.convert("L").convert("RGB"))
        else:
            rgb = np.array(img.convert("RGB"))
    except (ValueError, OSError) as err:
        raise ImageReadError(where, f"unsupported image mode {img.mode!r} ({err})") from err
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageReadError(where, f"unsupported image mode {img.mode!r} (decoded as {rgb.dtype}{rgb.shape})")
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says (nothing decoded): size after EXIF rotation, mode, format, and the
    number of frames (pages) in the file, of which forgeloc reads the first."""

    width: int
    height: int
    mode: str
    format: str | None
    exif_orientation: int
    frames: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def frames_note(self) -> str | None:
        """``"animated GIF: frame 1 of 12 analysed"`` when only part of the file is read, else ``None``."""
        return frames_note(self.format, self.frames)


_MULTI_FRAME_KINDS = {"GIF": "animated GIF", "PNG": "animated PNG", "WEBP": "animated WebP", "TIFF": "multi-page TIFF"}


def frames_note(fmt: str | None, frames: int) -> str | None:
    """What to tell a user whose file holds ``frames`` frames (pages) when only the first is read.

    ``None`` for one frame, and for MPO: a camera JPEG's second picture is its preview, not content.
    """
    if frames <= 1 or fmt == "MPO":
        return None
    kind = _MULTI_FRAME_KINDS.get(fmt or "", f"multi-frame {fmt or 'image'}")
    unit = "page" if fmt == "TIFF" else "frame"
    return f"{kind}: {unit} 1 of {frames} analysed"


def count_frames(img: Image.Image) -> int:
    """Frames (pages) in an opened file; 1 when Pillow cannot tell (it may seek through the file)."""
    try:
        return max(1, int(getattr(img, "n_frames", 1) or 1))
    except Exception:  # a damaged later frame: the first one is still what is read
        return 1


def image_info(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> ImageInfo:
    """Header facts of an image without decoding its pixels (raises like :func:`read_image`)."""
    where = _display_name(source, name)
    img = _open(_read_bytes(source, where), where, max_pixels)
    orientation = _orientation(img)
    w, h = img.size
    if orientation in (5, 6, 7, 8):  # these orientations swap width and height
        w, h = h, w
    return ImageInfo(w, h, img.mode, img.format, orientation, count_frames(img))


def read_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    exif_transpose: bool = True,
) -> np.ndarray:
    """Read an image as an ``H×W×3`` uint8 RGB, C-contiguous array.

    ``source`` is a path, raw bytes or a binary file object; ``name`` is the name used in error
    messages for bytes/streams (default ``<bytes>``/the stream's ``name``). The pixel count in the
    header is checked against ``max_pixels`` before decoding, every pixel is decoded here (so a
    truncated file raises now, not inside a data-loader worker later), the EXIF orientation is
    applied (``exif_transpose=False`` keeps the stored orientation) and any mode is converted to
    RGB as described in the module docstring. Multi-frame files (animated GIF/PNG/WebP, multi-page
    TIFF) give their first frame; :func:`image_info`'s ``frames_note`` says so in words.

    Raises :class:`ImageReadError` (or its subclass :class:`DecompressionBombError`) naming the file.
    """
    where = _display_name(source, name)
    img = _open(_read_bytes(source, where), where, max_pixels)
    img = _decode(img, where, exif_transpose)
    return pil_to_rgb(img, where, alpha="white")


def _open_mask(source: ImageSource, max_pixels: int, name: str | None, exif_transpose: bool) -> tuple[Image.Image, str]:
    where = _display_name(source, name)
    img = _open(_read_bytes(source, where), where, max_pixels)
    img = _decode(img, where, exif_transpose)
    if _has_alpha(img):
        alpha_band = np.asarray(img.convert("RGBA"))[:, :, 3]
        if alpha_band.min() < 255:
            logger.warning(
                "%s: mask has transparency (%d pixels not fully opaque); the alpha channel is ignored and "
                "the RGB values decide, as in IMDLBenCo",
                where,
                int((alpha_band < 255).sum()),
            )
    return img, where


def read_mask_rgb(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    exif_transpose: bool = True,
) -> np.ndarray:
    """A mask file as ``H×W×3`` uint8 RGB with alpha *ignored* (what IMDLBenCo thresholds).

    Useful to inspect colour-coded masks; :func:`read_mask` is what the datasets use.
    """
    img, where = _open_mask(source, max_pixels, name, exif_transpose)
    return pil_to_rgb(img, where, alpha="ignore")


def read_mask_gray(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    exif_transpose: bool = True,
) -> np.ndarray:
    """A mask file as ``H×W`` float32 grey levels (0..255): the mean of its R, G, B channels.

    This is the quantity the protocol thresholds. Alpha is ignored (as IMDLBenCo's
    ``convert("RGB")`` does); a warning is logged when the mask is not fully opaque. 16-bit and
    float masks are brought to 8 bits first (see the module docstring).
    """
    img, where = _open_mask(source, max_pixels, name, exif_transpose)
    # Single-channel masks (the usual case): the mean of three equal channels is the value itself.
    gray = _single_channel_uint8(img)
    if gray is None and img.mode in ("L", "1", "LA", "La"):
        gray = np.asarray(img.convert("L") if img.mode != "L" else img)
    if gray is not None:
        return gray.astype(np.float32)
    rgb = pil_to_rgb(img, where, alpha="ignore")
    # Integer sum then one division keeps the mean exact (no float accumulation order effects).
    return (rgb.astype(np.uint16).sum(axis=2) / 3.0).astype(np.float32)


def binarize_mask(gray: np.ndarray, threshold: float = 127.5) -> np.ndarray:
    """Grey levels (H×W, or H×W×C averaged over C) → uint8 {0, 1} with the strict rule ``> threshold``."""
    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray.astype(np.float64).mean(axis=2)
    return np.ascontiguousarray((gray > threshold).astype(np.uint8))


def read_mask(
    source: ImageSource,
    *,
    image_size: tuple[int, int] | None = None,
    image_path: str | os.PathLike | None = None,
    threshold: float = 127.5,
    resize: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    exif_transpose: bool = True,
) -> np.ndarray:
    """Read a ground-truth mask as ``H×W`` uint8 in {0, 1}.

    The protocol's rule (IMDLBenCo): convert to RGB, average the three channels, and mark a pixel
    tampered when the mean is strictly greater than ``threshold`` (127.5: grey 128 is tampered,
    127 is not). ``image_size`` is the paired image's ``(width, height)``; when the mask differs,
    :class:`MaskSizeError` names both files and both sizes, unless ``resize=True``, which resizes
    the mask with nearest-neighbour interpolation and logs a warning (never silently).

    An unreadable mask file raises :class:`ImageReadError` (the file is the problem, as for
    images); a mask that reads but does not fit its image raises :class:`MaskSizeError`.
    """
    where = _display_name(source, name)
    gray = read_mask_gray(source, max_pixels=max_pixels, name=name, exif_transpose=exif_transpose)
    mask = binarize_mask(gray, threshold)
    if image_size is not None:
        iw, ih = int(image_size[0]), int(image_size[1])
        mh, mw = mask.shape
        if (mw, mh) != (iw, ih):
            if not resize:
                raise MaskSizeError(where, (mw, mh), image_path, (iw, ih))
            import cv2

            logger.warning(
                "mask %s is %dx%d but image %s is %dx%d (WxH): resizing the mask (nearest neighbour)",
                where, mw, mh, image_path if image_path is not None else "", iw, ih,
            )
            mask = np.ascontiguousarray(cv2.resize(mask, (iw, ih), interpolation=cv2.INTER_NEAREST))
    return mask


def authentic_mask(height: int, width: int) -> np.ndarray:
    """The mask of an authentic image: ``H×W`` uint8 zeros."""
    return np.zeros((int(height), int(width)), dtype=np.uint8)


def mask_stats(mask: np.ndarray) -> dict[str, float | int]:
    """Pixel counts of a binary mask: ``pixels``, ``tampered``, ``fraction``, ``empty``, ``full``."""
    mask = np.asarray(mask)
    total = int(mask.size)
    tampered = int(np.count_nonzero(mask))
    return {
        "pixels": total,
        "tampered": tampered,
        "fraction": tampered / total if total else 0.0,
        "empty": int(tampered == 0),
        "full": int(total > 0 and tampered == total),
    }
