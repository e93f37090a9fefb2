"""Sharded, resumable prediction: ``forgeloc predict --shard I/N`` + ``--merge``, ``torchrun``, and a
re-run that skips what is done (forgeloc.inference.shards on top of forgeloc.inference.batch).

"The same results as one process" means the same results.json, results.csv and report.html, file
by file, except for the timing fields and nothing else: in results.json each cue's run time
(``results[*].cues[*].extra.seconds``), in report.html the run's date and command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import _cli, make_tiny_checkpoint
from typer.testing import CliRunner

import forgeloc
from forgeloc.inference.batch import merge_shards, predict_files
from forgeloc.inference.shards import MergeError, Shard, read_journal

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size=64, widths=(4,), steps=1)


def _photos(folder: Path, n: int, side: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (side + 3 * i, side + 12, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _predict(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(_cli(), ["predict", *map(str, args)])
    assert result.exit_code == code, result.output
    return result.output


def _without_timing(value: object) -> object:
    """results.json less its only timing field, each cue's ``extra.seconds``."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _run_files(out: Path) -> dict[str, object]:
    """What a run leaves for its users, less exactly the fields that may differ between two runs."""
    report = (out / "report.html").read_text(encoding="utf-8")
    report, dated = re.subn(r'(<dd class="run-date">)[^<]*', r"\1", report)
    report, commanded = re.subn(r'(<dd class="run-command">)[^<]*', r"\1", report)
    assert dated == commanded == 1
    pictures = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    return {"json": _without_timing(json.loads((out / "results.json").read_text())),
            "csv": (out / "results.csv").read_text(), "report": report, "pictures": pictures}


def _reference(tmp_path: Path, checkpoint: Path, inputs: Path, *options: object, code: int = 0) -> dict[str, object]:
    """The files of one uninterrupted single-process run into ``tmp_path/out`` (the folder is then
    moved away, so the run under test writes the very same paths)."""
    out = tmp_path / "out"
    _predict(inputs, "-k", checkpoint, "--out", out, *options, code=code)
    files = _run_files(out)
    shutil.move(out, tmp_path / "reference")
    return files


def _done_records(out: Path) -> list[int]:
    return [r["index"] for path in sorted((out / "shards").glob("*.jsonl")) for r in read_journal(path)[1]
            if "row" in r]


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}


# --------------------------------------------------------------------------------------------------
# Splitting the work
# --------------------------------------------------------------------------------------------------
def test_shards_are_disjoint_cover_the_plan_and_parse_strictly():
    shares = [list(Shard(i, 3).indices(7)) for i in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Shard.parse(" 1 / 4 ") == Shard(1, 4) and str(Shard(1, 4)) == "1/4"
    for bad in ("2/2", "a/b", "0/0", "-1/2", "1", "1/2/3"):
        with pytest.raises(ValueError, match="0 <= I < N"):
            Shard.parse(bad)


@pytest.mark.parametrize("value", ["2/2", "a/b", "0/0"])
def test_bad_shard_values_are_one_line_errors(tmp_path, checkpoint, value):
    _photos(tmp_path / "in", 1)
    result = CliRunner().invoke(_cli(), ["predict", str(tmp_path / "in"), "-k", str(checkpoint),
                                         "--out", str(tmp_path / "out"), "--shard", value])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    assert result.output.startswith("error: --shard") and value in result.output


def test_two_shards_and_a_merge_equal_one_process(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    _photos(inputs, 5)
    (inputs / "broken.png").write_bytes(b"not an image")  # a failed input keeps its place too
    reference = _reference(tmp_path, checkpoint, inputs, "--cues", "noise", code=1)
    out = tmp_path / "out"
    first = CliRunner().invoke(_cli(), ["predict", str(inputs), "-k", str(checkpoint), "--out", str(out),
                                        "--cues", "noise", "--shard", "0/2"])
    assert first.exit_code == 0 and "--merge" in first.output, first.output  # 00, 02, 04 (broken is 1/2's)
    assert not (out / "results.json").exists(), "a shard wrote the shared results.json"
    early = CliRunner().invoke(_cli(), ["predict", "--merge", str(out)])
    assert early.exit_code == 1 and "have no result yet" in early.output, early.output
    second = CliRunner().invoke(_cli(), ["predict", str(inputs), "-k", str(checkpoint), "--out", str(out),
                                         "--cues", "noise", "--shard", "1/2"])
    assert second.exit_code == 1 and "broken.png" not in first.output, second.output
    merged = CliRunner().invoke(_cli(), ["predict", "--merge", str(out)])
    assert merged.exit_code == 1 and "5 image(s) predicted" in merged.output, merged.output  # broken.png failed
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["results-0-of-2.jsonl", "results-1-of-2.jsonl"]
    assert _run_files(out) == reference


def test_merge_refuses_shards_made_with_other_settings(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    _photos(inputs, 3)
    predictor = forgeloc.load(str(checkpoint), device="cpu")
    predict_files(predictor, [inputs], tmp_path / "out", shard=Shard(0, 2), report=False)
    other = forgeloc.load(str(checkpoint), device="cpu", threshold=0.7)
    predict_files(other, [inputs], tmp_path / "out", shard=Shard(1, 2), report=False)
    with pytest.raises(MergeError, match=r"different settings \(threshold 0.5 → 0.7\)"):
        merge_shards(tmp_path / "out")
    predict_files(predictor, [inputs], tmp_path / "out", shard=Shard(1, 2), report=False)  # redone: merges
    assert [r["threshold"] for r in merge_shards(tmp_path / "out").rows] == [0.5, 0.5, 0.5]
    predict_files(predictor, [inputs / "00.png"], tmp_path / "out", shard=Shard(0, 3), report=False)
    with pytest.raises(MergeError, match="different inputs"):  # a stale shard of another list of inputs
        merge_shards(tmp_path / "out")


def test_two_gloo_processes_under_torchrun_equal_one_process(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    _photos(inputs, 5)  # 5 images on 2 ranks: 3 and 2
    reference = _reference(tmp_path, checkpoint, inputs, "--cues", "noise")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "forgeloc", "predict", str(inputs), "-k", str(checkpoint), "--out", str(out), "--cues", "noise",
               "--device", "cpu"]
    done = subprocess.run(command, env=_python_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr  # the command's messages go to stderr
    assert done.returncode == 0, output
    assert "shard 0/2: 3 image(s) predicted" in output and "shard 1/2: 2 image(s) predicted" in output
    assert "5 image(s) predicted; results in" in output  # rank 0 merged
    assert sorted(_done_records(out)) == [0, 1, 2, 3, 4]
    assert _run_files(out) == reference


# --------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------
def test_a_run_killed_partway_resumes_and_ends_as_an_uninterrupted_run(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    _photos(inputs, 24, side=56)
    reference = _reference(tmp_path, checkpoint, inputs, "--batch-size", "1")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "forgeloc", "predict", str(inputs), "-k", str(checkpoint), "--out", str(out),
               "--batch-size", "1"]
    process = subprocess.Popen(command, env=_python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "shards" / "results-0-of-1.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if journal.exists() and b'"row":' in journal.read_bytes():
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = len(_done_records(out))
    assert 1 <= before < 24, f"the run was not killed partway ({before} of 24 done)"

    again = subprocess.run(command, env=_python_env(), capture_output=True, text=True, timeout=300)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert f"{before} image(s) already done by an earlier run of this command; {24 - before} left" in output
    assert f"/{24 - before} " in output  # the progress bar counts what is left
    assert sorted(_done_records(out)) == list(range(24))  # every image exactly once
    assert _run_files(out) == reference


def test_resume_keeps_overwrite_protection_and_redoes_changed_inputs(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    paths = _photos(inputs, 4)
    out = tmp_path / "out"
    predictor = forgeloc.load(str(checkpoint), device="cpu")
    seen: list[str] = []
    predict_files(predictor, [inputs], out, report=False)
    # As if killed after 03's pictures were written but before its record: its claim stays, and a
    # torn last line follows. The resume redoes 03 without calling its own pictures foreign.
    journal = out / "shards" / "results-0-of-1.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert b'"claim":3' in lines[-2] and b'"index":3' in lines[-1]
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(paths[1])  # a changed input is predicted again
    summary = predict_files(predictor, [inputs], out, report=False, overwrite=False,
                            on_result=lambda item: seen.append(item.path.name))
    assert seen == ["01.png", "03.png"] and summary.complete
    assert [r["name"] for r in summary.rows] == ["00.png", "01.png", "02.png", "03.png"]
    assert summary.rows[1]["width"] == 30
    # someone else's file where an output will go is still refused
    (out / "04_heatmap.png").write_bytes(b"someone's file")
    _photos(tmp_path / "more", 5)
    with pytest.raises(FileExistsError, match="would be replaced"):
        predict_files(predictor, [tmp_path / "more"], out, report=False, overwrite=False)


def test_changed_settings_are_said_and_everything_is_predicted_again(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    _photos(inputs, 2)
    out = tmp_path / "out"
    _predict(inputs, "-k", checkpoint, "--out", out)
    again = _predict(inputs, "-k", checkpoint, "--out", out, "--threshold", "0.7")
    assert "settings changed" in again and "threshold 0.5 → 0.7" in again and "already done" not in again
    payload = json.loads((out / "results.json").read_text())
    assert [r["threshold"] for r in payload["results"]] == [0.7, 0.7]
    same = _predict(inputs, "-k", checkpoint, "--out", out, "--threshold", "0.7")
    assert "2 image(s) already done" in same
    fresh = _predict(inputs, "-k", checkpoint, "--out", out, "--threshold", "0.7", "--no-resume")
    assert "already done" not in fresh and "2/2" in fresh
