"""Dataset formats, records and the PyTorch datasets built on them.

Formats that :func:`load_records` recognises (details and examples in ``docs/data.md``):

1. **JSON list** (IMDLBenCo ``JsonDataset``): ``[[image, mask_or_"Negative"], ...]``. Relative
   paths resolve against the JSON file's folder — not the current directory as in IMDLBenCo — so a
   list works from anywhere.
2. **Tp/Gt folder** (IMDLBenCo ``ManiDataset``): ``Tp/`` images, ``Gt/`` masks and an optional
   ``Au/`` of authentic images. Images and masks are paired **by name** (mask suffixes ``_gt``,
   ``-gt``, ``_mask``, ``-mask`` are stripped, any case), never by sort order as in IMDLBenCo.
3. **images/masks folder**: ``images/``, ``masks/`` and an optional ``authentic/``; same pairing.
4. **plain folder of images** (inference): every record has ``mask=None`` and
   ``mask_known=False`` — the ground truth is *unknown*, which is not the same as authentic.

Every problem in a source is collected and reported at once in one :class:`DatasetError`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from forgeloc.data.files import is_hidden_or_system, list_folder
from forgeloc.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    MaskError,
    authentic_mask,
    read_image,
    read_mask,
)

if TYPE_CHECKING:  # imported on use: transforms needs albumentations (the train extra), listing files does not
    from forgeloc.data.transforms import SampleTransform

__all__ = [
    "MASK_SUFFIXES",
    "NEGATIVE",
    "BalancedDataset",
    "DatasetError",
    "ForgeryDataset",
    "Problem",
    "Record",
    "detect_format",
    "list_images",
    "load_records",
    "open_dataset",
    "scan_records",
]

logger = logging.getLogger("forgeloc.data")

#: The second element of a JSON entry that marks an authentic image (exact string, capital N).
NEGATIVE = "Negative"
#: Mask-name suffixes removed before pairing a mask with its image (compared case-insensitively).
MASK_SUFFIXES = ("_gt", "-gt", "_mask", "-mask")
#: Files that operating systems leave in folders; never treated as data.
# How many problems a DatasetError message spells out; ``.problems`` always holds all of them.
_MESSAGE_PROBLEMS = 100


# --------------------------------------------------------------------------------------------------
# Records and problems
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: ``where`` (``list.json:line 12`` or a path) and what.

    ``severity`` is ``"error"`` (the sample cannot be used) or ``"warning"`` (usable, but look at it).
    """

    where: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DatasetError(ValueError):
    """A dataset source has problems; ``problems`` lists every one of them."""

    def __init__(self, source: str | os.PathLike, problems: Sequence[Problem]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"{self.source}: {n} problem{'s' if n != 1 else ''} found"]
        lines += [f"  - {p}" for p in self.problems[:_MESSAGE_PROBLEMS]]
        if n > _MESSAGE_PROBLEMS:
            lines.append(f"  ... and {n - _MESSAGE_PROBLEMS} more (all are in DatasetError.problems; "
                         "`forgeloc data check` prints every one)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Record:
    """One sample of a dataset.

    ``mask`` is the mask file, or ``None``: with ``mask_known=True`` that means *authentic*
    (IMDLBenCo's ``"Negative"``); with ``mask_known=False`` (plain image folders) the ground truth
    is unknown and metrics must not use the sample. ``source`` says where the record came from
    (``list.json:line 12`` or the image path) and appears in every error about it.
    """

    image: Path
    mask: Path | None
    source: str
    mask_known: bool = True

    @property
    def label(self) -> int | None:
        """1 = tampered (has a mask), 0 = authentic, ``None`` = unknown."""
        if not self.mask_known:
            return None
        return 0 if self.mask is None else 1


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _is_ignored(path: Path) -> bool:
    return is_hidden_or_system(path.name)


def same_file_key(path: Path) -> str:
    """A key equal for two paths of one file: ``..``, ``.``, symbolic links and (where the file
    system ignores it) letter case are normalised away."""
    return os.path.normcase(os.path.realpath(path))


def _folder_images(folder: Path, problems: list[Problem], *, recursive: bool = False) -> list[Path]:
    """Supported image files in ``folder`` (sorted); every other visible entry is a problem."""
    if not folder.is_dir():
        problems.append(Problem(str(folder), "folder not found"))
        return []
    listing = list_folder(folder, recursive=recursive)
    found = [(path, why) for path, why in listing.broken]
    found += [(path, f"unsupported extension {path.suffix or '(none)'!r} (supported: "
                     f"{' '.join(sorted(IMAGE_EXTENSIONS))}); convert it or move it out of the folder")
              for path in listing.others]
    found += [(path, "not a regular file (a pipe, socket or device)") for path in listing.special]
    problems.extend(Problem(str(path), why) for path, why in sorted(found))  # in path order, as they were found
    return listing.images


def _strip_mask_suffix(stem: str) -> str | None:
    lowered = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lowered.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _pair_by_stem(
    images: list[Path], masks: list[Path], problems: list[Problem]
) -> list[tuple[Path, Path]]:
    """Pair each image with the mask of the same stem (or stem + a mask suffix)."""
    by_stem: dict[str, list[Path]] = {}
    for img in images:
        by_stem.setdefault(img.stem, []).append(img)
    exact: dict[str, list[Path]] = {}
    stripped: dict[str, list[Path]] = {}
    for m in masks:
        exact.setdefault(m.stem, []).append(m)
        base = _strip_mask_suffix(m.stem)
        if base is not None:
            stripped.setdefault(base, []).append(m)

    used: set[Path] = set()
    pairs = []
    for stem, imgs in by_stem.items():
        if len(imgs) > 1:
            names = ", ".join(p.name for p in imgs)
            problems.append(Problem(str(imgs[0].parent), f"several images share the name {stem!r} ({names}); "
                                                         "their masks cannot be told apart"))
            continue
        img = imgs[0]
        candidates = exact.get(stem) or stripped.get(stem) or []
        if not candidates:
            looked = ", ".join(f"{stem}{s}.*" for s in ("", *MASK_SUFFIXES))
            problems.append(Problem(str(img), f"no mask found for this image (looked for {looked})"))
            continue
        if len(candidates) > 1:
            names = ", ".join(str(c) for c in candidates)
            problems.append(Problem(str(img), f"several masks match this image: {names}"))
            used.update(candidates)
            continue
        used.add(candidates[0])
        pairs.append((img, candidates[0]))
    for m in masks:
        if m not in used:
            problems.append(Problem(str(m), "mask has no matching image"))
    return pairs


def _check_file(path: Path, what: str, where: str, problems: list[Problem]) -> bool:
    if path.is_file():
        return True
    if path.is_dir():
        problems.append(Problem(where, f"{what} {path} is a directory, not a file"))
    else:
        problems.append(Problem(where, f"{what} file not found: {path}"))
    return False


# --------------------------------------------------------------------------------------------------
# JSON lists
# --------------------------------------------------------------------------------------------------
def _entry_lines(text: str) -> list[int]:
    """Line number (1-based) where each element of the top-level JSON array starts."""
    lines: list[int] = []
    depth = 0
    line = 1
    in_string = escaped = expecting = False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if depth == 1 and expecting and not ch.isspace() and ch not in ",]":
            lines.append(line)
            expecting = False
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth == 1 and ch == "[":
                expecting = True
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            expecting = True
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _scan_json(path: Path, problems: list[Problem], check_files: bool) -> list[Record]:
    loaded = _read_json_list(path, problems)
    if loaded is None:
        return []
    data, text = loaded
    lines = _entry_lines(text)
    entries_on_line = Counter(lines)
    records = []
    seen: dict[str, Record] = {}
    for i, entry in enumerate(data):
        where = _entry_where(path, i, lines, entries_on_line)
        record = _entry_record(entry, where, path.parent, check_files, problems)
        if record is None:
            continue
        # The same file under two spellings (img/../img/0.png and img/0.png, a link) is one image.
        # Without file checks (slow network file systems) the paths are only normalised as text.
        key = same_file_key(record.image) if check_files else os.path.normcase(os.path.normpath(record.image))
        if key in seen:
            problems.append(_listed_again(seen[key], record, entry[0]))
        seen.setdefault(key, record)
        records.append(record)
    return records


def _entry_where(path: Path, index: int, lines: list[int], entries_on_line: Counter) -> str:
    """``list.json:line 7``; ``list.json:line 1, entry 3`` (counted from 1) when the line holds several
    entries, as a list written on one line does."""
    if index >= len(lines):
        return f"{path}:entry {index + 1}"
    line = lines[index]
    return f"{path}:line {line}" + (f", entry {index + 1}" if entries_on_line[line] > 1 else "")


def _read_json_list(path: Path, problems: list[Problem]) -> tuple[list, str] | None:
    """The non-empty JSON list in ``path`` and its text, or None with the problem recorded."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        problems.append(Problem(str(path), f"not UTF-8 text ({err.reason} at byte {err.start})"))
        return None
    except OSError as err:
        problems.append(Problem(str(path), f"cannot be read ({err.strerror or err})"))
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        problems.append(Problem(f"{path}:line {err.lineno}", f"invalid JSON: {err.msg} (column {err.colno})"))
        return None
    except RecursionError:  # [[[[...]]]] thousands deep: Python's parser gives up before any entry is seen
        problems.append(Problem(str(path), "JSON nested too deeply to be a list of [image, mask] pairs"))
        return None
    if not isinstance(data, list):
        problems.append(Problem(str(path), f"must be a JSON list of [image, mask_or_\"Negative\"] pairs, "
                                           f"found a {type(data).__name__}"
                                           + (" (a {name: path} mapping is a test-set config, not a "
                                              "dataset)" if isinstance(data, dict) else "")))
        return None
    if not data:
        problems.append(Problem(str(path), "the list is empty"))
        return None
    return data, text


def _entry_record(entry: Any, where: str, base: Path, check_files: bool, problems: list[Problem]) -> Record | None:
    """One ``[image, mask_or_"Negative"]`` entry as a record, or None with every problem it has recorded."""
    if not isinstance(entry, list) or len(entry) != 2:
        problems.append(Problem(where, "entry must be a pair [image, mask_or_\"Negative\"], "
                                       f"found {_short(entry)}"))
        return None
    image_value, mask_value = entry
    bad = False
    for what, value in (("image", image_value), ("mask", mask_value)):
        if not isinstance(value, str):
            hint = ' (authentic images use the string "Negative")' if what == "mask" and value is None else ""
            problems.append(Problem(where, f"{what} must be a string path, found {_short(value)}{hint}"))
            bad = True
        elif not value.strip():
            problems.append(Problem(where, f"{what} path is empty"))
            bad = True
    if bad:
        return None
    image = _resolve(base, image_value)
    if image.suffix.lower() not in IMAGE_EXTENSIONS:
        problems.append(Problem(where, f"image {image_value!r} has an unsupported extension "
                                       f"(supported: {' '.join(sorted(IMAGE_EXTENSIONS))})"))
        bad = True
    elif check_files and not _check_file(image, "image", where, problems):
        bad = True
    mask: Path | None = None
    if mask_value != NEGATIVE:
        mask = _entry_mask(mask_value, where, base, check_files, problems)
        bad = bad or mask is None
    return None if bad else Record(image=image, mask=mask, source=where)


def _entry_mask(mask_value: str, where: str, base: Path, check_files: bool, problems: list[Problem]) -> Path | None:
    """The mask path of an entry (not ``"Negative"``), or None with the problem recorded."""
    if mask_value.lower().endswith(".json"):
        problems.append(Problem(where, f"mask path {mask_value!r} ends in .json: a mask must be an "
                                       "image (nested dataset lists are not supported)"))
        return None
    mask = _resolve(base, mask_value)
    if mask.suffix.lower() not in IMAGE_EXTENSIONS:
        hint = ' (authentic images use the exact string "Negative")' if mask_value.strip().lower() in (
            "negative", "none", "null", "authentic") else ""
        problems.append(Problem(where, f"mask {mask_value!r} has an unsupported extension{hint}"))
        return None
    if check_files and not _check_file(mask, "mask", where, problems):
        return None
    return mask


def _listed_again(first: Record, record: Record, image_value: str) -> Problem:
    """An image listed twice: an error with opposite labels, else a warning (naming a second mask)."""
    where, mask = record.source, record.mask
    if first.label != record.label:
        return Problem(where, f"image {image_value!r} is listed again with the opposite label "
                              f"({'tampered' if record.label else 'authentic'} here, "
                              f"{'tampered' if first.label else 'authentic'} at {first.source}): "
                              "one image cannot be both")
    other = "" if first.mask is None or mask is None or same_file_key(first.mask) == same_file_key(
        mask) else f", with another mask ({first.mask.name} there, {mask.name} here)"
    return Problem(where, f"image {image_value!r} is listed again (first at {first.source}{other})", "warning")


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
_LAYOUTS = {"tp_gt": ("Tp", "Gt", "Au"), "images_masks": ("images", "masks", "authentic")}


def _find_child(folder: Path, name: str) -> Path | None:
    """``folder/name`` with any capitalisation (``Tp``/``tp``/``TP``), or ``None``."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for child in folder.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


DATASET_LIST_NAME = "dataset.json"


def detect_format(source: str | os.PathLike) -> str:
    """``"json"``, ``"tp_gt"``, ``"images_masks"`` or ``"plain"`` (raises if none applies).

    A folder holding a ``dataset.json`` (what ``forgeloc synth`` and ``forgeloc data convert``
    write) is read through that list, which is authoritative for its own folder.
    """
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "json"
        raise DatasetError(path, [Problem(str(path), "a dataset file must be a .json list; for a single image "
                                                     "use forgeloc.data.io.read_image")])
    if not path.exists():
        raise DatasetError(path, [Problem(str(path), "dataset not found (no such file or folder)")])
    if (path / DATASET_LIST_NAME).is_file():
        return "json"
    for fmt, (tampered, masks, _) in _LAYOUTS.items():
        if _find_child(path, tampered) is not None or _find_child(path, masks) is not None:
            return fmt
    return "plain"


def _scan_layout(folder: Path, fmt: str, problems: list[Problem]) -> list[Record]:
    tampered_name, masks_name, authentic_name = _LAYOUTS[fmt]
    tampered_dir = _find_child(folder, tampered_name)
    masks_dir = _find_child(folder, masks_name)
    if tampered_dir is None or masks_dir is None:
        missing = tampered_name if tampered_dir is None else masks_name
        present = masks_name if tampered_dir is None else tampered_name
        problems.append(Problem(str(folder), f"has {present}/ but no {missing}/ (the {fmt.replace('_', '/')} "
                                             "layout needs both)"))
        return []
    images = _folder_images(tampered_dir, problems)
    masks = _folder_images(masks_dir, problems)
    records = [Record(image=i, mask=m, source=str(i)) for i, m in _pair_by_stem(images, masks, problems)]
    authentic_dir = _find_child(folder, authentic_name)
    if authentic_dir is not None:
        tampered = {same_file_key(r.image): r for r in records}
        for p in _folder_images(authentic_dir, problems):
            twin = tampered.get(same_file_key(p))
            if twin is not None:
                problems.append(Problem(str(p), f"the same file as the tampered image {twin.image} (a link?): "
                                                "one image cannot be both authentic and tampered"))
            records.append(Record(image=p, mask=None, source=str(p)))
    if not records and not problems:
        problems.append(Problem(str(folder), f"no images in {tampered_name}/"
                                             + (f" or {authentic_name}/" if authentic_dir else "")))
    return records


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Record]:
    """Every supported image in ``folder`` as a record with an *unknown* mask (``mask_known=False``).

    Hidden files and ``Thumbs.db``-style files are skipped; other unsupported files and an empty
    folder are errors (:class:`DatasetError`).
    """
    folder = Path(folder)
    problems: list[Problem] = []
    records = _scan_plain(folder, problems, recursive)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DatasetError(folder, errors)
    return records


def _scan_plain(folder: Path, problems: list[Problem], recursive: bool = False) -> list[Record]:
    images = _folder_images(folder, problems, recursive=recursive)
    if not images and not any(p.severity == "error" for p in problems):
        subdirs = [c.name for c in folder.iterdir() if c.is_dir() and not _is_ignored(c)] if folder.is_dir() else []
        hint = (f" (sub-folders {', '.join(sorted(subdirs)[:5])} are not searched: a dataset folder needs "
                "Tp/+Gt/ or images/+masks/)") if subdirs else ""
        problems.append(Problem(str(folder), f"no images found{hint}"))
    return [Record(image=p, mask=None, source=str(p), mask_known=False) for p in images]


# --------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------
def scan_records(source: str | os.PathLike, *, check_files: bool = True) -> tuple[list[Record], list[Problem], str]:
    """Like :func:`load_records` but returns ``(records, problems, format)`` instead of raising.

    ``records`` holds every entry that is usable on its own; ``problems`` everything that is not
    (errors) or looks suspicious (warnings). Used by ``forgeloc data check``.
    """
    path = Path(source)
    problems: list[Problem] = []
    try:
        fmt = detect_format(path)
    except DatasetError as err:
        return [], err.problems, "unknown"
    if fmt == "json":
        records = _scan_json(path / DATASET_LIST_NAME if path.is_dir() else path, problems, check_files)
    elif fmt == "plain":
        records = _scan_plain(path, problems)
    else:
        records = _scan_layout(path, fmt, problems)
    return records, problems, fmt


def load_records(source: str | os.PathLike, *, check_files: bool = True) -> list[Record]:
    """Read a dataset source (JSON list, Tp/Gt folder, images/masks folder, plain image folder).

    Every problem is collected first; if any is an error, one :class:`DatasetError` lists them
    all. Warnings (e.g. an image listed twice) are logged. ``check_files=False`` skips the
    existence checks of JSON entries (faster on slow network file systems; reading fails later).
    """
    records, problems, _ = scan_records(source, check_files=check_files)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DatasetError(source, errors)
    for p in problems:
        logger.warning("%s", p)
    return records


# --------------------------------------------------------------------------------------------------
# PyTorch datasets
# --------------------------------------------------------------------------------------------------
def _seed_ints(*values: int) -> list[int]:
    return [int(v) & 0xFFFFFFFF for v in values]


class ForgeryDataset(Dataset):
    """Records → model-ready sample dicts.

    ``__getitem__(i)`` returns ``image`` (3,H,W) float32, ``mask`` (1,H,W) float32 {0,1},
    ``label`` float32 scalar, ``origin_shape`` int64 (2,), ``name`` (image file name), ``index``
    int64 scalar (= ``i``), plus ``edge_mask`` / ``shape_mask`` when the transform makes them.
    Records with an unknown mask (plain folders) have no ``mask``, ``label`` or ``edge_mask``: a
    dataset must not mix known and unknown masks.

    ``label`` is 1 when the augmented native-resolution mask has at least one tampered pixel,
    else 0 — so it always agrees with ``mask``: a tampered record whose mask file is all black is
    labelled 0, and synthetic copy-move/inpainting on an authentic image gives 1. (IMDLBenCo tests
    the mask *before* binarisation, so a mask of faint values 1..127 is label 1 with an empty mask.)

    Augmentation randomness is a pure function of ``(seed, epoch, index)``; call
    :meth:`set_epoch` at the start of each epoch.
    """

    def __init__(
        self,
        records_or_source: Iterable[Record] | str | os.PathLike,
        transform: SampleTransform | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        resize_masks: bool = False,
        threshold: float = 127.5,
    ) -> None:
        if isinstance(records_or_source, (str, os.PathLike)):
            self.source = str(records_or_source)
            records = load_records(records_or_source)
        else:
            self.source = "<records>"
            records = list(records_or_source)
        if not records:
            raise ValueError(f"{self.source}: the dataset has no records")
        known = {r.mask_known for r in records}
        if len(known) > 1:
            raise ValueError(f"{self.source}: records mix known and unknown masks; split them into two datasets "
                             "(unknown ground truth must never be counted as authentic)")
        self.records: list[Record] = records
        self.mask_known = known.pop()
        if transform is None:
            from forgeloc.data.transforms import SampleTransform

            transform = SampleTransform(mode="none")
        self.transform = transform
        self.max_pixels = max_pixels
        self.seed = int(seed)
        self.resize_masks = resize_masks
        self.threshold = threshold
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of ``epoch`` (call on every process and before iterating)."""
        self.epoch = int(epoch)

    @property
    def n_tampered(self) -> int:
        return sum(1 for r in self.records if r.label == 1)

    @property
    def n_authentic(self) -> int:
        return sum(1 for r in self.records if r.label == 0)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Record ``i`` decoded at native size: (image H×W×3 uint8, mask H×W {0,1} or ``None``)."""
        record = self.records[i]
        try:
            image = read_image(record.image, max_pixels=self.max_pixels)
            if not record.mask_known:
                return image, None
            if record.mask is None:
                return image, authentic_mask(*image.shape[:2])
            mask = read_mask(record.mask, image_size=(image.shape[1], image.shape[0]), image_path=record.image,
                             threshold=self.threshold, resize=self.resize_masks, max_pixels=self.max_pixels)
        except (ImageReadError, MaskError) as err:
            if hasattr(err, "add_note"):  # Python ≥ 3.11: say which dataset entry it was
                err.add_note(f"dataset record: {record.source}")
            raise
        return image, mask

    def get(self, i: int, rng_key: Sequence[int] | None = None) -> dict[str, Any]:
        """Sample ``i`` with augmentation seeded by ``rng_key`` (default ``(seed, epoch, i)``)."""
        if not 0 <= i < len(self.records):
            raise IndexError(f"index {i} out of range for a dataset of {len(self.records)}")
        image, mask = self.read(i)
        key = _seed_ints(*(rng_key if rng_key is not None else (self.seed, self.epoch, i)))
        sample = self.transform(image, mask, key)
        sample["name"] = self.records[i].image.name
        sample["index"] = torch.tensor(i, dtype=torch.int64)
        return sample

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get(int(i))


class BalancedDataset(Dataset):
    """Protocol-CAT's balanced mix (protocol A4), reproducible.

    An epoch is ``len(datasets) × samples_per_dataset`` items: positions
    ``[k·n, (k+1)·n)`` belong to dataset ``k`` and each draws an item of it uniformly **with
    replacement**, from a ``torch.Generator`` seeded by ``(seed, epoch)``. The mapping is a pure
    function of ``(seed, epoch)``, identical on every process, so a plain
    ``DistributedSampler(dataset, shuffle=True, seed=seed)`` shards it under DDP (call
    ``set_epoch`` on both the sampler and this dataset). Augmentation is seeded by the epoch
    position, so an item drawn twice gets two different augmentations; ``index`` is the position.
    """

    def __init__(self, datasets: Sequence[Dataset], samples_per_dataset: int, seed: int = 0) -> None:
        if not datasets:
            raise ValueError("BalancedDataset needs at least one dataset")
        if samples_per_dataset < 1:
            raise ValueError(f"samples_per_dataset must be >= 1, got {samples_per_dataset}")
        for k, d in enumerate(datasets):
            if len(d) == 0:  # type: ignore[arg-type]
                raise ValueError(f"dataset {k} is empty")
        self.datasets = list(datasets)
        self.samples_per_dataset = int(samples_per_dataset)
        self.seed = int(seed)
        self.epoch = 0
        self._table = self._draw(0)

    def _draw(self, epoch: int) -> list[torch.Tensor]:
        state = np.random.SeedSequence(_seed_ints(self.seed, epoch)).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return [torch.randint(len(d), (self.samples_per_dataset,), generator=g)  # type: ignore[arg-type]
                for d in self.datasets]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._table = self._draw(self.epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.datasets) * self.samples_per_dataset

    def locate(self, i: int) -> tuple[int, int]:
        """(dataset number, item index in it) of epoch position ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a balanced epoch of {len(self)}")
        k = i // self.samples_per_dataset
        return k, int(self._table[k][i % self.samples_per_dataset])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        k, j = self.locate(i)
        dataset = self.datasets[k]
        if isinstance(dataset, ForgeryDataset):
            sample = dataset.get(j, rng_key=(self.seed, self.epoch, i, k))
        else:
            sample = dataset[j]
        sample["index"] = torch.tensor(i, dtype=torch.int64)
        return sample


def open_dataset(
    source: str | os.PathLike, transform: SampleTransform | None = None, **kwargs: Any
) -> ForgeryDataset:
    """``ForgeryDataset(load_records(source), transform, **kwargs)``."""
    return ForgeryDataset(source, transform, **kwargs)
