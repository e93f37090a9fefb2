"""forgeloc.data.io: every odd image mode becomes H×W×3 uint8 RGB with the right content; mask rules."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from forgeloc.data.io import (
    IMAGE_EXTENSIONS,
    MaskSizeError,
    authentic_mask,
    binarize_mask,
    image_info,
    mask_stats,
    read_image,
    read_mask,
    read_mask_gray,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _check_layout(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3)
    assert arr.flags.c_contiguous and arr.flags.writeable


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".tif", "TIFF"), (".bmp", "BMP"), (".webp", "WEBP")])
def test_lossless_formats_roundtrip_exactly(tmp_path, ext, fmt):
    path = tmp_path / f"img{ext}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(RGB).save(path, fmt, **kwargs)
    out = read_image(path)
    _check_layout(out, 24, 32)
    assert np.array_equal(out, RGB)


def test_jpeg_matches_pillow_decode(tmp_path):
    path = tmp_path / "img.jpg"
    Image.fromarray(RGB).save(path, quality=90)
    assert np.array_equal(read_image(path), np.asarray(Image.open(path).convert("RGB")))


def test_grayscale_l_and_1bit(tmp_path):
    gray = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    out = read_image(tmp_path / "l.png")
    _check_layout(out, 10, 12)
    assert all(np.array_equal(out[:, :, c], gray) for c in range(3))

    bits = gray > 128
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = read_image(tmp_path / "b.png")
    assert np.array_equal(out[:, :, 0], np.where(bits, 255, 0).astype(np.uint8))
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_rgba_and_la_composite_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 0  # fully transparent → white
    rgba[0, 1, 3] = 255  # opaque → unchanged
    rgba[0, 2, 3] = 128  # half → blend with white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _check_layout(out, 4, 4)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (10, 20, 30)
    expected = [round((v * 128 + 255 * 127) / 255) for v in (10, 20, 30)]
    assert np.abs(out[0, 2].astype(int) - expected).max() <= 1

    la = np.zeros((3, 3, 2), np.uint8)
    la[..., 0] = 40
    la[1, 1, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (40, 40, 40)


def test_palette_with_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)  # the transparent palette entry → white, not green
    assert tuple(out[1, 0]) == (0, 0, 255)

    img.save(tmp_path / "p_opaque.png")  # no transparency: plain palette lookup
    assert tuple(read_image(tmp_path / "p_opaque.png")[0, 1]) == (0, 255, 0)


def test_16bit_gray_png_and_tiff_scale_by_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 25700], [32768, 32896, 65280, 65535]], np.uint16)
    for ext in (".png", ".tif"):
        path = tmp_path / f"g16{ext}"
        cv2.imwrite(str(path), values)
        assert Image.open(path).mode.startswith("I;16")
        out = read_image(path)
        _check_layout(out, 2, 4)
        assert out[:, :, 0].tolist() == [[0, 0, 1, 100], [128, 128, 255, 255]]
        # not clipping (which would make everything ≥ 255 white)
        assert out[0, 3, 0] != 255


def test_16bit_rgb_png_keeps_high_byte(tmp_path):
    rgb16 = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])  # OpenCV writes BGR
    assert np.array_equal(read_image(tmp_path / "c16.png"), (rgb16 >> 8).astype(np.uint8))


def test_float_and_int32_tiff(tmp_path):
    f = np.array([[0.0, 0.5], [0.25, 1.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[:, :, 0].tolist() == [[0, 128], [64, 255]]
    g = np.array([[0.0, 100.4], [300.0, -5.0]], np.float32)  # not in [0, 1]: taken as 0..255, clipped
    Image.fromarray(g, "F").save(tmp_path / "g.tif")
    assert read_image(tmp_path / "g.tif")[:, :, 0].tolist() == [[0, 100], [255, 0]]
    i = np.array([[0, 65535], [70000, -3]], np.int32)
    Image.fromarray(i, "I").save(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[:, :, 0].tolist() == [[0, 255], [255, 0]]


def test_cmyk_jpeg_and_ycbcr(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    cmyk.save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    _check_layout(out, 16, 16)
    assert np.abs(out.reshape(-1, 3).mean(0) - (0, 255, 255)).max() < 6

    ycc = Image.fromarray(RGB).convert("YCbCr")
    ycc.save(tmp_path / "y.tif")
    assert np.abs(read_image(tmp_path / "y.tif").astype(int) - np.asarray(ycc.convert("RGB"))).max() == 0


def _exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_exif_orientation_6_rotates_pixels(tmp_path):
    stored = np.full((40, 60, 3), 128, np.uint8)  # stored 60 wide × 40 high
    stored[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=_exif_with_orientation(6))
    out = read_image(path)
    # Orientation 6 = rotate 90° clockwise for display: 40 wide × 60 high, top-left → top-right.
    _check_layout(out, 60, 40)
    assert np.abs(out[3, 36].astype(int) - (255, 0, 0)).max() < 20
    assert np.abs(out[3, 3].astype(int) - 128).max() < 20
    info = image_info(path)
    assert (info.width, info.height, info.exif_orientation) == (40, 60, 6)
    raw = read_image(path, exif_transpose=False)
    assert raw.shape == (40, 60, 3) and raw[3, 3, 0] > 200


def test_bytes_and_file_objects(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "PNG")
    data = buf.getvalue()
    assert np.array_equal(read_image(data), RGB)
    assert np.array_equal(read_image(io.BytesIO(data)), RGB)
    assert np.array_equal(read_image(memoryview(data), name="upload.png"), RGB)
    (tmp_path / "x.png").write_bytes(data)
    with open(tmp_path / "x.png", "rb") as fh:
        assert np.array_equal(read_image(fh), RGB)


def test_extensions_constant():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"} == set(IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------
def test_mask_threshold_is_strict_on_the_rgb_mean(tmp_path):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png")
    assert m.dtype == np.uint8 and m.tolist() == [[0, 0, 1, 1]]

    rgb = np.array([[[128, 128, 127], [127, 128, 127], [255, 0, 0], [255, 255, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    # means: 127.67 → 1, 127.33 → 0, 85 → 0 (pure red is NOT tampered), 170 → 1
    assert read_mask(tmp_path / "rgb.png").tolist() == [[1, 0, 0, 1]]
    assert read_mask(tmp_path / "rgb.png", threshold=50).tolist() == [[1, 1, 1, 1]]
    assert binarize_mask(rgb).tolist() == [[1, 0, 0, 1]]


def test_16bit_and_1bit_masks(tmp_path):
    m16 = np.array([[0, 32639, 32896, 65535]], np.uint16)  # high bytes 0, 127, 128, 255
    cv2.imwrite(str(tmp_path / "m16.png"), m16)
    assert read_mask(tmp_path / "m16.png").tolist() == [[0, 0, 1, 1]]
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "m1.png")
    assert read_mask(tmp_path / "m1.png").tolist() == [[1, 0]]


def test_rgba_mask_ignores_alpha_and_says_so(tmp_path, caplog):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)  # transparent but white: tampered (IMDLBenCo drops alpha too)
    rgba[0, 1] = (0, 0, 0, 255)
    rgba[0, 2] = (255, 255, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="forgeloc.data"):
        assert read_mask(tmp_path / "m.png").tolist() == [[1, 0, 1]]
    assert "alpha channel is ignored" in caplog.text and "m.png" in caplog.text


def test_jpeg_mask_is_thresholded(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    cv2.circle(mask, (15, 17), 9, 255, -1)
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=75)
    gray = read_mask_gray(tmp_path / "m.jpg")
    assert ((gray != 0) & (gray != 255)).any()  # JPEG ringing really is there
    assert np.array_equal(read_mask(tmp_path / "m.jpg"), (gray > 127.5).astype(np.uint8))
    # the artefacts do not move the region: nearly every pixel agrees with the drawn disk
    assert (read_mask(tmp_path / "m.jpg") == (mask > 0)).mean() > 0.99


def test_mask_size_check_and_explicit_resize(tmp_path, caplog):
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", image_size=(20, 10)).shape == (10, 20)
    with pytest.raises(MaskSizeError):
        read_mask(tmp_path / "m.png", image_size=(10, 20))
    with caplog.at_level(logging.WARNING, logger="forgeloc.data"):
        out = read_mask(tmp_path / "m.png", image_size=(40, 30), image_path="photo.jpg", resize=True)
    assert out.shape == (30, 40) and out.min() == 1
    assert "resizing the mask" in caplog.text and "photo.jpg" in caplog.text and "m.png" in caplog.text


def test_transposed_size_hint(tmp_path):
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(MaskSizeError, match="transposed"):
        read_mask(tmp_path / "m.png", image_size=(10, 20), image_path=tmp_path / "img.jpg")


def test_authentic_mask_and_stats():
    z = authentic_mask(3, 5)
    assert z.shape == (3, 5) and z.dtype == np.uint8 and not z.any()
    m = np.zeros((4, 4), np.uint8)
    m[:2, :1] = 1
    s = mask_stats(m)
    assert (s["pixels"], s["tampered"], s["fraction"], s["empty"], s["full"]) == (16, 2, 0.125, 0, 0)
    assert mask_stats(z)["empty"] == 1 and mask_stats(np.ones((2, 2)))["full"] == 1
