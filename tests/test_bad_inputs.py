"""A corpus of bad files and bad dataset lists, built here: each must fail with the right error type
and a message that names the file (and, for JSON lists, the line)."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from forgeloc.data.check import check_dataset, convert_to_json
from forgeloc.data.datasets import DatasetError, ForgeryDataset, Record, list_images, load_records
from forgeloc.data.io import (
    DecompressionBombError,
    ImageReadError,
    MaskSizeError,
    image_info,
    read_image,
    read_mask,
)
from forgeloc.data.transforms import SampleTransform

RNG = np.random.default_rng(1)


def _png_bytes(h: int = 40, w: int = 50) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(h: int = 64, w: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _save_mask(path: Path, h: int = 40, w: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[5:15, 5:20] = 255
    Image.fromarray(m).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# Bad image files
# ------------------------------------------------------------------------------------------------
BAD_FILES = {
    "zero_bytes.png": (lambda: b"", "empty file (0 bytes)"),
    "truncated.png": (lambda: _png_bytes()[:-200], "truncated or corrupt"),
    "truncated.jpg": (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated or corrupt"),
    "text.png": (lambda: b"this is not an image\nreally not\n", "text file"),
    "random.jpg": (lambda: bytes(RNG.integers(0, 256, 4096, dtype=np.uint8)), "not a recognised image format"),
    "page.jpg": (lambda: b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>", "HTML document"),
    "corrupt_idat.png": (
        lambda: (lambda b: b[:60] + bytes(x ^ 0xFF for x in b[60:160]) + b[160:])(_png_bytes()),
        "truncated or corrupt",
    ),
    "svg.png": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_files(tmp_path, name):
    make, expected = BAD_FILES[name]
    path = _write(tmp_path / name, make())
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.type is ImageReadError
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert expected in str(info.value)
    # the same file used as a mask fails the same way
    with pytest.raises(ImageReadError, match="truncated|empty|text|recognised|HTML|SVG"):
        read_mask(path)


def test_decompression_bomb_header(tmp_path):
    # Only the header claims 100000×100000: refused before anything is decoded (Pillow's hard limit).
    path = _write(tmp_path / "bomb.png", _png_header_only(100_000, 100_000))
    with pytest.raises(DecompressionBombError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "too many pixels" in str(info.value)
    # 20000×20000 = 400 MP: above forgeloc's default limit
    path = _write(tmp_path / "bomb2.png", _png_header_only(20_000, 20_000))
    with pytest.raises(DecompressionBombError, match="bomb2.png"):
        read_image(path)


def test_max_pixels_on_a_real_image(tmp_path):
    path = _write(tmp_path / "real.png", _png_bytes(40, 50))
    with pytest.raises(DecompressionBombError) as info:
        read_image(path, max_pixels=1999)
    assert "50x40" in str(info.value) and "max_pixels=1,999" in str(info.value) and str(path) in str(info.value)
    assert read_image(path, max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(DecompressionBombError):
        read_mask(path, max_pixels=100)


def test_pillow_soft_limit_is_not_a_warning_storm(tmp_path, recwarn):
    # 10000×10000 = 100 MP: above Pillow's 89.5 MP *warning* limit, below forgeloc's default, so
    # forgeloc's own check decides (header only: nothing is decoded or allocated here).
    path = _write(tmp_path / "big_header.png", _png_header_only(10_000, 10_000))
    assert image_info(path).size == (10_000, 10_000)
    with pytest.raises(DecompressionBombError):
        image_info(path, max_pixels=99_999_999)
    assert not [w for w in recwarn if "decompression" in str(w.message).lower()]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as info:
        read_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(info.value)
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(ImageReadError, match="is a directory") as info:
        read_image(tmp_path / "adir.png")
    assert str(tmp_path / "adir.png") in str(info.value)


def test_bytes_errors_use_the_display_name():
    with pytest.raises(ImageReadError, match=r"^upload\.jpg: empty file"):
        read_image(b"", name="upload.jpg")
    with pytest.raises(ImageReadError, match=r"^<bytes>: is a text file"):
        read_image(b"hello")
    stream = io.BytesIO(_png_bytes()[:100])
    stream.name = "form-field.png"
    with pytest.raises(ImageReadError, match="form-field.png"):
        read_image(stream)


def test_mask_of_wrong_size_names_both_files_and_sizes(tmp_path):
    image = _write(tmp_path / "photo.png", _png_bytes(40, 50))
    mask = _save_mask(tmp_path / "photo_mask.png", 30, 45)
    with pytest.raises(MaskSizeError) as info:
        read_mask(mask, image_size=(50, 40), image_path=image)
    msg = str(info.value)
    assert str(mask) in msg and str(image) in msg and "45x30" in msg and "50x40" in msg
    assert info.value.path == str(mask) and info.value.image_path == str(image)
    # through the dataset too
    ds = ForgeryDataset([Record(image, mask, "list.json:line 3")], SampleTransform(mode="none"))
    with pytest.raises(MaskSizeError, match="45x30"):
        ds[0]


def test_mask_of_wrong_size_resized_on_request_and_logged(tmp_path, caplog):
    image = _write(tmp_path / "photo.png", _png_bytes(40, 50))
    mask = _save_mask(tmp_path / "photo_mask.png", 20, 25)
    ds = ForgeryDataset([Record(image, mask, str(image))], SampleTransform(mode="none"), resize_masks=True)
    with caplog.at_level(logging.WARNING, logger="forgeloc.data"):
        sample = ds[0]
    assert sample["mask"].shape == (1, 40, 50)
    # nearest neighbour ×2: the 10×15 block at (5, 5) becomes 20×30 at (10, 10)
    assert sample["mask"].sum() == 20 * 30 and sample["mask"][0, 10, 10] == 1 and sample["mask"][0, 9, 10] == 0
    assert "resizing the mask" in caplog.text and str(mask) in caplog.text


def test_unreadable_image_in_a_dataset_names_the_record(tmp_path):
    image = _write(tmp_path / "broken.jpg", _jpeg_bytes()[:300])
    ds = ForgeryDataset([Record(image, None, "list.json:line 7")], SampleTransform(mode="none"))
    with pytest.raises(ImageReadError) as info:
        ds[0]
    assert str(image) in str(info.value)
    assert "list.json:line 7" in "".join(getattr(info.value, "__notes__", ["list.json:line 7"]))


# ------------------------------------------------------------------------------------------------
# Bad JSON lists
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def good_files(tmp_path):
    img = _write(tmp_path / "data" / "a.png", _png_bytes())
    mask = _save_mask(tmp_path / "data" / "a_gt.png")
    return img, mask


def _json(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "list.json"
    path.write_text(text)
    return path


def _problems(path: Path) -> list:
    with pytest.raises(DatasetError) as info:
        load_records(path)
    assert str(path) in str(info.value)
    for p in info.value.problems:
        assert p.where in str(info.value) and p.message in str(info.value)
    return info.value.problems


def test_json_not_a_list(tmp_path):
    problems = _problems(_json(tmp_path, '{"coverage": "/data/coverage.json"}'))
    assert len(problems) == 1
    assert "must be a JSON list" in problems[0].message and "test-set config" in problems[0].message


def test_json_invalid_syntax_has_the_line(tmp_path, good_files):
    text = '[\n  ["data/a.png", "data/a_gt.png"],\n  ["data/a.png" "Negative"]\n]\n'
    problems = _problems(_json(tmp_path, text))
    assert problems[0].where.endswith("list.json:line 3") and "invalid JSON" in problems[0].message


def test_json_entry_shapes(tmp_path, good_files):
    text = "\n".join([
        "[",
        '  ["data/a.png", "data/a_gt.png"],',  # line 2: fine
        '  ["data/a.png"],',  # line 3: not a pair
        '  "data/a.png",',  # line 4: not a list
        '  ["data/a.png", null],',  # line 5: non-string mask
        '  [12, "Negative"],',  # line 6: non-string image
        '  ["data/a.png", "data/other.json"],',  # line 7: nested list as mask
        '  ["", "Negative"],',  # line 8: empty path
        '  ["data/a.png", "negative"]',  # line 9: lowercase Negative
        "]",
    ])
    problems = _problems(_json(tmp_path, text))
    by_line = {int(p.where.rsplit("line ", 1)[1]): p.message for p in problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert "must be a pair" in by_line[3] and "must be a pair" in by_line[4]
    assert "mask must be a string" in by_line[5] and '"Negative"' in by_line[5]
    assert "image must be a string" in by_line[6]
    assert "ends in .json" in by_line[7]
    assert "empty" in by_line[8]
    assert '"Negative"' in by_line[9]


def test_json_missing_files_all_reported_with_lines(tmp_path, good_files):
    rows = [["data/a.png", "data/a_gt.png"], ["data/missing1.png", "Negative"], ["data/a.png", "data/nomask.png"],
            ["data/missing2.jpg", "data/a_gt.png"], ["data", "Negative"]]
    text = "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n"
    problems = _problems(_json(tmp_path, text))
    found = {(p.where.rsplit(":", 1)[1], p.message.split(":")[0]) for p in problems}
    assert ("line 3", "image file not found") in found
    assert ("line 4", "mask file not found") in found
    assert ("line 5", "image file not found") in found
    assert any(p.where.endswith("line 6") and "unsupported extension" in p.message for p in problems)
    assert len(problems) == 4
    assert all(str(tmp_path / "data") in p.message for p in problems if "not found" in p.message)


def test_json_directory_instead_of_file(tmp_path, good_files):
    (tmp_path / "data" / "dir.png").mkdir()
    problems = _problems(_json(tmp_path, '[["data/dir.png", "Negative"]]'))
    assert "is a directory" in problems[0].message and problems[0].where.endswith("line 1")


def test_json_empty_list_and_not_json(tmp_path):
    assert "empty" in _problems(_json(tmp_path, "[]"))[0].message
    bad = tmp_path / "list.txt"
    bad.write_text("x")
    with pytest.raises(DatasetError, match=r"must be a \.json list"):
        load_records(bad)
    with pytest.raises(DatasetError, match="dataset not found"):
        load_records(tmp_path / "nowhere")


def test_json_utf8_error(tmp_path):
    path = tmp_path / "list.json"
    path.write_bytes(b'[["\xff\xfe.png", "Negative"]]')
    assert "not UTF-8" in _problems(path)[0].message


# ------------------------------------------------------------------------------------------------
# Bad folders
# ------------------------------------------------------------------------------------------------
def _layout(tmp_path: Path, images: list[str], masks: list[str], a: str = "Tp", b: str = "Gt") -> Path:
    root = tmp_path / "ds"
    for name in images:
        _write(root / a / name, _png_bytes())
    for name in masks:
        _save_mask(root / b / name)
    (root / a).mkdir(parents=True, exist_ok=True)
    (root / b).mkdir(parents=True, exist_ok=True)
    return root


def test_tp_gt_unmatched_image(tmp_path):
    root = _layout(tmp_path, ["x.png", "y.png"], ["x_gt.png"])
    with pytest.raises(DatasetError) as info:
        load_records(root)
    (p,) = info.value.problems
    assert p.where == str(root / "Tp" / "y.png") and "no mask found" in p.message and "y_gt.*" in p.message


def test_tp_gt_unmatched_mask(tmp_path):
    root = _layout(tmp_path, ["x.png"], ["x_gt.png", "z_gt.png"])
    with pytest.raises(DatasetError) as info:
        load_records(root)
    (p,) = info.value.problems
    assert p.where == str(root / "Gt" / "z_gt.png") and "no matching image" in p.message


def test_duplicate_stems_and_ambiguous_masks(tmp_path):
    root = _layout(tmp_path, ["x.png", "x.jpg", "y.png"], ["x_gt.png", "y_gt.png", "y_mask.png"])
    with pytest.raises(DatasetError) as info:
        load_records(root)
    messages = " | ".join(str(p) for p in info.value.problems)
    assert "several images share the name 'x'" in messages
    assert "several masks match this image" in messages and "y_mask.png" in messages


def test_unsupported_extension_in_a_folder(tmp_path):
    root = _layout(tmp_path, ["x.png", "notes.txt", "anim.gif"], ["x_gt.png"], "images", "masks")
    with pytest.raises(DatasetError) as info:
        load_records(root)
    wheres = sorted(Path(p.where).name for p in info.value.problems)
    assert wheres == ["anim.gif", "notes.txt"]
    assert all("unsupported extension" in p.message for p in info.value.problems)


def test_empty_folder_and_half_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_records(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no images found"):
        list_images(tmp_path / "empty")
    (tmp_path / "half" / "Tp").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"has Tp/ but no Gt/"):
        load_records(tmp_path / "half")
    (tmp_path / "nested" / "photos").mkdir(parents=True)
    with pytest.raises(DatasetError, match="sub-folders photos are not searched"):
        load_records(tmp_path / "nested")


def test_mixed_known_and_unknown_masks_refused(tmp_path):
    img = _write(tmp_path / "a.png", _png_bytes())
    with pytest.raises(ValueError, match="mix known and unknown"):
        ForgeryDataset([Record(img, None, "a"), Record(img, None, "b", mask_known=False)])


# ------------------------------------------------------------------------------------------------
# The checker collects everything and the CLI exits with 1
# ------------------------------------------------------------------------------------------------
def test_check_reports_every_problem_and_cli_exit_code(tmp_path):
    root = tmp_path / "ds"
    _write(root / "images" / "good.png", _png_bytes())
    _save_mask(root / "masks" / "good.png")
    _write(root / "images" / "trunc.png", _png_bytes()[:-300])
    _save_mask(root / "masks" / "trunc.png")
    _write(root / "images" / "small.png", _png_bytes())
    _save_mask(root / "masks" / "small_gt.png", 20, 20)  # wrong size
    _write(root / "images" / "empty.png", _png_bytes())
    Image.fromarray(np.full((40, 50), 60, np.uint8)).save(root / "masks" / "empty.png")  # faint only
    _write(root / "images" / "orphan.png", _png_bytes())  # no mask
    _write(root / "authentic" / "zero.png", b"")

    report = check_dataset(root)
    assert not report.ok
    errors = {Path(p.where).name: p.message for p in report.errors}
    assert set(errors) == {"trunc.png", "small.png", "orphan.png", "zero.png"}
    assert "truncated" in errors["trunc.png"] and "20x20" in errors["small.png"] and "50x40" in errors["small.png"]
    assert "empty file" in errors["zero.png"] and "no mask found" in errors["orphan.png"]
    warnings = " | ".join(str(p) for p in report.warnings)
    assert "not strictly binary" in warnings and "mask is empty" in warnings and "IMDLBenCo would label" in warnings
    assert (report.n_tampered, report.n_authentic) == (4, 1)

    from forgeloc.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1, result.output
    for name in ("trunc.png", "small.png", "orphan.png", "zero.png"):
        assert name in result.output
    result = CliRunner().invoke(app, ["data", "convert", str(root), str(tmp_path / "out.json")])
    assert result.exit_code == 1 and not (tmp_path / "out.json").exists()


def test_convert_refuses_plain_folders(tmp_path):
    _write(tmp_path / "photos" / "a.png", _png_bytes())
    with pytest.raises(DatasetError, match="no ground truth"):
        convert_to_json(tmp_path / "photos", tmp_path / "out.json")
    with pytest.raises(ValueError, match="must end in .json"):
        convert_to_json(tmp_path / "photos", tmp_path / "out.txt")


def test_check_on_a_json_list_points_at_lines(tmp_path, good_files):
    _write(tmp_path / "data" / "cut.jpg", _jpeg_bytes()[:400])
    _save_mask(tmp_path / "data" / "big_gt.png", 60, 60)
    rows = [["data/a.png", "data/a_gt.png"], ["data/cut.jpg", "Negative"], ["data/a.png", "data/big_gt.png"],
            ["data/gone.png", "Negative"]]
    path = _json(tmp_path, "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n")
    report = check_dataset(path)
    got = {p.where.rsplit(":", 1)[1]: p.message for p in report.errors}
    assert set(got) == {"line 3", "line 4", "line 5"}
    assert str(tmp_path / "data" / "cut.jpg") in got["line 3"] and "truncated" in got["line 3"]
    assert "60x60" in got["line 4"] and "50x40" in got["line 4"]
    assert "image file not found" in got["line 5"]
    assert (report.n_records, report.n_tampered, report.n_authentic) == (3, 2, 1)
