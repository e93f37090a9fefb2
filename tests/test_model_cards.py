"""Issue 20: writing a model card is part of training. ``forgeloc train`` puts one into each evaluated
checkpoint's config.json from its own validation numbers, labelled for what they are; the quickstart's
card keeps the "demo model" label; an unevaluated checkpoint stays an unvalidated model."""

from __future__ import annotations

import json
from pathlib import Path

import forgeloc
from forgeloc.engine.checkpointing import write_model_folder
from forgeloc.engine.config import Config
from forgeloc.engine.quickstart import DEMO_LABEL, demo_card, write_card
from forgeloc.engine.trainer import inference_config, is_synthetic_set, training_card

METRICS = {"heldout": {"pixel_f1": 0.4321, "pixel_auc": 0.81, "image_auc": 0.7, "n_images": 7.0, "loss": 0.5}}


def _config(tmp_path: Path, synthetic: bool) -> Config:
    test = tmp_path / "heldout"
    test.mkdir(exist_ok=True)
    (test / "dataset.json").write_text("[]")
    if synthetic:
        (test / "manifest.json").write_text(json.dumps({"generator": "forgeloc.synth"}))
    return Config.model_validate({
        "model": {"name": "unet_baseline_tiny"},
        "data": {"train": [{"path": str(tmp_path / "train" / "dataset.json"), "name": "my_train"}],
                 "test": {"heldout": str(test / "dataset.json")}, "input_size": 32},
        "train": {"epochs": 3},
    })


def _checkpoint(tmp_path: Path, config: dict) -> Path:
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    config = {**config, "model_kwargs": dict(model.model_kwargs)}
    write_model_folder(tmp_path / "ckpt", model.state_dict(), config)
    return tmp_path / "ckpt"


def test_a_trained_checkpoint_carries_a_card_from_its_own_validation(tmp_path):
    cfg = _config(tmp_path, synthetic=True)
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    config = inference_config(cfg, model, 32, epoch=2, metrics=METRICS)
    card = config["card"]
    assert card["title"] == "unet_baseline_tiny (forgeloc train)"
    assert card["headline"] == ("trained 3 epoch(s) on my_train; validation pixel F1 0.43 on heldout (7 images) "
                                "(synthetic: not a real-photo number)")
    assert card["validation"] == {"heldout": {"pixel_f1": 0.4321, "pixel_auc": 0.81, "image_auc": 0.7, "n_images": 7.0}}
    assert card["synthetic_validation"] is True
    ckpt = _checkpoint(tmp_path, config)
    predictor = forgeloc.load(str(ckpt), device="cpu")
    label = predictor.label
    assert label.startswith("unet_baseline_tiny (forgeloc train): trained 3 epoch(s)")
    assert "not a real-photo number" in label and "unvalidated" not in label
    assert predictor.describe()["card"] == card  # what the page and the report show


def test_a_real_validation_set_is_not_called_a_benchmark(tmp_path):
    assert not is_synthetic_set(tmp_path / "nowhere" / "dataset.json")
    card = training_card(_config(tmp_path, synthetic=False), 0, METRICS)
    assert card["headline"].endswith("(the run's own validation set, not an independent benchmark)")
    assert card["synthetic_validation"] is False


def test_an_unevaluated_checkpoint_has_no_card_and_stays_unvalidated(tmp_path):
    cfg = _config(tmp_path, synthetic=True)
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    config = inference_config(cfg, model, 32, epoch=0, metrics=None)
    assert "card" not in config and training_card(cfg, 0, {}) is None
    assert "unvalidated model" in forgeloc.load(str(_checkpoint(tmp_path, config)), device="cpu").label


def test_the_quickstart_card_keeps_the_demo_model_label(tmp_path):
    cfg = _config(tmp_path, synthetic=True)
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    ckpt = _checkpoint(tmp_path, inference_config(cfg, model, 32, epoch=2, metrics=METRICS))
    card = demo_card(0.3312, 0.21, 96, 10, tmp_path / "report" / "metrics.md")
    write_card([ckpt, None, tmp_path / "missing"], card)
    written = json.loads((ckpt / "config.json").read_text())
    assert written["card"] == card and written["metrics"] == METRICS  # the rest of config.json is kept
    label = forgeloc.load(str(ckpt), device="cpu").label
    assert label.startswith(f"unet_baseline (forgeloc quickstart): {DEMO_LABEL}")
    assert "pixel F1 0.33 on 96 held-out synthetic images (all-tampered predictor 0.21; synthetic: not a " \
           "real-photo number)" in label
