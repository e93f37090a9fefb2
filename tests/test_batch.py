"""forgeloc.inference.batch: the library behind ``forgeloc predict`` (plan, run, one results writer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import PixelModel

from forgeloc.inference import Predictor
from forgeloc.inference.batch import BatchPlan, predict_files


def _photos(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)


def test_predict_files_writes_pictures_tables_and_failures(tmp_path):
    _photos(tmp_path / "in", ["b.png", "a.png"])
    (tmp_path / "in" / "c.png").write_bytes(b"not an image")
    seen = []
    summary = predict_files(Predictor(PixelModel(), input_size=16), [tmp_path / "in", tmp_path / "missing.png"],
                            tmp_path / "out", report=False, on_result=lambda item: seen.append(item.path.name))
    assert seen == ["a.png", "b.png", "c.png"]  # deterministic: each folder sorted
    assert summary.complete and summary.processed == 3 and summary.total == 3
    assert [r["name"] for r in summary.rows] == ["a.png", "b.png"]
    assert sorted(Path(f["path"]).name for f in summary.failures) == ["c.png", "missing.png"]
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["results"] == summary.rows and payload["info"]["complete"] is True
    assert (tmp_path / "out" / "a_predmask.png").is_file() and not (tmp_path / "out" / "report.html").exists()


def test_predict_files_refuses_to_overwrite_inputs_and_foreign_files(tmp_path):
    _photos(tmp_path, ["x.png", "x_heatmap.png"])
    predictor = Predictor(PixelModel(), input_size=16)
    with pytest.raises(FileExistsError, match="input file"):  # x.png's heatmap would replace x_heatmap.png
        predict_files(predictor, [tmp_path / "x.png", tmp_path / "x_heatmap.png"], tmp_path, report=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x_heatmap.png").write_bytes(b"someone's file")
    with pytest.raises(FileExistsError, match="would be replaced"):
        predict_files(predictor, [tmp_path / "x.png"], tmp_path / "out", overwrite=False)
    predict_files(predictor, [tmp_path / "x.png"], tmp_path / "out", report=True)
    assert (tmp_path / "out" / "report.html").is_file()
    # a second run replaces its own outputs: nothing foreign any more
    assert BatchPlan.from_inputs([tmp_path / "x.png"], tmp_path / "out").foreign_outputs() == []


def test_a_second_call_skips_what_is_done_and_a_shard_keeps_the_single_run_names(tmp_path):
    from forgeloc.inference.shards import Shard

    _photos(tmp_path / "in", ["a.png", "b.png", "c.png"])
    predictor = Predictor(PixelModel(), input_size=16)
    first = predict_files(predictor, [tmp_path / "in"], tmp_path / "out", report=False)
    seen = []
    again = predict_files(predictor, [tmp_path / "in"], tmp_path / "out", report=False, on_result=seen.append)
    assert seen == [] and again.rows == first.rows and again.processed == again.total == 3
    predict_files(predictor, [tmp_path / "in"], tmp_path / "out", report=False, resume=False, on_result=seen.append)
    assert [(item.processed, item.total) for item in seen] == [(1, 3), (2, 3), (3, 3)]
    share = predict_files(predictor, [tmp_path / "in"], tmp_path / "split", report=False, shard=Shard(1, 2))
    assert [r["name"] for r in share.rows] == ["b.png"] and not (tmp_path / "split" / "results.json").exists()
    assert [Path(f).name for f in share.rows[0]["files"].values()] == \
        [Path(f).name for f in first.rows[1]["files"].values()]
