"""Sharded, resumable prediction: many processes (``--shard I/N``, ``torchrun``) share one
:class:`~forgeloc.inference.batch.BatchPlan`, each keeps a progress file of its own, and one merge
step writes the ``results.json`` / ``results.csv`` / ``report.html`` a single process would have.

* A shard ``I/N`` takes the plan's images ``I, I+N, I+2N, ...`` (round-robin: neighbours in a
  sorted folder are often alike in size, so every shard gets a similar mix). Output names are
  assigned over the whole plan, so a shard's files are named as in a single run.
* Its progress file ``OUT/shards/results-I-of-N.jsonl`` (a single run is shard ``0/1``) is a header
  line (the plan's fingerprint, the settings that change outputs, the run's info) and then one JSON
  line per handled image, appended as it is done: its row of ``results.json`` (or its failure),
  its report entry (pictures as base64 JPEGs) and the identity of the input it was made from (path,
  size, modification time). Before an image's pictures are written a ``claim`` line names them, so
  a run killed in between recognises them as its own. A line cut short by a kill is ignored.
* Re-running the same command reads the file back: an image is skipped when its record is there, its
  input has the same path, size and modification time and its output names are unchanged. Failed
  inputs are tried again. When the settings changed (detector or its weights, mode, threshold,
  cues, ...), the old records are dropped and the shard is predicted again, with a note that says
  what changed: results of two settings are never mixed.
* :func:`collect_shards` unites every progress file in ``OUT/shards`` that has the same plan and
  settings (several ``N`` too: re-sharding a run keeps its work) and refuses when images are
  missing or the files disagree; :func:`forgeloc.inference.batch.merge_shards` (``forgeloc predict
  --merge OUT``) writes the result as the run files, in plan order.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from forgeloc.inference.predictor import Predictor
    from forgeloc.inference.report import ReportEntry

__all__ = [
    "SHARDS_FOLDER",
    "MergeError",
    "MergedResults",
    "Shard",
    "ShardJournal",
    "collect_shards",
    "read_journal",
    "run_settings",
    "shard_from_environment",
]

#: Progress files live in this sub-folder of the output folder.
SHARDS_FOLDER = "shards"
_FORMAT = "forgeloc prediction shard"
_VERSION = 1
_JOURNAL_NAME = re.compile(r"results-(\d+)-of-(\d+)\.jsonl")
# Keys of Predictor.describe() that do not change what is written: the device differs between the
# ranks of a multi-GPU run, and an image's outputs do not depend on it.
_NOT_SETTINGS = frozenset({"device"})


class MergeError(Exception):
    """The shards in an output folder cannot be merged (missing images, different settings ...)."""


class BatchPlan(Protocol):
    """What this module reads of :class:`forgeloc.inference.batch.BatchPlan` (which imports this
    module, so it is not imported here)."""

    out: Path
    files: list[Path]
    stems: list[str]
    problems: list[tuple[str, str]]


# --------------------------------------------------------------------------------------------------
# Which share of the plan a process takes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count``: the plan's images ``index, index + count, ...``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"a shard is I/N with 0 <= I < N (e.g. 0/4), not {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` → ``Shard(2, 8)``; a ValueError says what is wrong in one line."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise ValueError(f"a shard is I/N with 0 <= I < N (e.g. 0/4), not {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise ValueError(f"a shard is I/N with 0 <= I < N (e.g. 0/4), not {text!r}")
        return cls(index, count)

    def indices(self, total: int) -> range:
        """This shard's positions in a plan of ``total`` images."""
        return range(self.index, total, self.count)

    @property
    def journal_name(self) -> str:
        return f"results-{self.index}-of-{self.count}.jsonl"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_from_environment() -> Shard | None:
    """The shard of a process started by ``torchrun`` (``RANK`` of ``WORLD_SIZE``), else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Shard(int(os.environ.get("RANK", "0")), world)


# --------------------------------------------------------------------------------------------------
# What must match for a record to be reused
# --------------------------------------------------------------------------------------------------
def _model_fingerprint(predictor: Predictor) -> str | None:
    """SHA-256 of the weights the predictor runs (a checkpoint's safetensors, a weights file, or the
    ``.onnx`` files of an export folder); ``None`` for training-free detectors."""
    from forgeloc.inference.report import weights_sha256

    checkpoint = predictor.info.get("checkpoint")
    if not checkpoint:
        return None
    digest = weights_sha256(checkpoint)
    path = Path(checkpoint)
    if digest is None and path.is_dir():
        parts = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.onnx"))]
        digest = hashlib.sha256("".join(parts).encode()).hexdigest() if parts else None
    return digest


def run_settings(predictor: Predictor, mode: str) -> dict[str, Any]:
    """Everything that changes an image's outputs: the predictor's description (model, checkpoint,
    threshold, cues, fused detectors, input size, overlap, amp ...) less the device, the weights'
    SHA-256, what runs them, the pixel limit and the prediction mode."""
    settings = {k: v for k, v in predictor.describe().items() if k not in _NOT_SETTINGS}
    if settings.get("checkpoint"):  # the same weights named from another folder are the same settings
        settings["checkpoint"] = os.path.realpath(settings["checkpoint"])
    settings.update({"mode": mode, "max_pixels": predictor.max_pixels, "weights_sha256": _model_fingerprint(predictor),
                     "network": None if predictor.model is None else type(predictor.model).__name__})
    return json.loads(json.dumps(settings, default=str))  # as it will read back from the file


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_fingerprint(plan: BatchPlan) -> str:
    """Identifies the plan's inputs, order and output names (shards of one run share it)."""
    return _digest([[str(p) for p in plan.files], plan.stems, [list(p) for p in plan.problems]])


def source_identity(path: str | os.PathLike) -> dict[str, int] | None:
    """Size and modification time of an input (``None`` when it cannot be read)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _changed_settings(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k} {_short(old.get(k))} → {_short(new.get(k))}" for k in keys[:3]]
    return "; ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------------
# Report entries as JSON
# --------------------------------------------------------------------------------------------------
def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def encode_entry(entry: ReportEntry) -> dict[str, Any]:
    """A report entry as JSON (pictures in base64)."""
    return _to_json(dataclasses.asdict(entry))


def decode_entry(data: dict[str, Any]) -> ReportEntry:
    """The inverse of :func:`encode_entry`."""
    from forgeloc.inference.report import CuePanel, ReportEntry

    fields = _from_json(data)
    cues = [CuePanel(**{**c, "facts": [tuple(f) for f in c.get("facts", [])]}) for c in fields.pop("cues", [])]
    return ReportEntry(**fields, cues=cues)


# --------------------------------------------------------------------------------------------------
# One shard's progress file
# --------------------------------------------------------------------------------------------------
def read_journal(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(header, records)`` of a progress file; lines that do not parse (one cut short by a kill)
    are skipped. ``(None, [])`` when there is no readable header."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError:
        return None, []
    parsed = []
    for line in lines:
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                parsed.append(item)
    if not parsed or parsed[0].get("format") != _FORMAT or parsed[0].get("version") != _VERSION:
        return None, []
    return parsed[0], parsed[1:]


@dataclass
class ShardJournal:
    """The open progress file of one shard: records already there that still hold, and an
    append-only handle for new ones (each record one ``write``, flushed to the OS at once)."""

    path: Path
    header: dict[str, Any]
    #: plan position → record reused from an earlier run (its row, report entry, input identity).
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: what the caller may want to tell the user (settings changed, inputs changed ...).
    notes: list[str] = field(default_factory=list)
    _fd: int | None = None

    @classmethod
    def open(cls, plan: BatchPlan, shard: Shard, header: dict[str, Any], *, resume: bool = True,
             need_entries: bool = False) -> ShardJournal:
        """Read ``plan.out/shards/<shard>.jsonl`` back (with ``resume``), keep the records that
        still hold, rewrite the file with only those, and open it for appending."""
        from forgeloc.io import atomic_write

        path = plan.out / SHARDS_FOLDER / shard.journal_name
        header = {"format": _FORMAT, "version": _VERSION, **header, "settings_id": _digest(header["settings"])}
        journal = cls(path, header)
        kept: list[dict[str, Any]] = []
        if resume and path.exists():
            kept = journal._reuse(plan, shard, need_entries)
        lines = [header, *kept]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_bytes(b"".join(_line(item) for item in lines)))
        journal._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return journal

    def _reuse(self, plan: BatchPlan, shard: Shard, need_entries: bool) -> list[dict[str, Any]]:
        """The earlier records of this shard that hold for ``plan`` (done images, and claims of
        images not done); fills :attr:`done` and :attr:`notes`."""
        old_header, records = read_journal(self.path)
        if old_header is None:
            self.notes.append(f"{self.path} could not be read: predicting this shard from the start")
            return []
        if old_header.get("settings_id") != self.header["settings_id"]:
            change = _changed_settings(old_header.get("settings") or {}, self.header["settings"])
            self.notes.append(f"the settings changed since the last run in {plan.out} ({change}): "
                              "its results are dropped and every image is predicted again")
            return []
        position = {str(plan.files[i]): i for i in shard.indices(len(plan.files))}
        latest: dict[int, dict[str, Any]] = {}
        claims: dict[int, dict[str, Any]] = {}
        for record in records:
            index = position.get(str(record.get("path")))
            if index is None:
                continue
            if "claim" in record:
                claims[index] = {**record, "claim": index}
            elif _still_holds(record, plan, index, need_entries):
                latest[index] = {**record, "index": index}
        self.done = dict(sorted(latest.items()))
        pending = [c for i, c in sorted(claims.items()) if i not in self.done]
        return [*self.done.values(), *pending]

    def claim(self, index: int, path: Path, files: dict[str, str]) -> None:
        """Say which files are about to be written for the image at ``index``."""
        self._append({"claim": index, "path": str(path), "files": files})

    def record(self, index: int, path: Path, source: dict[str, int] | None, *, row: dict[str, Any] | None = None,
               failure: dict[str, Any] | None = None, entry: ReportEntry | None = None) -> None:
        """Append the outcome for the image at ``index``: its row (and report entry) or its failure.
        ``source``: the input's :func:`source_identity`, taken before it was read."""
        item: dict[str, Any] = {"index": index, "path": str(path), "source": source}
        if row is not None:
            item["row"] = row
            if entry is not None:
                item["entry"] = encode_entry(entry)
        else:
            item["failure"] = failure
        self._append(item)

    def _append(self, item: dict[str, Any]) -> None:
        if self._fd is None:
            raise RuntimeError(f"{self.path} is closed")
        data = memoryview(_line(item))
        while data:  # one write for a whole line unless the OS takes less
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, separators=(",", ":")) + "\n").encode("utf-8")


def _still_holds(record: dict[str, Any], plan: BatchPlan, index: int, need_entries: bool) -> bool:
    """Whether an earlier record is this plan's result for ``plan.files[index]``: predicted (not
    failed), from the same input (size, modification time), under the same output names, with a
    report entry when the report needs one."""
    from forgeloc.inference.outputs import output_files

    row = record.get("row")
    if not isinstance(row, dict) or (need_entries and "entry" not in record):
        return False
    if record.get("source") is None or record.get("source") != source_identity(plan.files[index]):
        return False
    names = {k: str(v) for k, v in output_files(plan.out, plan.stems[index]).items()}
    return row.get("files") == names and all(os.path.exists(f) for f in names.values())


def journal_outputs(out: Path) -> dict[str, str]:
    """``{output file: input file}`` (real paths) named by the progress files in ``out/shards``:
    rows and claims alike (an image killed between its pictures and its record)."""
    outputs: dict[str, str] = {}
    folder = out / SHARDS_FOLDER
    if not folder.is_dir():
        return outputs
    for path in sorted(folder.glob("results-*-of-*.jsonl")):
        _, records = read_journal(path)
        for record in records:
            files = record.get("files") if "claim" in record else (record.get("row") or {}).get("files")
            for written in (files or {}).values():
                outputs[os.path.realpath(written)] = os.path.realpath(str(record.get("path", "")))
    return outputs


# --------------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------------
def _journals(out: Path) -> list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]:
    folder = out / SHARDS_FOLDER
    found = []
    for path in sorted(folder.glob("results-*-of-*.jsonl")) if folder.is_dir() else []:
        if _JOURNAL_NAME.fullmatch(path.name):
            header, records = read_journal(path)
            if header is None:
                raise MergeError(f"{path} is not a forgeloc progress file (or cannot be read)")
            found.append((path, header, records))
    if not found:
        raise MergeError(f"{out} holds no shard results to merge (expected {out / SHARDS_FOLDER}/results-I-of-N.jsonl, "
                         "written by forgeloc predict --shard I/N or under torchrun)")
    return found


def _one_run(found: list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]) -> dict[str, Any]:
    """The header every progress file agrees on; a MergeError names the odd ones out."""
    first_path, first, _ = found[0]
    for path, header, _ in found[1:]:
        if header.get("plan") != first.get("plan"):
            raise MergeError(f"{path.name} and {first_path.name} were run on different inputs (or output names): "
                             f"re-run the stale shard(s) on the same inputs, or delete their files from {path.parent}")
        if header.get("settings_id") != first.get("settings_id"):
            change = _changed_settings(first.get("settings") or {}, header.get("settings") or {})
            raise MergeError(f"{path.name} and {first_path.name} were run with different settings ({change}): "
                             f"re-run the stale shard(s), or delete their files from {path.parent}")
    return first


def _merged_info(headers: Iterable[dict[str, Any]], total: int) -> dict[str, Any]:
    headers = list(headers)
    info = dict(headers[0].get("info") or {})
    devices = sorted({str(h.get("info", {}).get("device")) for h in headers if h.get("info", {}).get("device")})
    if len(devices) > 1:  # the ranks of a multi-GPU run: each on its own device
        info["device"] = ", ".join(devices)
    info.update({"complete": True, "processed": total, "total": total})
    return info


@dataclass
class MergedResults:
    """What the shards of one run hold together, in plan order: the run files' content."""

    info: dict[str, Any]
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    #: report entries of the rows, when every shard made them (``None`` otherwise).
    entries: list[ReportEntry] | None
    command: str | None


def collect_shards(out: str | os.PathLike) -> MergedResults:
    """Unite the progress files in ``out/shards``; a :class:`MergeError` says why they cannot be
    (an image without a result yet, files from different inputs or settings)."""
    found = _journals(Path(out))
    header = _one_run(found)
    total = int(header["total"])
    results: dict[int, dict[str, Any]] = {}
    for _, _, records in found:
        for record in records:
            index = record.get("index")
            handled = isinstance(index, int) and 0 <= index < total and ("row" in record or "failure" in record)
            if handled and ("row" in record or index not in results):  # a success beats a failure
                results[index] = record
    missing = [i for i in range(total) if i not in results]
    if missing:
        count = min(h["shard"][1] for _, h, _ in found)
        raise MergeError(f"{len(missing)} of {total} image(s) have no result yet (e.g. position {missing[0]}, "
                         f"in shard {missing[0] % count}/{count}): run the missing shard(s) to the end first")
    rows = [results[i]["row"] for i in range(total) if "row" in results[i]]
    failures = [{"name": Path(item).name, "path": item, "error": why} for item, why in header["problems"]]
    failures += [results[i]["failure"] for i in range(total) if "row" not in results[i]]
    entries = [decode_entry(results[i]["entry"]) for i in range(total) if "entry" in results[i]]
    with_entries = all(h.get("report") for _, h, _ in found) and len(entries) == len(rows)
    return MergedResults(_merged_info((h for _, h, _ in found), total), rows, failures,
                         entries if with_entries else None, header.get("command"))


def command_text(command: str | Sequence[str] | None) -> str | None:
    """A command line as one string (as the report shows it)."""
    if command is None or isinstance(command, str):
        return command
    return shlex.join(str(c) for c in command)
