"""GridNet's inputs: the JPEG stream agrees with the pixels, the grid is found, shapes hold."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import forgeloc
from forgeloc.data.jpeg import dct_grid
from forgeloc.data.transforms import normalize
from forgeloc.engine.gridnet_training import _flip_coefficients
from forgeloc.inference.predictor import NATIVE_WINDOW, native_windows
from forgeloc.models.gridnet import _dct_basis, block_dct, estimate_grid_offset, luma

pytest.importorskip("jpeglib")


def _photo(size: int = 256) -> np.ndarray:
    from skimage import data

    img = data.astronaut()
    return np.ascontiguousarray(img[:size, :size])


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _luma(img: np.ndarray) -> torch.Tensor:
    return luma(torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float())


def test_file_coefficients_agree_with_the_decoded_pixels():
    data = _jpeg(_photo(), 85)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    from_file = torch.from_numpy(dct_grid(data, 256, 256))[None]
    from_pixels = block_dct(_luma(decoded), _dct_basis())
    diff = (from_file - from_pixels).abs()
    # The pixels are the file's coefficients after the inverse DCT, rounding and colour conversion:
    # they agree to well under one quantization step on average.
    assert diff.mean() < 0.5
    assert torch.quantile(diff.flatten(), 0.99) < 3.0


def test_png_bytes_have_no_jpeg_stream():
    buf = io.BytesIO()
    Image.fromarray(_photo()).save(buf, "PNG")
    assert dct_grid(buf.getvalue(), 256, 256) is None


@pytest.mark.parametrize("shift", [(0, 0), (3, 5), (7, 1)])
def test_grid_offset_of_a_cropped_jpeg_is_found(shift):
    dy, dx = shift
    decoded = np.asarray(Image.open(io.BytesIO(_jpeg(_photo(264), 80))).convert("RGB"))
    cropped = decoded[dy:dy + 256, dx:dx + 256]
    # The blocks of the compression now start at (8 - dy) % 8, (8 - dx) % 8 of the crop.
    assert estimate_grid_offset(_luma(cropped)) == ((8 - dy) % 8, (8 - dx) % 8)


def test_flipping_coefficients_equals_flipping_pixels():
    decoded = np.asarray(Image.open(io.BytesIO(_jpeg(_photo(), 90))).convert("RGB"))
    basis = _dct_basis()
    coef = block_dct(_luma(decoded), basis)[0].numpy()
    for axis in (0, 1):
        flipped = np.ascontiguousarray(np.flip(decoded, axis))
        expected = block_dct(_luma(flipped), basis)[0].numpy()
        np.testing.assert_allclose(_flip_coefficients(coef, axis + 1), expected, atol=1e-3)


@pytest.mark.parametrize("size", [(64, 64), (100, 77), (13, 9)])
def test_forward_any_size_with_and_without_the_stream(size):
    model = forgeloc.create_model("gridnet_tiny").eval()
    h, w = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    batch = {"image": normalize(img)[None]}
    with torch.no_grad():
        out = model(batch)
        assert out["pred_mask"].shape == (1, 1, h, w)
        dct = torch.zeros(1, 64, -(-h // 8), -(-w // 8))
        out2 = model({**batch, "dct": dct, "dct_valid": torch.tensor([True])})
    assert out2["pred_mask"].shape == (1, 1, h, w)
    assert torch.isfinite(out2["pred_mask"]).all()


def test_native_windows_cover_large_images_on_the_grid():
    for h, w in [(100, 100), (NATIVE_WINDOW + 1, 5000), (9000, 3000)]:
        cover = np.zeros((h, w), bool)
        for ys, xs in native_windows(h, w):
            assert ys.start % 8 == 0 and xs.start % 8 == 0
            assert ys.stop - ys.start < NATIVE_WINDOW + 8 and xs.stop - xs.start < NATIVE_WINDOW + 8
            cover[ys, xs] = True
        assert cover.all()


def test_the_default_detector_recipe_validates():
    from pathlib import Path

    from forgeloc.engine.gridnet_training import GridNetTrainConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "default_detector" / "gridnet.yaml"
    cfg = GridNetTrainConfig.from_yaml(path)
    assert cfg.model in forgeloc.list_models()
    assert cfg.train.endswith("data/realsynth/train/dataset.json") and Path(cfg.train).is_absolute()


def test_a_mixed_batch_equals_its_samples_one_by_one():
    """Samples with a JPEG stream skip the pixel DCT; the others still get it, on their own grid."""
    torch.manual_seed(0)
    model = forgeloc.create_model("gridnet_tiny").eval()
    photo = _photo(128)
    shifted = _jpeg(photo, 80)
    images = [photo, np.asarray(Image.open(io.BytesIO(shifted)))[3:, 5:][:120, :120], photo[::-1].copy()]
    images = [np.ascontiguousarray(im[:120, :120]) for im in images]
    dct = torch.from_numpy(np.stack([dct_grid(_jpeg(im, 85), 120, 120) for im in images]))
    valid = torch.tensor([True, False, True])
    batch = {"image": torch.stack([normalize(im) for im in images]), "dct": dct, "dct_valid": valid}
    with torch.no_grad():
        together = model(batch)
        alone = [model({"image": batch["image"][i:i + 1], "dct": dct[i:i + 1], "dct_valid": valid[i:i + 1]})
                 for i in range(3)]
    torch.testing.assert_close(together["pred_mask"], torch.cat([a["pred_mask"] for a in alone]), atol=1e-6, rtol=0)
    assert together["grid_offsets"][0] == together["grid_offsets"][2] == (0, 0)
    assert together["grid_offsets"][1] == alone[1]["grid_offsets"][0]


def test_lattice_features_in_place_equal_the_formula():
    from forgeloc.models.gridnet import Q_STEPS, ZIGZAG_15, lattice_features

    coef = torch.round(torch.randn(2, 64, 9, 11, generator=torch.Generator().manual_seed(0)) * 40)
    c = coef[:, [8 * u + v for u, v in ZIGZAG_15]]
    ratio = c.unsqueeze(2) / torch.tensor(Q_STEPS, dtype=torch.float32).view(1, 1, -1, 1, 1)
    lattice = torch.cos(2 * np.pi * ratio) * (ratio.abs() >= 0.5).float()
    expected = torch.cat([lattice.flatten(1, 2), torch.log1p(c.abs())], dim=1)
    assert torch.equal(lattice_features(coef), expected)
    with_grad = coef.clone().requires_grad_()
    features = lattice_features(with_grad)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    features.sum().backward()
    assert with_grad.grad is not None


def _realsynth_folder(root, seed: int):
    """A two-sample folder laid out as forgeloc.data.realsynth writes it (a PNG with a mask, an untouched JPEG)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / "0.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / "1.jpg", quality=90)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(mask).save(root / "masks" / "0.png")
    (root / "dataset.json").write_text(json.dumps([["images/0.png", "masks/0.png"], ["images/1.jpg", "Negative"]]))
    return root / "dataset.json"


def test_training_joins_datasets_and_starts_from_init_weights(tmp_path):
    import yaml
    from safetensors.torch import load_file

    from forgeloc.engine.checkpointing import write_model_folder
    from forgeloc.engine.gridnet_training import GridNetTrainConfig, RealSynthDataset, train

    first, second = _realsynth_folder(tmp_path / "a", 0), _realsynth_folder(tmp_path / "b", 1)
    data = RealSynthDataset([str(first), str(second)], crop=64)
    assert len(data) == 4 and data[3]["dct_valid"] and not data[2]["dct_valid"]
    assert data[2]["mask"].sum() > 0 and data[3]["mask"].sum() == 0

    torch.manual_seed(1)
    start = forgeloc.create_model("gridnet_tiny")
    write_model_folder(tmp_path / "init", start.state_dict(), {"model": "gridnet_tiny"})
    config = tmp_path / "cfg" / "recipe.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({  # relative paths are read against the config's folder
        "train": ["../a/dataset.json", "../b/dataset.json"], "init": "../init", "output_dir": "../out",
        "model": "gridnet_tiny", "crop": 64, "batch_size": 2, "steps": 2, "warmup_steps": 1,
        "lr": 0.0, "min_lr": 0.0, "weight_decay": 0.0, "threads": 1, "num_workers": 0}))
    cfg = GridNetTrainConfig.from_yaml(config)
    assert cfg.train == [str(first), str(second)] and cfg.init == str(tmp_path / "init")
    trained = load_file(train(cfg) / "model.safetensors")
    params = dict(start.named_parameters())
    assert all(torch.equal(trained[name], p.detach()) for name, p in params.items())  # lr 0: the init weights


def test_interpolated_weights_lie_between_the_two_checkpoints_and_package_as_a_calibrated_detector(tmp_path):
    from safetensors.torch import load_file

    from forgeloc.engine.checkpointing import write_model_folder
    from forgeloc.engine.gridnet_training import main

    ends = {}
    for seed, name in ((0, "start"), (1, "end")):
        torch.manual_seed(seed)
        weights = forgeloc.create_model("gridnet_tiny").state_dict()
        write_model_folder(tmp_path / name, weights, {"model": "gridnet_tiny"})
        ends[name] = load_file(tmp_path / name / "model.safetensors")
    main(["--interpolate", str(tmp_path / "start"), str(tmp_path / "end"), "--alpha", "0.25",
          "--out", str(tmp_path / "mix")])
    mixed = load_file(tmp_path / "mix" / "model.safetensors")
    for key, value in mixed.items():
        a, b = ends["start"][key], ends["end"][key]
        expected = 0.75 * a.float() + 0.25 * b.float() if a.is_floating_point() else b
        assert torch.allclose(value.float(), expected.float(), atol=1e-6), key
    assert any(not torch.equal(ends["start"][k], ends["end"][k]) for k in mixed)  # the two really differ

    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"name": "mix", "fuse": [], "calibration": {"data": "two test photos"}}))
    main(["--package", str(tmp_path / "mix"), "--extra", str(extra), "--calibrate",
          str(_realsynth_folder(tmp_path / "calib", 0)), "--calibrate-first", "2", "--out", str(tmp_path / "packaged")])
    config = json.loads((tmp_path / "packaged" / "config.json").read_text())
    bands = config["calibration"]
    assert config["name"] == "mix" and config["interpolated"]["alpha"] == 0.25
    assert bands["data"] == "two test photos: 1 authentic, 1 tampered images"
    assert 0 <= bands["low"] <= bands["high"] <= 1
    assert forgeloc.load(tmp_path / "packaged").calibration["low"] == bands["low"]


def test_interpolation_refuses_two_different_networks_and_alpha_outside_0_1(tmp_path):
    from forgeloc.engine.checkpointing import write_model_folder
    from forgeloc.engine.gridnet_training import interpolate

    write_model_folder(tmp_path / "tiny", forgeloc.create_model("gridnet_tiny").state_dict(), {"model": "gridnet_tiny"})
    write_model_folder(tmp_path / "wide", forgeloc.create_model("gridnet", width=24).state_dict(), {"model": "gridnet"})
    with pytest.raises(ValueError, match="different networks"):
        interpolate(tmp_path / "tiny", tmp_path / "wide", 0.5, tmp_path / "out")
    with pytest.raises(ValueError, match="alpha"):
        interpolate(tmp_path / "tiny", tmp_path / "tiny", 1.5, tmp_path / "out")
