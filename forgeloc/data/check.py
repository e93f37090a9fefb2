"""Dataset health check (``forgeloc data check``) and format conversion (``forgeloc data convert``).

:func:`check_dataset` reads **every** image and mask through :mod:`forgeloc.data.io` and reports
all problems at once, each with its JSON line number or file path. Severity:

* **error** — the sample cannot be used as is: unreadable/missing/truncated file, too many pixels,
  mask size differing from the image, anything :func:`~forgeloc.data.datasets.load_records`
  rejects (malformed entries, unmatched files, ...). ``forgeloc data check`` exits with 1.
* **warning** — usable, but probably not what you meant: grey levels other than 0/255 in a mask
  (JPEG masks, anti-aliasing: they are thresholded at ``> 127.5``), coloured masks, masks with
  transparency, an empty mask on a tampered record (it will be labelled authentic), a mask that
  is tampered everywhere, an image listed twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgeloc.data.datasets import NEGATIVE, DatasetError, Problem, Record, load_records, scan_records
from forgeloc.data.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    MaskSizeError,
    image_info,
    read_image,
    read_mask_gray,
    read_mask_rgb,
)

__all__ = ["DatasetReport", "check_dataset", "convert_to_json"]

_SINGLE_CHANNEL_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found. Sizes are ``(width, height)``."""

    source: str
    format: str
    n_records: int = 0
    n_tampered: int = 0
    n_authentic: int = 0
    n_unknown: int = 0
    n_images_read: int = 0
    min_size: tuple[int, int] | None = None  # smallest image by pixel count
    max_size: tuple[int, int] | None = None  # largest image by pixel count
    min_width: int | None = None
    min_height: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    mean_tampered_fraction: float | None = None  # over tampered records whose mask was usable
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error-level problem."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_errors"] = len(self.errors)
        out["n_warnings"] = len(self.warnings)
        return out


def _problem(record: Record, path: Path, message: str, severity: str = "error") -> Problem:
    # JSON records are located by their line and the message names the file; folder records by the file.
    if record.source != str(path):
        return Problem(record.source, f"{path}: {message}", severity)
    return Problem(str(path), message, severity)


def _check_mask(
    record: Record, image_size: tuple[int, int] | None, max_pixels: int, threshold: float,
    problems: list[Problem],
) -> float | None:
    """Read and inspect one mask; returns its tampered fraction when the mask is usable."""
    assert record.mask is not None
    mask_path = record.mask
    try:
        info = image_info(mask_path, max_pixels=max_pixels)
        if info.mode in _SINGLE_CHANNEL_MODES:
            gray = read_mask_gray(mask_path, max_pixels=max_pixels)
            coloured = 0
        else:
            rgb = read_mask_rgb(mask_path, max_pixels=max_pixels)
            gray = (rgb.astype(np.uint16).sum(axis=2) / 3.0).astype(np.float32)
            coloured = int(np.count_nonzero((rgb[:, :, 0] != rgb[:, :, 1]) | (rgb[:, :, 1] != rgb[:, :, 2])))
    except ImageReadError as err:
        problems.append(_problem(record, mask_path, f"mask unreadable: {err.reason}"))
        return None
    h, w = gray.shape
    if image_size is not None and (w, h) != image_size:
        problems.append(_problem(record, mask_path, str(MaskSizeError(mask_path, (w, h), record.image, image_size))))
        return None
    total = gray.size
    if info.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (info.mode == "P" and _has_transparency(mask_path)):
        problems.append(_problem(record, mask_path, "mask has an alpha channel; it is ignored (the RGB values "
                                                    "decide, as in IMDLBenCo)", "warning"))
    if coloured:
        problems.append(_problem(
            record, mask_path,
            f"coloured mask: {coloured} pixels ({coloured / total:.2%}) have unequal R, G, B; the mean of the "
            "three channels is thresholded, so colour-coded masks (e.g. Columbia's) must be converted first",
            "warning"))
    binary = gray > threshold
    non_binary = int(np.count_nonzero((gray != 0) & (gray != 255)))
    if non_binary:
        faint = int(np.count_nonzero((gray > 0) & ~binary))
        problems.append(_problem(
            record, mask_path,
            f"mask is not strictly binary: {non_binary} pixels ({non_binary / total:.2%}) have grey levels "
            f"other than 0 and 255 (JPEG artefacts or anti-aliasing?); with the rule mean > {threshold:g}, "
            f"{non_binary - faint} of them count as tampered and {faint} as authentic", "warning"))
    tampered = int(np.count_nonzero(binary))
    if tampered == 0:
        problems.append(_problem(
            record, mask_path,
            f"mask is empty (no pixel > {threshold:g}): this tampered record will be labelled authentic"
            + (" (IMDLBenCo would label it tampered: it has faint non-zero values)" if np.any(gray > 0) else ""),
            "warning"))
    elif tampered == total:
        problems.append(_problem(record, mask_path, "every pixel is marked tampered: no authentic pixel (pixel "
                                                    "AUC is undefined and the edge mask is empty)", "warning"))
    return tampered / total


def _has_transparency(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return "transparency" in img.info


#: Formats whose files can hold several frames or pages (a GIF is not a dataset format).
_MULTI_FRAME_SUFFIXES = frozenset({".tif", ".tiff", ".webp"})


def _check_frames(record: Record, max_pixels: int, problems: list[Problem]) -> None:
    """A warning for a multi-page TIFF (or animated WebP): training and testing read page 1 only."""
    if record.image.suffix.lower() not in _MULTI_FRAME_SUFFIXES:
        return
    try:
        note = image_info(record.image, max_pixels=max_pixels).frames_note
    except ImageReadError:  # it was just read: a failure here is not a new problem
        return
    if note:
        problems.append(_problem(record, record.image, f"{note}; the other pages are ignored", "warning"))


def check_dataset(
    source: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threshold: float = 127.5,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetReport:
    """Read every image and mask of a dataset and report everything wrong with it (never stops early).

    ``progress(done, total)`` is called after each record. See the module docstring for what is
    an error and what is a warning.
    """
    # The records/problems of the listing step come first, then those of reading each file.
    records, problems, fmt = scan_records(source)
    report = DatasetReport(source=str(source), format=fmt, problems=problems)
    report.n_records = len(records)
    report.n_tampered = sum(1 for r in records if r.label == 1)
    report.n_authentic = sum(1 for r in records if r.label == 0)
    report.n_unknown = sum(1 for r in records if r.label is None)

    sizes: list[tuple[int, int]] = []
    fractions: list[float] = []
    # Pillow logs its own warnings for odd files; the report carries them, so keep the console clean.
    data_logger = logging.getLogger("forgeloc.data")
    previous_level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        for n, record in enumerate(records):
            image_size: tuple[int, int] | None = None
            try:
                image = read_image(record.image, max_pixels=max_pixels)
            except ImageReadError as err:
                problems.append(_problem(record, record.image, err.reason))
            else:
                image_size = (image.shape[1], image.shape[0])
                sizes.append(image_size)
                del image
                _check_frames(record, max_pixels, problems)
            if record.mask is not None:
                fraction = _check_mask(record, image_size, max_pixels, threshold, problems)
                if fraction is not None and image_size is not None:
                    fractions.append(fraction)
            if progress is not None:
                progress(n + 1, len(records))
    finally:
        data_logger.setLevel(previous_level)

    report.n_images_read = len(sizes)
    if sizes:
        by_pixels = sorted(sizes, key=lambda s: (s[0] * s[1], s))
        report.min_size, report.max_size = by_pixels[0], by_pixels[-1]
        report.min_width = min(s[0] for s in sizes)
        report.min_height = min(s[1] for s in sizes)
        report.max_width = max(s[0] for s in sizes)
        report.max_height = max(s[1] for s in sizes)
    if fractions:
        report.mean_tampered_fraction = float(np.mean(fractions))
    return report


def _portable(path: Path, base: Path | None) -> str:
    # abspath, not resolve(): symlinked dataset folders keep the names the user gave them.
    absolute = os.path.abspath(path)
    if base is None:
        return Path(absolute).as_posix()
    try:
        return Path(os.path.relpath(absolute, os.path.abspath(base))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(absolute).as_posix()


def convert_to_json(source: str | os.PathLike, out_json: str | os.PathLike, *, relative: bool = True) -> Path:
    """Write any supported dataset as an IMDLBenCo JSON list ``[[image, mask_or_"Negative"], ...]``.

    With ``relative=True`` (default) paths are written relative to the output file's folder, which
    is how forgeloc resolves them when reading (IMDLBenCo resolves relative paths against the
    current directory instead: use ``relative=False`` for a list that IMDLBenCo will read).
    Raises :class:`~forgeloc.data.datasets.DatasetError` listing every problem of the source, and
    refuses plain image folders (their ground truth is unknown; the format cannot say so).
    """
    from forgeloc.io import atomic_write

    out = Path(out_json)
    if out.suffix.lower() != ".json":
        raise ValueError(f"{out}: the output file must end in .json")
    records = load_records(source)
    unknown = [r for r in records if not r.mask_known]
    if unknown:
        raise DatasetError(source, [Problem(str(source), f"a plain image folder has no ground truth "
                                                         f"({len(unknown)} images); the JSON list needs a mask "
                                                         f"or \"{NEGATIVE}\" for every image")])
    base = out.parent if relative else None
    entries = [[_portable(r.image, base), _portable(r.mask, base) if r.mask is not None else NEGATIVE]
               for r in records]
    # One entry per line: diffs stay readable and error messages can point at a line.
    text = "[\n" + ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out
