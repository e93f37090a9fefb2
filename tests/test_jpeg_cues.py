"""Training-free JPEG cues (forgeloc.detectors.jpeg_cues) on synthetic forgeries with known masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from skimage import data, transform

from forgeloc.detectors.base import ImageInput
from forgeloc.detectors.jpeg_cues import detect_adq, detect_ghost, detect_nadjpg, estimate_quality

BOX = (160, 200, 320, 360)  # y0, x0, y1, x1: on the 8×8 grid
SHIFTED_BOX = (163, 205, 323, 365)  # off the grid


def jpeg_bytes(rgb: np.ndarray, quality: int, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, **options)
    return buffer.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def resampled_patch(height: int, width: int) -> np.ndarray:
    """A never-compressed patch: coffee() resized (resampling erases any JPEG trace)."""
    patch = transform.resize(data.coffee(), (height, width), anti_aliasing=True)
    return (patch * 255).round().astype(np.uint8)


def paste(host: np.ndarray, patch: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    y0, x0, y1, x1 = box
    out = host.copy()
    out[y0:y1, x0:x1] = patch
    mask = np.zeros(host.shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    return out, mask


def f1_at_half(heatmap: np.ndarray, mask: np.ndarray) -> float:
    hit = heatmap > 0.5
    return 2 * float((hit & mask).sum()) / float(hit.sum() + mask.sum())


def check_contract(result, image: ImageInput) -> None:
    assert result.applicable
    assert result.heatmap.shape == (image.height, image.width)
    assert result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert 0.0 <= result.score <= 1.0


@pytest.fixture(scope="module")
def double_compressed():
    """astronaut at q=60, decoded, a resampled patch pasted, saved at q=90."""
    host = decoded(jpeg_bytes(data.astronaut(), 60))
    forged, mask = paste(host, resampled_patch(BOX[2] - BOX[0], BOX[3] - BOX[1]), BOX)
    return ImageInput.from_bytes(jpeg_bytes(forged, 90)), mask


# --- aligned double compression -------------------------------------------------------------------


def test_adq_flags_the_singly_compressed_patch(double_compressed):
    image, mask = double_compressed
    result = detect_adq(image)
    check_contract(result, image)
    assert result.name == "jpeg_adq"
    assert result.extra["verdict"] == "aligned double compression found"
    assert result.heatmap[mask].mean() > 0.9
    assert result.heatmap[~mask].mean() < 0.15
    assert f1_at_half(result.heatmap, mask) > 0.7
    assert result.score > 0.9
    # the primary quality comes back from the estimated primary steps
    assert abs(result.extra["quality"]["primary_quality"]["quality"] - 60) <= 3


def test_adq_is_quiet_on_a_single_compressed_jpeg():
    for rgb in (data.astronaut(), data.chelsea()):
        result = detect_adq(ImageInput.from_bytes(jpeg_bytes(rgb, 90)))
        assert result.applicable
        assert (result.heatmap > 0.5).mean() < 0.01
        assert result.score == 0.0
        assert result.extra["quality"]["primary_quality"] is None


def test_adq_follows_exif_orientation(double_compressed):
    """The map is computed on the stored grid and must land on the displayed pixels."""
    image, mask = double_compressed
    stored = np.ascontiguousarray(np.swapaxes(image.rgb[:, ::-1], 0, 1))  # what orientation 6 displays as image.rgb
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = ImageInput.from_bytes(jpeg_bytes(stored, 90, exif=exif))
    assert rotated.orientation == 6 and rotated.rgb.shape == image.rgb.shape
    result = detect_adq(rotated)
    assert result.heatmap[mask].mean() > 0.8
    assert result.heatmap[~mask].mean() < 0.2


def test_adq_crops_partial_blocks_to_the_image_size():
    host = decoded(jpeg_bytes(data.astronaut()[:405, :453], 60))
    forged, mask = paste(host, resampled_patch(BOX[2] - BOX[0], BOX[3] - BOX[1]), BOX)
    image = ImageInput.from_bytes(jpeg_bytes(forged, 90))
    result = detect_adq(image)
    check_contract(result, image)
    assert result.heatmap[mask].mean() > 0.8


# --- block grid -----------------------------------------------------------------------------------


def test_grid_flags_a_patch_off_the_host_grid_in_a_png():
    host = decoded(jpeg_bytes(data.astronaut(), 75))
    other = decoded(jpeg_bytes(data.coffee(), 75))  # a JPEG patch too, but cut off its grid
    y0, x0, y1, x1 = SHIFTED_BOX
    forged, mask = paste(host, other[: y1 - y0, : x1 - x0], SHIFTED_BOX)
    image = ImageInput.from_bytes(png_bytes(forged))
    result = detect_nadjpg(image)
    check_contract(result, image)
    assert result.name == "jpeg_grid"
    assert result.extra["grid_offset"] == [0, 0]
    assert result.extra["quality_at_grid"]["quality"] in range(72, 79)
    assert result.heatmap[mask].mean() > 0.8
    assert result.heatmap[~mask].mean() < 0.1
    assert f1_at_half(result.heatmap, mask) > 0.8


def test_grid_finds_a_shifted_primary_grid_in_a_jpeg():
    """Non-aligned double compression: the host was cropped by (3, 5) between two compressions."""
    host = decoded(jpeg_bytes(data.astronaut(), 75))[3:, 5:]
    forged, mask = paste(host, resampled_patch(BOX[2] - BOX[0], BOX[3] - BOX[1]), BOX)
    image = ImageInput.from_bytes(jpeg_bytes(forged, 95))
    result = detect_nadjpg(image)
    check_contract(result, image)
    assert result.extra["grid_offset"] == [5, 3]
    assert result.heatmap[mask].mean() > 0.5
    assert result.heatmap[~mask].mean() < 0.1


def test_grid_is_not_applicable_without_a_grid():
    never_compressed = (transform.rescale(data.astronaut(), 0.77, channel_axis=2) * 255).round().astype(np.uint8)
    result = detect_nadjpg(ImageInput.from_bytes(png_bytes(never_compressed)))
    assert not result.applicable
    assert result.reason == "no JPEG block grid found"


def test_grid_on_a_single_jpeg_reports_only_its_own_grid():
    result = detect_nadjpg(ImageInput.from_bytes(jpeg_bytes(data.astronaut(), 90)))
    assert result.applicable and result.score == 0.0
    assert result.extra["file_grid_offset"] == [0, 0]
    assert "besides the file's own" in result.extra["verdict"]


# --- ghosts ---------------------------------------------------------------------------------------


def test_ghost_flags_a_patch_compressed_at_a_lower_quality():
    y0, x0, y1, x1 = BOX
    patch = decoded(jpeg_bytes(np.ascontiguousarray(data.coffee()[: y1 - y0, : x1 - x0]), 60))
    forged, mask = paste(data.astronaut(), patch, BOX)
    image = ImageInput.from_bytes(jpeg_bytes(forged, 90))
    result = detect_ghost(image)
    check_contract(result, image)
    assert result.name == "jpeg_ghost"
    assert result.extra["ghost_quality"] == 60
    assert result.heatmap[mask].mean() > result.heatmap[~mask].mean() + 0.3
    assert f1_at_half(result.heatmap, mask) > 0.5


# --- quality --------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [75, 90])
def test_estimate_quality_of_pillow_jpegs(quality):
    facts = estimate_quality(ImageInput.from_bytes(jpeg_bytes(data.astronaut(), quality)))
    assert facts["applicable"]
    assert facts["quality"] == quality
    assert facts["exact_ijg_table"] == "yes"
    assert facts["primary_quality"] is None


def test_estimate_quality_of_a_double_compressed_jpeg(double_compressed):
    facts = estimate_quality(double_compressed[0])
    assert facts["quality"] == 90
    assert abs(facts["primary_quality"]["quality"] - 60) <= 3


def test_estimate_quality_is_exact_for_libjpeg_tables():
    for quality in (10, 49, 50, 51, 97, 100):
        facts = estimate_quality(ImageInput.from_bytes(jpeg_bytes(data.camera()[:64, :64, None].repeat(3, 2), quality)))
        assert (facts["quality"], facts["exact_ijg_table"]) == (quality, "yes")


# --- inputs the cues cannot read -----------------------------------------------------------------


def test_png_is_not_applicable_to_the_jpeg_stream_cues():
    image = ImageInput.from_bytes(png_bytes(data.astronaut()))
    for detect in (detect_adq, detect_ghost):
        result = detect(image)
        assert not result.applicable
        assert result.heatmap is None and result.score is None
        assert result.reason == "not a JPEG file: PNG"
    facts = estimate_quality(image)
    assert facts == {"applicable": False, "reason": "not a JPEG file: PNG"}


def test_arrays_without_bytes_are_not_applicable():
    result = detect_adq(ImageInput(rgb=data.astronaut()))
    assert not result.applicable and "not a JPEG file" in result.reason


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_jpeg_is_not_applicable(cut):
    full = jpeg_bytes(data.astronaut(), 90)
    # built by hand: ImageInput.from_bytes refuses truncated files itself
    image = ImageInput(rgb=data.astronaut(), data=full[: int(len(full) * cut)], format="JPEG")
    for detect in (detect_adq, detect_ghost):
        result = detect(image)
        assert not result.applicable
        assert result.reason.startswith("corrupt JPEG")
    assert not estimate_quality(image)["applicable"]


def test_adq_needs_enough_blocks_for_histograms():
    result = detect_adq(ImageInput.from_bytes(jpeg_bytes(data.astronaut()[:40, :64], 90)))
    assert not result.applicable and "too small" in result.reason


def test_garbage_jpeg_bytes_are_not_applicable():
    image = ImageInput(rgb=data.astronaut(), data=b"\xff\xd8\xff\xe0garbage", format="JPEG")
    result = detect_adq(image)
    assert not result.applicable and result.reason.startswith("corrupt JPEG")


# --- real data ------------------------------------------------------------------------------------


def test_grid_on_a_real_casia_tiff():
    """CASIA v2 splice saved as TIFF: the host keeps the lattice of its JPEG past, the splice not."""
    folder = shared_path("data", "casia2_samples")
    name = "Tp_D_NNN_S_B_art20029_art20034_02336"
    image = ImageInput.from_path(folder / "images" / f"{name}.tif")
    mask = np.asarray(Image.open(folder / "masks" / f"{name}.png").convert("L")) > 127
    result = detect_nadjpg(image)
    check_contract(result, image)
    assert result.heatmap[mask].mean() > 0.6
    assert result.heatmap[~mask].mean() < 0.1
