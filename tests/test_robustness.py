"""``forgeloc robustness``: the clean row is the plain evaluation, runs repeat, the CLI writes its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import forgeloc
from forgeloc.engine.checkpointing import write_model_folder
from forgeloc.engine.robustness import (
    build_conditions,
    checkpoint_names,
    robustness_figure,
    run_robustness,
)

SIZE = 32


def _dataset(root: Path, n: int = 6) -> Path:
    """``n`` tampered 40×48 images (bright rectangle pasted on texture) and one authentic image."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n + 1):
        img = rng.integers(40, 200, (40, 48, 3), dtype=np.uint8)
        img_path = root / f"img{i}.png"
        if i < n:
            mask = np.zeros((40, 48), np.uint8)
            y, x = rng.integers(2, 20), rng.integers(2, 26)
            mask[y: y + 14, x: x + 18] = 255
            img[mask > 0] = np.clip(img[mask > 0].astype(int) + 50, 0, 255).astype(np.uint8)
            Image.fromarray(mask).save(root / f"mask{i}.png")
            entries.append([str(img_path), str(root / f"mask{i}.png")])
        else:
            entries.append([str(img_path), "Negative"])
        Image.fromarray(img).save(img_path)
    path = root / "dataset.json"
    path.write_text(json.dumps(entries))
    return path


def _checkpoint(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = forgeloc.create_model("unet_baseline_tiny")
    write_model_folder(folder, model.state_dict(),
                       {"model": "unet_baseline_tiny", "input": {"mode": "resize", "size": SIZE}})
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny 32-px models: one thread is ~20x faster than two on a loaded 2-core machine (no spin-waits).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    return {"data": _dataset(root / "data"), "a": _checkpoint(root / "run_a", 0), "b": _checkpoint(root / "run_b", 1),
            "root": root}


def _same(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    return all((isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


EXTRA = ("level", "run", "dataset", "perturbation", "condition")


def test_clean_condition_equals_plain_evaluation(setup, tmp_path):
    from forgeloc.engine.data import build_eval_loader
    from forgeloc.engine.evaluate import evaluate
    from forgeloc.engine.testing import eval_setup

    result = run_robustness(
        [setup["a"]], {"toy": str(setup["data"])}, tmp_path, perturbations="blur,noise",
        levels={"blur": [0, 3, 3, 23], "noise": [23]}, plot=False, num_workers=0, device="cpu",
    )
    rows = result["rows"]
    # Level 0 is the clean run (evaluated once), repeated levels once.
    assert list(rows) == ["none", "blur k=3", "blur k=23", "noise var=23 (std 4.80)"]
    model, cfg, info, _ = eval_setup(setup["a"], num_workers=0, device="cpu")
    plain = evaluate(model, build_eval_loader(str(setup["data"]), cfg, info, size=SIZE), info.device,
                     definition=cfg.eval.definition, threshold=cfg.eval.threshold, image_score=cfg.eval.image_score)
    clean = {k: v for k, v in rows["none"].items() if k not in EXTRA}
    assert _same(clean, plain)
    assert rows["none"]["perturbation"] == "none" and rows["none"]["level"] == 0
    # The perturbations really reached the model.
    assert rows["blur k=23"]["pixel_auc"] != plain["pixel_auc"]
    assert rows["noise var=23 (std 4.80)"]["pixel_auc"] != plain["pixel_auc"]
    assert rows["blur k=3"]["n_images"] == plain["n_images"] == 7
    # Tables: md/csv/json; JSON meta with hash, seed, levels and parameters.
    data = json.loads((tmp_path / "robustness.json").read_text())
    meta = data["meta"]
    assert meta["seed"] == 42 and meta["definition"] == "forgeloc"
    (ckpt,) = meta["checkpoints"].values()
    assert len(ckpt["weights_sha256"]) == 64
    assert meta["perturbations"]["blur"]["levels"] == [3, 23]
    assert meta["perturbations"]["blur"]["parameters"]["blur k=23"]["sigma"] == pytest.approx(3.8)
    assert meta["perturbations"]["noise"]["parameters"]["noise var=23 (std 4.80)"]["std"] == pytest.approx(4.7958)
    csv = (tmp_path / "robustness.csv").read_text().splitlines()
    assert csv[0].startswith("condition,pixel_f1") and "level" in csv[0] and len(csv) == 5
    assert "| blur k=23 |" in (tmp_path / "robustness.md").read_text()


def test_same_seed_same_numbers_other_seed_other_noise(setup, tmp_path):
    kwargs = dict(perturbations="noise,jpeg", levels={"noise": [19], "jpeg": [50]}, plot=False, num_workers=0,
                  device="cpu")
    first = run_robustness([setup["a"]], {"toy": str(setup["data"])}, tmp_path / "1", seed=7, **kwargs)["rows"]
    again = run_robustness([setup["a"]], {"toy": str(setup["data"])}, tmp_path / "2", seed=7, **kwargs)["rows"]
    other = run_robustness([setup["a"]], {"toy": str(setup["data"])}, tmp_path / "3", seed=8, **kwargs)["rows"]
    assert all(_same(first[k], again[k]) for k in first)
    assert _same(first["none"], other["none"])  # nothing random in the clean run
    noise = "noise var=19 (std 4.36)"
    assert first[noise]["pixel_auc"] != other[noise]["pixel_auc"]


def test_cli_two_checkpoints_tables_and_plot(setup, tmp_path):
    from forgeloc.cli import _register_commands, app

    _register_commands()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "robustness", "-k", f"A={setup['a']}", "-k", f"B={setup['b']}", "-d", f"toy={setup['data']}",
        "--perturb", "jpeg,noise,resize", "--levels", "jpeg=50,90", "--levels", "noise=3,23",
        "--levels", "resize=0.5", "--out", str(out), "--num-workers", "0", "--device", "cpu", "--batch-size", "3",
    ])
    assert result.exit_code == 0, result.output
    for stem in ("robustness", "compare_pixel_f1", "compare_pixel_auc"):
        for ext in ("md", "csv", "json"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    png = out / "robustness_toy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "robustness.json").read_text())
    rows = data["results"]
    assert {r["run"] for r in rows.values()} == {"A", "B"}
    assert len(rows) == 2 * (1 + 2 + 2 + 1)
    assert "A / jpeg q=50" in rows and "B / resize x0.5" in rows
    shas = {m["weights_sha256"] for m in data["meta"]["checkpoints"].values()}
    assert len(shas) == 2
    assert data["meta"]["jpeg_mode"].startswith("protocol")
    wide = json.loads((out / "compare_pixel_f1.json").read_text())["results"]
    assert wide["jpeg q=50"]["A"] == rows["A / jpeg q=50"]["pixel_f1"]
    assert wide["jpeg q=50"]["B"] == rows["B / jpeg q=50"]["pixel_f1"]
    # Both runs in one figure: legend entries, one panel per perturbation and metric.
    fig = robustness_figure(list(rows.values()), title="toy")
    try:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[:2] == ["A", "B"] and "clean" in labels[2]
        assert len(fig.axes) == 2 * 3
        xlabels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
        assert any("JPEG quality" in x for x in xlabels) and any("variance" in x for x in xlabels)
        assert any("q−1 or q per image" in x for x in xlabels) and any("scale factor" in x for x in xlabels)
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles == ["JPEG compression", "Gaussian noise", "resize down and up (forgeloc-only)"]
        # Two lines (A, B) of level points per panel.
        assert len([ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "o"]) == 2
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_cli_rejects_levels_for_an_unselected_perturbation(setup, tmp_path):
    from forgeloc.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, [
        "robustness", "-k", str(setup["a"]), "-d", str(setup["data"]), "--perturb", "jpeg",
        "--levels", "blur=3", "--out", str(tmp_path),
    ])
    assert result.exit_code == 2 and "blur" in result.output
    assert not (tmp_path / "robustness.json").exists()


def test_conditions_and_names():
    conds = build_conditions("jpeg", {"jpeg": [90, 0, 90, 50]}, jpeg_exact=True)
    assert [c.label for c in conds] == ["none", "jpeg q=90 exact", "jpeg q=50 exact"]
    assert [c.label for c in build_conditions("resize")] == ["none", "resize x0.25", "resize x0.5", "resize x0.75"]
    assert len(build_conditions(None)) == 1 + 6 + 6 + 6 + 3
    assert checkpoint_names(["runs/exp1", "runs/exp2/best", "w/model_x.safetensors", "mine=runs/exp3"]) == {
        "exp1": "runs/exp1", "exp2/best": "runs/exp2/best", "model_x": "w/model_x.safetensors",
        "mine": "runs/exp3",
    }
    assert checkpoint_names(["runs/r/checkpoints/epoch_0003"]) == {"r/epoch_0003": "runs/r/checkpoints/epoch_0003"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        checkpoint_names(["a/run", "b/run"])
