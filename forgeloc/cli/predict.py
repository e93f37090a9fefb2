"""``forgeloc predict``: heatmaps, overlays and masks for files, folders and globs; optional HTML report."""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import itertools
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from forgeloc.cli.common import check_threshold_and_device, console, fail

_GLOB_CHARS = set("*?[")
CSV_COLUMNS = ("name", "path", "width", "height", "score", "tampered_fraction", "mode", "threshold",
               "heatmap", "overlay", "mask")
#: Per-image output names. The predicted mask is ``<stem>_predmask.png``: a name ending in one of the
#: ground-truth suffixes forgeloc (and IMDLBenCo-style layouts) pair with images (``_mask``, ``_gt``,
#: see ``forgeloc.data.datasets.MASK_SUFFIXES``) could later be read as the ground truth of ``<stem>``.
OUTPUT_SUFFIXES = {"heatmap": "_heatmap.png", "overlay": "_overlay.png", "mask": "_predmask.png"}
#: Files written once per run.
RUN_FILES = ("results.json", "results.csv", "report.html")
#: results.json / results.csv are rewritten at least this often (seconds) while predicting, and on
#: every way out (end, failure, Ctrl+C), so a run stopped midway keeps the results it has.
FLUSH_SECONDS = 2.0
#: ... or less often in large runs, so that rewriting them stays under this share of the run's time.
FLUSH_MAX_SHARE = 0.05
# Errors that concern one output file name (too long, bytes the file system refuses, a folder in the
# way): that image fails, the run goes on. Any other write error (disk full, read-only) stops the run.
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EISDIR, errno.ENOTDIR})
_tmp_counter = itertools.count()


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to predict on, in order and without duplicates, and ``(input, problem)`` pairs.

    A folder contributes its files with an image extension (sorted; sub-folders only with
    ``recursive``); a pattern with ``* ? [`` is expanded here (``**`` spans folders), for shells
    that do not expand it; a file named explicitly is always tried, whatever its extension.
    """
    from forgeloc.data.datasets import broken_link
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
        found = 0
        for p in sorted(walker):
            if p.suffix.lower() not in IMAGE_EXTENSIONS or any(
                    part.startswith(".") for part in p.relative_to(folder).parts):
                continue
            if p.is_file():
                add(p)
                found += 1
            elif (why := broken_link(p)) is not None:
                problems.append((str(p), why))  # a dangling or looping link: said, not skipped silently
                found += 1
        return found

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            if not add_folder(path):
                problems.append((item, "folder holds no image file" + ("" if recursive else " (try --recursive)")))
        elif path.exists():
            add(path)
        elif (why := broken_link(path)) is not None:
            problems.append((item, why))
        elif _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                problems.append((item, "no file matches this pattern"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    add_folder(mp)
                elif (why := broken_link(mp)) is not None:
                    problems.append((m, why))
                else:
                    add(mp)
        else:
            problems.append((item, "file not found"))
    return files, problems


def output_files(out: Path, stem: str) -> dict[str, Path]:
    """The per-image files written for an input with output stem ``stem``."""
    return {kind: out / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def _ancestor_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (what makes ``mkdir -p`` impossible)."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def check_output_folder(out: Path, option: str = "--out", create: bool = True) -> None:
    """Make sure ``out`` is (or can become) a writable folder; otherwise a one-line error.

    With ``create=False`` only what can be seen without writing is checked (a file in the way);
    with ``create=True`` the folder is created and a probe file written and removed.
    """
    if out.exists() and not out.is_dir():
        fail(f"{option} {out} is a file, not a folder")
    if out.is_symlink() and not out.exists():
        from forgeloc.data.datasets import broken_link

        fail(f"{option} {out}: {broken_link(out)}")
    blocker = _ancestor_file(out)
    if blocker is not None:
        fail(f"{option} {out}: {blocker} is a file, so no folder can be made under it")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option} {out}: cannot create the folder ({err.strerror or err})")
    probe = out / f".forgeloc-write-test-{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
    except OSError as err:
        fail(f"{option} {out} is not writable ({err.strerror or err})")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def input_collisions(out: Path, files: list[Path], stems: list[str]) -> list[tuple[Path, Path]]:
    """``(output file, input file)`` pairs where an output of this run would replace an input.

    Compared by file identity (device, inode), so links, ``..`` and case-folding file systems
    cannot hide a collision.
    """
    inputs: dict[tuple[int, int], Path] = {}
    for p in files:
        ident = _identity(p)
        if ident is not None:
            inputs.setdefault(ident, p)
    planned = [f for stem in stems for f in output_files(out, stem).values()] + [out / n for n in RUN_FILES]
    clashes = []
    for target in planned:
        ident = _identity(target)
        if ident is not None and ident in inputs:
            clashes.append((target, inputs[ident]))
    return clashes


def foreign_existing_outputs(out: Path, files: list[Path], stems: list[str]) -> list[Path]:
    """Existing files this run will replace that are not outputs of the same image in the folder's
    previous ``results.json`` (a previous run's outputs of *another* image, or someone else's files)."""
    previous: dict[str, str] = {}
    try:
        payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
        for row in payload.get("results", []):
            for written in (row.get("files") or {}).values():
                previous[os.path.realpath(written)] = os.path.realpath(row.get("path", ""))
    except (OSError, ValueError, AttributeError, TypeError):
        previous = {}
    foreign = []
    for path, stem in zip(files, stems, strict=True):
        source = os.path.realpath(path)
        for target in output_files(out, stem).values():
            if os.path.lexists(target) and previous.get(os.path.realpath(target)) != source:
                foreign.append(target)
    return foreign


def _write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` to a short temporary name in the same folder, then rename it over ``path``:
    a failure leaves no partial file, and a link at ``path`` is replaced, never written through."""
    tmp = path.parent / f".forgeloc-{os.getpid()}-{next(_tmp_counter)}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


class _OutputFolderError(Exception):
    """A write error that concerns the output folder, not one file name: the run stops."""


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
    from forgeloc.io import atomic_write

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
    inputs: list[str] = typer.Argument(..., help="Image files, folders and/or glob patterns.", show_default=False),
    detector: str = typer.Option(
        "default", "--detector", "-k",
        help="What looks at the photos: 'default' (shipped with forgeloc), a run/checkpoint folder or weights file "
             "(then --model), or a training-free detector (see `forgeloc detectors`).",
    ),
    out: Path = typer.Option(Path("forgeloc-results"), "--out", "-o", help="Output folder."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    mode: str = typer.Option("auto", help="auto | resize | tile (auto tiles images over 2x the model's input)."),
    threshold: float | None = typer.Option(None, help="Mask threshold (default: the checkpoint's, else 0.5)."),
    batch_size: int = typer.Option(4, min=1, help="Images (resize) or windows (tile) per forward pass."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)."),
    amp: str | None = typer.Option(None, help="Mixed precision: bf16 (CPU/GPU) or fp16 (GPU)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/report.html (self-contained)."),
    cues: str | None = typer.Option(
        None, "--cues",
        help="Training-free detectors to run and show next to the heatmap, comma-separated (e.g. noise,ela,metadata; "
             "'all' for every one; default: those the detector records).",
    ),
    fuse: str | None = typer.Option(
        None, "--fuse",
        help="Training-free detectors fused into the heatmap and score by the maximum rule, comma-separated "
             "('' for none; default: those the detector records, copymove for the default detector).",
    ),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for PyTorch (default: all cores)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders of folder inputs."),
    max_pixels: int | None = typer.Option(None, help="Refuse images with more pixels (default: Pillow's limit)."),
    tile_overlap: float | None = typer.Option(
        None, min=0.0, max=0.95,
        help="Share of a window shared by neighbouring tiles (tile mode; default half); 0.25 is ~2x faster.",
    ),
) -> None:
    """Predict tamper heatmaps for images: writes <stem>_heatmap.png, <stem>_overlay.png,
    <stem>_predmask.png per image and results.json / results.csv (and report.html with --report).

    A file that cannot be read is reported and skipped; the exit code is 1 if any input failed.
    An --out that would overwrite an input file is refused. results.json / results.csv are kept up
    to date as the run goes, so a run stopped midway (Ctrl+C, an error) keeps what it has done.

    Examples: forgeloc predict photo.jpg  |  forgeloc predict photos/ "scans/**/*.jpg" --out predictions
    |  forgeloc predict photos/ --detector runs/quickstart  |  forgeloc predict photo.jpg --cues noise,ela,metadata

    For compatibility, a first argument that is a checkpoint (a folder with config.json or
    model.safetensors, or a .safetensors/.pth file) is taken as --detector.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forgeloc.data.io import DEFAULT_MAX_PIXELS
    from forgeloc.inference.predictor import MODES, Prediction, PredictionFailure, load
    from forgeloc.io import CheckpointError

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if amp not in (None, "bf16", "fp16", "none"):
        fail(f"--amp must be bf16 or fp16, not {amp!r}")
    if max_pixels is not None and max_pixels < 1:
        fail(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    check_threshold_and_device(threshold, device)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if inputs and detector == "default" and _looks_like_checkpoint(inputs[0]) and len(inputs) > 1:
        detector, inputs = inputs[0], inputs[1:]
    cue_names = _parse_cues(cues)
    fuse_names = _parse_cues(fuse)
    check_output_folder(out, create=False)
    files, problems = expand_inputs(inputs, recursive)
    stems = output_stems(files)
    clashes = input_collisions(out, files, stems)
    if clashes:
        target, source = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        fail(f"--out {out} would overwrite the input file {source} (an output of this run is named "
             f"{target.name}){more}; write the results to another folder")
    try:
        predictor = load(
            detector if model is None else model, None if model is None else detector, threshold=threshold,
            device=device, amp=None if amp == "none" else amp, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
            **({} if tile_overlap is None else {"tile_overlap": tile_overlap}),
            **({} if cue_names is None else {"cues": cue_names}),
            **({} if fuse_names is None else {"fuse": fuse_names}),
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    check_output_folder(out)
    foreign = foreign_existing_outputs(out, files, stems)
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        console.print(f"[yellow]warning:[/yellow] {len(foreign)} existing file(s) in {out} that are not earlier "
                      f"outputs of the same images will be replaced: {shown}", highlight=False, soft_wrap=True)
    failures = [{"name": Path(item).name, "path": item, "error": why} for item, why in problems]
    rows: list[dict[str, Any]] = []
    entries = []
    if report:
        from forgeloc.inference.report import report_entry

    info = {k: v for k, v in predictor.describe().items() if v is not None}
    info["mode"] = mode
    console.print(f"{predictor.label}\n{len(files)} image(s) → {out}", highlight=False, markup=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    processed = 0
    last_flush, flush_every = time.monotonic(), FLUSH_SECONDS
    error: BaseException | None = None
    try:
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
                    try:
                        saved, overlay = _write_image_outputs(result, out, stem)
                    except OSError as err:
                        if err.errno not in _NAME_ERRNOS:
                            raise _OutputFolderError(f"cannot write into {out}: {err.strerror or err}") from err
                        why = (f"its output files cannot be written: {err.strerror or err} "
                               f"({output_files(out, stem)['heatmap'].name})")
                        failures.append({"name": path.name, "path": str(path), "error": why})
                        progress.console.print(f"[red]skipped[/red] {path}: {why}", highlight=False)
                    else:
                        rows.append({**result.to_dict(), "path": str(path), "files": saved})
                        if report:
                            entries.append(report_entry(result, overlay=overlay, files=saved, name=result.name,
                                                        requested_mode=mode, input_size=predictor.input_size))
                processed += 1
                progress.advance(task)
                if time.monotonic() - last_flush >= flush_every:
                    started = time.monotonic()
                    try:
                        _write_tables(out, rows, failures, {**info, "complete": False, "processed": processed,
                                                            "total": len(files)})
                    except OSError as err:
                        raise _OutputFolderError(f"cannot write into {out}: {err.strerror or err}") from err
                    last_flush = time.monotonic()
                    flush_every = max(FLUSH_SECONDS, (last_flush - started) / FLUSH_MAX_SHARE)
    except BaseException as err:  # every way out keeps the results; re-raised below
        error = err

    stopped = _stopped_reason(error)
    info.update({"complete": error is None, "processed": processed, "total": len(files)})
    if stopped:
        info["stopped"] = stopped
    try:
        _write_tables(out, rows, failures, info)
        if report:
            _write_report(out, entries, info, failures, mode)
    except OSError as werr:
        if error is None:
            fail(f"cannot write the results into {out}: {werr.strerror or werr}", code=1)
        console.print(f"[bold red]could not save the results table either:[/bold red] {werr}", highlight=False)
    if error is not None:
        where = f"{len(rows)} image(s) predicted; results so far in {out / 'results.json'}"
        if isinstance(error, KeyboardInterrupt):
            console.print(f"[bold red]interrupted[/bold red] after {processed} of {len(files)} input(s); {where}",
                          highlight=False)
            raise typer.Exit(130)
        if isinstance(error, _OutputFolderError):
            fail(f"{error}; stopped after {processed} of {len(files)} input(s); {where}", code=1)
        console.print(f"[bold red]stopped by an error[/bold red] after {processed} of {len(files)} input(s); {where}",
                      highlight=False)
        raise error
    _print_summary(out, len(rows), failures, report)
    if failures:
        raise typer.Exit(1)


def _write_image_outputs(result: Any, out: Path, stem: str) -> tuple[dict[str, str], Any]:
    """Write one image's heatmap, overlay and mask PNGs; return their paths and the overlay (the
    report reuses it). On a write error the files already written are removed (no half set of
    outputs for an image reported as failed) and the OSError propagates."""
    from forgeloc.inference.visualize import encode_png

    overlay = result.overlay()
    images = {"heatmap": result.heatmap_rgb(), "overlay": overlay, "mask": result.mask_uint8()}
    targets = output_files(out, stem)
    written: list[Path] = []
    try:
        for kind, target in targets.items():
            _write_replacing(target, encode_png(images[kind]))
            written.append(target)
    except OSError:
        for done in written:
            with contextlib.suppress(OSError):
                done.unlink(missing_ok=True)
        raise
    return {kind: str(target) for kind, target in targets.items()}, overlay


def _stopped_reason(error: BaseException | None) -> str | None:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl+C)"
    if error is None:
        return None
    return str(error) if isinstance(error, _OutputFolderError) else f"{type(error).__name__}: {error}"


def _print_summary(out: Path, n_predicted: int, failures: list[dict[str, Any]], report: bool) -> None:
    if report:
        console.print(f"report: {out / 'report.html'}", highlight=False)
    console.print(f"{n_predicted} image(s) predicted; results in {out / 'results.json'} and {out / 'results.csv'}",
                  highlight=False)
    if failures:
        console.print(f"[bold red]{len(failures)} input(s) failed:[/bold red]", highlight=False)
        for f in failures:
            console.print(f"  {f['path']}: {f['error']}", highlight=False, soft_wrap=True)


def _write_report(out: Path, entries: list, info: dict[str, Any], failures: list[dict[str, Any]], mode: str) -> None:
    from forgeloc.inference.predictor import PredictionFailure
    from forgeloc.inference.report import render_report

    shown = {
        "model": info.get("model"),
        "checkpoint": info.get("checkpoint"),
        "threshold": info.get("threshold"),
        "image score": info.get("image_score"),
        "model input": f"{info.get('input_size')} px (trained with {info.get('input_mode')})",
        "prediction mode": mode + (f": {info.get('auto_rule')}" if mode == "auto" else ""),
        "output folder": str(out),
    }
    if info.get("stopped"):
        shown["stopped"] = f"{info['stopped']} after {info.get('processed')} of {info.get('total')} input(s)"
    html = render_report(entries, shown, [PredictionFailure(f["name"], f["path"], f["error"]) for f in failures],
                         describe=info, command=sys.argv, files_base=out)
    _write_replacing(out / "report.html", html.encode("utf-8"))


def _looks_like_checkpoint(item: str) -> bool:
    """A run/checkpoint folder or a weights file (the old ``forgeloc predict CHECKPOINT INPUTS`` form)."""
    path = Path(item)
    if path.is_dir():
        return any((path / name).exists() for name in ("config.json", "model.safetensors", "checkpoints"))
    return path.is_file() and path.suffix.lower() in (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _parse_cues(text: str | None) -> list[str] | None:
    from forgeloc.detectors import CUES

    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return sorted(CUES)
    unknown = [n for n in names if n not in CUES]
    if unknown:
        fail(f"--cues: unknown detector(s) {', '.join(unknown)}; training-free detectors: {', '.join(sorted(CUES))}")
    return names


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
