"""``forgeloc predict``: heatmaps, overlays and masks for files, folders and globs; optional HTML report."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from forgeloc.cli.common import console, fail

_GLOB_CHARS = set("*?[")
CSV_COLUMNS = ("name", "path", "width", "height", "score", "tampered_fraction", "mode", "threshold",
               "heatmap", "overlay", "mask")


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to predict on, in order and without duplicates, and ``(input, problem)`` pairs.

    A folder contributes its files with an image extension (sorted; sub-folders only with
    ``recursive``); a pattern with ``* ? [`` is expanded here (``**`` spans folders), for shells
    that do not expand it; a file named explicitly is always tried, whatever its extension.
    """
    from forgeloc.data.io import IMAGE_EXTENSIONS

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    def add_folder(folder: Path) -> int:
        walker = folder.rglob("*") if recursive else folder.iterdir()
        found = sorted(p for p in walker if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        for p in found:
            add(p)
        return len(found)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            if not add_folder(path):
                problems.append((item, "folder holds no image file" + ("" if recursive else " (try --recursive)")))
        elif path.exists():
            add(path)
        elif _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                problems.append((item, "no file matches this pattern"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    add_folder(mp)
                else:
                    add(mp)
        else:
            problems.append((item, "file not found"))
    return files, problems


def output_stems(paths: list[Path]) -> list[str]:
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


def _write_tables(out: Path, rows: list[dict[str, Any]], failures: list[dict[str, Any]], info: dict[str, Any]) -> None:
    from forgeloc.checkpoint import atomic_write

    payload = {"info": info, "results": rows, "failures": failures}
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8"))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, **row.get("files", {})})

    atomic_write(out / "results.csv", write_csv)


def predict(
    checkpoint: Path = typer.Argument(..., help="Run folder, checkpoint folder, or weights file (then --model)."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders and/or glob patterns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    mode: str = typer.Option("auto", help="auto | resize | tile (auto tiles images over 2x the model's input)."),
    threshold: float | None = typer.Option(None, help="Mask threshold (default: the checkpoint's, else 0.5)."),
    batch_size: int = typer.Option(4, min=1, help="Images (resize) or windows (tile) per forward pass."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)."),
    amp: str | None = typer.Option(None, help="Mixed precision: bf16 (CPU/GPU) or fp16 (GPU)."),
    report: bool = typer.Option(False, "--report", help="Also write OUT/report.html (self-contained)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    max_pixels: int | None = typer.Option(None, help="Refuse images with more pixels (default: Pillow's limit)."),
    tile_overlap: float | None = typer.Option(
        None, min=0.0, max=0.95,
        help="Share of a window shared by neighbouring tiles (tile mode; default half); 0.25 is ~2x faster.",
    ),
) -> None:
    """Predict tamper heatmaps for images: writes <stem>_heatmap.png, <stem>_overlay.png,
    <stem>_mask.png per image and results.json / results.csv (and report.html with --report).

    A file that cannot be read is reported and skipped; the exit code is 1 if any input failed.

    Example: forgeloc predict runs/quickstart photos/ "scans/**/*.jpg" --out predictions --report
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forgeloc.checkpoint import CheckpointError
    from forgeloc.data.io import DEFAULT_MAX_PIXELS
    from forgeloc.inference.predictor import MODES, Prediction, PredictionFailure, Predictor

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if amp not in (None, "bf16", "fp16", "none"):
        fail(f"--amp must be bf16 or fp16, not {amp!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        fail(f"--threshold must be in [0, 1], got {threshold}")
    files, problems = expand_inputs(inputs, recursive)
    try:
        predictor = Predictor.from_checkpoint(
            checkpoint, model=model, threshold=threshold, device=device, amp=None if amp == "none" else amp,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            **({} if tile_overlap is None else {"tile_overlap": tile_overlap}),
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    out.mkdir(parents=True, exist_ok=True)
    stems = output_stems(files)
    failures = [{"name": Path(item).name, "path": item, "error": why} for item, why in problems]
    rows: list[dict[str, Any]] = []
    entries = []
    if report:
        from forgeloc.inference.report import report_entry, write_report

    console.print(f"{predictor!r}: {len(files)} image(s) → {out}", highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("predicting", total=len(files))
        results = predictor.iter_predict(
            files, batch_size=batch_size, mode=mode, skip_errors=True, names=[p.name for p in files]
        )
        for path, stem, result in zip(files, stems, results, strict=True):
            if isinstance(result, PredictionFailure):
                failures.append({**result.to_dict(), "path": str(path)})
                progress.console.print(f"[red]skipped[/red] {path}: {result.error}", highlight=False)
            else:
                assert isinstance(result, Prediction)
                overlay = result.overlay()
                saved = {
                    "heatmap": str(_save_png(out / f"{stem}_heatmap.png", result.heatmap_rgb())),
                    "overlay": str(_save_png(out / f"{stem}_overlay.png", overlay)),
                    "mask": str(_save_png(out / f"{stem}_mask.png", result.mask_uint8())),
                }
                rows.append({**result.to_dict(), "path": str(path), "files": saved})
                if report:
                    entries.append(report_entry(result, overlay=overlay, files=saved, name=result.name))
            progress.advance(task)

    info = {k: v for k, v in predictor.describe().items() if v is not None}
    info["mode"] = mode
    _write_tables(out, rows, failures, info)
    if report:
        shown = {
            "model": info.get("model"),
            "checkpoint": info.get("checkpoint"),
            "threshold": info.get("threshold"),
            "image score": info.get("image_score"),
            "model input": f"{info.get('input_size')} px (trained with {info.get('input_mode')})",
            "prediction mode": mode + (f": {info.get('auto_rule')}" if mode == "auto" else ""),
            "output folder": str(out),
        }
        page = write_report(out / "report.html", entries, shown,
                            [PredictionFailure(f["name"], f["path"], f["error"]) for f in failures])
        console.print(f"report: {page}", highlight=False)
    console.print(f"{len(rows)} image(s) predicted; results in {out / 'results.json'} and {out / 'results.csv'}",
                  highlight=False)
    if failures:
        console.print(f"[bold red]{len(failures)} input(s) failed:[/bold red]", highlight=False)
        for f in failures:
            console.print(f"  {f['path']}: {f['error']}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _save_png(path: Path, image: Any) -> Path:
    from forgeloc.inference.visualize import write_png

    return write_png(path, image)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
