"""The training-free copy-move detector: finds a rotated and scaled copy, stays quiet on clean photos,
repetitive texture and degenerate inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from conftest import shared_path

from forgeloc.detectors.base import ImageInput
from forgeloc.detectors.copymove import detect_copymove


def f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    overlap = int((predicted & truth).sum())
    return 2 * overlap / max(int(predicted.sum() + truth.sum()), 1)


def paste_rotated_copy(rgb: np.ndarray, source_centre, target_centre, radius: int, angle: float, scale: float):
    """Copy a disc of ``rgb`` onto ``target_centre``, rotated by ``angle`` degrees and scaled.

    Returns the forged image and the ground truth (source disc ∪ pasted disc)."""
    h, w = rgb.shape[:2]
    source = np.zeros((h, w), np.uint8)
    cv2.circle(source, source_centre, radius, 1, -1)
    matrix = cv2.getRotationMatrix2D(source_centre, angle, scale)
    matrix[:, 2] += np.subtract(target_centre, source_centre)
    moved = cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_CUBIC)
    target = cv2.warpAffine(source, matrix, (w, h), flags=cv2.INTER_NEAREST)
    forged = np.where(target[..., None] > 0, moved, rgb)
    return np.ascontiguousarray(forged), (source > 0) | (target > 0)


@pytest.fixture(scope="module")
def forged_cat():
    return paste_rotated_copy(skimage.data.chelsea(), (120, 100), (330, 220), radius=60, angle=20, scale=1.1)


def flagged_share(rgb: np.ndarray, **options) -> float:
    return float((detect_copymove(ImageInput(np.ascontiguousarray(rgb)), **options).heatmap > 0.5).mean())


def test_finds_rotated_scaled_copy_and_its_source(forged_cat):
    forged, truth = forged_cat
    result = detect_copymove(ImageInput(forged))
    assert result.name == "copymove" and result.kind == "detector" and result.applicable
    assert result.heatmap.shape == truth.shape and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert f1(result.heatmap > 0.5, truth) >= 0.7
    assert result.score >= 0.8
    (found,) = result.extra["transforms"]
    linear = np.array(found["matrix"])[:, :2]
    assert np.degrees(np.arctan2(linear[1, 0], linear[0, 0])) == pytest.approx(-20, abs=1.5)  # y axis points down
    assert np.sqrt(abs(np.linalg.det(linear))) == pytest.approx(1.1, abs=0.03)


def test_works_on_a_downscaled_copy_and_maps_back(forged_cat):
    forged, truth = forged_cat
    result = detect_copymove(ImageInput(forged), max_side=300)
    assert result.extra["working_scale"] < 1
    assert result.heatmap.shape == truth.shape
    assert f1(result.heatmap > 0.5, truth) >= 0.5


def test_clean_photos_are_not_flagged():
    for rgb in (skimage.data.chelsea(), skimage.data.astronaut()):
        result = detect_copymove(ImageInput(rgb))
        assert (result.heatmap > 0.5).mean() < 0.01 and result.score < 0.5


def test_repeated_texture_is_not_flagged():
    brick = np.stack([skimage.data.brick()] * 3, axis=-1)
    assert flagged_share(brick) < 0.02
    # An exactly tiled texture matches itself one period away everywhere: a pattern, not a copied object.
    tiled = np.tile(skimage.data.chelsea()[100:164, 200:264], (4, 5, 1))
    assert flagged_share(tiled) < 0.02


@pytest.mark.parametrize("shape", [(200, 300, 3), (16, 16, 3), (1, 1, 3)])
def test_degenerate_inputs_give_an_empty_result(shape):
    for rgb in (np.full(shape, 128, np.uint8), np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)):
        result = detect_copymove(ImageInput(rgb))
        assert result.heatmap.shape == shape[:2] and result.score == 0.0
        assert not result.heatmap.any()


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="unknown copymove option"):
        detect_copymove(ImageInput(np.zeros((40, 40, 3), np.uint8)), min_inliner=3)


def test_coverage_pair():
    root = shared_path("data", "coverage")

    def read(relative: str) -> np.ndarray:
        return cv2.imread(str(root / relative), cv2.IMREAD_UNCHANGED)

    forged = detect_copymove(ImageInput.from_path(root / "images" / "11t.png"))
    truth = (read("masks/11t.png") > 127) | (read("masks_source/11t.png") > 127)
    assert f1(forged.heatmap > 0.5, truth) >= 0.6 and forged.score >= 0.5
    # The original holds two genuinely similar objects: similar, but not the same pixels.
    original = detect_copymove(ImageInput.from_path(root / "authentic" / "11.png"))
    assert (original.heatmap > 0.5).mean() < 0.05 and original.score < 0.5
