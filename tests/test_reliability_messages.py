"""Issue 19, items 12, 14, 15 and 18 at the library level: what the user is told about how a file
was read (EXIF rotation of PIL inputs, the frame of a multi-frame file), recorded input modes that
forgeloc does not know, and messages that must be accurate (a JPEG cut in its header, the class a
pickle named, mask sizes, Pillow's EXIF warnings, markup in printed text, JSON entry numbers).
The command-line side of the same items is in tests/test_cli_no_traceback.py.
"""

from __future__ import annotations

import io
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import forgeloc
from forgeloc.data.check import check_dataset
from forgeloc.data.datasets import DatasetError, load_records
from forgeloc.data.io import ImageReadError, MaskSizeError, frames_note, image_info, read_image, read_mask
from forgeloc.engine.checkpointing import write_model_folder
from forgeloc.io import CheckpointError


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    model = forgeloc.create_model("unet_baseline_tiny", widths=(4,))
    write_model_folder(folder, model.state_dict(), {"model": "unet_baseline_tiny",
                                                    "model_kwargs": dict(model.model_kwargs),
                                                    "input": {"mode": "resize", "size": 64}, "threshold": 0.5})
    return forgeloc.load(folder, device="cpu")


def _jpeg(rgb: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **save)
    return buf.getvalue()


def _frames_file(fmt: str, n: int) -> bytes:
    buf = io.BytesIO()
    frames = [Image.fromarray(np.full((24, 24, 3), 20 * i, np.uint8)) for i in range(n)]
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# 12. A PIL image with an EXIF rotation is predicted as the user sees it
# --------------------------------------------------------------------------------------------------
def test_pil_input_with_exif_orientation_is_turned_like_a_file(predictor) -> None:
    stored = np.full((40, 64, 3), 128, np.uint8)  # stored 64 wide × 40 high; orientation 6 shows 40 × 64
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(stored, exif=exif)
    from_pil = predictor.predict(Image.open(io.BytesIO(data)))
    from_bytes = predictor.predict(data)
    assert from_pil.heatmap.shape == from_bytes.heatmap.shape == (64, 40)
    assert from_pil.image.shape == (64, 40, 3)
    np.testing.assert_array_equal(from_pil.image, from_bytes.image)


# --------------------------------------------------------------------------------------------------
# 14. A recorded input mode forgeloc does not know is refused, not run as "resize"
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["zoom", 5, ""])
def test_unknown_recorded_input_mode_is_refused(tmp_path: Path, mode: object) -> None:
    folder = tmp_path / "ckpt"
    write_model_folder(folder, forgeloc.create_model("unet_baseline_tiny").state_dict(),
                       {"model": "unet_baseline_tiny", "input": {"mode": "resize", "size": 64}})
    (folder / "config.json").write_text(json.dumps({"model": "unet_baseline_tiny",
                                                    "input": {"mode": mode, "size": 64}}))
    with pytest.raises(CheckpointError, match="input.mode must be 'resize', 'pad' or 'native'"):
        forgeloc.load(folder, device="cpu")


# --------------------------------------------------------------------------------------------------
# 15. Multi-frame files: the first frame is analysed, and the result says so
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "n", "note"), [
    ("GIF", 12, "animated GIF: frame 1 of 12 analysed"),
    ("TIFF", 3, "multi-page TIFF: page 1 of 3 analysed"),
    ("PNG", 4, "animated PNG: frame 1 of 4 analysed"),
])
def test_multi_frame_files_say_which_frame_was_analysed(predictor, tmp_path: Path, fmt: str, n: int,
                                                        note: str) -> None:
    path = tmp_path / f"many.{fmt.lower()}"
    path.write_bytes(_frames_file(fmt, n))
    assert image_info(path).frames == n and image_info(path).frames_note == note
    first = read_image(path)
    assert first.shape == (24, 24, 3) and first.max() == 0  # frame 1 is the black one
    prediction = predictor.predict(path)
    assert prediction.notes == [note] and prediction.to_dict()["notes"] == [note]
    json.dumps(prediction.to_dict())
    from forgeloc.inference.report import render_report, report_entry
    from forgeloc.inference.shards import decode_entry, encode_entry

    entry = report_entry(prediction)
    assert decode_entry(json.loads(json.dumps(encode_entry(entry)))).notes == [note]  # a shard's journal keeps it
    assert f'<dd class="note">{note}</dd>' in render_report([entry], {})


def test_single_frame_files_and_camera_mpo_have_no_note(predictor, tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(path)
    assert image_info(path).frames_note is None
    prediction = predictor.predict(path)
    assert prediction.notes == [] and "notes" not in prediction.to_dict()
    assert frames_note("MPO", 2) is None  # a camera JPEG's second picture is its preview
    assert frames_note("WEBP", 5) == "animated WebP: frame 1 of 5 analysed"


def test_data_check_warns_about_multi_page_tiffs(tmp_path: Path) -> None:
    (tmp_path / "pages.tif").write_bytes(_frames_file("TIFF", 3))
    (tmp_path / "list.json").write_text(json.dumps([["pages.tif", "Negative"]]))
    report = check_dataset(tmp_path / "list.json")
    assert not report.errors
    assert [w.message.split(": ", 1)[1] for w in report.warnings] == [
        "multi-page TIFF: page 1 of 3 analysed; the other pages are ignored"]


# --------------------------------------------------------------------------------------------------
# 18. Messages
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "cut"), [("JPEG", 2), ("JPEG", 4), ("JPEG", 20), ("JPEG", 100), ("PNG", 5),
                                           ("PNG", 30)])
def test_a_file_cut_in_its_header_is_called_truncated(kind: str, cut: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, kind)
    with pytest.raises(ImageReadError, match=rf"truncated or corrupt {kind}") as info:
        read_image(buf.getvalue()[:cut], name="cut")
    assert "not a recognised image format" not in str(info.value)


def test_unknown_bytes_are_still_unrecognised() -> None:
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(b"\x00\x01\x02\x03 definitely not an image \xff\xfe", name="x")


def test_corrupt_exif_does_not_warn_on_the_console(capfd: pytest.CaptureFixture) -> None:
    corrupt = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x0f\x01\x02\x00\xff\x00\x00\x00\x50\x00\x00\x00"
    data = _jpeg(np.zeros((32, 32, 3), np.uint8), exif=corrupt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_image(data)
        image_info(data)
    assert [str(w.message) for w in caught] == []
    assert "EXIF" not in capfd.readouterr().err


def test_mask_size_error_names_no_python_option(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(MaskSizeError) as info:
        read_mask(tmp_path / "m.png", image_size=(50, 60), image_path="photo.png")
    assert "resize=True" not in str(info.value) and "resize the mask file to 50x60" in str(info.value)


def test_a_pickled_object_is_named_by_its_class_not_the_placeholder(tmp_path: Path) -> None:
    module = types.ModuleType("vanished_for_issue19")
    sys.modules[module.__name__] = module
    thing = type("Thing", (), {"__module__": module.__name__})
    module.Thing = thing
    try:
        torch.save(thing(), tmp_path / "thing.pth")
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(CheckpointError) as info:
        forgeloc.create_model("unet_baseline_tiny", checkpoint=tmp_path / "thing.pth")
    assert "vanished_for_issue19.Thing" in str(info.value) and "Inert" not in str(info.value)


def test_brackets_in_printed_text_survive(capsys: pytest.CaptureFixture) -> None:
    from forgeloc.cli.common import say

    out = Console(file=io.StringIO(), width=200)
    say('entry must be a pair [image, mask_or_"Negative"] in [draft] a.png', "error:", "bold red", out=out)
    assert out.file.getvalue().strip() == 'error: entry must be a pair [image, mask_or_"Negative"] in [draft] a.png'


def test_one_line_json_lists_name_the_entry(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps([["a.png", "Negative"], ["gone.png", "Negative"],
                                                    ["also_gone.png", "Negative"]]))
    with pytest.raises(DatasetError) as info:
        load_records(tmp_path / "list.json")
    wheres = [p.where.rsplit(":", 1)[1] for p in info.value.problems]
    assert wheres == ["line 1, entry 2", "line 1, entry 3"]


def test_deeply_nested_json_list_is_a_dataset_problem(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_records(tmp_path / "deep.json")


def test_a_model_that_outputs_nan_is_a_clear_error_never_a_nan_score(tmp_path):
    """Item 11, outputs: finite weights can still give NaN (an overflow, a bad fp16 run)."""
    import numpy as np
    import torch
    from PIL import Image

    from forgeloc.inference.batch import predict_files
    from forgeloc.inference.predictor import Predictor
    from forgeloc.models.base import ForgeryModel

    class Broken(ForgeryModel):
        def forward(self, batch):
            image = self.require_image(batch)
            return {"pred_mask": torch.full_like(image[:, :1], float("nan"))}

    predictor = Predictor(Broken(), input_size=32)
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photo)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        predictor.predict(photo)
    with pytest.raises(FloatingPointError):
        predict_files(predictor, [photo], tmp_path / "out", report=False)
    saved = tmp_path / "out" / "results.json"
    if saved.exists():  # what was saved before the stop is valid JSON, with no NaN in it
        payload = json.loads(saved.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
        assert payload["results"] == []
