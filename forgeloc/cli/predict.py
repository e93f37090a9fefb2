"""``forgeloc predict``: heatmaps, overlays and masks for files, folders and globs; optional HTML report.

The work is :mod:`forgeloc.inference.batch`'s; this module parses the options, checks them before the
model is loaded, shows a progress bar and turns how the run ended into messages and an exit code.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Any

import typer

from forgeloc.cli.common import check_output_folder, check_threshold_and_device, console, fail, say, set_threads

# The library's names, re-exported: this module was their home before forgeloc.inference.batch.
from forgeloc.data.files import expand_inputs
from forgeloc.inference.batch import CSV_COLUMNS, FLUSH_MAX_SHARE, FLUSH_SECONDS, BatchPlan, BatchPrediction
from forgeloc.inference.outputs import OUTPUT_SUFFIXES, RUN_FILES, output_files, output_stems
from forgeloc.inference.shards import Shard, shard_from_environment

__all__ = [
    "CSV_COLUMNS", "FLUSH_MAX_SHARE", "FLUSH_SECONDS", "OUTPUT_SUFFIXES", "RUN_FILES", "check_output_folder",
    "expand_inputs", "output_files", "output_stems", "parse_cues", "predict",
]


# Long only by its option declarations (typer reads them from the signature); the body is named steps.
def predict(
    inputs: list[str] = typer.Argument(None, help="Image files, folders and/or glob patterns.", show_default=False),
    detector: str = typer.Option(
        "default", "--detector", "-k",
        help="What looks at the photos: 'default' (shipped with forgeloc), a run/checkpoint folder or weights file "
             "(then --model), or a training-free detector (see `forgeloc detectors`).",
    ),
    out: Path = typer.Option(Path("forgeloc-results"), "--out", "-o", help="Output folder."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    mode: str = typer.Option(
        "auto", help="auto | resize | tile (auto: as the model was trained; resize for the paper models)."),
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
    shard: str | None = typer.Option(
        None, "--shard", metavar="I/N",
        help="Predict only share I of N (0-based) of the inputs, e.g. from a Slurm array or Kubernetes indexed job; "
             "then merge with --merge OUT. Under torchrun each rank takes its own share and rank 0 merges.",
    ),
    merge: Path | None = typer.Option(
        None, "--merge", metavar="OUT", show_default=False,
        help="Merge the shards' progress files in OUT/shards into OUT/results.json, results.csv and report.html "
             "(no inputs).",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume",
        help="Skip the images an earlier run of the same command (same inputs and settings) already did.",
    ),
) -> None:
    """Predict tamper heatmaps for images: writes <stem>_heatmap.png, <stem>_overlay.png,
    <stem>_predmask.png per image and results.json / results.csv (and report.html with --report).

    A file that cannot be read is reported and skipped; the exit code is 1 if any input failed.
    An --out that would overwrite an input file is refused. results.json / results.csv are kept up
    to date as the run goes, so a run stopped midway (Ctrl+C, an error) keeps what it has done.

    Examples: forgeloc predict photo.jpg  |  forgeloc predict photos/ "scans/**/*.jpg" --out predictions
    |  forgeloc predict photos/ --detector runs/quickstart  |  forgeloc predict photo.jpg --cues noise,ela,metadata

    Large collections: run it again and the images already done are skipped; split the work with
    --shard I/N or torchrun --nproc-per-node N -m forgeloc predict ... (docs/inference.md).

    For compatibility, a first argument that is a checkpoint (a folder with config.json or
    model.safetensors, or a .safetensors/.pth file) is taken as --detector.
    """
    if merge is not None:
        _merge(merge, inputs)
        return
    if not inputs:
        fail("give the images to predict (files, folders or glob patterns), or --merge OUT")
    _check_options(mode, amp, max_pixels, threshold, device)
    chosen, launched = _choose_shard(shard)
    set_threads(threads)
    if inputs and detector == "default" and _looks_like_checkpoint(inputs[0]) and len(inputs) > 1:
        detector, inputs = inputs[0], inputs[1:]
    cue_names = parse_cues(cues)
    fuse_names = parse_cues(fuse, "--fuse")
    check_output_folder(out, create=False)
    plan = BatchPlan.from_inputs(inputs, out, recursive)
    _refuse_input_collisions(plan)  # before the model is loaded: a mistake costs no waiting
    ranks = None
    if launched:  # torchrun: join the process group; each rank on its own GPU where there are GPUs
        from forgeloc.engine.distributed import init_distributed

        ranks = init_distributed(device, timeout=RANK_WAIT)
        device = str(ranks.device)
    load_options = {"threshold": threshold, "device": device, "amp": None if amp == "none" else amp,
                    "max_pixels": max_pixels, "tile_overlap": tile_overlap, "cues": cue_names, "fuse": fuse_names,
                    "backend": backend}
    predictor = _load_predictor(detector, model, load_options)
    check_output_folder(out)
    selection = chosen.indices(len(plan.files))
    _warn_foreign_outputs(plan, selection)
    share = f"shard {chosen}: {len(selection)} of " if chosen.count > 1 else ""
    console.print(f"{predictor.label}\n{share}{len(plan.files)} image(s) → {out}", highlight=False, markup=False)
    # The flush settings are read here, at call time, so that tests can shorten them on this module.
    run = BatchPrediction(predictor, plan, mode=mode, batch_size=batch_size, report=report, command=sys.argv,
                          flush_seconds=FLUSH_SECONDS, flush_max_share=FLUSH_MAX_SHARE, shard=chosen, resume=resume)
    _start(run)
    _run_with_progress(run, show_bar=not launched or chosen.index == 0)  # under torchrun, rank 0's bar only
    if run.split:
        _finish_shard(run, ranks)
    else:
        _print_summary(out, run.summary.rows, run.summary.failures, report, run.already_done)
        if run.summary.failures:
            raise typer.Exit(1)


#: How long the ranks of a torchrun wait for the slowest one before rank 0 merges.
RANK_WAIT = datetime.timedelta(hours=24)


def _choose_shard(text: str | None) -> tuple[Shard, bool]:
    """The share this process predicts (``--shard``, or torchrun's rank), and whether torchrun started it."""
    try:
        launched = shard_from_environment()
        given = None if text is None else Shard.parse(text)
    except ValueError as err:
        fail(f"--shard: {err}" if text is not None else f"torchrun's RANK / WORLD_SIZE: {err}")
    if launched is not None and given is not None:
        fail("--shard and torchrun split the inputs each: use one of them (under torchrun each rank takes its share)")
    return (launched or given or Shard()), launched is not None


def _start(run: BatchPrediction) -> None:
    """Open the progress file and say what an earlier run already did (before the progress bar)."""
    from forgeloc.inference.batch import OutputFolderError

    try:
        run.start()
    except OutputFolderError as err:
        fail(str(err), code=1)
    for note in run.notes:
        say(note, "note:", "yellow")
    if run.already_done:
        console.print(f"{run.already_done} image(s) already done by an earlier run of this command; "
                      f"{len(run.todo)} left", highlight=False)


def _finish_shard(run: BatchPrediction, ranks: Any) -> None:
    """A shard's summary; under torchrun, rank 0 merges once every rank is done."""
    summary = run.summary
    console.print(f"shard {run.shard}: {len(summary.rows)} image(s) predicted ({run.already_done} already done "
                  f"before this run), {len(run.failures)} failed; progress in {run.journal_path}", highlight=False)
    if ranks is None:
        console.print(f"when every shard is done: forgeloc predict --merge {run.out}", highlight=False)
        if summary.failures:
            raise typer.Exit(1)
        return
    from forgeloc.engine.distributed import barrier, cleanup_distributed

    barrier()
    try:
        if ranks.is_main:
            _merge(run.out, [])
        elif summary.failures:
            raise typer.Exit(1)
    finally:
        cleanup_distributed()


def _merge(folder: Path, inputs: list[str] | None) -> None:
    """``--merge OUT``: the run files from the shards' progress files, as one process writes them."""
    from forgeloc.inference.batch import merge_shards
    from forgeloc.inference.shards import MergeError

    if inputs:
        fail(f"--merge takes no inputs (it merges what the shards wrote into {folder}); got {inputs[0]!r}")
    try:
        summary = merge_shards(folder)
    except MergeError as err:
        fail(str(err), code=1)
    except OSError as err:
        fail(f"cannot write the merged results into {folder}: {err.strerror or err}", code=1)
    _print_summary(folder, summary.rows, summary.failures, summary.report_file is not None)
    if summary.failures:
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


def _warn_foreign_outputs(plan: BatchPlan, selection: range) -> None:
    foreign = plan.foreign_outputs(selection)
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        say(f"{len(foreign)} existing file(s) in {plan.out} that are not earlier outputs of the same images will be "
            f"replaced: {shown}", "warning:", "yellow")


#: A time estimate is printed when the first windows say the run will take at least this long (seconds).
ESTIMATE_MIN_SECONDS = 20.0
#: ... measured over at least this many seconds of windows after the first batch (the model's warm-up).
ESTIMATE_AFTER_SECONDS = 1.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class WindowProgress:
    """The bar of ``forgeloc predict``, counted in model windows (an image predicted in resize mode
    is one window), so that it moves during one large tiled photo and its ETA covers the whole run.

    Each file's windows are planned from its header before the run (:meth:`Predictor.plan`); the
    predictor's progress callback (:meth:`on_progress`) moves the bar within the current image and
    ``on_result`` settles it at the next one. The pace of the windows after the first batch (which
    pays the model's warm-up) gives a time estimate, printed once when the run looks long."""

    def __init__(self, bar: Any, predictor: Any, files: list[Path], mode: str) -> None:
        self.bar, self.files = bar, files
        self.planned = [self._windows(predictor, f, mode) for f in files]
        self.before = [0]  # windows of the images before image i
        for n in self.planned:
            self.before.append(self.before[-1] + n)
        self.tiled = sum(n > 1 for n in self.planned)
        self.current = 0
        self.first: tuple[float, int] | None = None  # (time, windows done) at the end of the first batch
        self.estimated = False
        self.task = bar.add_task("predicting", total=self.before[-1], images=f"0/{len(files)} images")

    @staticmethod
    def _windows(predictor: Any, path: Path, mode: str) -> int:
        from forgeloc.data.io import ImageReadError

        try:
            return max(1, predictor.plan(path, mode).windows)
        except (ImageReadError, OSError, TypeError, ValueError):
            return 1  # an unreadable file fails at once: one step

    @property
    def total(self) -> int:
        return self.before[-1]

    def on_progress(self, done: int, total: int, stage: str) -> None:
        i = min(self.current, len(self.files) - 1)
        name = self.files[i].name
        if stage != "windows":
            self.bar.update(self.task, description=f"{name}: {stage} {done}/{total}")
            return
        if total and total != self.planned[i]:  # the header's plan was off: move the total, never the bar back
            self._replan(i, total)
        completed = self.before[i] + min(done, self.planned[i])
        self.bar.update(self.task, completed=completed, description=name)
        if done and not self.estimated:
            self._estimate(completed, time.monotonic())

    def on_result(self, item: Any) -> None:
        if item.failure is not None:
            say(f"{item.path}: {item.failure['error']}", "skipped", "red", out=self.bar.console)
        self.current = item.processed
        self.bar.update(self.task, completed=self.before[min(item.processed, len(self.files))],
                        images=f"{item.processed}/{len(self.files)} images")

    def _replan(self, i: int, windows: int) -> None:
        delta = windows - self.planned[i]
        self.planned[i] = windows
        self.before[i + 1:] = [b + delta for b in self.before[i + 1:]]
        self.bar.update(self.task, total=self.total)

    def _estimate(self, completed: int, now: float) -> None:
        """The pace since the first batch, once measured over a second, times the windows left;
        printed once, if the run looks long."""
        if self.first is None:
            self.first = (now, completed)
            return
        since, counted = now - self.first[0], completed - self.first[1]
        if since < ESTIMATE_AFTER_SECONDS or counted < 1:
            return
        self.estimated = True
        remaining = since / counted * (self.total - completed)
        if remaining >= ESTIMATE_MIN_SECONDS:
            self.bar.console.print(
                f"estimated time: about {_duration(remaining)} for the {self.total - completed:,} windows left "
                f"(an estimate from the pace of {counted:,} window(s); training-free cues add to it)", highlight=False)


def _run_with_progress(run: BatchPrediction, show_bar: bool = True) -> None:
    """Run the batch under a progress bar counted in model windows, with an ETA; a stopped run ends
    the command the way its cause asks (Ctrl+C: exit 130; the output folder failing: a one-line
    error; anything else: raised again)."""
    from rich import progress as rp

    from forgeloc.inference.batch import ResultsNotSavedError

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TextColumn("windows"),
               rp.TextColumn("{task.fields[images]}"), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
               rp.TimeRemainingColumn())
    try:
        with rp.Progress(*columns, console=console, transient=False, disable=not show_bar) as progress:
            todo = [run.plan.files[i] for i in run.todo]  # what is left, not what an earlier run did
            bar = WindowProgress(progress, run.predictor, todo, run.mode)
            if bar.tiled:
                progress.console.print(f"{bar.total:,} model windows to run ({bar.tiled} image(s) in several "
                                       "windows)", highlight=False)
            run.on_result, run.progress = bar.on_result, bar.on_progress
            run.run()
    except ResultsNotSavedError as err:
        fail(str(err), code=1)
    except BaseException as error:  # Ctrl+C included: the results are saved by now; say how it ended
        _report_stop(run, error)


def _report_stop(run: BatchPrediction, error: BaseException) -> None:
    from forgeloc.inference.batch import OutputFolderError

    if run.save_error is not None:
        say(str(run.save_error), "could not save the results table either:", "bold red")
    done = f"after {run.processed} of {len(run.todo)} input(s)"
    where = f"{len(run.summary.rows)} image(s) predicted; results so far in " \
            f"{run.journal_path if run.split else run.out / 'results.json'}"
    if isinstance(error, KeyboardInterrupt):
        say(f"{done}; {where}", "interrupted", "bold red")
        raise typer.Exit(130)
    if isinstance(error, (OutputFolderError, FloatingPointError)):  # the folder failed, or the model gave NaN
        fail(f"{error}; stopped {done}; {where}", code=1)
    say(f"{done}; {where}", "stopped by an error", "bold red")
    raise error


def _print_summary(out: Path, rows: list[dict[str, Any]], failures: list[dict[str, Any]], report: bool,
                   already_done: int = 0) -> None:
    for row in rows:  # e.g. "animated GIF: frame 1 of 12 analysed": also in results.json
        for note in row.get("notes", ()):
            say(f"{row.get('path')}: {note}", "note:", "yellow")
    if report:
        say(f"report: {out / 'report.html'}")
    earlier = f" ({already_done} of them already done by an earlier run)" if already_done else ""
    say(f"{len(rows)} image(s) predicted{earlier}; results in {out / 'results.json'} and {out / 'results.csv'}")
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


def parse_cues(text: str | None, option: str = "--cues") -> list[str] | None:
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
        fail(f"{option}: unknown detector(s) {', '.join(unknown)}; training-free detectors: {', '.join(sorted(CUES))}")
    return names


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
