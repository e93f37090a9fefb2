"""Predicting many files into one folder: per-image pictures, ``results.json`` / ``results.csv``
and the HTML report. ``forgeloc predict`` is this module plus option parsing and a progress bar.

* :func:`predict_files` is the whole job in one call; :class:`BatchPlan` (which files, under which
  output names, and what they would overwrite) and :class:`BatchPrediction` (the run) are its two
  steps, for callers that check the plan before loading a model, as the command line does.
* Inputs are predicted in the plan's order, which is deterministic (the order of the inputs, each
  folder sorted). A :class:`~forgeloc.inference.shards.Shard` selects from :attr:`BatchPlan.files`
  and keeps every output name; each run records its progress in ``OUT/shards/results-I-of-N.jsonl``
  (a single run is shard ``0/1``), so re-running the same command skips what is done
  (:mod:`forgeloc.inference.shards`). A single run writes the run files itself; the shards of a
  split run leave them to :func:`~forgeloc.inference.shards.merge_shards`.
* One :class:`ResultsWriter` owns ``results.json`` / ``results.csv``. They are rewritten while the
  run goes (at least every :data:`FLUSH_SECONDS`) and on every way out (end, error, Ctrl+C), so a
  stopped run keeps what it has done; ``info["complete"]`` / ``info["stopped"]`` say how it ended.
* An input that cannot be read, or whose output names the file system refuses, is a failed input
  (reported, the run goes on); a write error on the folder itself (disk full, read-only) stops the run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import errno
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgeloc.data.files import expand_inputs
from forgeloc.inference.outputs import RUN_FILES, output_files, output_stems
from forgeloc.inference.shards import (
    SHARDS_FOLDER,
    Shard,
    ShardJournal,
    command_text,
    journal_outputs,
    plan_fingerprint,
    run_settings,
    source_identity,
)

if TYPE_CHECKING:
    from forgeloc.inference.predictor import Prediction, Predictor

__all__ = [
    "CSV_COLUMNS",
    "FLUSH_MAX_SHARE",
    "FLUSH_SECONDS",
    "BatchItem",
    "BatchPlan",
    "BatchPrediction",
    "BatchSummary",
    "OutputFolderError",
    "ResultsNotSavedError",
    "ResultsWriter",
    "merge_shards",
    "predict_files",
    "write_batch_report",
    "write_replacing",
]

CSV_COLUMNS = ("name", "path", "width", "height", "score", "tampered_fraction", "mode", "threshold",
               "heatmap", "overlay", "mask")
#: results.json / results.csv are rewritten at least this often (seconds) while predicting, and on
#: every way out (end, failure, Ctrl+C), so a run stopped midway keeps the results it has.
FLUSH_SECONDS = 2.0
#: ... or less often in large runs, so that rewriting them stays under this share of the run's time.
FLUSH_MAX_SHARE = 0.05
# Errors that concern one output file name (too long, bytes the file system refuses, a folder in the
# way): that image fails, the run goes on. Any other write error (disk full, read-only) stops the run.
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EISDIR, errno.ENOTDIR})
_tmp_counter = itertools.count()
# Shards on several machines may write into one shared folder: process ids alone could clash there.
_TMP_TOKEN = secrets.token_hex(4)


class OutputFolderError(Exception):
    """A write error that concerns the output folder, not one file name: the run stops."""


class ResultsNotSavedError(OutputFolderError):
    """Every image was handled, but results.json / results.csv / report.html could not be written."""


# --------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------
def write_replacing(path: Path, data: bytes) -> None:
    """Write ``data`` to a short temporary name in the same folder, then rename it over ``path``:
    a failure leaves no partial file, and a link at ``path`` is replaced, never written through."""
    tmp = path.parent / f".forgeloc-{os.getpid()}-{_TMP_TOKEN}-{next(_tmp_counter)}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_image_outputs(result: Prediction, out: Path, stem: str) -> tuple[dict[str, str], Any]:
    """Write one image's heatmap, overlay and mask PNGs; return their paths and the overlay (the
    report reuses it). On a write error the files already written are removed (no half set of
    outputs for an image reported as failed) and the OSError propagates."""
    from forgeloc.inference.visualize import encode_png

    overlay = result.overlay()
    images = {"heatmap": result.heatmap_rgb(), "overlay": overlay, "mask": result.mask_uint8()}
    targets = output_files(out, stem)
    # The three encodings run side by side (OpenCV releases the GIL): a 12 MP photo's PNGs take
    # about a second one after the other.
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        encoded = dict(zip(targets, pool.map(encode_png, (images[kind] for kind in targets)), strict=True))
    written: list[Path] = []
    try:
        for kind, target in targets.items():
            write_replacing(target, encoded[kind])
            written.append(target)
    except OSError:
        for done in written:
            with contextlib.suppress(OSError):
                done.unlink(missing_ok=True)
        raise
    return {kind: str(target) for kind, target in targets.items()}, overlay


class ResultsWriter:
    """The one writer of ``results.json`` (``info``, ``results``, ``failures``) and ``results.csv``
    (one row per predicted image); each write replaces both files atomically."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []

    def write(self, info: dict[str, Any]) -> None:
        from forgeloc.io import atomic_write

        payload = {"info": info, "results": self.rows, "failures": self.failures}
        text = json.dumps(payload, indent=2, allow_nan=False)  # a NaN is a bug, never a silent "NaN" in the file
        atomic_write(self.out / "results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        atomic_write(self.out / "results.csv", self._write_csv)

    def _write_csv(self, tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in self.rows:
                writer.writerow({**row, **row.get("files", {})})


# --------------------------------------------------------------------------------------------------
# The plan: which files, under which names, replacing what
# --------------------------------------------------------------------------------------------------
def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


@dataclass
class BatchPlan:
    """The files of a batch in prediction order, their output stems, and the inputs that failed
    before any prediction (``(input, problem)``: not found, a broken link, an empty folder ...)."""

    out: Path
    files: list[Path]
    stems: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_inputs(cls, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                    recursive: bool = False) -> BatchPlan:
        """Files, folders and glob patterns (see :func:`forgeloc.data.files.expand_inputs`)."""
        files, problems = expand_inputs(inputs, recursive)
        return cls(Path(out), files, output_stems(files), problems)

    def input_collisions(self) -> list[tuple[Path, Path]]:
        """``(output file, input file)`` pairs where an output of this run would replace an input.

        Compared by file identity (device, inode), so links, ``..`` and case-folding file systems
        cannot hide a collision.
        """
        inputs: dict[tuple[int, int], Path] = {}
        for p in self.files:
            ident = _identity(p)
            if ident is not None:
                inputs.setdefault(ident, p)
        planned = [f for stem in self.stems for f in output_files(self.out, stem).values()]
        planned += [self.out / n for n in RUN_FILES]
        clashes = []
        for target in planned:
            ident = _identity(target)
            if ident is not None and ident in inputs:
                clashes.append((target, inputs[ident]))
        return clashes

    def foreign_outputs(self, only: Sequence[int] | None = None) -> list[Path]:
        """Existing files this run will replace that are not outputs of the same image in the folder's
        previous ``results.json`` or progress files (a previous run's outputs of *another* image, or
        someone else's files). ``only``: the plan positions to check (a shard's), default all."""
        previous = _previous_outputs(self.out)
        foreign = []
        for index in range(len(self.files)) if only is None else only:
            path, stem = self.files[index], self.stems[index]
            source = os.path.realpath(path)
            for target in output_files(self.out, stem).values():
                if os.path.lexists(target) and previous.get(os.path.realpath(target)) != source:
                    foreign.append(target)
        return foreign


def _previous_outputs(out: Path) -> dict[str, str]:
    """``{output file: input file}`` (real paths) from ``out/results.json``, if a run left one."""
    previous: dict[str, str] = {}
    try:
        payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
        for row in payload.get("results", []):
            for written in (row.get("files") or {}).values():
                previous[os.path.realpath(written)] = os.path.realpath(row.get("path", ""))
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):  # not ours, or damaged: no claim
        previous = {}
    return {**previous, **journal_outputs(out)}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclass
class BatchItem:
    """One handled input, as given to ``on_result``: its row in ``results`` or its failure."""

    path: Path
    row: dict[str, Any] | None
    failure: dict[str, Any] | None
    processed: int
    total: int


@dataclass
class BatchSummary:
    """How a batch ended: the rows written to results.json, the failed inputs and the run's info."""

    out: Path
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    info: dict[str, Any]
    #: ``report.html``, when this summary's step wrote one (set by a merge of shards).
    report_file: Path | None = None

    @property
    def processed(self) -> int:
        return int(self.info.get("processed", 0))

    @property
    def total(self) -> int:
        return int(self.info.get("total", 0))

    @property
    def complete(self) -> bool:
        return bool(self.info.get("complete"))


def stop_reason(error: BaseException | None) -> str | None:
    """What ``info["stopped"]`` says for a run ended by ``error`` (None: it was not stopped)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl+C)"
    if error is None:
        return None
    return str(error) if isinstance(error, OutputFolderError) else f"{type(error).__name__}: {error}"


class BatchPrediction:
    """Predict a :class:`BatchPlan`'s files, or a :class:`~forgeloc.inference.shards.Shard`'s share
    of them, into its folder (which must exist and be writable).

    :meth:`start` opens the shard's progress file and works out what is left (:attr:`todo`; the
    images done by an earlier run of the same command are :attr:`already_done`); :meth:`run` starts
    if needed and returns a :class:`BatchSummary`; an exception (Ctrl+C included) ends the run, the
    results so far are saved, and the exception is raised again. Until then :attr:`summary` holds
    the partial state, and :attr:`save_error` the error that kept the results from being saved, if any.
    ``progress``: called as each image's windows and cues run (see :meth:`Predictor.iter_predict`).
    A single run (no shard, or ``0/1``) writes results.json / results.csv / report.html; a shard of
    a split run writes only its progress file, for :func:`~forgeloc.inference.shards.merge_shards`.
    """

    def __init__(self, predictor: Predictor, plan: BatchPlan, *, mode: str = "auto", batch_size: int = 4,
                 report: bool = True, command: str | Sequence[str] | None = None,
                 on_result: Callable[[BatchItem], None] | None = None,
                 flush_seconds: float = FLUSH_SECONDS, flush_max_share: float = FLUSH_MAX_SHARE,
                 progress: Callable[[int, int, str], None] | None = None, shard: Shard | None = None,
                 resume: bool = True) -> None:
        self.predictor, self.plan, self.out = predictor, plan, plan.out
        self.mode, self.batch_size, self.report, self.command = mode, batch_size, report, command
        self.on_result = on_result
        self.progress = progress  # each image's windows and cues (Predictor.iter_predict's ``progress``)
        self.flush_seconds, self.flush_max_share = flush_seconds, flush_max_share
        self.shard, self.resume = shard or Shard(), resume
        self.writer = ResultsWriter(self.out)
        self.problems = [{"name": Path(item).name, "path": item, "error": why} for item, why in plan.problems]
        # By plan position, so that results.json keeps the plan's order whatever was done when.
        self.rows: dict[int, dict[str, Any]] = {}
        self.failures: dict[int, dict[str, Any]] = {}
        self.entries: dict[int, Any] = {}
        self.todo: list[int] = list(self.selection)
        self.already_done = 0
        self.notes: list[str] = []
        self.journal: ShardJournal | None = None
        self.processed = 0
        self.save_error: OSError | None = None
        self.info = {k: v for k, v in predictor.describe().items() if v is not None}
        self.info["mode"] = mode

    @property
    def selection(self) -> range:
        """This run's plan positions (all of them for a single run)."""
        return self.shard.indices(len(self.plan.files))

    @property
    def split(self) -> bool:
        """Whether this is one shard of several (then the run files are the merge step's)."""
        return self.shard.count > 1

    @property
    def journal_path(self) -> Path:
        return self.out / SHARDS_FOLDER / self.shard.journal_name

    @property
    def summary(self) -> BatchSummary:
        self._sync_writer()
        return BatchSummary(self.out, self.writer.rows, self.writer.failures, self.info)

    def _sync_writer(self) -> None:
        self.writer.rows = [self.rows[i] for i in sorted(self.rows)]
        self.writer.failures = self.problems + [self.failures[i] for i in sorted(self.failures)]

    def start(self) -> None:
        """Open the progress file, take back the images an earlier run of the same command did, and
        leave the rest in :attr:`todo`; :attr:`notes` says what was dropped and why."""
        if self.journal is not None:
            return
        from forgeloc.inference.shards import decode_entry

        header = {"shard": [self.shard.index, self.shard.count], "plan": plan_fingerprint(self.plan),
                  "total": len(self.plan.files), "problems": [list(p) for p in self.plan.problems],
                  "settings": run_settings(self.predictor, self.mode), "info": self.info, "report": self.report,
                  "command": command_text(self.command)}
        try:
            self.journal = ShardJournal.open(self.plan, self.shard, header, resume=self.resume,
                                             need_entries=self.report)
        except OSError as err:
            raise OutputFolderError(f"cannot write into {self.journal_path.parent}: {err.strerror or err}") from err
        self.notes = list(self.journal.notes)
        for index, record in self.journal.done.items():
            self.rows[index] = record["row"]
            if self.report:
                self.entries[index] = decode_entry(record["entry"])
        self.already_done = len(self.journal.done)
        self.todo = [i for i in self.selection if i not in self.journal.done]

    def run(self) -> BatchSummary:
        error: BaseException | None = None
        try:
            self.start()
            self._predict_all()
        except BaseException as err:  # every way out keeps the results; raised again below
            error = err
        self._save(error)
        if error is not None:
            raise error
        return self.summary

    def _predict_all(self) -> None:
        from forgeloc.inference.predictor import PredictionFailure

        paths = [self.plan.files[i] for i in self.todo]
        identities: dict[int, Any] = {}

        def stat_then_read() -> Iterator[Path]:  # lazily, as the predictor reads: the identity is never newer
            for index, path in zip(self.todo, paths, strict=True):
                identities[index] = source_identity(path)
                yield path

        last_flush, flush_every = time.monotonic(), self.flush_seconds
        results = self.predictor.iter_predict(stat_then_read(), batch_size=self.batch_size, mode=self.mode,
                                              skip_errors=True, names=[p.name for p in paths], progress=self.progress)
        for index, path, result in zip(self.todo, paths, results, strict=True):
            if isinstance(result, PredictionFailure):
                row, failure = None, {**result.to_dict(), "path": str(path)}
            else:
                row, failure = self._write_one(index, path, result)
            if failure is not None:
                self.failures[index] = failure
            self._journal(self.journal.record, index, path, identities.pop(index), row=row, failure=failure,
                          entry=self.entries.get(index))
            self.processed += 1
            if self.on_result is not None:
                self.on_result(BatchItem(path, row, failure, self.processed, len(self.todo)))
            if not self.split and time.monotonic() - last_flush >= flush_every:
                started = time.monotonic()
                self._write_tables({**self.info, "complete": False, "processed": self.already_done + self.processed,
                                    "total": len(self.selection)})
                last_flush = time.monotonic()
                flush_every = max(self.flush_seconds, (last_flush - started) / self.flush_max_share)

    def _journal(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Append to the progress file; failing to is the output folder failing (the run stops)."""
        try:
            method(*args, **kwargs)
        except OSError as err:
            raise OutputFolderError(f"cannot write into {self.journal_path.parent}: {err.strerror or err}") from err

    def _write_one(self, index: int, path: Path, result: Prediction) -> tuple[dict | None, dict | None]:
        """Save one prediction's pictures: its row, or its failure when the file system refuses
        its output names; any other write error stops the run (:class:`OutputFolderError`)."""
        stem = self.plan.stems[index]
        targets = {kind: str(target) for kind, target in output_files(self.out, stem).items()}
        self._journal(self.journal.claim, index, path, targets)  # a kill from here on leaves files known as ours
        try:
            saved, overlay = write_image_outputs(result, self.out, stem)
        except OSError as err:
            if err.errno not in _NAME_ERRNOS:
                raise OutputFolderError(f"cannot write into {self.out}: {err.strerror or err}") from err
            why = f"its output files cannot be written: {err.strerror or err} ({Path(targets['heatmap']).name})"
            return None, {"name": path.name, "path": str(path), "error": why}
        row = {**result.to_dict(), "path": str(path), "files": saved}
        self.rows[index] = row
        if self.report:
            from forgeloc.inference.report import report_entry

            self.entries[index] = report_entry(result, overlay=overlay, files=saved, name=result.name,
                                               requested_mode=self.mode, input_size=self.predictor.input_size)
        return row, None

    def _write_tables(self, info: dict[str, Any]) -> None:
        self._sync_writer()
        try:
            self.writer.write(info)
        except OSError as err:
            raise OutputFolderError(f"cannot write into {self.out}: {err.strerror or err}") from err

    def _save(self, error: BaseException | None) -> None:
        """Close the progress file; for a single run write the final tables and the report. If that
        fails too, a run that ended well raises :class:`ResultsNotSavedError`; a run already ending
        by ``error`` keeps it in :attr:`save_error`."""
        stopped = stop_reason(error)
        self.info.update({"complete": error is None, "processed": self.already_done + self.processed,
                          "total": len(self.selection)})
        if stopped:
            self.info["stopped"] = stopped
        if self.journal is not None:
            self.journal.close()
        if self.split:
            return
        self._sync_writer()
        try:
            self.writer.write(self.info)
            if self.report:
                write_batch_report(self.out, self.info, [self.entries[i] for i in sorted(self.entries)],
                                   self.writer.failures, command=self.command)
        except OSError as werr:
            if error is None:
                raise ResultsNotSavedError(f"cannot write the results into {self.out}: {werr.strerror or werr}") \
                    from werr
            self.save_error = werr


def write_batch_report(out: Path, info: dict[str, Any], entries: Sequence[Any], failures: Sequence[dict[str, Any]],
                       command: str | Sequence[str] | None = None) -> None:
    """``out/report.html`` for a batch: its settings (``info``, as in results.json), its entries
    and failures (the one renderer for a single run and a merge of shards)."""
    from forgeloc.inference.predictor import PredictionFailure
    from forgeloc.inference.report import render_report

    mode = str(info.get("mode", "auto"))
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
    failed = [PredictionFailure(f["name"], f["path"], f["error"]) for f in failures]
    html = render_report(entries, shown, failed, describe=info, command=command, files_base=out)
    write_replacing(out / "report.html", html.encode("utf-8"))


def merge_shards(out: str | os.PathLike) -> BatchSummary:
    """Write ``out/results.json``, ``results.csv`` and (when the shards were run with the report)
    ``report.html`` from the shards' progress files in ``out/shards``, as one process running the
    whole plan would have written them (the report's date and command line aside). Raises
    :class:`~forgeloc.inference.shards.MergeError` when an image has no result yet or the files
    come from different inputs or settings."""
    from forgeloc.inference.shards import collect_shards

    out = Path(out)
    merged = collect_shards(out)
    writer = ResultsWriter(out)
    writer.rows, writer.failures = merged.rows, merged.failures
    writer.write(merged.info)
    report_file = None
    if merged.entries is not None:
        write_batch_report(out, merged.info, merged.entries, merged.failures, command=merged.command)
        report_file = out / "report.html"
    return BatchSummary(out, merged.rows, merged.failures, merged.info, report_file)


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    recursive: bool = False,
    mode: str = "auto",
    batch_size: int = 4,
    report: bool = True,
    overwrite: bool = True,
    command: str | Sequence[str] | None = None,
    on_result: Callable[[BatchItem], None] | None = None,
    shard: Shard | None = None,
    resume: bool = True,
) -> BatchSummary:
    """Predict files, folders and glob patterns into ``out_dir``: ``<stem>_heatmap.png``,
    ``<stem>_overlay.png``, ``<stem>_predmask.png`` per image, ``results.json`` / ``results.csv``,
    and ``report.html`` with ``report``.

    Raises :class:`FileExistsError` when an output would replace an input file, or (with
    ``overwrite=False``) a file that is not an earlier output of the same image. Failed inputs are
    in the summary's ``failures``; see :class:`BatchPrediction` for how a stopped run ends.

    Images an earlier call with the same inputs and settings finished are not predicted again
    (``resume=False`` predicts everything). ``shard``: predict only that share of the inputs and
    leave the run files to :func:`~forgeloc.inference.shards.merge_shards`.
    """
    plan = BatchPlan.from_inputs(inputs, out_dir, recursive)
    clashes = plan.input_collisions()
    if clashes:
        target, source = clashes[0]
        raise FileExistsError(f"{plan.out} would overwrite the input file {source} (an output is named {target.name})")
    plan.out.mkdir(parents=True, exist_ok=True)
    selection = (shard or Shard()).indices(len(plan.files))
    if not overwrite and (foreign := plan.foreign_outputs(selection)):
        raise FileExistsError(f"{len(foreign)} existing file(s) in {plan.out} would be replaced, e.g. {foreign[0]}")
    return BatchPrediction(predictor, plan, mode=mode, batch_size=batch_size, report=report, command=command,
                           on_result=on_result, shard=shard, resume=resume).run()
