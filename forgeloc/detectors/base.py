"""The contract of forgeloc's *detectors*: anything that looks at one photo and says where it may
have been manipulated, learned or training-free.

A detector receives an :class:`ImageInput` (the decoded pixels **and**, when it came from a file,
the file's own bytes, so that compression cues can read the JPEG stream itself) and returns a
:class:`CueResult`. Training-free detectors (copy-move matching, JPEG double-quantization, noise
level, ...) are plain functions ``detect(image: ImageInput, **options) -> CueResult`` registered in
:mod:`forgeloc.detectors`.

Conventions every detector follows:

* ``heatmap`` is float32 ``H×W`` in ``[0, 1]`` at the resolution of ``image.rgb`` (the photo as the
  user sees it, EXIF orientation applied); higher = more likely manipulated;
* a detector that cannot say anything about this input (e.g. JPEG cues on a PNG) returns
  ``CueResult.not_applicable(name, reason)`` instead of raising; it raises only on a genuine bug;
* ``score`` is an image-level number in ``[0, 1]`` (higher = more likely manipulated), or ``None``
  when the detector gives no image-level verdict;
* ``kind`` says how a result may be used: ``"detector"`` (scored, may be fused), ``"visual_aid"``
  (shown to a person, never scored, e.g. error level analysis) or ``"facts"`` (metadata).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CueResult", "ImageInput"]

KINDS = ("detector", "visual_aid", "facts")


@dataclass(eq=False)
class ImageInput:
    """One photo as detectors see it.

    ``rgb``: uint8 ``H×W×3``, EXIF orientation applied. ``data``: the original file's bytes when the
    photo came from a file or bytes (``None`` for arrays). ``format``: Pillow's format name
    (``"JPEG"``, ``"PNG"``, ...) or ``None``. ``orientation``: the EXIF orientation tag (1 = none);
    JPEG-domain cues computed on the stored grid must apply the same transposition to their maps
    (see :meth:`to_display`). ``notes``: what the user should know about how the file was read
    (``"animated GIF: frame 1 of 12 analysed"``).
    """

    rgb: np.ndarray
    data: bytes | None = None
    format: str | None = None
    orientation: int = 1
    name: str = "image"
    notes: tuple[str, ...] = ()

    @property
    def is_jpeg(self) -> bool:
        # Pillow reports camera JPEGs that carry extra pictures (multi-picture format) as "MPO".
        return self.format in ("JPEG", "MPO") and self.data is not None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def to_display(self, stored: np.ndarray) -> np.ndarray:
        """Map an array laid out like the *stored* image (before EXIF orientation) to the displayed
        orientation of ``rgb`` (the transposition Pillow's ``exif_transpose`` applies)."""
        op = {
            2: lambda a: a[:, ::-1],
            3: lambda a: a[::-1, ::-1],
            4: lambda a: a[::-1, :],
            5: lambda a: np.swapaxes(a, 0, 1),
            6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
            7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
            8: lambda a: np.swapaxes(a, 0, 1)[::-1, :],
        }.get(self.orientation)
        return stored if op is None else np.ascontiguousarray(op(stored))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "image") -> ImageInput:
        """Decode ``data`` with forgeloc's image reader (modes, EXIF, bombs handled) and keep the bytes."""
        import warnings

        from PIL import Image

        from forgeloc.data.io import count_frames, frames_note, read_image

        rgb = read_image(data, name=name)
        with warnings.catch_warnings():  # Pillow's "Corrupt EXIF data": the pixels are what matter here
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                orientation = int(img.getexif().get(0x0112, 1) or 1)
                note = frames_note(fmt, count_frames(img))
        return cls(rgb=rgb, data=data, format=fmt, orientation=orientation if 1 <= orientation <= 8 else 1, name=name,
                   notes=(note,) if note else ())

    @classmethod
    def from_path(cls, path: Any) -> ImageInput:
        from pathlib import Path

        p = Path(path)
        return cls.from_bytes(p.read_bytes(), name=p.name)


@dataclass(eq=False)
class CueResult:
    """What one detector says about one photo (see the module docstring for the conventions)."""

    name: str
    heatmap: np.ndarray | None
    score: float | None
    kind: str = "detector"
    applicable: bool = True
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def not_applicable(cls, name: str, reason: str, kind: str = "detector", **extra: Any) -> CueResult:
        return cls(name=name, heatmap=None, score=None, kind=kind, applicable=False, reason=reason, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "applicable": self.applicable,
            "score": None if self.score is None else round(float(self.score), 6),
            "reason": self.reason,
            **({"extra": self.extra} if self.extra else {}),
        }
