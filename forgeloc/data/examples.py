"""Example photos for ``forgeloc demo``: real photographs, tampered the way real forgeries are.

The photos are scikit-image's bundled photographs (nothing is downloaded). Each forgery carries
the traces a real one does: a JPEG-compressed host, a pasted piece of another photo that was
resampled and lands off the host's 8×8 grid, a final JPEG save; a copy-move with rotation; and
untouched photos that were only compressed, so the demo shows what the detector says about
those too. The ground-truth masks are written next to them.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = ["make_examples"]


def _jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _ellipse(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask


def _splice() -> tuple[bytes, np.ndarray]:
    """Coffee cup host (JPEG q75) + the cat's head from another photo, scaled 0.9×, pasted with a
    soft edge, saved again at q90."""
    from skimage import data

    host = _decode(_jpeg_bytes(np.ascontiguousarray(data.coffee()), 75))
    donor = cv2.resize(_decode(_jpeg_bytes(np.ascontiguousarray(data.chelsea()), 85)), None, fx=0.9, fy=0.9,
                       interpolation=cv2.INTER_AREA)
    mask = _ellipse(host.shape[:2], (423, 141), (70, 85), 10)
    layer = np.zeros_like(host)
    layer[41:41 + 200, 333:333 + 180] = donor[20:220, 60:240]
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)[..., None]
    out = np.clip(np.rint(host * (1 - alpha) + layer * alpha), 0, 255).astype(np.uint8)
    return _jpeg_bytes(out, 90), (alpha[..., 0] > 0.5).astype(np.uint8)


def _copy_move() -> tuple[bytes, np.ndarray]:
    """Astronaut photo (JPEG q85): a patch of the flag-and-badge area copied, rotated 15°, pasted
    elsewhere; saved losslessly (PNG). The mask marks the source and the copy."""
    from skimage import data

    img = _decode(_jpeg_bytes(np.ascontiguousarray(data.astronaut()), 85))
    src = _ellipse(img.shape[:2], (400, 300), (45, 55), 0)
    rot = cv2.getRotationMatrix2D((400, 300), 15, 1.0)
    rot[:, 2] += (-250, 120)  # the copy lands at (150, 420)
    warped = cv2.warpAffine(img, rot, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)
    dst = cv2.warpAffine(src, rot, (img.shape[1], img.shape[0]), flags=cv2.INTER_NEAREST)
    out = np.where(dst[..., None] > 0, warped, img)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "PNG")
    return buf.getvalue(), np.maximum(src, dst)


def _untouched(name: str, quality: int) -> bytes:
    from skimage import data

    return _jpeg_bytes(np.ascontiguousarray(getattr(data, name)()), quality)


def make_examples(out: str | Path) -> list[tuple[Path, Path | None]]:
    """Write the example photos to ``out/photos`` and their masks to ``out/masks``; return
    ``(photo, mask or None)`` pairs (``None`` = untouched)."""
    out = Path(out)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    items: list[tuple[Path, Path | None]] = []
    for name, (data, mask) in (("splice_coffee.jpg", _splice()), ("copymove_astronaut.png", _copy_move())):
        photo = out / "photos" / name
        photo.write_bytes(data)
        mask_path = out / "masks" / (Path(name).stem + ".png")
        cv2.imwrite(str(mask_path), mask * 255)
        items.append((photo, mask_path))
    for name, quality in (("coffee", 75), ("astronaut", 85), ("rocket", 90)):
        photo = out / "photos" / f"untouched_{name}.jpg"
        photo.write_bytes(_untouched(name, quality))
        items.append((photo, None))
    return items
