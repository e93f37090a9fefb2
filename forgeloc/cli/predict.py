"""``forgeloc predict``: heatmaps, overlays and masks for files, folders and globs; optional HTML report.

The work is :mod:`forgeloc.inference.batch`'s; this module parses the options, checks them before the
model is loaded, shows a progress bar and turns how the run ended into messages and an exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import typer

from forgeloc.cli.common import check_threshold_and_device, console, fail, say

# The library's names, re-exported: this module was their home before forgeloc.inference.batch.
from forgeloc.data.files import expand_inputs
from forgeloc.inference.batch import CSV_COLUMNS, FLUSH_MAX_SHARE, FLUSH_SECONDS, BatchPlan, BatchPrediction
from forgeloc.inference.outputs import OUTPUT_SUFFIXES, RUN_FILES, output_files, output_stems

__all__ = [
    "CSV_COLUMNS", "FLUSH_MAX_SHARE", "FLUSH_SECONDS", "OUTPUT_SUFFIXES", "RUN_FILES", "check_output_folder",
    "expand_inputs", "output_files", "output_stems", "parse_cues", "predict",
]


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
        from forgeloc.data.files import broken_link

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


# Long only by its option declarations (typer reads them from the signature); the body is named steps.
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
    backend: str | None = typer.Option(
        None, help="torch | onnxruntime (an ONNX export folder from `forgeloc export`; needs forgeloc[onnx]). "
                   "Default: onnxruntime for an export folder, else torch.",
    ),
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
    _check_options(mode, amp, max_pixels, threshold, device)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if inputs and detector == "default" and _looks_like_checkpoint(inputs[0]) and len(inputs) > 1:
        detector, inputs = inputs[0], inputs[1:]
    cue_names = parse_cues(cues)
    fuse_names = parse_cues(fuse)
    check_output_folder(out, create=False)
    plan = BatchPlan.from_inputs(inputs, out, recursive)
    _refuse_input_collisions(plan)  # before the model is loaded: a mistake costs no waiting
    load_options = {"threshold": threshold, "device": device, "amp": None if amp == "none" else amp,
                    "max_pixels": max_pixels, "tile_overlap": tile_overlap, "cues": cue_names, "fuse": fuse_names,
                    "backend": backend}
    predictor = _load_predictor(detector, model, load_options)
    check_output_folder(out)
    _warn_foreign_outputs(plan)
    console.print(f"{predictor.label}\n{len(plan.files)} image(s) → {out}", highlight=False, markup=False)
    # The flush settings are read here, at call time, so that tests can shorten them on this module.
    run = BatchPrediction(predictor, plan, mode=mode, batch_size=batch_size, report=report, command=sys.argv,
                          flush_seconds=FLUSH_SECONDS, flush_max_share=FLUSH_MAX_SHARE)
    _run_with_progress(run)
    _print_summary(out, run.summary.rows, run.summary.failures, report)
    if run.summary.failures:
        raise typer.Exit(1)


def _check_options(mode: str, amp: str | None, max_pixels: int | None, threshold: float | None,
                   device: str | None) -> None:
    from forgeloc.inference.predictor import MODES

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if amp not in (None, "bf16", "fp16", "none"):
        fail(f"--amp must be bf16 or fp16, not {amp!r}")
    if max_pixels is not None and max_pixels < 1:
        fail(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    check_threshold_and_device(threshold, device)


def _refuse_input_collisions(plan: BatchPlan) -> None:
    clashes = plan.input_collisions()
    if clashes:
        target, source = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        fail(f"--out {plan.out} would overwrite the input file {source} (an output of this run is named "
             f"{target.name}){more}; write the results to another folder")


def _load_predictor(detector: str, model: str | None, options: dict[str, Any]) -> Any:
    """The predictor for ``--detector`` (and ``--model``); options left unset keep the loader's defaults."""
    from forgeloc.data.io import DEFAULT_MAX_PIXELS
    from forgeloc.inference.predictor import load
    from forgeloc.io import CheckpointError

    optional = {k: options.pop(k) for k in ("tile_overlap", "cues", "fuse", "backend")}
    options["max_pixels"] = options["max_pixels"] or DEFAULT_MAX_PIXELS
    options.update({k: v for k, v in optional.items() if v is not None})
    try:
        return load(detector if model is None else model, None if model is None else detector, **options)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        fail(str(err))


def _warn_foreign_outputs(plan: BatchPlan) -> None:
    foreign = plan.foreign_outputs()
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        console.print(f"[yellow]warning:[/yellow] {len(foreign)} existing file(s) in {plan.out} that are not earlier "
                      f"outputs of the same images will be replaced: {shown}", highlight=False, soft_wrap=True)


def _run_with_progress(run: BatchPrediction) -> None:
    """Run the batch under a progress bar; a stopped run ends the command the way its cause asks
    (Ctrl+C: exit 130; the output folder failing: a one-line error; anything else: raised again)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forgeloc.inference.batch import ResultsNotSavedError

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("predicting", total=len(run.plan.files))

            def on_result(item: Any) -> None:
                if item.failure is not None:
                    progress.console.print(f"[red]skipped[/red] {item.path}: {item.failure['error']}", highlight=False)
                progress.advance(task)

            run.on_result = on_result
            run.run()
    except ResultsNotSavedError as err:
        fail(str(err), code=1)
    except BaseException as error:  # Ctrl+C included: the results are saved by now; say how it ended
        _report_stop(run, error)


def _report_stop(run: BatchPrediction, error: BaseException) -> None:
    from forgeloc.inference.batch import OutputFolderError

    if run.save_error is not None:
        say(str(run.save_error), "could not save the results table either:", "bold red")
    done = f"after {run.processed} of {len(run.plan.files)} input(s)"
    where = f"{len(run.summary.rows)} image(s) predicted; results so far in {run.out / 'results.json'}"
    if isinstance(error, KeyboardInterrupt):
        say(f"{done}; {where}", "interrupted", "bold red")
        raise typer.Exit(130)
    if isinstance(error, OutputFolderError):
        fail(f"{error}; stopped {done}; {where}", code=1)
    say(f"{done}; {where}", "stopped by an error", "bold red")
    raise error


def _print_summary(out: Path, rows: list[dict[str, Any]], failures: list[dict[str, Any]], report: bool) -> None:
    for row in rows:  # e.g. "animated GIF: frame 1 of 12 analysed": also in results.json
        for note in row.get("notes", ()):
            say(f"{row.get('path')}: {note}", "note:", "yellow")
    n_predicted = len(rows)
    if report:
        say(f"report: {out / 'report.html'}")
    say(f"{n_predicted} image(s) predicted; results in {out / 'results.json'} and {out / 'results.csv'}")
    if failures:
        console.print(f"[bold red]{len(failures)} input(s) failed:[/bold red]", highlight=False)
        for f in failures:
            say(f"  {f['path']}: {f['error']}")


def _looks_like_checkpoint(item: str) -> bool:
    """A run/checkpoint folder or a weights file (the old ``forgeloc predict CHECKPOINT INPUTS`` form)."""
    path = Path(item)
    if path.is_dir():
        return any((path / name).exists() for name in ("config.json", "model.safetensors", "checkpoints"))
    return path.is_file() and path.suffix.lower() in (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def parse_cues(text: str | None) -> list[str] | None:
    """``--cues`` / ``--fuse``: detector names, comma-separated (``all`` for every one); a one-line
    error names unknown ones."""
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
