"""forgeloc.load / Predictor / tiling / ``forgeloc predict`` on synthetic and real images (tiny models)."""

from __future__ import annotations

import itertools
import json
import shutil
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from conftest import shared_path
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import forgeloc
from forgeloc.data.io import read_image
from forgeloc.data.transforms import normalize
from forgeloc.engine.checkpointing import write_model_folder
from forgeloc.inference import Prediction, PredictionFailure, Predictor, tiling
from forgeloc.inference import visualize as viz
from forgeloc.metrics.functional import reduce_image_score
from forgeloc.models.base import ForgeryModel

BIG_JPEG = ("data", "single_samples", "images", "NC2016_2564.jpg")
COVERAGE_PNG = ("data", "coverage", "images", "1t.png")
CASIA_TIFF = ("data", "casia2_samples", "images", "Tp_D_CRD_S_N_ani00028_ani00058_00148.tif")


# --------------------------------------------------------------------------------------------------
# Helpers (also used by test_report / test_serve / test_browser)
# --------------------------------------------------------------------------------------------------
class PixelModel(ForgeryModel):
    """sigmoid(1×1 conv(image)): every output pixel depends on its input pixel only."""

    def __init__(self, input_size: int | None = None, head: bool = False, bias: float = 0.0) -> None:
        super().__init__()
        self.input_size = input_size
        self.has_image_head = head
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.9, -0.6, 0.4]).view(1, 3, 1, 1))
            self.conv.bias.fill_(bias)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, batch):
        image = self.require_image(batch)
        self.check_input_size(image)
        self.calls.append(tuple(image.shape))
        prob = torch.sigmoid(self.conv(image))
        out = {"pred_mask": prob}
        if self.has_image_head:
            out["pred_label"] = prob.flatten(1).mean(1)
        return out


class EdgeArtefactModel(ForgeryModel):
    """Predicts 1 on the outer 2-pixel frame of every window and 0 inside: the worst seam maker."""

    def forward(self, batch):
        image = self.require_image(batch)
        out = torch.ones_like(image[:, :1])
        out[:, :, 2:-2, 2:-2] = 0
        return {"pred_mask": out}


class BorderBandModel(ForgeryModel):
    """Predicts 0 on a 5-pixel band along its input's edges and 1 inside: a model that has learned
    that photo borders are never tampered (as the quickstart baseline does)."""

    def forward(self, batch):
        image = self.require_image(batch)
        out = torch.zeros_like(image[:, :1])
        out[:, :, 5:-5, 5:-5] = 1
        return {"pred_mask": out}


def pixel_reference(model: PixelModel, image: np.ndarray) -> np.ndarray:
    """The pixel model run once on the whole image: what tiling must reproduce."""
    with torch.no_grad():
        return torch.sigmoid(model.conv(normalize(image)[None]))[0, 0].numpy()


def make_tiny_checkpoint(folder: Path, size: int = 64, widths: tuple[int, ...] = (8, 16, 32),
                         threshold: float = 0.5, steps: int = 3) -> Path:
    """A real forgeloc checkpoint folder: unet_baseline_tiny trained a few steps on a synthetic batch."""
    torch.manual_seed(0)
    model = forgeloc.create_model("unet_baseline_tiny", widths=widths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    masks = np.zeros((2, 1, size, size), np.float32)
    images[:, size // 4: size // 2, size // 4: size // 2] = (250, 20, 20)  # a pasted red square
    masks[:, :, size // 4: size // 2, size // 4: size // 2] = 1
    batch = {"image": torch.stack([normalize(im) for im in images]), "mask": torch.from_numpy(masks)}
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    write_model_folder(folder, model.state_dict(), {
        "model": "unet_baseline_tiny", "model_kwargs": dict(model.model_kwargs),
        "input": {"mode": "resize", "size": size}, "threshold": threshold, "image_score": "max",
    })
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Tiling geometry and blending
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,window,stride", [(100, 32, 24), (32, 32, 24), (33, 32, 24), (1000, 512, 384),
                                                  (10, 32, 24), (97, 16, 16)])
def test_window_starts_cover_every_pixel_and_stay_inside(length, window, stride):
    starts = tiling.window_starts(length, window, stride)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        assert s >= 0 and s + window <= max(length, window)
        covered[s:s + window] = True
    assert covered[:length].all()
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))
    if length > window:
        assert starts[-1] == length - window  # the last window ends exactly at the border


def test_window_geometry_errors():
    with pytest.raises(ValueError, match="gaps"):
        tiling.window_starts(100, 16, 17)
    with pytest.raises(ValueError, match="overlap"):
        tiling.window_grid(100, 100, 16, overlap=1.0)
    with pytest.raises(ValueError, match="padding"):
        tiling.pad_to_window(_image(4, 4), 8, padding="wrap")


@pytest.mark.parametrize("h,w", [(100, 77), (20, 13), (32, 32), (33, 200), (1, 1), (5, 64), (129, 31)])
@pytest.mark.parametrize("fixed", [True, False])
def test_tiled_equals_full_image_for_a_per_pixel_model(h, w, fixed):
    """Blending, cropping, padding and coordinates are right iff tiles reproduce the full-image map."""
    model = PixelModel(input_size=32 if fixed else None)
    predictor = Predictor(model, input_size=None if fixed else 32, device="cpu")
    image = _image(h, w, seed=h * 1000 + w)
    result = predictor.predict(image, mode="tile", batch_size=3)
    expected = pixel_reference(model, image)
    assert result.heatmap.shape == (h, w) and result.heatmap.dtype == np.float32
    np.testing.assert_allclose(result.heatmap, expected, rtol=0, atol=2e-6)
    assert result.mode == "tile"
    assert all(shape[-2:] == (32, 32) for shape in model.calls)  # only native-size windows reach the model
    assert max(shape[0] for shape in model.calls) <= 3  # windows batched by batch_size
    assert result.windows == len(tiling.window_grid(max(h, 32), max(w, 32), 32, predictor.tile_overlap))
    assert result.score == pytest.approx(float(expected.max()), abs=2e-6)


def test_black_padding_for_pad_trained_checkpoints():
    model = PixelModel()
    image = _image(10, 12)
    reflect = Predictor(model, input_size=32).predict(image, mode="tile").heatmap
    black = Predictor(model, input_size=32, input_mode="pad").predict(image, mode="tile").heatmap
    # Per-pixel model: padding content must not leak into the real pixels either way.
    np.testing.assert_allclose(reflect, black, atol=2e-6)
    padded = tiling.pad_to_window(image, 32, "black")
    assert padded.shape == (32, 32, 3) and not padded[10:].any() and not padded[:, 12:].any()
    mirrored = tiling.pad_to_window(image, 32, "reflect")
    assert np.array_equal(mirrored[10, :12], image[8])  # mirror without repeating the border row


def test_blending_hides_window_borders():
    """A model that is wrong on every window's border: a plain average would leave 0.5-high seams."""
    predictor = Predictor(EdgeArtefactModel(), input_size=32)
    heat = predictor.predict(_image(200, 200), mode="tile").heatmap
    interior = heat[8:-8, 8:-8]
    # Uniform averaging would give 0.5 where two window borders meet; the raised cosine gives ~0.05-0.1.
    assert interior.max() < 0.15 and interior.mean() < 0.01, (interior.max(), interior.mean())
    # The image border is covered by a single window's border: the artefact remains there, honestly.
    assert heat[0, 100] == pytest.approx(1.0)


def test_default_overlap_hides_a_models_border_band():
    """With half-window overlap every pixel is a quarter window inside some window, and that window
    dominates the blend: no dark grid where windows meet. A quarter-window overlap leaves one."""
    image = _image(200, 200)
    default = Predictor(BorderBandModel(), input_size=32).predict(image, mode="tile").heatmap[8:-8, 8:-8]
    quarter = Predictor(BorderBandModel(), input_size=32, tile_overlap=0.25).predict(image, mode="tile").heatmap
    assert default.min() > 0.5, default.min()
    assert quarter[8:-8, 8:-8].min() < 0.05


def test_big_jpeg_tiled_full_resolution_bounded_memory():
    """3488×2616: heatmap at the photo's own size, numpy memory ≈ photo + heatmap + a few windows."""
    path = shared_path(*BIG_JPEG)
    model = PixelModel(input_size=512)
    predictor = Predictor(model, device="cpu")
    tracemalloc.start()
    try:
        result = predictor.predict(path, mode="tile", batch_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.mode == "tile"
    assert result.heatmap.shape == (2616, 3488) == result.image.shape[:2]
    assert result.windows == 13 * 10  # half-window overlap: stride 256
    assert max(shape[0] for shape in model.calls) == 4
    photo, heat = 2616 * 3488 * 3, 2616 * 3488 * 4
    # A float32 copy of the normalised photo alone would add 109 MB; we stay far below that.
    assert peak < photo + heat + 40 * 2**20, f"peak numpy memory {peak / 2**20:.0f} MB"
    # Spot-check correctness at full resolution on a crop.
    crop = result.image[1000:1100, 2000:2100]
    np.testing.assert_allclose(result.heatmap[1000:1100, 2000:2100], pixel_reference(model, crop), atol=2e-6)


# --------------------------------------------------------------------------------------------------
# Resize mode, scores, thresholds
# --------------------------------------------------------------------------------------------------
def test_resize_mode_is_the_training_pipeline_and_score_matches_metrics(tiny_checkpoint):
    predictor = forgeloc.load(tiny_checkpoint, device="cpu")
    image = _image(90, 130, seed=5)
    result = predictor.predict(image, mode="resize")
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        native = predictor.model({"image": normalize(small)[None]})["pred_mask"]
    expected = cv2.resize(native[0, 0].numpy(), (130, 90), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(result.heatmap, expected, atol=1e-6)
    # The image score is forgeloc.metrics' reduction of the model-resolution map (what `forgeloc test` reports).
    assert result.score == pytest.approx(float(reduce_image_score(native, None, "max")), abs=1e-7)
    assert result.score_source == "max"
    topk = Predictor(predictor.model, input_size=64, image_score="topk_mean").predict(image, mode="resize")
    assert topk.score == pytest.approx(float(reduce_image_score(native, None, "topk_mean")), abs=1e-6)
    assert topk.score < result.score


def test_pred_label_is_the_score_when_the_model_has_an_image_head():
    model = PixelModel(head=True)
    predictor = Predictor(model, input_size=32)
    image = _image(40, 40)
    resized = predictor.predict(image, mode="resize")
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert resized.score_source == "pred_label"
    assert resized.score == pytest.approx(float(pixel_reference(model, small).mean()), abs=1e-6)
    tiled = predictor.predict(_image(40, 100), mode="tile")
    # In tile mode: the largest window label (windows at x = 0, 24, 48, 68).
    image2 = _image(40, 100)
    padded = tiling.pad_to_window(image2, 32)
    labels = [pixel_reference(model, padded[y:y + 32, x:x + 32]).mean() for y, x in tiling.window_grid(40, 100, 32)]
    assert tiled.score == pytest.approx(max(labels), abs=1e-6)


def test_mask_is_strictly_above_the_threshold():
    model = PixelModel()
    with torch.no_grad():
        model.conv.weight.zero_()  # sigmoid(0) = 0.5 exactly, everywhere
    predictor = Predictor(model, input_size=16, threshold=0.5)
    at = predictor.predict(_image(20, 20), mode="resize")
    assert at.heatmap.min() == at.heatmap.max() == 0.5
    assert not at.mask.any() and at.tampered_fraction == 0.0
    below = predictor.predict(_image(20, 20), mode="resize", threshold=0.49)
    assert below.mask.all() and below.tampered_fraction == 1.0
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(_image(20, 20), threshold=1.5)


def test_auto_rule_and_mode_errors():
    predictor = Predictor(PixelModel(), input_size=64)
    # auto feeds a photo as the checkpoint was trained, whatever its size: resized inputs -> resize
    assert predictor.choose_mode(128, 128) == predictor.choose_mode(4000, 3000) == "resize"
    assert predictor.choose_mode(10, 10, "tile") == predictor.choose_mode(4000, 3000, "tile") == "tile"
    assert predictor.choose_mode(1000, 1000, "resize") == "resize"
    padded = Predictor(PixelModel(), input_size=64, input_mode="pad")  # padded, never resized -> tile
    assert padded.choose_mode(10, 10) == padded.choose_mode(4000, 3000) == "tile"
    assert padded.choose_mode(4000, 3000, "resize") == "resize"
    assert predictor.describe()["auto_rule"].startswith("resize") and padded.describe()["auto_rule"].startswith("tile")
    with pytest.raises(ValueError, match="mode"):
        predictor.choose_mode(10, 10, "crop")
    assert Predictor(PixelModel(input_size=48), input_size=64).input_size == 48  # a fixed model size wins


def test_predict_batch_batches_and_keeps_order(tiny_checkpoint):
    predictor = forgeloc.load(tiny_checkpoint)
    images = [_image(50 + 7 * i, 60, seed=i) for i in range(5)] + [_image(300, 80, seed=9)]
    calls = []
    original = predictor._forward
    predictor._forward = lambda crops: (calls.append(len(crops)), original(crops))[1]
    batch = predictor.predict_batch(images, batch_size=3)
    assert [r.heatmap.shape for r in batch] == [im.shape[:2] for im in images]
    assert [r.mode for r in batch] == ["resize"] * 6  # auto: the checkpoint was trained on resized inputs
    assert calls == [3, 3]  # 6 resized images in 2 passes of 3
    calls.clear()
    tiled = predictor.predict_batch(images[-1:], batch_size=3, mode="tile")
    assert calls == [3] * 6 and tiled[0].windows == 18 and tiled[0].mode == "tile"  # 300×80: 9 × 2 windows
    for image, result, mode in zip(images + images[-1:], batch + tiled, ["auto"] * 6 + ["tile"], strict=True):
        single = predictor.predict(image, mode=mode)
        np.testing.assert_allclose(result.heatmap, single.heatmap, atol=1e-5)
        assert result.score == pytest.approx(single.score, abs=1e-5)


def test_amp_bf16_runs_and_stays_close(tiny_checkpoint):
    image = _image(64, 64)
    full = forgeloc.load(tiny_checkpoint).predict(image)
    bf16 = forgeloc.load(tiny_checkpoint, amp="bf16").predict(image)
    assert bf16.heatmap.dtype == np.float32
    assert np.abs(bf16.heatmap - full.heatmap).max() < 0.05
    with pytest.raises(ValueError, match="amp"):
        forgeloc.load(tiny_checkpoint, amp="int8")
    with pytest.raises(ValueError, match="CUDA"):
        Predictor(PixelModel(), amp="fp16", device="cpu")


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        forgeloc.load("unet_baseline_tiny")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        forgeloc.load(tmp_path / "missing")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(PixelModel(), device="cuda")


def test_load_by_name_and_weights_file(tiny_checkpoint, tmp_path):
    weights = tmp_path / "weights.safetensors"
    shutil.copy(tiny_checkpoint / "model.safetensors", weights)
    by_name = forgeloc.load("unet_baseline_tiny", checkpoint=weights, widths=(8, 16, 32), input_size=64)
    by_folder = forgeloc.load(tiny_checkpoint)
    image = _image(64, 64)
    np.testing.assert_array_equal(by_name.predict(image).heatmap, by_folder.predict(image).heatmap)
    assert by_folder.threshold == 0.5 and by_folder.input_size == 64
    assert forgeloc.load(tiny_checkpoint, threshold=0.3).threshold == 0.3


# --------------------------------------------------------------------------------------------------
# Inputs: real files, odd modes, arrays, bytes, PIL
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parts,mode", [(COVERAGE_PNG, "resize"), (CASIA_TIFF, "tile")])
def test_real_images_and_saved_files(tiny_checkpoint, parts, mode, tmp_path):
    path = shared_path(*parts)
    predictor = forgeloc.load(tiny_checkpoint)
    result = predictor.predict(path, mode=mode, batch_size=8)
    assert result.mode == mode
    photo = read_image(path)
    assert np.array_equal(result.image, photo)
    assert result.heatmap.shape == photo.shape[:2]
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.name == path.name and result.source == str(path)
    files = result.save(tmp_path)
    heat_png = np.asarray(Image.open(files["heatmap"]).convert("RGB"))
    np.testing.assert_array_equal(heat_png, viz.colorize(result.heatmap))
    mask_png = np.asarray(Image.open(files["mask"]))
    assert mask_png.shape == photo.shape[:2] and set(np.unique(mask_png)) <= {0, 255}
    np.testing.assert_array_equal(mask_png == 255, result.mask)
    over = np.asarray(Image.open(files["overlay"]).convert("RGB"))
    np.testing.assert_array_equal(over, result.overlay())
    meta = json.loads(Path(files["json"]).read_text())
    assert meta["score"] == pytest.approx(result.score, abs=1e-6)
    assert meta["tampered_fraction"] == pytest.approx(float(result.mask.mean()), abs=1e-6)
    assert (meta["width"], meta["height"]) == (photo.shape[1], photo.shape[0])


def test_odd_modes_arrays_bytes_and_pil(tmp_path):
    model = PixelModel()
    predictor = Predictor(model, input_size=16)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    deep = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(deep).save(tmp_path / "deep16.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "deep16.png").mode.startswith("I")
    expected_gray = np.repeat(gray[:, :, None], 3, 2)
    expected_deep = np.repeat((deep >> 8).astype(np.uint8)[:, :, None], 3, 2)
    for name, expected in [("gray.png", expected_gray), ("deep16.png", expected_deep)]:
        result = predictor.predict(tmp_path / name, mode="tile")
        np.testing.assert_array_equal(result.image, expected)
        np.testing.assert_allclose(result.heatmap, pixel_reference(model, expected), atol=2e-6)
    from_file = predictor.predict(tmp_path / "rgba.png")
    np.testing.assert_array_equal(from_file.image, read_image(tmp_path / "rgba.png"))  # on white, like the loaders
    # The same pixels as an array, as bytes, as a PIL image.
    np.testing.assert_array_equal(predictor.predict(rgba).image, from_file.image)
    np.testing.assert_array_equal(predictor.predict((tmp_path / "rgba.png").read_bytes()).image, from_file.image)
    np.testing.assert_array_equal(predictor.predict(Image.open(tmp_path / "rgba.png")).image, from_file.image)
    np.testing.assert_array_equal(predictor.predict(deep).image, expected_deep)
    np.testing.assert_array_equal(predictor.predict(gray.astype(np.float32) / 255.0).image, expected_gray)
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="numpy"):
        predictor.predict(torch.zeros(3, 8, 8))


def test_unreadable_inputs_raise_or_are_reported(tmp_path):
    predictor = Predictor(PixelModel(), input_size=16, max_pixels=10_000)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.fromarray(_image(200, 200)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="bad.jpg"):
        predictor.predict(tmp_path / "bad.jpg")
    results = list(predictor.iter_predict([_image(8, 8), tmp_path / "bad.jpg", tmp_path / "big.png", _image(9, 9)],
                                          batch_size=2, skip_errors=True))
    assert [type(r) for r in results] == [Prediction, PredictionFailure, PredictionFailure, Prediction]
    assert "too many pixels" in results[2].error and results[2].source == str(tmp_path / "big.png")


# --------------------------------------------------------------------------------------------------
# Visualisation
# --------------------------------------------------------------------------------------------------
def test_overlay_leaves_cold_pixels_untouched_and_colours_hot_ones():
    image = np.full((10, 10, 3), 100, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[5:, :] = 1.0
    out = viz.overlay(image, heat, alpha=0.5)
    assert np.array_equal(out[:5], image[:5])
    top = viz.colormap_lut()[255].astype(int)
    np.testing.assert_allclose(out[7, 3], (100 + top) / 2, atol=1)
    outlined = viz.overlay(image, heat, alpha=0.0, mask=heat > 0.5)
    assert (outlined == viz.OUTLINE_COLOR).all(axis=2).any()
    layer = viz.heat_layer_rgba(heat)
    assert layer[0, 0, 3] == 0 and layer[9, 9, 3] == 255
    lut = viz.colormap_lut()
    assert lut.shape == (256, 3) and tuple(lut[0]) != tuple(lut[-1])
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(image, heat, alpha=2)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _cli() -> typer.Typer:
    from forgeloc.cli import predict as predict_command

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    predict_command.register(app)
    return app


def test_cli_folder_with_corrupt_file_globs_collisions_and_report(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", size=512, widths=(4,), steps=1)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "other").mkdir()
    shutil.copy(shared_path(*COVERAGE_PNG), folder / "a_photo.png")
    good_jpeg = viz.encode_jpeg(_image(64, 64))
    (folder / "b_broken.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])  # truncated; sorted in the middle
    shutil.copy(shared_path(*CASIA_TIFF), folder / "c_casia.tif")
    (folder / "notes.txt").write_text("not an image, not an image extension: ignored in folders")
    Image.fromarray(_image(40, 50)).save(folder / "sub" / "x.png")
    Image.fromarray(_image(45, 50)).save(folder / "other" / "x.png")
    shutil.copy(shared_path(*BIG_JPEG), tmp_path / "big.jpg")
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(folder), str(folder / "*" / "x.png"), str(tmp_path / "big.jpg"),
            str(tmp_path / "missing.png"), "--out", str(out), "--report", "--batch-size", "4"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1, result.output
    assert "b_broken.jpg" in result.output and "missing.png" in result.output and "2 input(s) failed" in result.output
    payload = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in payload["results"]]
    assert names == ["a_photo.png", "c_casia.tif", "x.png", "x.png", "big.jpg"]
    failed = {Path(f["path"]).name: f["error"] for f in payload["failures"]}
    assert set(failed) == {"b_broken.jpg", "missing.png"}
    assert "truncated" in failed["b_broken.jpg"] and "not found" in failed["missing.png"]
    # Same stem in two folders: disambiguated, nothing overwritten.
    stems = {Path(r["files"]["mask"]).name for r in payload["results"]}
    assert {"other_x_predmask.png", "sub_x_predmask.png", "a_photo_predmask.png", "big_predmask.png"} <= stems
    assert len(stems) == 5
    for row in payload["results"]:
        mask = np.asarray(Image.open(row["files"]["mask"]))
        assert mask.shape == (row["height"], row["width"])
        assert Image.open(row["files"]["heatmap"]).size == (row["width"], row["height"])
        assert Image.open(row["files"]["overlay"]).size == (row["width"], row["height"])
        assert row["tampered_fraction"] == pytest.approx(float((mask == 255).mean()), abs=1e-6)
    big = payload["results"][-1]
    assert (big["width"], big["height"], big["mode"]) == (3488, 2616, "resize")  # auto: trained on resized inputs
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,path,width,height,score,tampered_fraction,mode,threshold")
    assert len(csv_lines) == 6
    html = (out / "report.html").read_text()
    assert html.count('<tr><td class="num"') == 5 and "b_broken.jpg" in html
    assert payload["info"]["model"] == "unet_baseline_tiny" and payload["info"]["threshold"] == 0.5


def test_cli_expand_inputs_and_stems(tmp_path):
    from forgeloc.cli.predict import expand_inputs, output_stems

    (tmp_path / "d" / "deep").mkdir(parents=True)
    for rel in ["d/1.png", "d/2.JPG", "d/deep/3.png", "d/.hidden.png", "d/readme.md", "e.webp"]:
        (tmp_path / rel).write_bytes(b"x")
    files, problems = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "1.png"), str(tmp_path / "*.webp"),
                                     str(tmp_path / "nothing*.png")])
    assert [p.name for p in files] == ["1.png", "2.JPG", "e.webp"]  # no duplicates, hidden skipped, non-recursive
    assert problems == [(str(tmp_path / "nothing*.png"), "no file matches this pattern")]
    files, _ = expand_inputs([str(tmp_path / "d")], recursive=True)
    assert sorted(p.name for p in files) == ["1.png", "2.JPG", "3.png"]
    files, _ = expand_inputs([str(tmp_path / "**" / "*.png")])
    assert sorted(p.name for p in files) == ["1.png", "3.png"]
    stems = output_stems([Path("a/x.png"), Path("b/x.png"), Path("a/x.jpg"), Path("c/X.png"), Path("y.png")])
    assert len({s.lower() for s in stems}) == 5
    assert stems[-1] == "y" and stems[1] == "b_x"
