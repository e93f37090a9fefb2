"""Issue 19: runs, checkpoints, predictions and datasets must never lose or silently corrupt data.

Each test reproduces one reported failure (copied runs resumed into the original, predictions
written over ground truth, results lost on Ctrl+C, partial checkpoints, duplicate images with two
labels, out-of-range options, dangling links, unwritable output folders) on a tiny model and a
handful of 64 px images; everything runs in-process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

import forgeloc
from forgeloc.data.datasets import MASK_SUFFIXES, DatasetError, load_records
from forgeloc.engine.checkpointing import (
    STATE_FILE,
    complete_checkpoints,
    find_latest_checkpoint,
    load_resume_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    write_model_folder,
)
from forgeloc.engine.config import Config, load_config, validate_device
from forgeloc.engine.trainer import train


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _cli(*modules: str) -> typer.Typer:
    import importlib

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, so the command's name stays in the arguments
        pass

    for name in modules:
        importlib.import_module(f"forgeloc.cli.{name}").register(app)
    return app


class _Result:
    """A CliRunner result whose ``output`` has rich's line wrapping undone (messages searched whole)."""

    def __init__(self, result) -> None:
        self.exit_code, self.exception = result.exit_code, result.exception
        self.output = " ".join(result.output.split())


def _invoke(app: typer.Typer, args: list[str]) -> _Result:
    return _Result(CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"}))


def _png(path: Path, seed: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/train.json`` (6 images) and ``data/test.json`` (2 images), paths relative to the lists."""
    root = tmp_path_factory.mktemp("data")
    entries = []
    for i in range(8):
        img = _png(root / "img" / f"{i}.png", i)
        entries.append([f"img/{img.name}", f"masks/{_mask(root / 'masks' / f'{i}.png').name}" if i % 2 else "Negative"])
    (root / "train.json").write_text(json.dumps(entries[:6]))
    (root / "test.json").write_text(json.dumps(entries[6:]))
    return root


def _raw_config(train_json: str, test_json: str, out: str, **train_opts: object) -> dict:
    return {
        "model": {"name": "unet_baseline_tiny"},
        "data": {"train": [train_json], "test": {"heldout": test_json}, "input_size": 64, "augment": "none",
                 "num_workers": 0},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 2, "seed": 0, "max_steps_per_epoch": 1, "keep_last": 5,
                  "eval_every": 10, "tensorboard": False, "output_dir": out, **train_opts},
    }


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A finished 2-epoch run (checkpoints epoch_0000 and epoch_0001, TensorBoard on); tests copy it."""
    out = tmp_path_factory.mktemp("runs") / "base"
    cfg = Config.model_validate(_raw_config(str(data / "train.json"), str(data / "test.json"), str(out),
                                            tensorboard=True))
    train(cfg, device="cpu")
    return out


def _copy(run: Path, tmp_path: Path, name: str = "runA") -> Path:
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: what "nothing was written" compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forgeloc checkpoint folder of an untrained unet_baseline_tiny (64 px, resize)."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    write_model_folder(folder, model.state_dict(), {
        "model": "unet_baseline_tiny", "model_kwargs": dict(model.model_kwargs),
        "input": {"mode": "resize", "size": 64}, "threshold": 0.5, "image_score": "max",
    })
    return folder


# --------------------------------------------------------------------------------------------------
# 1. A resume writes where it was pointed, records absolute paths, writes nothing until it can start
# --------------------------------------------------------------------------------------------------
def test_resuming_a_copied_run_writes_into_the_copy_not_the_original(tmp_path: Path, base_run: Path) -> None:
    run_a = base_run
    run_b = _copy(run_a, tmp_path, "runB")
    before_a = _snapshot(run_a)

    result = _invoke(_cli("train"), ["train", "--resume", run_b, "train.epochs=3", "train.tensorboard=false",
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _snapshot(run_a) == before_a, "resuming the copy wrote into the original run"
    assert (run_b / "checkpoints" / "epoch_0002").is_dir()
    assert (run_b / "checkpoints" / "latest").read_text().strip() == "epoch_0002"
    saved = yaml.safe_load((run_b / "config.yaml").read_text())
    assert saved["train"]["output_dir"] == str(run_b.resolve())
    assert len((run_b / "log.jsonl").read_text().splitlines()) > len((run_a / "log.jsonl").read_text().splitlines())

    # A checkpoint folder of the copy continues the copy too.
    run_c = _copy(run_a, tmp_path, "runC")
    result = _invoke(_cli("train"), ["train", "--resume", run_c / "checkpoints" / "epoch_0000", "train.epochs=3",
                                     "train.tensorboard=false", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _snapshot(run_a) == before_a
    assert (run_c / "checkpoints" / "epoch_0002").is_dir()


def test_quickstart_style_run_with_relative_paths_resumes(tmp_path: Path, data: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The quickstart builds its Config with paths relative to the working directory; the run's
    config.yaml must still find the data when ``--resume`` reads it."""
    work = tmp_path / "work"
    shutil.copytree(data, work / "qs" / "data")
    monkeypatch.chdir(work)
    cfg = Config.model_validate(_raw_config("qs/data/train.json", "qs/data/test.json", "qs/run"))
    train(cfg, device="cpu")
    saved = yaml.safe_load((work / "qs" / "run" / "config.yaml").read_text())
    assert saved["data"]["train"][0]["path"] == str(work / "qs" / "data" / "train.json")
    assert saved["data"]["test"]["heldout"] == str(work / "qs" / "data" / "test.json")

    result = _invoke(_cli("train"), ["train", "--resume", "qs/run", "train.epochs=3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (work / "qs" / "run" / "checkpoints" / "epoch_0002").is_dir()

    # A run folder written before paths were recorded absolute: relative paths, resumed from the
    # directory it was started in.
    saved["data"]["train"][0]["path"] = "qs/data/train.json"
    saved["data"]["test"]["heldout"] = "qs/data/test.json"
    (work / "qs" / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    result = _invoke(_cli("train"), ["train", "--resume", "qs/run", "train.epochs=4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (work / "qs" / "run" / "checkpoints" / "epoch_0003").is_dir()


def test_a_resume_that_cannot_start_writes_nothing(tmp_path: Path, base_run: Path) -> None:
    run = _copy(base_run, tmp_path)
    before = _snapshot(run)
    app = _cli("train")
    result = _invoke(app, ["train", "--resume", run, f"data.test.gone={tmp_path / 'missing.json'}", "train.epochs=3",
                           "--device", "cpu"])
    assert result.exit_code == 1 and "dataset not found" in result.output and "Traceback" not in result.output
    assert _snapshot(run) == before, "a resume that failed on missing data wrote into the run"

    for ckpt in (run / "checkpoints").glob("epoch_*"):
        (ckpt / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    result = _invoke(app, ["train", "--resume", run, "train.epochs=3", "--device", "cpu"])
    assert result.exit_code == 1 and "no readable checkpoint" in result.output, result.output
    assert STATE_FILE in result.output
    assert {k: v for k, v in _snapshot(run).items() if not k.endswith(STATE_FILE)} == \
        {k: v for k, v in before.items() if not k.endswith(STATE_FILE)}


# --------------------------------------------------------------------------------------------------
# 4. Partial checkpoint writes are cleaned up; a damaged newest checkpoint falls back to the previous
# --------------------------------------------------------------------------------------------------
def test_disk_full_during_a_checkpoint_leaves_no_temporary_folder(tmp_path: Path, base_run: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy(base_run, tmp_path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    result = _invoke(_cli("train"), ["train", "--resume", run, "train.epochs=3", "train.tensorboard=false",
                                     "--device", "cpu"])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert not list((run / "checkpoints").glob(".*tmp*")), "a failed checkpoint write left its temporary folder"
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch_0001"

    monkeypatch.setattr(torch, "save", real_save)
    # A temporary folder left by a killed process (pid that no longer runs) is ignored and removed.
    stale = run / "checkpoints" / ".epoch_0002.tmp999999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert find_latest_checkpoint(run) == run / "checkpoints" / "epoch_0001"
    result = _invoke(_cli("train"), ["train", "--resume", run, "train.epochs=3", "train.tensorboard=false",
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch_0002"


def test_truncated_train_state_falls_back_to_the_previous_checkpoint(tmp_path: Path, base_run: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    run = _copy(base_run, tmp_path)
    damaged = run / "checkpoints" / "epoch_0001" / STATE_FILE
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        ckpt, state, _ = load_resume_checkpoint(run)
    assert ckpt == run / "checkpoints" / "epoch_0000" and state["epoch"] == 0
    assert str(damaged) in caplog.text and "epoch_0000" in caplog.text

    cfg = load_config(run / "config.yaml", ["train.epochs=2", "train.tensorboard=false"])
    result = train(cfg, resume=run, device="cpu")
    assert [r["epoch"] for r in result.history if r["type"] == "train"] == [0, 1]
    assert load_resume_checkpoint(run)[0] == run / "checkpoints" / "epoch_0001"  # rewritten, readable


def test_checkpoint_helpers_clean_up(tmp_path: Path) -> None:
    sd = forgeloc.create_model("unet_baseline_tiny", widths=(4,)).state_dict()
    state = {"optimizer": {}, "scaler": {}, "epoch": 0, "history": []}
    first = save_checkpoint(tmp_path, 0, sd, {"model": "unet_baseline_tiny"}, state)
    # A best/ being replaced when the process died: moved aside, new one not in place yet.
    (tmp_path / ".best.old999999999").mkdir()
    (tmp_path / ".best.tmp999999999").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".best.tmp999999999"]
    assert (tmp_path / "best").is_dir() and not (tmp_path / ".best.old999999999").exists()
    assert complete_checkpoints(tmp_path) == [first]


# --------------------------------------------------------------------------------------------------
# 2. predict never overwrites an input and never writes names that read as ground truth
# --------------------------------------------------------------------------------------------------
def test_predict_into_the_input_folder_keeps_the_ground_truth(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    _png(folder / "a.png", 1)
    gt = _mask(folder / "a_mask.png")
    gt_bytes = gt.read_bytes()
    app = _cli("predict")
    result = _invoke(app, ["predict", checkpoint, folder, "--out", folder])
    assert result.exit_code == 0, result.output
    assert gt.read_bytes() == gt_bytes, "the ground-truth mask was overwritten by a prediction"
    payload = json.loads((folder / "results.json").read_text())
    written = [Path(f) for row in payload["results"] for f in row["files"].values()]
    assert len(written) == 6 and all(p.is_file() for p in written)
    for p in written:  # no output can be paired with an image as its ground truth
        assert not any(p.stem.lower().endswith(s) for s in MASK_SUFFIXES), p.name
    assert (folder / "a_predmask.png").is_file()

    # Running again into the same folder: the folder's images now include the earlier outputs,
    # which this run's outputs would replace. Refused, nothing touched.
    before = _snapshot(folder)
    result = _invoke(app, ["predict", checkpoint, folder, "--out", folder])
    assert result.exit_code == 2 and "would overwrite the input file" in result.output, result.output
    assert _snapshot(folder) == before

    # An input given by another spelling (../) is recognised too.
    other = tmp_path / "other"
    _png(other / "x.png", 2)
    _png(other / "x_heatmap.png", 3)
    result = _invoke(app, ["predict", checkpoint, other / ".." / "other" / "x.png", other / "x_heatmap.png",
                           "--out", other])
    assert result.exit_code == 2 and "x_heatmap.png" in result.output


def test_predict_says_when_it_replaces_files_it_did_not_write_for_that_image(tmp_path: Path,
                                                                             checkpoint: Path) -> None:
    app = _cli("predict")
    _png(tmp_path / "a" / "x.png", 1)
    _png(tmp_path / "b" / "x.png", 2)
    out = tmp_path / "out"
    assert _invoke(app, ["predict", checkpoint, tmp_path / "a" / "x.png", "--out", out]).exit_code == 0
    again = _invoke(app, ["predict", checkpoint, tmp_path / "a" / "x.png", "--out", out])
    assert again.exit_code == 0 and "warning" not in again.output  # the same image: a plain rerun
    other = _invoke(app, ["predict", checkpoint, tmp_path / "b" / "x.png", "--out", out])
    assert other.exit_code == 0 and "warning" in other.output and "x_heatmap.png" in other.output


# --------------------------------------------------------------------------------------------------
# 3. predict keeps its results on every way out; a bad file name fails one input only
# --------------------------------------------------------------------------------------------------
def _photos(folder: Path, n: int) -> list[Path]:
    return [_png(folder / f"{i}.png", i) for i in range(n)]


def _stop_after(monkeypatch: pytest.MonkeyPatch, n: int, exc: BaseException, seen: list | None = None,
                out: Path | None = None) -> None:
    from forgeloc.inference.predictor import Predictor

    real = Predictor.iter_predict

    def iter_predict(self, items, **kwargs):
        for i, result in enumerate(real(self, items, **kwargs)):
            if i == n:
                if seen is not None and out is not None:
                    seen.append(len(json.loads((out / "results.json").read_text())["results"]))
                raise exc
            yield result

    monkeypatch.setattr(Predictor, "iter_predict", iter_predict)


def test_ctrl_c_in_predict_keeps_the_results_so_far(tmp_path: Path, checkpoint: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import forgeloc.cli.predict as predict_cli

    _photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    seen: list[int] = []
    monkeypatch.setattr(predict_cli, "FLUSH_SECONDS", 0.0)  # rewritten after every image
    monkeypatch.setattr(predict_cli, "FLUSH_MAX_SHARE", float("inf"))
    _stop_after(monkeypatch, 3, KeyboardInterrupt(), seen, out)
    result = _invoke(_cli("predict"), ["predict", checkpoint, tmp_path / "in", "--out", out, "--report",
                                       "--batch-size", "1"])
    assert result.exit_code == 130, result.output
    assert seen == [3], "results.json was not kept up to date while predicting"
    payload = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in payload["results"]] == ["0.png", "1.png", "2.png"]
    assert payload["info"]["complete"] is False and "interrupted" in payload["info"]["stopped"]
    assert payload["info"]["processed"] == 3 and payload["info"]["total"] == 5
    assert len((out / "results.csv").read_text().splitlines()) == 4
    assert (out / "report.html").is_file()


def test_an_error_in_predict_keeps_the_results_so_far(tmp_path: Path, checkpoint: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    _stop_after(monkeypatch, 2, RuntimeError("CUDA out of memory"))
    result = _invoke(_cli("predict"), ["predict", checkpoint, tmp_path / "in", "--out", out, "--batch-size", "1"])
    assert isinstance(result.exception, RuntimeError)
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["results"]) == 2 and "CUDA out of memory" in payload["info"]["stopped"]


def test_a_file_name_too_long_for_its_outputs_fails_that_input_only(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    _photos(folder, 2)
    long_name = "x" * 250 + ".png"  # 254 characters: readable, but "<stem>_heatmap.png" is too long
    try:
        _png(folder / long_name, 9)
    except OSError:
        pytest.skip("this file system does not take 254-character names")
    out = tmp_path / "out"
    result = _invoke(_cli("predict"), ["predict", checkpoint, folder, "--out", out])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    payload = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in payload["results"]] == ["0.png", "1.png"]
    assert [f["name"] for f in payload["failures"]] == [long_name]
    assert "too long" in payload["failures"][0]["error"].lower()
    assert not [p for p in out.iterdir() if p.name.startswith((".forgeloc", "xxxx"))]


# --------------------------------------------------------------------------------------------------
# 16. Dangling and looping links are failed inputs with a reason
# --------------------------------------------------------------------------------------------------
def test_dangling_and_looping_links_are_reported(tmp_path: Path, checkpoint: Path) -> None:
    from forgeloc.data.check import check_dataset

    folder = tmp_path / "in"
    _png(folder / "a.png", 1)
    os.symlink("nowhere.png", folder / "dangling.png")
    os.symlink("loop.png", folder / "loop.png")
    out = tmp_path / "out"
    result = _invoke(_cli("predict"), ["predict", checkpoint, folder, folder / "loop.png", "--out", out])
    assert result.exit_code == 1, result.output
    failures = json.loads((out / "results.json").read_text())["failures"]
    reasons = {Path(f["path"]).name: f["error"] for f in failures}
    assert set(reasons) == {"dangling.png", "loop.png"} and len(failures) == 3  # loop.png named twice
    assert "broken symbolic link" in reasons["dangling.png"] and "loop" in reasons["loop.png"]

    report = check_dataset(folder)
    errors = {Path(p.where).name: p.message for p in report.errors}
    assert "broken symbolic link" in errors["dangling.png"] and "loop" in errors["loop.png"]


# --------------------------------------------------------------------------------------------------
# 13. One image under two spellings is one image
# --------------------------------------------------------------------------------------------------
def test_duplicates_through_unnormalised_paths_are_detected(tmp_path: Path) -> None:
    from forgeloc.data.check import check_dataset

    _png(tmp_path / "img" / "0.png", 0)
    _png(tmp_path / "img" / "1.png", 1)
    _mask(tmp_path / "masks" / "0.png")
    rows = [["img/0.png", "masks/0.png"], ["img/../img/0.png", "Negative"], ["img/1.png", "Negative"],
            ["./img/1.png", "Negative"]]
    path = tmp_path / "list.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    report = check_dataset(path)
    errors = [p for p in report.errors if "opposite label" in p.message]
    assert len(errors) == 1 and errors[0].where.endswith("line 3"), report.problems
    assert any("listed again" in p.message and p.where.endswith("line 5") for p in report.warnings)
    with pytest.raises(DatasetError, match="opposite label"):
        load_records(path)

    # Tp/Gt/Au: the same file as a tampered and an authentic image (a link).
    root = tmp_path / "layout"
    _png(root / "Tp" / "t.png", 3)
    _mask(root / "Gt" / "t_gt.png")
    (root / "Au").mkdir()
    os.symlink(root / "Tp" / "t.png", root / "Au" / "t_copy.png")
    with pytest.raises(DatasetError, match="both authentic and tampered"):
        load_records(root)


# --------------------------------------------------------------------------------------------------
# 14 / 17. Options out of range, unknown devices, unwritable output folders: one-line errors
# --------------------------------------------------------------------------------------------------
def test_out_of_range_options_and_devices_are_refused(tmp_path: Path, checkpoint: Path, data: Path) -> None:
    _png(tmp_path / "a.png", 0)
    test_app, predict_app, train_app = _cli("test"), _cli("predict"), _cli("train")
    test_args = ["test", "-k", checkpoint, "-d", f"set={data / 'test.json'}", "-o", tmp_path / "res",
                 "--num-workers", "0"]
    for extra, message in ((["--threshold", "7"], "--threshold must be in [0, 1]"),
                           (["--threshold", "-0.1"], "--threshold must be in [0, 1]"),
                           (["--input-size", "0"], "--input-size must be a positive"),
                           (["--device", "tpu"], "unknown device 'tpu'")):
        result = _invoke(test_app, [*test_args, *extra])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    predict_args = ["predict", checkpoint, tmp_path / "a.png", "--out", tmp_path / "p"]
    for extra, message in ((["--max-pixels", "-5"], "--max-pixels must be a positive"),
                           (["--max-pixels", "0"], "--max-pixels must be a positive"),
                           (["--device", "tpu"], "unknown device 'tpu'")):
        result = _invoke(predict_app, [*predict_args, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    result = _invoke(train_app, ["train", "model.name=unet_baseline_tiny", "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output

    for override, key in (("eval.threshold=7", "threshold"), ("data.input_size=0", "input_size"),
                          ("data.max_pixels=-5", "max_pixels")):
        with pytest.raises(ValueError, match=key):
            load_config(None, ["model.name=unet_baseline_tiny", override])
    with pytest.raises(ValueError, match="unknown device"):
        validate_device("tpu")
    validate_device("cpu")
    validate_device(None)


@pytest.mark.parametrize("command", ["predict", "test"])
def test_unusable_output_folders_give_one_line_errors(tmp_path: Path, checkpoint: Path, data: Path, command: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "a.png", 0)
    app = _cli(command)
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")

    def args(out: Path) -> list:
        if command == "predict":
            return ["predict", checkpoint, tmp_path / "a.png", "--out", out]
        return ["test", "-k", checkpoint, "-d", f"set={data / 'test.json'}", "-o", out, "--num-workers", "0"]

    result = _invoke(app, args(a_file))
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
    result = _invoke(app, args(a_file / "sub" / "out"))
    assert result.exit_code == 2 and "is a file, so no folder can be made under it" in result.output, result.output

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root ignores permissions: refuse the write as a read-only mount would
            real_open = open

            def refuse(file, mode="r", *a, **k):
                if "w" in mode and Path(file).parent == read_only:
                    raise PermissionError(errno.EACCES, "Permission denied", str(file))
                return real_open(file, mode, *a, **k)

            monkeypatch.setattr("builtins.open", refuse)
        result = _invoke(app, args(read_only))
    finally:
        monkeypatch.undo()
        read_only.chmod(0o755)
    assert result.exit_code == 2 and "is not writable" in result.output and "Traceback" not in result.output, \
        result.output
    assert list(read_only.iterdir()) == []
