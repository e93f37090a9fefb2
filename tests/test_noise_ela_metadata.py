"""Noise-level inconsistency, error level analysis and metadata facts (forgeloc.detectors.noise / ela /
metadata): synthetic cases with known answers, plus one real file from the shared data when present."""

from __future__ import annotations

import io
import json
import struct
import warnings

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from skimage import data as skdata

from forgeloc.detectors.base import ImageInput
from forgeloc.detectors.ela import error_level
from forgeloc.detectors.metadata import estimate_jpeg_quality, ijg_table, read_metadata
from forgeloc.detectors.noise import detect_noise, noise_confidence


def _jpeg_bytes(rgb: np.ndarray, quality: int = 90, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, **save)
    return buffer.getvalue()


def _png_bytes(rgb: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _file_input(data: bytes) -> ImageInput:
    """An ImageInput built without ``ImageInput.from_bytes``, whose own EXIF parsing would warn about
    damaged EXIF before read_metadata is even called."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
        return ImageInput(rgb=_decoded(data), data=data, format=fmt)


def _with_grey_noise(rgb: np.ndarray, rows: slice, cols: slice, sigma: float, seed: int = 0) -> np.ndarray:
    noisy = rgb.astype(np.float64)
    region = noisy[rows, cols]
    region += np.random.default_rng(seed).normal(0.0, sigma, region.shape[:2])[..., None]
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _with_graded_sky(rgb: np.ndarray, sky_rows: int) -> np.ndarray:
    out = rgb.copy()
    ramp = np.linspace(150.0, 200.0, sky_rows)[:, None, None] * np.ones((1, rgb.shape[1], 3))
    out[:sky_rows] = np.round(ramp).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------- noise


def test_noise_level_of_pure_gaussian_noise_is_recovered():
    rng = np.random.default_rng(1)
    grey = np.clip(np.round(128 + rng.normal(0, 5, (256, 256))), 0, 255).astype(np.uint8)
    result = detect_noise(ImageInput(np.repeat(grey[..., None], 3, axis=2)))
    assert result.extra["global_sigma"] == pytest.approx(5.0, rel=0.1)
    assert result.extra["usable_share"] == 1.0
    assert (result.heatmap > 0.5).mean() == 0.0


def test_noisier_square_stands_out():
    rgb = skdata.astronaut()
    rows, cols = slice(48, 176), slice(16, 144)  # background and flag: unclipped, mixed texture
    result = detect_noise(ImageInput(_with_grey_noise(rgb, rows, cols, sigma=9.0)))
    inside = np.zeros(rgb.shape[:2], bool)
    inside[rows, cols] = True
    heat_in, heat_out = result.heatmap[inside].mean(), result.heatmap[~inside].mean()
    assert heat_in > 0.4
    assert heat_in > 5 * heat_out
    assert result.score > 0.5


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_clean_photo_flags_little(name):
    result = detect_noise(ImageInput(getattr(skdata, name)()))
    assert (result.heatmap > 0.5).mean() < 0.02
    assert result.score < 0.2


@pytest.mark.parametrize("quality", [None, 90])
def test_flat_sky_is_no_evidence(quality):
    rgb = _with_graded_sky(skdata.astronaut(), sky_rows=170)
    if quality is not None:
        rgb = _decoded(_jpeg_bytes(rgb, quality))
    image = ImageInput(rgb)
    result = detect_noise(image)
    confidence = noise_confidence(image)
    sky = slice(0, 170 - 32)  # stay a block away from the horizon
    assert confidence[sky].mean() < 0.05
    assert result.heatmap[sky].max() < 0.1
    assert (result.heatmap > 0.5).mean() < 0.05
    assert confidence[250:].mean() > 0.5  # the rest of the photo still carries evidence


def test_noise_result_contract():
    image = ImageInput(skdata.coffee())
    result = detect_noise(image)
    confidence = noise_confidence(image)
    for array in (result.heatmap, confidence):
        assert array.shape == image.rgb.shape[:2] and array.dtype == np.float32
        assert array.min() >= 0.0 and array.max() <= 1.0
    assert result.name == "noise" and result.kind == "detector" and 0.0 <= result.score <= 1.0
    assert {"global_sigma", "usable_share"} <= set(result.extra)
    json.dumps(result.to_dict())


def test_noise_on_tiny_and_flat_images():
    assert not detect_noise(ImageInput(np.zeros((12, 12, 3), np.uint8))).applicable
    flat = detect_noise(ImageInput(np.full((128, 128, 3), 90, np.uint8)))
    assert flat.applicable and flat.score == 0.0 and flat.heatmap.max() == 0.0
    assert flat.extra["usable_share"] == 0.0 and flat.extra["global_sigma"] is None


# ------------------------------------------------------------------------------------------------ ELA


def test_error_level_is_a_visual_aid():
    data = _jpeg_bytes(skdata.coffee(), 85)
    result = error_level(_file_input(data), quality=90)
    assert result.name == "ela" and result.kind == "visual_aid" and result.score is None
    assert result.heatmap.shape == (400, 600) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.extra["quality"] == 90
    json.dumps(result.to_dict())
    with pytest.raises(ValueError, match="quality"):
        error_level(_file_input(data), quality=0)


def test_error_level_follows_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    data = _jpeg_bytes(skdata.coffee()[:395, :590], 90, exif=exif)
    image = ImageInput.from_bytes(data)
    assert image.orientation == 6 and image.rgb.shape[:2] == (590, 395)
    assert error_level(image).heatmap.shape == (590, 395)


# ------------------------------------------------------------------------------------------- metadata


def _camera_exif(software: str = "Adobe Photoshop 25.0") -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 5D Mark IV"
    exif[0x0131] = software
    exif[0x0132] = "2024:05:02 18:00:00"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:30:00"  # DateTimeOriginal
    return exif


def _exif_with_thumbnail(thumbnail_jpeg: bytes) -> bytes:
    """A little-endian EXIF block: IFD0 (Orientation = 1) → IFD1 pointing at a JPEG thumbnail."""
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 1) + struct.pack("<I", 26)
    thumb_offset = 26 + 2 + 2 * 12 + 4
    ifd1 = (struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, thumb_offset)
            + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail_jpeg)) + struct.pack("<I", 0))
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumbnail_jpeg


def test_camera_exif_and_editing_software():
    result = read_metadata(_file_input(_jpeg_bytes(skdata.coffee(), 90, exif=_camera_exif())))
    facts = result.extra
    assert result.kind == "facts" and result.heatmap is None and result.score is None
    assert facts["exif"]["make"] == "Canon" and facts["exif"]["model"] == "Canon EOS 5D Mark IV"
    assert facts["exif"]["software"] == "Adobe Photoshop 25.0"
    assert facts["exif"]["datetime"] == "2024:05:02 18:00:00"
    assert facts["exif"]["datetime_original"] == "2024:05:01 10:30:00"
    assert facts["editing_software"] == {"name": "Adobe Photoshop", "value": "Adobe Photoshop 25.0",
                                         "field": "Software"}
    hints = " ".join(facts["hints"])
    assert "dates disagree" in hints and "names an editor" in hints
    assert "no camera metadata" not in hints
    json.dumps(result.to_dict())


def test_camera_software_that_is_not_an_editor():
    facts = read_metadata(_file_input(_jpeg_bytes(skdata.coffee(), 90, exif=_camera_exif("Firmware 1.2.0")))).extra
    assert facts["editing_software"] is None


def test_thumbnail_agreement_and_disagreement():
    main = skdata.coffee()
    same = _jpeg_bytes(np.asarray(Image.fromarray(main).resize((160, 107), Image.LANCZOS)), 85)
    other = _jpeg_bytes(np.asarray(Image.fromarray(skdata.chelsea()).resize((160, 107), Image.LANCZOS)), 85)
    agreeing = read_metadata(_file_input(_jpeg_bytes(main, 90, exif=_exif_with_thumbnail(same)))).extra["thumbnail"]
    assert agreeing["present"] and agreeing["disagrees"] is False and agreeing["mean_difference"] < 5
    differing = read_metadata(_file_input(_jpeg_bytes(main, 90, exif=_exif_with_thumbnail(other))))
    thumb = differing.extra["thumbnail"]
    assert thumb["present"] and thumb["disagrees"] is True and thumb["mean_difference"] > 20
    assert any("thumbnail differs" in hint for hint in differing.extra["hints"])
    json.dumps(differing.to_dict())


def test_png_without_metadata():
    facts = read_metadata(_file_input(_png_bytes(skdata.coffee()))).extra
    assert facts["format"] == "PNG" and facts["has_exif"] is False and facts["exif"] == {}
    assert facts["quantization"] is None and facts["thumbnail"] == {"present": False}
    assert facts["hints"][0].startswith("no camera metadata (EXIF)")
    assert not any(hint.startswith("looks like a screenshot") for hint in facts["hints"])


def test_png_at_screen_size_looks_like_a_screenshot():
    screen = np.full((1080, 1920, 3), 240, np.uint8)
    facts = read_metadata(_file_input(_png_bytes(screen))).extra
    assert any(hint.startswith("looks like a screenshot") for hint in facts["hints"])


def test_png_text_software():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "GIMP 2.10.34")
    facts = read_metadata(_file_input(_png_bytes(skdata.coffee(), pnginfo=info))).extra
    assert facts["png_text"] == {"Software": "GIMP 2.10.34"}
    assert facts["editing_software"]["name"] == "GIMP" and facts["editing_software"]["field"] == "PNG Software"


def test_corrupt_exif_is_reported_silently(capfd):
    corrupt = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x0f\x01\x02\x00\xff\x00\x00\x00\x50\x00\x00\x00"
    image = _file_input(_jpeg_bytes(skdata.coffee(), 90, exif=corrupt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read_metadata(image)
    assert caught == []
    assert capfd.readouterr().err == ""
    assert result.extra["exif_problems"]  # the damage is a fact of its own
    json.dumps(result.to_dict())


def test_unreadable_file_and_bare_array():
    broken = read_metadata(ImageInput(rgb=np.zeros((8, 8, 3), np.uint8), data=b"\xff\xd8not a jpeg", format="JPEG"))
    assert broken.extra["readable"] is False and broken.score is None
    bare = read_metadata(ImageInput(rgb=np.zeros((8, 8, 3), np.uint8)))
    assert not bare.applicable and bare.kind == "facts"


@pytest.mark.parametrize("quality", [75, 95])
def test_ijg_quality_of_pillow_jpegs(quality):
    facts = read_metadata(_file_input(_jpeg_bytes(skdata.coffee()[:64, :64], quality))).extra["quantization"]
    assert facts["quality"] == quality and facts["exact_ijg"] is True and facts["chroma_exact_ijg"] is True
    assert facts["note"].startswith(f"standard libjpeg table at quality {quality}")


def test_ijg_tables_and_nearest_quality():
    assert ijg_table(50).tolist()[0] == [16, 11, 10, 16, 24, 40, 51, 61]
    assert ijg_table(100).max() == 1 and ijg_table(1).max() == 255
    near = estimate_jpeg_quality(ijg_table(80) + (np.arange(64).reshape(8, 8) % 2))
    assert near["exact_ijg"] is False and abs(near["quality"] - 80) <= 3


def test_real_photoshopped_camera_file():
    path = shared_path("data", "single_samples", "images", "NC2016_2564.jpg")
    facts = read_metadata(_file_input(path.read_bytes())).extra
    assert facts["exif"]["make"] == "FUJIFILM"
    assert facts["editing_software"]["name"] == "Adobe Photoshop"
    assert facts["thumbnail"]["present"] and facts["thumbnail"]["disagrees"] is False
    assert facts["quantization"]["exact_ijg"] is False
    assert any(hint.startswith("dates disagree") for hint in facts["hints"])
