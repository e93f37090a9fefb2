"""The default detector shipped inside the package: loads with no argument, works on JPEG, PNG and
grey photos, reads the JPEG stream, and still finds what it found when it was committed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import forgeloc
from forgeloc.inference.predictor import VERDICTS, default_detector_path

pytest.importorskip("jpeglib")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def detector():
    return forgeloc.load()


def _splice(quality_host: int = 75, quality_final: int = 90) -> tuple[bytes, np.ndarray]:
    """A JPEG splice with a real JPEG history: a host compressed once, a resampled patch of
    another photo pasted off the host's grid, the result saved as JPEG again."""
    import cv2
    from skimage import data

    def jpeg(img: np.ndarray, q: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    host = jpeg(np.ascontiguousarray(data.coffee()[:384, :512]), quality_host)
    donor = cv2.resize(np.ascontiguousarray(data.chelsea()), None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    mask = np.zeros(host.shape[:2], np.uint8)
    y, x, h, w = 101, 203, 150, 180
    mask[y:y + h, x:x + w] = 1
    out = host.copy()
    out[y:y + h, x:x + w] = donor[40:40 + h, 60:60 + w]
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "JPEG", quality=quality_final)
    return buf.getvalue(), mask


def _f1(pred: np.ndarray, mask: np.ndarray) -> float:
    tp = np.count_nonzero(pred & (mask > 0))
    return 2 * tp / max(1, np.count_nonzero(pred) + np.count_nonzero(mask))


def test_packaged_weights_load_with_no_argument(detector):
    assert (default_detector_path() / "model.safetensors").is_file()
    desc = detector.describe()
    assert desc["model"] == "gridnet"
    assert "copymove" in desc["fused"]
    assert desc["calibration"] and desc["calibration"]["low"] <= desc["calibration"]["high"]
    assert desc["card"]["headline"] in desc["label"]


def test_jpeg_png_and_grey_inputs(detector, tmp_path):
    data, _ = _splice()
    jpeg = tmp_path / "splice.jpg"
    jpeg.write_bytes(data)
    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "splice.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    for name, stream in [("splice.jpg", "jpeg_dct"), ("splice.png", "pixels"), ("grey.png", "pixels")]:
        result = detector.predict(tmp_path / name)
        assert result.heatmap.shape == rgb.shape[:2]
        assert result.streams == [stream]
        assert result.verdict in VERDICTS
        assert 0.0 <= result.score <= 1.0
        assert result.to_dict()["model_label"]


def test_jpeg_stream_and_decoded_pixels_agree(detector):
    data, mask = _splice()
    from_file = detector.predict(data)
    from_pixels = detector.predict(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert from_file.streams == ["jpeg_dct"] and from_pixels.streams == ["pixels"]
    # Same photo, two readings of its coefficients (the file's exact integers vs the decoded
    # pixels re-transformed, which carry rounding): the confidence differs a little, the finding not.
    both, either = from_file.mask & from_pixels.mask, from_file.mask | from_pixels.mask
    assert np.count_nonzero(both) / max(1, np.count_nonzero(either)) > 0.5
    assert _f1(from_file.mask, mask) > 0.4 and _f1(from_pixels.mask, mask) > 0.4


def test_finds_a_jpeg_splice_and_leaves_the_untouched_photo_alone(detector):
    data, mask = _splice()
    result = detector.predict(data)
    assert _f1(result.mask, mask) > 0.5
    untouched = io.BytesIO()
    from skimage import data as skdata

    Image.fromarray(np.ascontiguousarray(skdata.coffee()[:384, :512])).save(untouched, "JPEG", quality=75)
    clean = detector.predict(untouched.getvalue())
    assert clean.tampered_fraction < 0.05
    assert clean.score < result.score


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared real datasets are not here")
def test_real_samples_regression(detector):
    from forgeloc.data.io import read_mask

    casia = SHARED / "casia2_samples"
    name = "Tp_D_CRN_M_N_pla00010_pla00020_10001"
    result = detector.predict(casia / "images" / f"{name}.tif")
    assert _f1(result.mask, read_mask(casia / "masks" / f"{name}.png")) > 0.4
    authentic = detector.predict(SHARED / "coverage" / "authentic" / "1.png")
    assert authentic.tampered_fraction < 0.05
