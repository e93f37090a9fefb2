"""Dataset recipes: ``forgeloc data prepare NAME SOURCE --out DIR``.

One recipe per standard dataset of the image-manipulation-localization field turns the folder
layout *as the dataset ships* into a forgeloc dataset: ``DIR/dataset.json`` (an IMDLBenCo-style
list ``[[image, mask_or_"Negative"], ...]``, paths relative to the list), binary masks written
under ``DIR/masks/`` when the shipped masks need converting (colour-coded, inverted, ``.npz``,
0/1 values, JPEG noise, resized), resized images under ``DIR/images/`` when ``long_side`` asks for
it, and ``DIR/prepare_report.json`` with the counts, every skipped file and why, the rules applied
and the known defects found. ``forgeloc data check DIR`` reads the result.

Guarantees:

* the source folder is never written to (``DIR`` may not be inside it, nor contain it);
* idempotent: a second run with the same inputs writes byte-identical files (files whose bytes
  would not change are not rewritten), never duplicates an entry, and deletes the files a previous
  run of ``prepare`` wrote into ``DIR`` that the new run no longer produces;
* nothing is dropped or resized silently: every skipped file is in the report with its reason, a
  mask whose size differs from its image is skipped unless ``resize_masks`` is given (then resized
  with nearest neighbour, and counted), images are resized only with an explicit ``long_side``.

Layouts, mask rules and the defects of each dataset are documented in ``docs/reproduce.md`` and
in :data:`RECIPES` (``forgeloc data prepare --help``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgeloc.data.datasets import DATASET_LIST_NAME, NEGATIVE
from forgeloc.data.files import list_folder
from forgeloc.data.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    image_info,
    read_image,
    read_mask_rgb,
)

__all__ = [
    "KNOWN_DEFECTS",
    "RECIPES",
    "PrepareError",
    "PrepareOptions",
    "PrepareReport",
    "Recipe",
    "find_recipe",
    "long_side_size",
    "prepare",
]

REPORT_NAME = "prepare_report.json"
_IGNORED = frozenset({"thumbs.db", "desktop.ini", "__macosx", "readme.txt", "readme.md", "readme"})
_MASK_SUFFIX_RE = re.compile(r"(_gt|-gt|_mask|-mask)$", re.IGNORECASE)

#: Defects of the shipped datasets documented by others; the report says which ones were met.
#: Source: github.com/SunnyHaze/IML-Dataset-Corrections (README, sections 2.1-2.4).
KNOWN_DEFECTS: dict[str, dict[str, str]] = {
    "casia1": {
        "Sp_D_NRN_A_cha0011_sec0011_0542": "tampered image without a mask in CASIA v1.0 (IML-Dataset-Corrections 2.1)",
    },
    "casia2": {
        name: "image/mask size mismatch in CASIA v2.0 (IML-Dataset-Corrections 2.2)"
        for name in (
            "Tp_D_CNN_M_N_sec00011_cha00085_11227", "Tp_D_CRN_S_N_ani10191_ani10190_12437",
            "Tp_D_CRN_S_N_nat10130_pla00049_11524", "Tp_D_NND_M_B_nat20098_nat20073_01602",
            "Tp_D_NRN_M_N_nat10134_nat00095_11912", "Tp_D_NRN_M_N_nat10134_nat10124_11913",
            "Tp_S_CRN_S_N_art00059_art00059_10508", "Tp_S_NND_S_N_sec20064_sec20064_01654",
            "Tp_S_NNN_S_N_art20077_art20077_01883", "Tp_S_NNN_S_N_ind20037_ind20037_01778",
            "Tp_S_NNN_S_N_sec00012_sec00012_11230", "Tp_S_NNN_S_N_sec00074_sec00074_00751",
            "Tp_S_NRD_S_N_arc20079_arc20079_01719", "Tp_S_NRD_S_N_pla20071_pla20071_01971",
            "Tp_S_NRN_S_B_ind10002_ind10002_20010", "Tp_S_NRN_S_N_art20077_art20077_02316",
            "Tp_S_NRN_S_N_pla20080_pla20080_01980",
        )
    },
    "coverage": {
        f"{n}t": "image/mask size mismatch in COVERAGE (IML-Dataset-Corrections 2.3: copy, forged and paste masks)"
        for n in (41, 48, 55, 56, 57, 58, 59, 61, 95)
    },
    "imd2020": {
        "00030_fake": "image/mask size mismatch in IMD2020 (IML-Dataset-Corrections 2.4, z14/00030_fake.jpg)",
    },
}


class PrepareError(ValueError):
    """The source cannot be prepared (layout not found, unsafe output folder, ...)."""


@dataclass
class PrepareOptions:
    """What ``forgeloc data prepare`` can be told besides NAME, SOURCE and DIR."""

    masks: Path | None = None  # ground truth shipped apart (CASIA v1.0 / v2.0: Pham et al.'s folders)
    corrections: Path | None = None  # folder of corrected masks, each replacing the source mask of the same name
    resize_masks: bool = False  # resize a mask whose size differs from its image (nearest) instead of skipping it
    long_side: int | None = None  # resize images (and masks) whose long side is larger than this
    resized_format: str = "same"  # "same": the source's extension with Pillow's defaults (IMDLBenCo's script); "png"
    include_authentic: bool = True
    list_file: Path | None = None  # DEF-12k index (MVSS-Net format) / NIST16 reference CSV
    subsets: tuple[str, ...] | None = None  # tampCOCO: sp, cm, bcm, bcmc
    spliced_colour: str = "green"  # Columbia: the colour of the spliced region in the edge masks
    absolute: bool = False  # absolute paths in the list (IMDLBenCo resolves relative ones against the cwd)
    check: bool = True  # run forgeloc data check on the result
    workers: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in ("workers", "check"):
                continue  # do not change what is written
            out[key] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        return out


@dataclass
class _Candidate:
    """An (image, mask) pair a recipe found in the source; ``mask=None`` = authentic."""

    image: Path
    mask: Path | None
    rule: str = "standard"  # how the mask file reads: standard | green | red | nist | nonzero | npz
    group: str = ""  # output list ("" = DIR/dataset.json; tampCOCO: sp_COCO, ...)
    defect_key: str = ""  # the name KNOWN_DEFECTS use for this sample


@dataclass
class _Scan:
    candidates: list[_Candidate] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=lambda: [""])


@dataclass
class PrepareReport:
    recipe: str
    dataset: str
    source: str
    out: str
    options: dict[str, Any]
    lists: dict[str, str] = field(default_factory=dict)  # group -> list path (relative to out)
    counts: dict[str, int] = field(default_factory=dict)
    per_list: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    known_defects: list[dict[str, str]] = field(default_factory=list)
    corrections: list[dict[str, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    check: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.get("errors", 0) == 0 for c in self.check.values())

    def to_dict(self) -> dict[str, Any]:
        from forgeloc.version import __version__

        return {
            "recipe": self.recipe, "dataset": self.dataset, "source": self.source, "forgeloc_version": __version__,
            "options": self.options, "lists": self.lists, "counts": self.counts, "per_list": self.per_list,
            "skipped": self.skipped, "notes": self.notes, "known_defects": self.known_defects,
            "corrections": self.corrections, "written": self.written,
        }


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str  # display name, as in the papers' tables
    aliases: tuple[str, ...]
    layout: str  # the shipped layout, for --help and the docs
    scan: Callable[[Path, PrepareOptions], _Scan]


# --------------------------------------------------------------------------------------------------
# File-system helpers (the source is only read)
# --------------------------------------------------------------------------------------------------
def _ignored_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED


def _ignored(path: Path) -> bool:
    return _ignored_name(path.name)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Visible files of ``folder`` (sorted by their path as text); links that cannot be followed and
    special files are left out."""
    listing = list_folder(folder, recursive=recursive, skip=_ignored_name)
    return sorted(listing.files, key=lambda p: p.as_posix())


def _images(folder: Path, scan: _Scan, source: Path, *, recursive: bool = False) -> list[Path]:
    """Image files of ``folder``; any other visible file is reported as skipped."""
    images = []
    for p in _files(folder, recursive=recursive):
        if _is_image(p):
            images.append(p)
        else:
            scan.skipped.append((_rel(p, source), f"not an image file ({p.suffix or 'no extension'})"))
    return images


def _find_dirs(root: Path, match: Callable[[str], bool], max_depth: int = 4) -> list[Path]:
    """Folders under ``root`` (``root`` included) whose lower-cased name satisfies ``match``,
    shallowest first."""
    found: list[Path] = []
    level = [root]
    for depth in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in level:
            if depth > 0 and match(folder.name.lower()):
                found.append(folder)
            if depth < max_depth:
                try:
                    children = sorted(c for c in folder.iterdir() if c.is_dir() and not _ignored(c))
                except OSError:
                    continue
                nxt.extend(children)
        level = nxt
    if match(root.name.lower()):
        found.insert(0, root)
    return found


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _strip_mask_suffix(stem: str) -> str:
    return _MASK_SUFFIX_RE.sub("", stem)


def _index_masks(masks: Iterable[Path], key: Callable[[Path], str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """``key(mask) -> mask``; keys shared by several masks are returned apart (ambiguous)."""
    by_key: dict[str, list[Path]] = {}
    for m in masks:
        by_key.setdefault(key(m), []).append(m)
    unique = {k: v[0] for k, v in by_key.items() if len(v) == 1}
    ambiguous = {k: v for k, v in by_key.items() if len(v) > 1}
    return unique, ambiguous


def _pair(
    images: list[Path], masks: list[Path], scan: _Scan, source: Path, *,
    image_key: Callable[[Path], str], mask_key: Callable[[Path], str], rule: str = "standard",
    group: str = "", missing_reason: str = "no mask found for this image",
) -> None:
    """Pair images with masks by key; report every unmatched or ambiguous file."""
    index, ambiguous = _index_masks(masks, mask_key)
    used: set[Path] = set()
    seen: dict[str, Path] = {}
    for img in images:
        k = image_key(img)
        if k in seen:
            scan.skipped.append((_rel(img, source), f"another image has the same name ({_rel(seen[k], source)}); "
                                                    "its mask cannot be told apart"))
            continue
        seen[k] = img
        if k in ambiguous:
            names = ", ".join(_rel(m, source) for m in ambiguous[k])
            scan.skipped.append((_rel(img, source), f"several masks match this image: {names}"))
            used.update(ambiguous[k])
            continue
        mask = index.get(k)
        if mask is None:
            scan.skipped.append((_rel(img, source), missing_reason))
            continue
        used.add(mask)
        scan.candidates.append(_Candidate(img, mask, rule, group, defect_key=img.stem))
    for m in masks:
        if m not in used:
            scan.skipped.append((_rel(m, source), "mask without a matching image"))


def _authentic(images: Iterable[Path], scan: _Scan, options: PrepareOptions, group: str = "") -> None:
    if not options.include_authentic:
        return
    for img in images:
        scan.candidates.append(_Candidate(img, None, group=group, defect_key=img.stem))


def _require_dir(found: list[Path], what: str, source: Path, hint: str) -> Path:
    if not found:
        raise PrepareError(f"{source}: no {what} folder found ({hint})")
    return found[0]


def _ground_truth_dir(source: Path, options: PrepareOptions, dataset: str, pham_repo: str) -> Path:
    if options.masks is not None:
        if not options.masks.is_dir():
            raise PrepareError(f"--masks {options.masks}: not a folder")
        return options.masks
    found = _find_dirs(source, lambda n: n == "gt" or "groundtruth" in n.replace(" ", "").replace("_", ""))
    if not found:
        raise PrepareError(
            f"{source}: no ground-truth folder found. {dataset} ships without masks: download the ground truth "
            f"of Pham et al. (github.com/namtpham/{pham_repo}) and pass its folder with --masks DIR")
    return found[0]


# --------------------------------------------------------------------------------------------------
# Recipes: scanners (find the candidates; nothing is read but names)
# --------------------------------------------------------------------------------------------------
def _gt_masks(gt: Path, scan: _Scan, source: Path) -> list[Path]:
    """The masks of a ground-truth folder: files named ``<image>_gt`` (or ``_mask``); when there are
    such names, other images there (sample images, visualisations) are not masks."""
    files = [m for m in _images(gt, scan, source, recursive=True) if not m.stem.lower().endswith("_combine")]
    suffixed = [m for m in files if _MASK_SUFFIX_RE.search(m.stem)]
    return suffixed or files


def _scan_casia1(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    modified = _find_dirs(source, lambda n: n == "modified tp")
    if modified:
        tp_root = modified[0]
        originals = [d for d in _find_dirs(source, lambda n: n in ("tp", "original tp"))
                     if tp_root not in d.parents and d != tp_root]
        if originals:
            scan.notes.append(f"using the renamed images of '{_rel(tp_root, source)}' (Pham et al.'s modified "
                              f"version, whose names match the corrected masks); ignored: "
                              + ", ".join(_rel(d, source) for d in originals))
    else:
        tp_root = _require_dir(_find_dirs(source, lambda n: n == "tp"), "Tp (or 'Modified Tp')", source,
                               "CASIA v1.0: Au/ and Modified Tp/Tp/{CM,Sp}/")
        scan.notes.append("no 'Modified Tp' folder: using the original Tp names; about 20 of them do not match the "
                          "corrected masks (Pham et al. renamed them), those images are skipped as unmatched")
    gt = _ground_truth_dir(source, options, "CASIA v1.0", "casia1groundtruth")
    images = _images(tp_root, scan, source, recursive=True)
    masks = _gt_masks(gt, scan, source)
    scan.notes.append(f"tampered images: {_rel(tp_root, source)} (CM = copy-move, Sp = splicing); "
                      f"masks: {_rel(gt, source)}")
    _pair(images, masks, scan, source, image_key=lambda p: p.stem.lower(),
          mask_key=lambda p: _strip_mask_suffix(p.stem).lower(), missing_reason="no ground-truth mask for this image")
    au = _find_dirs(source, lambda n: n == "au")
    if au:
        _authentic(_images(au[0], scan, source), scan, options)
    elif options.include_authentic:
        scan.notes.append("no Au/ folder found: the list has no authentic images")
    return scan


def _scan_casia2(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    tp = _require_dir(_find_dirs(source, lambda n: n == "tp"), "Tp", source, "CASIA v2.0: Tp/ and Au/")
    gt = _ground_truth_dir(source, options, "CASIA v2.0", "casia2groundtruth")
    images = _images(tp, scan, source)
    masks = _gt_masks(gt, scan, source)
    scan.notes.append(f"tampered images: {_rel(tp, source)}; masks: {_rel(gt, source)} (names <image>_gt.png)")
    _pair(images, masks, scan, source, image_key=lambda p: p.stem.lower(),
          mask_key=lambda p: _strip_mask_suffix(p.stem).lower(), missing_reason="no ground-truth mask for this image")
    au = _find_dirs(source, lambda n: n == "au")
    if au:
        _authentic(_images(au[0], scan, source), scan, options)
    elif options.include_authentic:
        scan.notes.append("no Au/ folder found: the list has no authentic images")
    if options.corrections is None:
        scan.notes.append("ground truth not corrected: CASIA v2.0 has 17 known image/mask size mismatches "
                          "(github.com/SunnyHaze/IML-Dataset-Corrections); pass the revised masks with --corrections "
                          "DIR (or --resize-masks) to keep those images, otherwise they are skipped")
    return scan


_EDGEMASK_RE = re.compile(r"_edgemask(_\d+)?$", re.IGNORECASE)


def _dir_with_images(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if any(_is_image(p) for p in d.iterdir() if p.is_file()):
            return d
    return None


def _scan_columbia(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    splc = _dir_with_images(_find_dirs(source, lambda n: n == "4cam_splc"))
    if splc is None:
        raise PrepareError(f"{source}: no 4cam_splc folder with images (Columbia: 4cam_auth/, 4cam_splc/ and "
                           "4cam_splc/edgemask/)")
    edge = _find_dirs(splc, lambda n: n == "edgemask", max_depth=2) or _find_dirs(
        source, lambda n: n == "edgemask")
    if not edge:
        raise PrepareError(f"{source}: no edgemask folder (Columbia's masks are 4cam_splc/edgemask/*_edgemask.*)")
    rule = "red" if options.spliced_colour == "red" else "green"
    images = _images(splc, scan, source)
    masks = _images(edge[0], scan, source)
    _pair(images, masks, scan, source, image_key=lambda p: p.stem.lower(),
          mask_key=lambda p: _EDGEMASK_RE.sub("", p.stem).lower(), rule=rule)
    scan.notes.append(
        f"Columbia masks are colour-coded: rule used: a pixel is spliced when its {rule} channel is larger than "
        f"its {'red' if rule == 'green' else 'green'} channel (dark and light {rule} = spliced region, dark and "
        f"light {'red' if rule == 'green' else 'green'} = the rest); see docs/reproduce.md for the sources")
    auth = _dir_with_images(_find_dirs(source, lambda n: n == "4cam_auth"))
    if auth is not None:
        _authentic(_images(auth, scan, source), scan, options)
    elif options.include_authentic:
        scan.notes.append("no 4cam_auth folder: the list has no authentic images")
    return scan


_COVERAGE_T = re.compile(r"^(\d+)t$", re.IGNORECASE)
_COVERAGE_AU = re.compile(r"^(\d+)$")
_COVERAGE_MASK = re.compile(r"^(\d+)(forged|copy|paste)$", re.IGNORECASE)


def _scan_coverage(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    image_dir = _require_dir(_find_dirs(source, lambda n: n == "image"), "image", source,
                             "COVERAGE: image/{N}.tif, image/{N}t.tif, mask/{N}forged.tif")
    mask_dir = _require_dir(_find_dirs(source, lambda n: n == "mask"), "mask", source,
                            "COVERAGE: mask/{N}forged.tif")
    tampered, authentic = [], []
    for img in _images(image_dir, scan, source):
        if _COVERAGE_T.match(img.stem):
            tampered.append(img)
        elif _COVERAGE_AU.match(img.stem):
            authentic.append(img)
        else:
            scan.skipped.append((_rel(img, source), "name is neither {N} (original) nor {N}t (forged)"))
    forged = []
    for m in _images(mask_dir, scan, source):
        match = _COVERAGE_MASK.match(m.stem)
        if match is None:
            scan.skipped.append((_rel(m, source), "mask name is not {N}forged / {N}copy / {N}paste"))
        elif match.group(2).lower() == "forged":
            forged.append(m)
    _pair(tampered, forged, scan, source, image_key=lambda p: p.stem[:-1].lower(),
          mask_key=lambda p: p.stem[: -len("forged")].lower(), missing_reason="no {N}forged mask for this image")
    scan.notes.append("masks: {N}forged (the forged region, as the benchmarks use); {N}copy and {N}paste are not used")
    _authentic(authentic, scan, options)
    return scan


def _find_file(source: Path, pattern: str, default: str) -> Path | None:
    path = source / default
    if path.is_file():
        return path
    hits = sorted(source.rglob(pattern))
    return hits[0] if hits else None


def _scan_nist16(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    ref = options.list_file
    if ref is not None and not ref.is_absolute() and not ref.is_file():
        ref = source / ref
    if ref is None:
        ref = _find_file(source, "*manipulation-ref.csv", "reference/manipulation/NC2016-manipulation-ref.csv")
    if ref is None or not ref.is_file():
        raise PrepareError(f"{source}: no reference CSV (NC2016: reference/manipulation/NC2016-manipulation-ref.csv; "
                           "pass another one with --list)")
    with open(ref, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter="|")
        missing = {"ProbeFileName", "IsTarget"} - set(reader.fieldnames or [])
        if missing:
            raise PrepareError(f"{ref}: not a NIST reference CSV ('|'-separated, columns ProbeFileName, "
                               f"ProbeMaskFileName, IsTarget); missing {sorted(missing)}")
        rows = list(reader)
    scan.notes.append(f"reference: {_rel(ref, source)} ({len(rows)} rows; IsTarget=Y with a mask = tampered, "
                      "IsTarget=N = authentic)")
    scan.notes.append("NIST masks are white (255) where nothing was changed: rule used: a pixel is manipulated when "
                      "any channel is <= 254 (non-white), as NIST's MediScore binarises reference masks")
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        probe = (row.get("ProbeFileName") or "").strip()
        mask = (row.get("ProbeMaskFileName") or "").strip()
        target = (row.get("IsTarget") or "").strip().upper()
        where = f"{_rel(ref, source)}:line {i}"
        if not probe:
            scan.skipped.append((where, "no ProbeFileName"))
            continue
        if probe in seen:
            scan.skipped.append((probe, f"listed again ({where})"))
            continue
        seen.add(probe)
        image = source / probe
        if not image.is_file():
            scan.skipped.append((probe, f"probe file not found ({where})"))
            continue
        if target == "Y":
            if not mask:
                scan.skipped.append((probe, f"IsTarget=Y without a ProbeMaskFileName ({where})"))
                continue
            if not (source / mask).is_file():
                scan.skipped.append((probe, f"mask {mask} not found ({where})"))
                continue
            scan.candidates.append(_Candidate(image, source / mask, "nist", defect_key=image.stem))
        elif target == "N":
            _authentic([image], scan, options)
        else:
            scan.skipped.append((probe, f"IsTarget is {target or 'empty'!r}, not Y or N ({where})"))
    return scan


def _scan_imd2020(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    files = _images(source, scan, source, recursive=True)
    masks = [p for p in files if p.stem.lower().endswith("_mask")]
    images = [p for p in files if not p.stem.lower().endswith("_mask")]
    by_folder_stem: dict[tuple[Path, str], list[Path]] = {}
    for img in images:
        by_folder_stem.setdefault((img.parent, img.stem.lower()), []).append(img)
    paired: set[Path] = set()
    for m in masks:
        hits = by_folder_stem.get((m.parent, m.stem[: -len("_mask")].lower()), [])
        if not hits:
            scan.skipped.append((_rel(m, source), "mask without a matching image"))
            continue
        if len(hits) > 1:
            scan.skipped.append((_rel(m, source), "several images match this mask: "
                                                  + ", ".join(_rel(h, source) for h in hits)))
            paired.update(hits)
            continue
        paired.add(hits[0])
        scan.candidates.append(_Candidate(hits[0], m, defect_key=hits[0].stem))
    authentic = []
    for img in images:
        if img in paired:
            continue
        if img.stem.lower().endswith("_orig"):
            authentic.append(img)
        else:
            scan.skipped.append((_rel(img, source), "no <name>_mask file for this image (and not an _orig original)"))
    scan.candidates.sort(key=lambda c: c.image.as_posix())
    scan.notes.append("pairs: <name>.<ext> + <name>_mask.png in the same folder; <name>_orig.* are the originals")
    _authentic(authentic, scan, options)
    return scan


def _scan_def12k(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    if options.list_file is None:
        raise PrepareError("DEF-12k is a fixed subset of DEFACTO + MS-COCO: give its index with --list (MVSS-Net's "
                           "data/DEFACTO12k-test.txt, lines 'image mask label', mask 'None' for authentic images)")
    index_file = options.list_file
    if not index_file.is_file():
        raise PrepareError(f"--list {index_file}: file not found")
    by_name: dict[str, list[Path]] | None = None
    found_by_name = 0

    def resolve(value: str) -> Path | None:
        nonlocal by_name, found_by_name
        direct = source / value.removeprefix("./")
        if direct.is_file():
            return direct
        if by_name is None:
            by_name = {}
            for p in _files(source, recursive=True):
                by_name.setdefault(p.name, []).append(p)
        hits = by_name.get(Path(value).name, [])
        if len(hits) == 1:
            found_by_name += 1
            return hits[0]
        return None

    lines = index_file.read_text(encoding="utf-8-sig").splitlines()
    seen: set[Path] = set()
    for n, line in enumerate(lines, start=1):
        parts = [p for p in re.split(r"[\s,]+", line.strip()) if p]
        if not parts:
            continue
        where = f"{index_file.name}:line {n}"
        if len(parts) not in (2, 3):
            scan.skipped.append((where, f"expected 'image mask [label]', got {line.strip()!r}"))
            continue
        image = resolve(parts[0])
        if image is None:
            scan.skipped.append((parts[0], f"image not found under the source ({where})"))
            continue
        if image in seen:
            scan.skipped.append((parts[0], f"listed again ({where})"))
            continue
        seen.add(image)
        authentic = parts[1].lower() in ("none", "negative", "null") or (len(parts) == 3 and parts[2] == "0")
        if authentic:
            _authentic([image], scan, options)
            continue
        mask = resolve(parts[1])
        if mask is None:
            scan.skipped.append((parts[0], f"mask {parts[1]} not found under the source ({where})"))
            continue
        scan.candidates.append(_Candidate(image, mask, defect_key=image.stem))
    if found_by_name:
        scan.notes.append(f"{found_by_name} paths of the index were found by file name elsewhere under the source "
                          "(the index uses MVSS-Net's folder names)")
    scan.notes.append("DEFACTO masks are JPEG: thresholded at mean > 127.5 and written as binary PNG")
    return scan


TAMPCOCO_SUBSETS = ("sp", "cm", "bcm", "bcmc")


def _scan_tampcoco(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan(groups=[])
    wanted = options.subsets or TAMPCOCO_SUBSETS
    for s in wanted:
        if s not in TAMPCOCO_SUBSETS:
            raise PrepareError(f"tampCOCO subset {s!r}: use {', '.join(TAMPCOCO_SUBSETS)}")
    for s in wanted:
        img_dir, mask_dir = source / f"{s}_images", source / f"{s}_masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            if options.subsets:
                raise PrepareError(f"{source}: tampCOCO subset {s} needs {s}_images/ and {s}_masks/")
            scan.notes.append(f"subset {s}: {s}_images/ or {s}_masks/ not found, not prepared")
            continue
        group = f"{s}_COCO"
        scan.groups.append(group)
        # CAT-Net's lists: the mask is the image's name with every ".jpg" replaced by ".png".
        _pair(_images(img_dir, scan, source), _images(mask_dir, scan, source), scan, source,
              image_key=lambda p: p.name.lower().replace(".jpg", ".png"), mask_key=lambda p: p.name.lower(),
              rule="nonzero", group=group)
    if not scan.groups:
        raise PrepareError(f"{source}: no tampCOCO subset found ({{sp,cm,bcm,bcmc}}_images/ + _masks/)")
    scan.notes.append("tampCOCO masks: a pixel is tampered when its value is > 0 (CAT-Net's rule); masks that are "
                      "not already 0/255 are written as binary PNG")
    return scan


def _scan_fantastic(source: Path, options: PrepareOptions) -> _Scan:
    scan = _Scan()
    fake = _require_dir(_find_dirs(source, lambda n: n == "colorfakeimages"), "ColorFakeImages", source,
                        "FantasticReality_v1: dataset/ColorFakeImages, SegmentationFake, ColorRealImages")
    seg = _require_dir(_find_dirs(source, lambda n: n == "segmentationfake"), "SegmentationFake", source,
                       "FantasticReality_v1: dataset/SegmentationFake/*.npz")
    masks = [p for p in _files(seg) if p.suffix.lower() == ".npz"]
    _pair(_images(fake, scan, source), masks, scan, source, image_key=lambda p: p.stem.lower(),
          mask_key=lambda p: p.stem.lower(), rule="npz")
    scan.notes.append("FantasticReality masks are .npz arrays (arr_0): a pixel is tampered when > 0; written as PNG")
    real = _find_dirs(source, lambda n: n == "colorrealimages")
    if real:
        _authentic(_images(real[0], scan, source), scan, options)
    return scan


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("casia1", "CASIAv1", ("casiav1", "casia10", "casiav10"),
               "CASIA 1.0 dataset/{Au, Modified Tp/Tp/{CM,Sp}} + Pham et al.'s 'CASIA 1.0 groundtruth/{CM,Sp}/"
               "<name>_gt.png' (inside SOURCE or --masks)", _scan_casia1),
        Recipe("casia2", "CASIAv2", ("casiav2", "casia20", "casiav20"),
               "CASIA2.0/{Au,Tp} + Pham et al.'s 'CASIA 2 Groundtruth/<name>_gt.png' (inside SOURCE or --masks); "
               "--corrections: revised masks (IML-Dataset-Corrections)", _scan_casia2),
        Recipe("columbia", "Columbia", ("columbiauncompressed",),
               "4cam_auth/*.tif, 4cam_splc/*.tif, 4cam_splc/edgemask/<name>_edgemask.jpg (colour-coded)",
               _scan_columbia),
        Recipe("coverage", "COVERAGE", ("cover",),
               "image/{N}.tif (original), image/{N}t.tif (forged), mask/{N}forged.tif", _scan_coverage),
        Recipe("nist16", "NIST16", ("nist", "nc2016", "nist2016"),
               "NC2016_Test0613/{probe,world,reference/manipulation/NC2016-manipulation-ref.csv,"
               "reference/manipulation/mask}", _scan_nist16),
        Recipe("imd2020", "IMD2020", ("imd20",),
               "IMD2020/<folder>/<name>_orig.jpg, <name>.jpg + <name>_mask.png (e.g. z14/00030_fake.jpg)",
               _scan_imd2020),
        Recipe("def12k", "DEF-12k", ("defacto12k", "def"),
               "DEFACTO and MS-COCO folders + --list MVSS-Net's data/DEFACTO12k-test.txt", _scan_def12k),
        Recipe("tampcoco", "tampCOCO", ("tampcoco",),
               "tampCOCO/{sp,cm,bcm,bcmc}_images/*.jpg + {sp,cm,bcm,bcmc}_masks/*.png (CAT-Net); one list each",
               _scan_tampcoco),
        Recipe("fantasticreality", "FantasticReality", ("fr", "fantasticrealityv1"),
               "FantasticReality_v1/dataset/{ColorFakeImages,SegmentationFake/*.npz,ColorRealImages}",
               _scan_fantastic),
    )
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case, dots, dashes and underscores ignored; aliases accepted)."""
    key = _norm(name)
    for recipe in RECIPES.values():
        if key == _norm(recipe.name) or key == _norm(recipe.dataset) or key in recipe.aliases:
            return recipe
    raise PrepareError(f"unknown dataset {name!r}; recipes: {', '.join(RECIPES)}")


# --------------------------------------------------------------------------------------------------
# Reading masks with a rule, resizing
# --------------------------------------------------------------------------------------------------
def _read_rule(path: Path, rule: str, max_pixels: int) -> tuple[np.ndarray, bool]:
    """``(binary H×W bool, clean)``; ``clean``: the file already is a strict 0/255 grey mask that
    forgeloc reads to the same binary mask (so the list can point at it unchanged)."""
    if rule == "npz":
        with np.load(path, allow_pickle=False) as data:
            key = "arr_0" if "arr_0" in data.files else data.files[0]
            arr = np.asarray(data[key]).squeeze()
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        if arr.ndim != 2:
            raise ImageReadError(path, f"array of shape {arr.shape} is not a mask")
        return arr > 0, False
    rgb = read_mask_rgb(path, max_pixels=max_pixels)
    r, g, b = (rgb[:, :, i].astype(np.int16) for i in range(3))
    if rule == "green":
        return g > r, False
    if rule == "red":
        return r > g, False
    if rule == "nist":
        return (r <= 254) | (g <= 254) | (b <= 254), False
    grey = bool(np.array_equal(r, g) and np.array_equal(g, b))
    clean = grey and bool(np.isin(r, (0, 255)).all()) and not _has_alpha(path)
    if rule == "nonzero":
        return (r > 0) | (g > 0) | (b > 0), clean
    return (r + g + b) / 3.0 > 127.5, clean


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def long_side_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The size IMDLBenCo's pre-resizing script gives an image larger than ``long_side``:
    the long side becomes ``long_side``, the other ``int(long_side / long * short)`` (truncated)."""
    if max(width, height) <= long_side:
        return width, height
    if width > height:
        return long_side, max(1, int(long_side / width * height))
    return max(1, int(long_side / height * width)), long_side


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def _png_bytes(binary: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((binary.astype(np.uint8) * 255), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _resized_image_bytes(path: Path, size: tuple[int, int], fmt: str, max_pixels: int) -> tuple[bytes, str]:
    """The image resized (Lanczos, as IMDLBenCo's script) and encoded: ``(bytes, extension)``."""
    from PIL import Image

    img = Image.fromarray(read_image(path, max_pixels=max_pixels)).resize(size, Image.Resampling.LANCZOS)
    ext = ".png" if fmt == "png" else path.suffix.lower()
    pil_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
                  ".webp": "WEBP"}.get(ext, "PNG")
    buf = io.BytesIO()
    img.save(buf, format=pil_format)  # Pillow's defaults (JPEG quality 75), as IMDLBenCo's img.save(path)
    return buf.getvalue(), ext


# --------------------------------------------------------------------------------------------------
# Preparing
# --------------------------------------------------------------------------------------------------
@dataclass
class _Done:
    candidate: _Candidate
    image: Path | None = None  # final image (source or written)
    mask: Path | None = None  # final mask (source or written); None = authentic
    skip: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # relative output path -> bytes
    mask_written: bool = False
    mask_resized: bool = False
    image_resized: bool = False
    empty_mask: bool = False


def _check_output_folder(source: Path, out: Path) -> None:
    src, dst = Path(os.path.realpath(source)), Path(os.path.realpath(out))
    if src == dst or src in dst.parents:
        raise PrepareError(f"--out {out} is inside the source folder {source}: prepare never writes into a dataset "
                           "as shipped; choose a folder outside it")
    if dst in src.parents:
        raise PrepareError(f"--out {out} contains the source folder {source}: choose a folder beside it")
    if out.exists():
        if not out.is_dir():
            raise PrepareError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / REPORT_NAME).is_file():
            raise PrepareError(f"--out {out} is not empty and was not written by forgeloc data prepare "
                               f"(no {REPORT_NAME}); choose an empty or new folder")


def _output_names(candidates: list[_Candidate], source: Path) -> dict[int, str]:
    """A collision-free output stem per candidate (unique within its list): its image's path
    relative to the source without the extension (with it, where two images differ only by it)."""
    stems = {i: Path(_rel(c.image, source)).with_suffix("").as_posix() for i, c in enumerate(candidates)}
    counts: dict[tuple[str, str], int] = {}
    for i, c in enumerate(candidates):
        key = (c.group, stems[i].lower())
        counts[key] = counts.get(key, 0) + 1
    for i, c in enumerate(candidates):
        if counts[(c.group, stems[i].lower())] > 1:
            stems[i] = _rel(c.image, source)
    return stems


def _corrections_index(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for p in _files(folder, recursive=True):
        if _is_image(p) or p.suffix.lower() == ".npz":
            index.setdefault(p.stem.lower(), p)
            index.setdefault(_strip_mask_suffix(p.stem).lower(), p)
    return index


def _apply_corrections(candidates: list[_Candidate], folder: Path, source: Path,
                       report: PrepareReport) -> None:
    if not folder.is_dir():
        raise PrepareError(f"--corrections {folder}: not a folder")
    index = _corrections_index(folder)
    used: set[Path] = set()
    for c in candidates:
        if c.mask is None:
            continue
        for key in (c.mask.stem.lower(), _strip_mask_suffix(c.mask.stem).lower(), c.image.stem.lower()):
            fix = index.get(key)
            if fix is not None:
                report.corrections.append({"image": _rel(c.image, source), "mask": _rel(c.mask, source),
                                           "replaced_by": fix.as_posix()})
                c.mask = fix
                if fix.suffix.lower() == ".npz":
                    c.rule = "npz"
                used.add(fix)
                break
    unused = sorted({p for p in index.values() if p not in used})
    if unused:
        report.notes.append(f"{len(unused)} file(s) of --corrections matched no mask: "
                            + ", ".join(p.name for p in unused[:20]) + (" ..." if len(unused) > 20 else ""))


def _process(c: _Candidate, stem: str, options: PrepareOptions) -> _Done:
    done = _Done(c)
    try:
        info = image_info(c.image, max_pixels=options.max_pixels)
    except ImageReadError as err:
        done.skip = f"image unreadable: {err.reason}"
        return done
    width, height = info.size
    target = long_side_size(width, height, options.long_side) if options.long_side else (width, height)
    resize_image = target != (width, height)
    done.image = c.image
    if resize_image:
        try:
            data, ext = _resized_image_bytes(c.image, target, options.resized_format, options.max_pixels)
        except ImageReadError as err:
            done.skip = f"image unreadable: {err.reason}"
            return done
        rel = f"images/{stem}{ext}"
        done.files[rel] = data
        done.image = Path(rel)
        done.image_resized = True
    if c.mask is None:
        return done
    try:
        binary, clean = _read_rule(c.mask, c.rule, options.max_pixels)
    except (ImageReadError, OSError, ValueError) as err:
        done.skip = f"mask unreadable: {getattr(err, 'reason', err)}"
        return done
    mh, mw = binary.shape
    if (mw, mh) != (width, height):
        if not options.resize_masks:
            done.skip = (f"mask is {mw}x{mh} but the image is {width}x{height} (WxH); not resized: give "
                         "--resize-masks (nearest neighbour) or --corrections DIR with a revised mask")
            return done
        binary = _resize_mask(binary, (width, height))
        done.mask_resized = True
        clean = False
    if resize_image:
        binary = _resize_mask(binary, target)
        clean = False
    done.empty_mask = not bool(binary.any())
    if clean and c.rule in ("standard", "nonzero"):
        done.mask = c.mask
    else:
        rel = f"masks/{stem}.png"
        done.files[rel] = _png_bytes(binary)
        done.mask = Path(rel)
        done.mask_written = True
    return done


def _write_if_changed(path: Path, data: bytes) -> bool:
    from forgeloc.io import atomic_write

    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return True


def _list_path(path: Path | None, list_dir: Path, absolute: bool) -> str:
    """A list entry: ``"Negative"``, or the path (relative ones are relative to ``list_dir``) as the
    list writes it: relative to the list's folder, or absolute."""
    if path is None:
        return NEGATIVE
    full = os.path.abspath(path if path.is_absolute() else list_dir / path)
    if absolute:
        return Path(full).as_posix()
    return Path(os.path.relpath(full, os.path.abspath(list_dir))).as_posix()


def _list_text(entries: Sequence[tuple[str, str]]) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(list(e), ensure_ascii=False) for e in entries) + "\n]\n"


def prepare(
    name: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    options: PrepareOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Run the recipe ``name`` on ``source`` and write the dataset to ``out`` (see the module docstring).

    Raises :class:`PrepareError` when the layout is not found or ``out`` is unsafe; problems with
    single files are reported in ``PrepareReport.skipped`` instead.
    """
    options = options or PrepareOptions()
    recipe = find_recipe(name)
    src, dst = Path(source), Path(out)
    if not src.is_dir():
        raise PrepareError(f"{src}: source folder not found")
    _validate_options(options)
    _check_output_folder(src, dst)
    scan = recipe.scan(src, options)
    report = PrepareReport(recipe=recipe.name, dataset=recipe.dataset, source=os.path.abspath(src),
                           out=os.path.abspath(dst), options=options.describe(), notes=list(scan.notes))
    if options.corrections is not None:
        _apply_corrections(scan.candidates, options.corrections, src, report)
    report.notes.extend(_option_notes(options))

    results = _process_all(scan.candidates, _output_names(scan.candidates, src), options, progress)
    previous = _previously_written(dst)
    dst.mkdir(parents=True, exist_ok=True)

    tally = _Tally(scan, KNOWN_DEFECTS.get(recipe.name, {}), len(report.corrections))
    for done in results:
        tally.add(done, src, dst, options.absolute)
    tally.counts["empty_masks"] = len(tally.empty)
    if tally.empty:
        report.notes.append(f"{len(tally.empty)} tampered image(s) whose mask has no tampered pixel (kept; forgeloc "
                            "labels them authentic, IMDLBenCo scores them F1 = 0): " + ", ".join(tally.empty[:10])
                            + (" ..." if len(tally.empty) > 10 else ""))

    _write_lists(scan.groups, tally.entries, dst, tally.written, report)
    report.removed = sorted(p for p in previous if p not in tally.written and (dst / p).is_file())
    for rel in report.removed:
        (dst / rel).unlink()
    _remove_empty_dirs(dst)

    tally.counts["skipped"] = len(tally.skipped)
    report.counts = tally.counts
    report.per_list = tally.per_list if any(scan.groups) else {}
    report.skipped = tally.skipped
    report.known_defects = [tally.met_defects[k] for k in sorted(tally.met_defects)]
    report.written = sorted(tally.written)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    _write_if_changed(dst / REPORT_NAME, text.encode("utf-8"))

    if options.check:
        _check_lists(report, dst, options.max_pixels)
    return report


def _option_notes(options: PrepareOptions) -> list[str]:
    notes = []
    if not options.include_authentic:
        notes.append("authentic images left out (--no-authentic)")
    if options.long_side:
        notes.append(f"images whose long side exceeds {options.long_side} px are resized to it (Lanczos; masks "
                     f"nearest neighbour), as IMDLBenCo's pre-resizing script; written as "
                     + ("PNG" if options.resized_format == "png" else "their own format with Pillow's "
                        "defaults (JPEG quality 75)") + "; smaller images are used unchanged")
    return notes


class _Tally:
    """What a prepare run writes and counts, sample by sample: list entries, counts per kind and
    per list, skipped files, the recipe's known defects met, tampered images with empty masks."""

    def __init__(self, scan: Any, defects: dict[str, str], corrections_applied: int) -> None:
        self.defects = defects
        self.written: set[str] = set()
        self.entries: dict[str, list[tuple[str, str]]] = {g: [] for g in scan.groups}
        self.per_list: dict[str, dict[str, int]] = {g: {"tampered": 0, "authentic": 0} for g in scan.groups}
        self.counts = {"tampered": 0, "authentic": 0, "skipped": 0, "masks_from_source": 0, "masks_written": 0,
                       "masks_resized": 0, "images_resized": 0, "empty_masks": 0,
                       "corrections_applied": corrections_applied}
        self.skipped = [{"path": p, "reason": r} for p, r in scan.skipped]
        self.met_defects: dict[str, dict[str, str]] = {}
        self.empty: list[str] = []
        for path, reason in scan.skipped:
            stem = Path(path).stem
            if stem in defects:
                self.met_defects[stem] = {"sample": path, "defect": defects[stem], "outcome": reason}

    def add(self, done: Any, src: Path, dst: Path, absolute: bool) -> None:
        """One processed sample: its files written (when changed), its list entry and counts; or its skip."""
        c = done.candidate
        if c.defect_key in self.defects:
            self.met_defects[c.defect_key] = {"sample": _rel(c.image, src), "defect": self.defects[c.defect_key],
                                              "outcome": done.skip or ("mask resized" if done.mask_resized else "kept")}
        if done.skip is not None:
            self.skipped.append({"path": _rel(c.image, src), "reason": done.skip})
            return
        group_dir = dst / c.group if c.group else dst
        for rel, data in done.files.items():
            _write_if_changed(group_dir / rel, data)
            self.written.add(_rel(group_dir / rel, dst))
        image = done.image if done.image_resized else Path(os.path.abspath(c.image))
        mask = None if done.mask is None else (done.mask if done.mask_written else Path(os.path.abspath(done.mask)))
        self.entries[c.group].append((_list_path(image, group_dir, absolute), _list_path(mask, group_dir, absolute)))
        kind = "authentic" if c.mask is None else "tampered"
        self.counts[kind] += 1
        self.per_list[c.group][kind] += 1
        self.counts["masks_written"] += int(done.mask_written)
        self.counts["masks_from_source"] += int(c.mask is not None and not done.mask_written)
        self.counts["masks_resized"] += int(done.mask_resized)
        self.counts["images_resized"] += int(done.image_resized)
        if done.empty_mask:
            self.empty.append(_rel(c.image, src))


def _validate_options(options: PrepareOptions) -> None:
    if options.long_side is not None and options.long_side < 1:
        raise PrepareError(f"--long-side must be a positive number of pixels, got {options.long_side}")
    if options.resized_format not in ("same", "png"):
        raise PrepareError(f"resized_format must be 'same' or 'png', got {options.resized_format!r}")
    if options.spliced_colour not in ("green", "red"):
        raise PrepareError(f"spliced colour must be 'green' or 'red', got {options.spliced_colour!r}")


def _process_all(candidates: list, stems: list[str], options: PrepareOptions,
                 progress: Callable[[int, int], None] | None) -> list[_Done]:
    """Read and convert every candidate on ``options.workers`` threads, in order."""
    total = len(candidates)
    results: list[_Done] = []
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for n, done in enumerate(pool.map(lambda i: _process(candidates[i], stems[i], options), range(total)),
                                 start=1):
            results.append(done)
            if progress is not None:
                progress(n, total)
    return results


def _previously_written(dst: Path) -> list[str]:
    """The files an earlier run wrote into ``dst`` (from its report), so that stale ones can go."""
    if not (dst / REPORT_NAME).is_file():
        return []
    try:
        return list(json.loads((dst / REPORT_NAME).read_text()).get("written", []))
    except (OSError, ValueError):
        return []


def _write_lists(groups, entries: dict[str, list[tuple[str, str]]], dst: Path, written: set[str],
                 report: PrepareReport) -> None:
    for group in groups:
        group_dir = dst / group if group else dst
        list_file = group_dir / DATASET_LIST_NAME
        if entries[group]:
            _write_if_changed(list_file, _list_text(entries[group]).encode("utf-8"))
            written.add(_rel(list_file, dst))
            report.lists[group] = _rel(list_file, dst)
        else:
            report.notes.append(f"list {group or 'dataset'}: nothing to write (no usable sample)")


def _check_lists(report: PrepareReport, dst: Path, max_pixels: int) -> None:
    """``forgeloc data check`` on every written list, into ``report.check``."""
    from forgeloc.data.check import check_dataset

    for group, rel in report.lists.items():
        result = check_dataset(dst / rel, max_pixels=max_pixels)
        report.check[group or "dataset"] = {
            "errors": len(result.errors), "warnings": len(result.warnings),
            "problems": [str(p) for p in result.problems[:50]],
        }


def _remove_empty_dirs(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
