"""Unit tests of the engine's pieces that need no data: config, schedule, optimiser groups,
checkpoint folders and the registry."""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import forgeloc
from forgeloc.engine.checkpointing import (
    find_latest_checkpoint,
    is_complete,
    load_train_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from forgeloc.engine.config import OptimConfig, load_config
from forgeloc.engine.optim import build_optimizer, learning_rate, parameter_groups
from forgeloc.io import CheckpointError, load_state_dict_file, save_state_dict
from forgeloc.models.factory import load_model, resolve_checkpoint


# --- config -----------------------------------------------------------------------------------
def test_config_yaml_overrides_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "run.yaml").write_text(
        "model: {name: unet_baseline}\n"
        "data: {train: [{path: data/train.json}], test: {heldout: data/test.json}, input_size: 128}\n"
        "train: {epochs: 4}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_dir / "run.yaml", ["train.epochs=2", "optim.lr=0.01", "data.test.extra=other.json"])
    assert cfg.train.epochs == 2 and cfg.optim.lr == 0.01
    assert cfg.data.train[0].path == str(cfg_dir / "data" / "train.json")  # relative to the config file
    assert cfg.data.test["heldout"] == str(cfg_dir / "data" / "test.json")
    assert cfg.data.test["extra"] == str(tmp_path / "other.json")  # overrides: relative to the CWD


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epcohs"):
        load_config(None, ["model.name=unet_baseline", "train.epcohs=3"])
    with pytest.raises(ValueError, match="greater than or equal|>= 1|must be"):
        load_config(None, ["model.name=unet_baseline", "train.batch_size=0"])
    with pytest.raises(ValueError, match="amp"):
        load_config(None, ["model.name=unet_baseline", "train.amp=fp8"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ must ship example configs"
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.name in forgeloc.list_models(), f"{path.name}: unknown model {cfg.model.name}"


# --- schedule and optimiser -------------------------------------------------------------------
def test_learning_rate_schedule_matches_the_protocol_formula() -> None:
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_epochs=2)
    assert learning_rate(cfg, 0.0, 10) == 0.0
    assert learning_rate(cfg, 1.0, 10) == pytest.approx(5e-4)
    assert learning_rate(cfg, 2.0, 10) == pytest.approx(1e-3)
    mid = 2 + (10 - 2) / 2
    assert learning_rate(cfg, mid, 10) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert learning_rate(cfg, 10.0, 10) == pytest.approx(1e-5)
    poly = OptimConfig(lr=0.01, schedule="poly", poly_power=0.9)
    assert learning_rate(poly, 5.0, 10) == pytest.approx(0.01 * 0.5**0.9)
    lrs = [learning_rate(cfg, t / 10, 10) for t in range(20, 101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs)), "cosine must decrease after warm-up"


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    groups = parameter_groups(model, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2


# --- checkpoints ------------------------------------------------------------------------------
def _tiny_state() -> dict[str, torch.Tensor]:
    return forgeloc.create_model("unet_baseline_tiny").state_dict()


def test_save_checkpoint_is_complete_and_latest_points_to_it(tmp_path: Path) -> None:
    sd = _tiny_state()
    state = {"optimizer": {}, "scaler": {}, "rng": rng_state(), "epoch": 0, "history": []}
    first = save_checkpoint(tmp_path, 0, sd, {"model": "unet_baseline_tiny"}, state, keep_last=2)
    second = save_checkpoint(tmp_path, 1, sd, {"model": "unet_baseline_tiny"}, {**state, "epoch": 1}, keep_last=2)
    third = save_checkpoint(tmp_path, 2, sd, {"model": "unet_baseline_tiny"}, {**state, "epoch": 2}, keep_last=2)
    assert is_complete(second) and is_complete(third) and not first.exists()  # pruned to keep_last
    assert find_latest_checkpoint(tmp_path) == third
    assert load_train_state(third)["epoch"] == 2
    # An interrupted write (a temp folder, or a folder missing a file) is never picked.
    (tmp_path / "checkpoints" / "epoch_0003").mkdir()
    (tmp_path / "checkpoints" / "epoch_0003" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "latest").write_text("epoch_0003\n")
    assert find_latest_checkpoint(tmp_path) == third


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_load_state_dict_file_accepts_the_field_formats(tmp_path: Path) -> None:
    sd = _tiny_state()
    save_state_dict(sd, tmp_path / "w.safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3,
                "args": argparse.Namespace(lr=1e-4, name="x", sizes=[1, 2], flag=None)}, tmp_path / "train.pth")
    torch.save(sd, tmp_path / "plain.pth")
    for name in ("w.safetensors", "train.pth", "plain.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == sd.keys(), name
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_state_dict_file(bad)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_state_dict_file(tmp_path / "missing.pth")
    torch.save({"weights": torch.zeros(2), "other": 1}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="odd.pth"):
        forgeloc.create_model("unet_baseline_tiny", checkpoint=tmp_path / "odd.pth")


def test_strict_loading_reports_mismatched_keys(tmp_path: Path) -> None:
    sd = _tiny_state()
    sd.pop(next(iter(sd)))
    sd["extra.weight"] = torch.zeros(1)
    save_state_dict(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing .*1 unexpected"):
        forgeloc.create_model("unet_baseline_tiny", checkpoint=tmp_path / "w.safetensors")


def test_load_model_from_a_checkpoint_folder_rebuilds_the_recorded_model(tmp_path: Path) -> None:
    model = forgeloc.create_model("unet_baseline", widths=(8, 16), dice_weight=0.0)
    sd = model.state_dict()
    state = {"optimizer": {}, "scaler": {}, "rng": rng_state(), "epoch": 0}
    cfg = {"model": "unet_baseline", "model_kwargs": {"widths": [8, 16], "dice_weight": 0.0}}
    save_checkpoint(tmp_path / "run", 0, sd, cfg, state)
    assert resolve_checkpoint(tmp_path / "run").name == "epoch_0000"
    loaded, meta = load_model(tmp_path / "run")
    assert meta["model"] == "unet_baseline" and not loaded.training
    x = {"image": torch.randn(1, 3, 32, 32)}
    model.eval()
    assert torch.equal(loaded(x)["pred_mask"], model(x)["pred_mask"])


def test_registry() -> None:
    names = forgeloc.list_models()
    assert {"unet_baseline", "unet_baseline_tiny"} <= set(names)
    with pytest.raises(ValueError, match="unknown model"):
        forgeloc.create_model("no_such_model")
    with pytest.raises(TypeError, match="widht"):
        forgeloc.create_model("unet_baseline", widht=3)


def test_baseline_contract() -> None:
    model = forgeloc.create_model("unet_baseline_tiny")
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": (torch.rand(2, 1, 64, 64) > 0.7).float()}
    out = {k: v for k, v in model(batch).items()}
    out["pred_mask"] = out["pred_mask"].detach()
    assert out["pred_mask"].shape == (2, 1, 64, 64)
    assert float(out["pred_mask"].min()) >= 0 and float(out["pred_mask"].max()) <= 1
    assert math.isclose(float(out["loss"]), float(sum(out["loss_terms"].values())), rel_tol=1e-6)
    assert "loss" not in model({"image": batch["image"]})
    with pytest.raises(ValueError, match="divisible by 4"):
        model({"image": torch.randn(1, 3, 30, 30)})


# --------------------------------------------------------------------------------------------------
# The typed checkpoint config: one reader, one precedence rule, one set of validators
# --------------------------------------------------------------------------------------------------
def test_checkpoint_config_reads_the_default_detector_unchanged() -> None:
    import json

    from forgeloc.inference.predictor import default_detector_path
    from forgeloc.io import CheckpointConfig

    folder = default_detector_path()
    cfg = CheckpointConfig.from_json(folder)
    assert (cfg.model, cfg.model_kwargs, cfg.input_mode, cfg.input_size) == ("gridnet", {"width": 48}, "native", 384)
    assert cfg.fuse == ("copymove",) and "jpeg_grid" in cfg.cues and cfg.calibration["high"] > cfg.calibration["low"]
    assert cfg.card["title"].startswith("forgeloc default detector")
    assert cfg.to_json() == json.loads((folder / "config.json").read_text())
    assert CheckpointConfig.from_json(cfg.to_json()) == cfg


def test_checkpoint_config_resolves_overrides_once() -> None:
    from forgeloc.io import CheckpointConfig

    cfg = CheckpointConfig.from_json({"model": "m", "input": {"mode": "pad", "size": 64}, "threshold": 0.3,
                                      "image_score": "mean"})
    plain = cfg.resolve(device="cpu")
    assert (plain.input_size, plain.input_mode, plain.threshold, plain.image_score) == (64, "pad", 0.3, "mean")
    # The model's fixed size wins, then the caller's, then the recorded one, then 512.
    assert cfg.resolve(input_size=32).input_size == 32
    assert cfg.resolve(model_input_size=128, input_size=32).input_size == 128
    assert CheckpointConfig().resolve().input_size == 512
    over = cfg.resolve(input_mode="resize", threshold=0.0, image_score="max")
    assert (over.input_mode, over.threshold, over.image_score) == ("resize", 0.0, "max")
    assert CheckpointConfig.from_json({"input": {"mode": "native"}}).resolve().input_mode == "resize"
    assert cfg.resolve(device="auto").device.type in ("cpu", "cuda")
    for bad, message in (({"threshold": 7}, "threshold must be in"), ({"input_mode": "crop"}, "input_mode must be"),
                         ({"device": "tpu"}, "unknown device 'tpu'"), ({"input_size": 0}, "input_size must be")):
        with pytest.raises(ValueError, match=message):
            cfg.resolve(**bad)


def test_checkpoint_config_refuses_malformed_cue_lists(tmp_path: Path) -> None:
    from forgeloc.io import CheckpointConfig

    (tmp_path / "config.json").write_text('{"model": "gridnet", "fuse": "copymove"}')
    with pytest.raises(CheckpointError, match="'fuse' must be a list of cue names"):
        CheckpointConfig.from_json(tmp_path)
    assert CheckpointConfig.from_json(tmp_path / "empty" / "model.safetensors") == CheckpointConfig()  # no config


def _checkpoint_folder(folder: Path, name: str, recorded_size: int) -> Path:
    from forgeloc.engine.checkpointing import write_model_folder

    model = forgeloc.create_model(name)
    write_model_folder(folder, model.state_dict(), {"model": name, "model_kwargs": {},
                                                    "input": {"mode": "resize", "size": recorded_size}})
    return folder


@pytest.mark.parametrize(("name", "override", "expected"), [
    ("unet_baseline_tiny", None, 64),   # recorded
    ("unet_baseline_tiny", 32, 32),     # the caller's
    ("ncl_tiny", 96, 128),              # the model's fixed size
])
def test_predictor_and_forgeloc_test_agree_on_the_input_size(tmp_path: Path, name, override, expected) -> None:
    from forgeloc.engine.testing import eval_setup
    from forgeloc.inference.predictor import Predictor

    folder = _checkpoint_folder(tmp_path / "ckpt", name, recorded_size=64)
    predictor = Predictor.from_checkpoint(folder, input_size=override, device="cpu")
    _, cfg, _, meta = eval_setup(folder, input_size=override, device="cpu", num_workers=0)
    assert predictor.input_size == cfg.data.input_size == meta["input_size"] == expected


def test_backbone_weights_are_not_constructor_options(tmp_path: Path) -> None:
    import warnings

    donor = forgeloc.create_model("ncl_tiny")
    backbone = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    path = save_state_dict(backbone, tmp_path / "resnet.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = forgeloc.create_model("ncl_tiny", pretrained={"pretrained_path": path})
    assert torch.equal(model.backbone.conv1.weight, donor.backbone.conv1.weight)
    assert "pretrained_path" not in model.model_kwargs  # a checkpoint never records where a backbone came from
    with pytest.warns(DeprecationWarning, match="pretrained=") as caught:
        old = forgeloc.create_model("ncl_tiny", pretrained_path=path)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert torch.equal(old.backbone.conv1.weight, donor.backbone.conv1.weight)
    with pytest.raises(TypeError, match="no pretrained backbone options"):
        forgeloc.create_model("unet_baseline_tiny", pretrained={"pretrained_path": path})


def test_old_configs_recording_backbone_paths_still_load(tmp_path: Path) -> None:
    from forgeloc.engine.checkpointing import write_model_folder

    model = forgeloc.create_model("ncl_tiny")
    write_model_folder(tmp_path, model.state_dict(), {"model": "ncl_tiny",
                                                      "model_kwargs": {"pretrained_path": "/gone/resnet.pth"}})
    with pytest.warns(DeprecationWarning, match="pretrained-backbone options"):
        loaded, meta = load_model(tmp_path)
    assert meta["model_kwargs"] == {}
    assert torch.equal(loaded.backbone.conv1.weight, model.backbone.conv1.weight)


def test_sparsevit_img_size_is_the_deprecated_spelling_of_input_size() -> None:
    from forgeloc.models.sparsevit import SparseViT

    tiny = {"depth": [1, 1, 15, 4], "embed_dim": [16, 32, 320, 512], "s_blocks3": [8, 4, 4], "s_blocks4": [4],
            "mlp_ratio": 1.0}
    with pytest.warns(DeprecationWarning, match="input_size"):
        old = SparseViT(img_size=128, **tiny)
    assert old.input_size == SparseViT(input_size=128, **tiny).input_size == 128


def test_load_weights_reports_key_differences(tmp_path: Path) -> None:
    from forgeloc.io import KeyReport, WeightsMismatchError
    from forgeloc.models.factory import load_weights

    model = forgeloc.create_model("unet_baseline_tiny")
    sd = model.state_dict()
    first = next(iter(sd))
    partial = {k: v for k, v in sd.items() if k != first}
    report = load_weights(model, {**partial, "extra": torch.zeros(1)}, strict=False)
    assert report == KeyReport(missing=[first], unexpected=["extra"], wrong_shape=[])
    with pytest.raises(WeightsMismatchError, match=r"does not fit unet_baseline_tiny: 1 missing .*1 unexpected"):
        load_weights(model, {**partial, "extra": torch.zeros(1)})
