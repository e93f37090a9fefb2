"""The names of the files a prediction is saved as (one owner for :meth:`Prediction.save`,
``forgeloc predict`` and :mod:`forgeloc.inference.batch`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

__all__ = ["OUTPUT_SUFFIXES", "RUN_FILES", "output_files", "output_stems"]

#: Per-image output names. The predicted mask is ``<stem>_predmask.png``: a name ending in one of the
#: ground-truth suffixes forgeloc (and IMDLBenCo-style layouts) pair with images (``_mask``, ``_gt``,
#: see ``forgeloc.data.datasets.MASK_SUFFIXES``) could later be read as the ground truth of ``<stem>``.
OUTPUT_SUFFIXES = {"heatmap": "_heatmap.png", "overlay": "_overlay.png", "mask": "_predmask.png"}
#: Files written once per run of ``forgeloc predict`` / :func:`forgeloc.inference.batch.predict_files`.
RUN_FILES = ("results.json", "results.csv", "report.html")


def output_files(folder: str | Path, stem: str) -> dict[str, Path]:
    """The per-image files written for an input with output stem ``stem``, by kind."""
    return {kind: Path(folder) / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One distinct output stem per input: its own stem, or ``<folder>_<stem>`` when several inputs
    share a stem (e.g. ``a/x.png`` and ``b/x.png``), then ``-2``, ``-3`` ... if still ambiguous."""
    counts = Counter(p.stem for p in paths)
    wanted = []
    for p in paths:
        stem = p.stem or p.name
        if counts[p.stem] > 1:
            parent = p.resolve().parent.name
            stem = f"{parent}_{stem}" if parent else stem
            # x.png and x.jpg in one folder still collide: keep the extension too.
            if sum(1 for q in paths if q.stem == p.stem and q.resolve().parent == p.resolve().parent) > 1:
                stem = f"{stem}_{p.suffix.lstrip('.').lower()}"
        wanted.append(stem)
    used: set[str] = set()
    stems = []
    for stem in wanted:
        candidate, n = stem, 2
        while candidate.lower() in used:  # case-insensitive: macOS/Windows file systems fold case
            candidate = f"{stem}-{n}"
            n += 1
        used.add(candidate.lower())
        stems.append(candidate)
    return stems
