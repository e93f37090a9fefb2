"""``forgeloc data prepare``: every recipe on a tiny tree in the dataset's shipped naming and layout,
with the known defects (size mismatches, colour masks, missing masks, inverted masks, 0/1 masks)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from forgeloc.cli import _register_commands, app
from forgeloc.data.check import check_dataset
from forgeloc.data.datasets import load_records
from forgeloc.data.io import read_mask
from forgeloc.data.prepare import PrepareError, PrepareOptions, find_recipe, long_side_size, prepare
from forgeloc.engine.config import load_config

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------------------------------
def _img(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _box(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Binary H×W with the rectangle (x0, y0, x1, y1) set."""
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def _mask(path: Path, binary: np.ndarray, *, mode: str = "L", on: int = 255, off: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.where(binary, on, off).astype(np.uint8)
    img = Image.fromarray(arr, mode="L")
    if mode == "RGB":
        img = img.convert("RGB")
    img.save(path, **save)
    return path


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file's bytes and mtime: what 'the source was not modified' means."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
            for p in sorted(root.rglob("*")) if p.is_file()}


def _entries(out: Path, group: str = "") -> list[list[str]]:
    return json.loads(((out / group) if group else out).joinpath("dataset.json").read_text())


def _by_image_name(out: Path, group: str = "") -> dict[str, object]:
    """image file name -> mask as read by forgeloc ({0,1} array) or 'Negative'."""
    folder = out / group if group else out
    result: dict[str, object] = {}
    for r in load_records(folder):
        result[r.image.name] = "Negative" if r.mask is None else read_mask(r.mask)
    return result


def _skipped(report, fragment: str) -> list[dict[str, str]]:
    return [s for s in report.skipped if fragment in s["path"]]


def _run(name: str, source: Path, out: Path, **kw) -> object:
    before = _tree_digest(source)
    report = prepare(name, source, out, PrepareOptions(workers=1, **kw))
    assert _tree_digest(source) == before, "prepare must never modify the source folder"
    assert report.ok, report.check
    for group, rel in report.lists.items():
        assert check_dataset(out / rel).ok, group
    return report


def _assert_idempotent(name: str, source: Path, out: Path, **kw) -> None:
    first = _tree_digest(out)
    prepare(name, source, out, PrepareOptions(workers=1, **kw))
    assert _tree_digest(out) == first, "a second run must write identical files and touch nothing"


# --------------------------------------------------------------------------------------------------
# CASIA v1.0
# --------------------------------------------------------------------------------------------------
CASIA1_CM = "Sp_S_CND_A_pla0016_pla0016_0196"
CASIA1_SP = "Sp_D_CND_A_pla0005_pla0023_0281"
CASIA1_NOMASK = "Sp_D_NRN_A_cha0011_sec0011_0542"  # the known image without a mask


def _casia1(root: Path) -> Path:
    src = root / "CASIA1"
    ds = src / "CASIA 1.0 dataset"
    _img(ds / "Au" / "Au_ani_0001.jpg", seed=1)
    _img(ds / "Au" / "Au_arc_0002.jpg", seed=2)
    (ds / "Au" / "Thumbs.db").write_bytes(b"\0" * 10)
    _img(ds / "Modified Tp" / "Tp" / "CM" / f"{CASIA1_CM}.jpg", seed=3)
    _img(ds / "Modified Tp" / "Tp" / "Sp" / f"{CASIA1_SP}.jpg", seed=4)
    _img(ds / "Modified Tp" / "Tp" / "Sp" / f"{CASIA1_NOMASK}.jpg", seed=5)
    _img(ds / "Original Tp" / "Tp" / "Sp" / "Sp_D_CND_A_pla0005_pla0023_0281_oldname.jpg", seed=6)
    gt = src / "CASIA 1.0 groundtruth"
    _mask(gt / "CM" / f"{CASIA1_CM}_gt.png", _box(64, 48, (8, 8, 24, 20)), mode="RGB")  # grey RGB 0/255: as shipped
    # a mask with anti-aliased edges (grey levels): rewritten as binary with the mean > 127.5 rule
    soft = np.zeros((48, 64), dtype=np.uint8)
    soft[10:30, 10:40] = 255
    soft[10:30, 40] = 140
    soft[30, 10:40] = 100
    (gt / "Sp").mkdir(parents=True)
    Image.fromarray(soft).save(gt / "Sp" / f"{CASIA1_SP}_gt.png")
    return src


def test_casia1(tmp_path: Path) -> None:
    src = _casia1(tmp_path)
    out = tmp_path / "out"
    report = _run("CASIAv1", src, out)
    c = report.counts
    assert (c["tampered"], c["authentic"]) == (2, 2)
    assert c["masks_from_source"] == 1 and c["masks_written"] == 1
    assert [s["reason"] for s in _skipped(report, CASIA1_NOMASK)] == ["no ground-truth mask for this image"]
    assert report.known_defects[0]["sample"].endswith(f"{CASIA1_NOMASK}.jpg")
    assert any("Modified Tp" in n and "Original Tp" in n for n in report.notes)
    got = _by_image_name(out)
    assert got["Au_ani_0001.jpg"] == "Negative" and got["Au_arc_0002.jpg"] == "Negative"
    np.testing.assert_array_equal(got[f"{CASIA1_CM}.jpg"], _box(64, 48, (8, 8, 24, 20)))
    expected = np.zeros((48, 64), dtype=bool)
    expected[10:30, 10:41] = True  # 140 > 127.5 is tampered, 100 is not
    np.testing.assert_array_equal(got[f"{CASIA1_SP}.jpg"], expected)
    assert "oldname" not in json.dumps(_entries(out))
    _assert_idempotent("casia1", src, out)


def test_casia1_without_ground_truth_says_where_to_get_it(tmp_path: Path) -> None:
    src = tmp_path / "CASIA1"
    _img(src / "Au" / "Au_ani_0001.jpg")
    _img(src / "Modified Tp" / "Tp" / "Sp" / f"{CASIA1_SP}.jpg")
    with pytest.raises(PrepareError, match="casia1groundtruth"):
        prepare("casia1", src, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# CASIA v2.0
# --------------------------------------------------------------------------------------------------
CASIA2_OK = "Tp_D_CRN_S_N_cha00063_art00014_11818"
CASIA2_BAD = "Tp_S_NRN_S_N_pla20080_pla20080_01980"  # known: image 781x514, mask 781x512 (scaled down here)
CASIA2_NOMASK = "Tp_D_NNN_M_N_arc00010_nat00002_00230"


def _casia2(root: Path) -> Path:
    src = root / "CASIA2"
    _img(src / "CASIA2.0_revised" / "Au" / "Au_ani_00001.jpg", seed=1)
    (src / "CASIA2.0_revised" / "Au" / "Thumbs.db").write_bytes(b"\0")
    _img(src / "CASIA2.0_revised" / "Tp" / f"{CASIA2_OK}.jpg", seed=2)
    _img(src / "CASIA2.0_revised" / "Tp" / f"{CASIA2_BAD}.tif", 78, 51, seed=3)
    _img(src / "CASIA2.0_revised" / "Tp" / f"{CASIA2_NOMASK}.tif", seed=4)
    gt = src / "CASIA 2 Groundtruth"
    _mask(gt / f"{CASIA2_OK}_gt.png", _box(64, 48, (0, 0, 10, 10)))
    _mask(gt / f"{CASIA2_BAD}_gt.png", _box(78, 49, (5, 5, 30, 30)))  # 2 rows short: size mismatch
    _mask(gt / "Tp_S_NNN_S_N_txt00062_txt00062_01284_gt.png", _box(64, 48, (1, 1, 5, 5)))  # no image
    return src


def test_casia2_reports_uncorrected_ground_truth(tmp_path: Path) -> None:
    src = _casia2(tmp_path)
    out = tmp_path / "out"
    report = _run("casia2", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (1, 1)
    [bad] = _skipped(report, CASIA2_BAD)
    assert "78x49" in bad["reason"] and "78x51" in bad["reason"] and "--resize-masks" in bad["reason"]
    assert _skipped(report, CASIA2_NOMASK)[0]["reason"] == "no ground-truth mask for this image"
    assert _skipped(report, "txt00062")[0]["reason"] == "mask without a matching image"
    assert any("not corrected" in n and "17" in n for n in report.notes)
    assert report.known_defects == [{"sample": f"CASIA2.0_revised/Tp/{CASIA2_BAD}.tif",
                                     "defect": "image/mask size mismatch in CASIA v2.0 (IML-Dataset-Corrections 2.2)",
                                     "outcome": bad["reason"]}]
    _assert_idempotent("casia2", src, out)


def test_casia2_with_corrections_and_with_resized_masks(tmp_path: Path) -> None:
    src = _casia2(tmp_path)
    fixes = tmp_path / "IML-Dataset-Corrections" / "CASIA2"
    _mask(fixes / f"{CASIA2_BAD}_gt.png", _box(78, 51, (5, 5, 30, 30)))
    out = tmp_path / "corrected"
    report = _run("casia2", src, out, corrections=fixes)
    assert report.counts["tampered"] == 2 and report.counts["corrections_applied"] == 1
    assert not any("not corrected" in n for n in report.notes)
    np.testing.assert_array_equal(_by_image_name(out)[f"{CASIA2_BAD}.tif"], _box(78, 51, (5, 5, 30, 30)))

    resized = tmp_path / "resized"
    report = _run("casia2", src, resized, resize_masks=True)
    assert report.counts["tampered"] == 2 and report.counts["masks_resized"] == 1
    assert report.known_defects[0]["outcome"] == "mask resized"
    assert _by_image_name(resized)[f"{CASIA2_BAD}.tif"].shape == (51, 78)


# --------------------------------------------------------------------------------------------------
# Columbia
# --------------------------------------------------------------------------------------------------
def _columbia_edgemask(w: int = 64, h: int = 48) -> np.ndarray:
    """Columbia's colour coding: dark / light red = the rest, light / dark green = the spliced region."""
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[:, :24] = (200, 0, 0)  # dark red
    rgb[:, 24:32] = (255, 140, 140)  # light red band near the boundary
    rgb[:, 32:40] = (140, 255, 140)  # light green band
    rgb[:, 40:] = (0, 200, 0)  # dark green: spliced
    return rgb


def _columbia(root: Path) -> Path:
    src = root / "Columbia"
    _img(src / "4cam_auth" / "canong3_02_sub_01.tif", seed=1)
    _img(src / "4cam_splc" / "canong3_canonxt_sub_01.tif", seed=2)
    _img(src / "4cam_splc" / "canong3_nikond70_sub_05.tif", seed=3)  # its edge mask is missing
    (src / "4cam_splc" / "README.txt").write_text("Columbia uncompressed image splicing dataset\n")
    edge = src / "4cam_splc" / "edgemask"
    edge.mkdir(parents=True)
    Image.fromarray(_columbia_edgemask()).save(edge / "canong3_canonxt_sub_01_edgemask.jpg", quality=95)
    return src


def test_columbia_colour_masks_become_binary(tmp_path: Path) -> None:
    src = _columbia(tmp_path)
    out = tmp_path / "out"
    report = _run("columbia", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (1, 1)
    assert report.counts["masks_written"] == 1
    assert _skipped(report, "canong3_nikond70_sub_05")[0]["reason"] == "no mask found for this image"
    assert any("green channel is larger than its red channel" in n for n in report.notes)
    mask = _by_image_name(out)["canong3_canonxt_sub_01.tif"]
    expected = np.zeros((48, 64), dtype=bool)
    expected[:, 32:] = True
    interior = np.ones(64, dtype=bool)
    interior[28:36] = False  # JPEG chroma blur right at the red/green boundary
    np.testing.assert_array_equal(mask[:, interior], expected[:, interior])
    # The raw colour mask read with the usual rule would be wrong: that is why it is converted.
    raw = read_mask(src / "4cam_splc" / "edgemask" / "canong3_canonxt_sub_01_edgemask.jpg")
    assert not raw[:, 44:].any()
    _assert_idempotent("columbia", src, out)

    red = _run("columbia", src, tmp_path / "red", spliced_colour="red", include_authentic=False)
    assert red.counts["authentic"] == 0
    np.testing.assert_array_equal(_by_image_name(tmp_path / "red")["canong3_canonxt_sub_01.tif"][:, interior],
                                  ~expected[:, interior])


# --------------------------------------------------------------------------------------------------
# COVERAGE
# --------------------------------------------------------------------------------------------------
def _coverage(root: Path) -> Path:
    src = root / "COVERAGE"
    for n, seed in ((1, 1), (41, 2)):
        _img(src / "image" / f"{n}.tif", seed=seed)
        _img(src / "image" / f"{n}t.tif", seed=seed + 10)
    _img(src / "image" / "3t.tif", seed=5)  # no mask
    _mask(src / "mask" / "1forged.tif", _box(64, 48, (4, 4, 20, 20)))
    _mask(src / "mask" / "1copy.tif", _box(64, 48, (30, 4, 46, 20)))
    _mask(src / "mask" / "1paste.tif", _box(64, 48, (4, 4, 20, 20)))
    _mask(src / "mask" / "41forged.tif", _box(62, 48, (4, 4, 20, 20)))  # one of the 9 size mismatches
    (src / "label").mkdir()
    (src / "label" / "TFlabel.mat").write_bytes(b"MATLAB 5.0")
    return src


def test_coverage_size_mismatches_are_reported_not_resized(tmp_path: Path) -> None:
    src = _coverage(tmp_path)
    out = tmp_path / "out"
    report = _run("coverage", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (1, 2)
    assert report.counts["masks_from_source"] == 1  # a clean 0/255 TIFF is used as shipped
    assert "62x48" in _skipped(report, "41t")[0]["reason"]
    assert _skipped(report, "3t")[0]["reason"] == "no {N}forged mask for this image"
    assert [d["sample"] for d in report.known_defects] == ["image/41t.tif"]
    entries = _entries(out)
    assert [Path(e[0]).name for e in entries] == ["1t.tif", "1.tif", "41.tif"]
    assert Path(entries[0][1]).name == "1forged.tif"
    _assert_idempotent("coverage", src, out)

    # --resize-masks keeps 41t (and says so); going back removes the resized mask of the earlier run.
    report = _run("coverage", src, out, resize_masks=True)
    assert report.counts["tampered"] == 2 and report.counts["masks_resized"] == 1
    assert (out / "masks" / "image" / "41t.png").is_file()
    report = _run("coverage", src, out)
    assert report.removed == ["masks/image/41t.png"] and not (out / "masks").exists()


# --------------------------------------------------------------------------------------------------
# NIST16
# --------------------------------------------------------------------------------------------------
_NIST_COLUMNS = ["TaskID", "ProbeFileID", "ProbeFileName", "ProbeMaskFileName", "DonorFileID", "DonorFileName",
                 "DonorMaskFileName", "IsTarget", "ProbePostProcessed", "DonorPostProcessed", "ManipulationQuality",
                 "IsManipulationTypeRemoval", "IsManipulationTypeSplice", "IsManipulationTypeCopyClone",
                 "Collection", "BaseFileName"]


def _nist16(root: Path) -> Path:
    src = root / "NC2016_Test0613"
    _img(src / "probe" / "NC2016_0001.jpg", seed=1)
    _img(src / "probe" / "NC2016_0002.jpg", seed=2)
    _img(src / "probe" / "NC2016_0003.jpg", seed=3)
    _img(src / "probe" / "NC2016_0004.png", 150, 100, seed=4)
    _img(src / "world" / "NC2016_9999.jpg", seed=5)
    # NIST masks: black (0) where manipulated, white elsewhere; RGB.
    _mask(src / "reference/manipulation/mask/NC2016_0001.png", _box(64, 48, (10, 10, 30, 30)), mode="RGB", on=0,
          off=255)
    _mask(src / "reference/manipulation/mask/NC2016_0004.png", _box(150, 100, (0, 0, 75, 50)), on=0, off=255)
    rows = [
        ("manipulation", "0001", "probe/NC2016_0001.jpg", "reference/manipulation/mask/NC2016_0001.png", "Y"),
        ("manipulation", "0002", "probe/NC2016_0002.jpg", "", "N"),
        ("manipulation", "0003", "probe/NC2016_0003.jpg", "reference/manipulation/mask/NC2016_0003.png", "Y"),
        ("manipulation", "0004", "probe/NC2016_0004.png", "reference/manipulation/mask/NC2016_0004.png", "Y"),
        ("manipulation", "0001", "probe/NC2016_0001.jpg", "reference/manipulation/mask/NC2016_0001.png", "Y"),
    ]
    ref = src / "reference" / "manipulation" / "NC2016-manipulation-ref.csv"
    with open(ref, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="|")
        w.writerow(_NIST_COLUMNS)
        for task, pid, probe, mask, target in rows:
            w.writerow([task, f"NC2016_{pid}", probe, mask, "", "", "", target, "", "", "", "", "Y", "", "Nimble", ""])
    return src


def test_nist16_inverted_masks_and_long_side(tmp_path: Path) -> None:
    src = _nist16(tmp_path)
    out = tmp_path / "out"
    report = _run("NIST16", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (2, 1)
    assert report.counts["masks_written"] == 2 and report.counts["images_resized"] == 0
    assert "not found" in _skipped(report, "NC2016_0003")[0]["reason"]
    assert "listed again" in _skipped(report, "NC2016_0001")[0]["reason"]
    got = _by_image_name(out)
    np.testing.assert_array_equal(got["NC2016_0001.jpg"], _box(64, 48, (10, 10, 30, 30)))
    np.testing.assert_array_equal(got["NC2016_0004.png"], _box(150, 100, (0, 0, 75, 50)))
    assert got["NC2016_0002.jpg"] == "Negative"
    _assert_idempotent("nist16", src, out)

    small = tmp_path / "nist1024"
    report = _run("nist16", src, small, long_side=100)
    assert report.counts["images_resized"] == 1
    resized = _by_image_name(small)
    assert resized["NC2016_0004.png"].shape == (66, 100)  # int(100 / 150 * 100) = 66, IMDLBenCo's rule
    assert resized["NC2016_0004.png"][:33, :50].all() and not resized["NC2016_0004.png"][34:, 51:].any()
    assert resized["NC2016_0001.jpg"].shape == (48, 64)  # not larger than the long side: unchanged
    assert (small / "images" / "probe" / "NC2016_0004.png").is_file()
    _assert_idempotent("nist16", src, small, long_side=100)
    assert long_side_size(1500, 1000, 1024) == (1024, 682) and long_side_size(1000, 1000, 1024) == (1000, 1000)
    assert long_side_size(2000, 2000, 1024) == (1024, 1024) and long_side_size(900, 3000, 1024) == (307, 1024)


# --------------------------------------------------------------------------------------------------
# IMD2020
# --------------------------------------------------------------------------------------------------
def _imd2020(root: Path) -> Path:
    src = root / "IMD2020"
    _img(src / "z14" / "00030_orig.jpg", 60, 40, seed=1)
    _img(src / "z14" / "00030_fake.jpg", 60, 40, seed=2)
    _mask(src / "z14" / "00030_fake_mask.png", _box(40, 60, (5, 5, 20, 20)))  # known: transposed size
    _img(src / "1a1ogs" / "1a1ogs_orig.jpg", seed=3)
    _img(src / "1a1ogs" / "c8tf5mq_0.png", seed=4)
    _mask(src / "1a1ogs" / "c8tf5mq_0_mask.png", _box(64, 48, (20, 10, 50, 40)))
    _img(src / "1a1ogs" / "c8tf5mq_1.jpg", seed=5)  # no mask
    return src


def test_imd2020(tmp_path: Path) -> None:
    src = _imd2020(tmp_path)
    out = tmp_path / "out"
    report = _run("imd2020", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (1, 2)
    assert "40x60" in _skipped(report, "00030_fake")[0]["reason"]
    assert "no <name>_mask" in _skipped(report, "c8tf5mq_1")[0]["reason"]
    assert report.known_defects[0]["sample"] == "z14/00030_fake.jpg"
    np.testing.assert_array_equal(_by_image_name(out)["c8tf5mq_0.png"], _box(64, 48, (20, 10, 50, 40)))
    _assert_idempotent("imd2020", src, out)

    fixes = tmp_path / "fixes"
    _mask(fixes / "00030_fake_mask.png", _box(60, 40, (5, 5, 20, 20)))
    report = _run("IMD20", src, tmp_path / "fixed", corrections=fixes)
    assert report.counts["tampered"] == 2 and report.corrections[0]["image"] == "z14/00030_fake.jpg"


# --------------------------------------------------------------------------------------------------
# DEF-12k
# --------------------------------------------------------------------------------------------------
def test_def12k_from_mvss_index(tmp_path: Path) -> None:
    src = tmp_path / "data"
    _img(src / "DEFACTO" / "Copy-Move-images" / "img" / "7_000000536154.tif", seed=1)
    jpeg_mask = _box(64, 48, (8, 8, 40, 30))
    _mask(src / "DEFACTO" / "Copy-Move-annotations" / "probe_mask" / "7_000000536154.jpg", jpeg_mask, quality=90)
    # the same DEFACTO sample under the dataset's own folder names (found by file name)
    _img(src / "DEFACTO" / "splicing_1_img" / "img" / "0_000000500100.tif", seed=2)
    _mask(src / "DEFACTO" / "splicing_1_annotations" / "probe_mask" / "0_000000500100.jpg",
          _box(64, 48, (3, 3, 19, 21)), quality=90)
    _img(src / "CoCo2014" / "test2014" / "COCO_test2014_000000050347.jpg", seed=3)
    index = tmp_path / "DEFACTO12k-test.txt"
    index.write_text(
        "./DEFACTO/Copy-Move-images/img/7_000000536154.tif ./DEFACTO/Copy-Move-annotations/probe_mask/"
        "7_000000536154.jpg 1\n"
        "./DEFACTO/Splicing-images-5/img/0_000000500100.tif ./DEFACTO/Splicing-annotations-5/probe_mask/"
        "0_000000500100.jpg 1\n"
        "./CoCo2014/test2014/COCO_test2014_000000050347.jpg None 0\n"
        "./CoCo2014/test2014/COCO_test2014_000000999999.jpg None 0\n")
    with pytest.raises(PrepareError, match="--list"):
        prepare("def12k", src, tmp_path / "nolist")
    out = tmp_path / "out"
    report = _run("DEF-12k", src, out, list_file=index)
    assert (report.counts["tampered"], report.counts["authentic"]) == (2, 1)
    assert report.counts["masks_written"] == 2  # JPEG masks: binarised and written as PNG
    assert "not found" in _skipped(report, "999999")[0]["reason"]
    assert any("found by file name" in n for n in report.notes)
    got = _by_image_name(out)
    assert (got["7_000000536154.tif"] != jpeg_mask).sum() == 0
    _assert_idempotent("def12k", src, out, list_file=index)


# --------------------------------------------------------------------------------------------------
# Protocol-CAT training sets: tampCOCO and FantasticReality
# --------------------------------------------------------------------------------------------------
def test_tampcoco_lists_from_folders(tmp_path: Path) -> None:
    src = tmp_path / "tampCOCO"
    sp = "88_000000013140.jpg_000000574443.jpg"
    _img(src / "sp_images" / f"{sp}.jpg", seed=1)
    _mask(src / "sp_masks" / "88_000000013140.png_000000574443.png.png", _box(64, 48, (3, 3, 30, 20)), on=1)  # 0/1
    cm = "12_000000000139.jpg_RT-5.8_RS1.18"
    _img(src / "cm_images" / f"{cm}.jpg", seed=2)
    _mask(src / "cm_masks" / "12_000000000139.png_RT-5.8_RS1.18.png", _box(64, 48, (0, 0, 8, 8)))  # 0/255
    _img(src / "cm_images" / "13_000000000285.jpg", seed=3)  # no mask
    _img(src / "bcm_images" / "5_000000000632.jpg", seed=4)
    _mask(src / "bcm_masks" / "5_000000000632.png", _box(64, 48, (10, 10, 20, 20)))
    out = tmp_path / "out"
    report = _run("tampCOCO", src, out)
    assert set(report.lists) == {"sp_COCO", "cm_COCO", "bcm_COCO"}
    assert report.per_list["sp_COCO"] == {"tampered": 1, "authentic": 0}
    assert report.per_list["cm_COCO"]["tampered"] == 1 and report.per_list["bcm_COCO"]["tampered"] == 1
    assert report.counts["masks_written"] == 1 and report.counts["masks_from_source"] == 2  # only the 0/1 one
    assert any("bcmc" in n for n in report.notes)
    assert _skipped(report, "13_000000000285")[0]["reason"] == "no mask found for this image"
    np.testing.assert_array_equal(_by_image_name(out, "sp_COCO")[f"{sp}.jpg"], _box(64, 48, (3, 3, 30, 20)))
    _assert_idempotent("tampcoco", src, out)
    only = _run("tampcoco", src, tmp_path / "sp", subsets=("sp",))
    assert set(only.lists) == {"sp_COCO"}


def test_fantastic_reality_npz_masks(tmp_path: Path) -> None:
    src = tmp_path / "FantasticReality_v1"
    name = "IMG_0007962_IMG_0007497"
    _img(src / "dataset" / "ColorFakeImages" / f"{name}.jpg", seed=1)
    seg = np.zeros((48, 64), dtype=np.uint8)
    seg[5:25, 10:30] = 3  # instance labels, not 0/255
    (src / "dataset" / "SegmentationFake").mkdir(parents=True)
    np.savez_compressed(src / "dataset" / "SegmentationFake" / f"{name}.npz", seg[None])
    _img(src / "dataset" / "ColorFakeImages" / "IMG_0000001_IMG_0000002.jpg", seed=2)  # no .npz
    _img(src / "dataset" / "ColorRealImages" / "IMG_0007962.jpg", seed=3)
    out = tmp_path / "out"
    report = _run("fantasticreality", src, out)
    assert (report.counts["tampered"], report.counts["authentic"]) == (1, 1)
    np.testing.assert_array_equal(_by_image_name(out)[f"{name}.jpg"], seg > 0)
    _assert_idempotent("fantasticreality", src, out)


# --------------------------------------------------------------------------------------------------
# Safety, CLI, protocol configs
# --------------------------------------------------------------------------------------------------
def test_output_folder_must_not_touch_the_source(tmp_path: Path) -> None:
    src = _coverage(tmp_path)
    with pytest.raises(PrepareError, match="inside the source"):
        prepare("coverage", src, src / "prepared")
    with pytest.raises(PrepareError, match="contains the source"):
        prepare("coverage", src, tmp_path)
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="not empty"):
        prepare("coverage", src, other)
    with pytest.raises(PrepareError, match="unknown dataset"):
        find_recipe("casia3")
    assert find_recipe("CASIA_v2.0").name == "casia2" and find_recipe("NIST-16").name == "nist16"


def test_cli_prepare_then_check(tmp_path: Path) -> None:
    _register_commands()
    src = _coverage(tmp_path)
    out = tmp_path / "coverage"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "coverage", str(src), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "41t.tif" in result.output and "0 error(s)" in result.output
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "prepare", "coverage", str(src), "--out", str(src / "x")])
    assert result.exit_code == 2 and "inside the source" in result.output


@pytest.mark.parametrize("folder", ["protocol_cat", "protocol_mvss"])
def test_protocol_configs_validate(folder: str) -> None:
    import forgeloc

    configs = sorted((REPO / "configs" / folder).glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = load_config(path)
        assert cfg.model.name in forgeloc.list_models()
        for entry in cfg.data.train:
            assert Path(entry.path).is_relative_to(REPO / "data"), entry.path
        assert set(cfg.data.test) == {"CASIAv1"}
        if folder == "protocol_mvss":
            assert [Path(e.path).name for e in cfg.data.train] == ["CASIAv2"] and cfg.data.samples_per_dataset is None
        else:
            assert len(cfg.data.train) == 7 and cfg.data.samples_per_dataset == 1840


@pytest.mark.slow
def test_end_to_end_prepare_train_test_compare(tmp_path: Path) -> None:
    """Raw CASIA trees -> prepare -> a shipped protocol config (tiny model) -> forgeloc test -> compare."""
    import shutil

    from forgeloc.engine.compare import compare_paper, load_results
    from forgeloc.engine.testing import run_test
    from forgeloc.engine.trainer import train

    repo = tmp_path / "repo"
    (repo / "configs" / "protocol_mvss").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "protocol_mvss" / "mesorch.yaml", repo / "configs" / "protocol_mvss")
    _run("casia2", _casia2(tmp_path), repo / "data" / "CASIAv2", resize_masks=True)
    _run("casia1", _casia1(tmp_path), repo / "data" / "CASIAv1")
    cfg = load_config(repo / "configs" / "protocol_mvss" / "mesorch.yaml", [
        # a tiny model instead of Mesorch: neither its options nor Mesorch's ImageNet backbone paths
        "model.name=unet_baseline_tiny", "model.kwargs={}", "model.pretrained={}", "data.input_size=64",
        "data.num_workers=0", "data.augment=none", "train.epochs=1", "train.batch_size=2", "train.accum_steps=1",
        "train.eval_every=1", "train.tensorboard=false", "optim.warmup_epochs=0",
        f"train.output_dir={tmp_path / 'run'}"])
    assert [Path(e.path) for e in cfg.data.train] == [repo / "data" / "CASIAv2"]
    result = train(cfg, device="cpu")
    assert result.final_metrics["CASIAv1"]["n_tampered"] == 2 and result.final_metrics["CASIAv1"]["n_authentic"] == 2
    run_test(tmp_path / "run", {"CASIAv1": str(repo / "data" / "CASIAv1")}, tmp_path / "results", device="cpu",
             num_workers=0)
    rows, meta = load_results(tmp_path / "results" / "metrics.json")
    [comparison] = compare_paper(rows, meta, "mesorch", "mvss")
    casia = next(r for r in comparison.rows if r.set == "CASIAv1")
    assert casia.paper == 0.740 and casia.yours == rows["CASIAv1"]["pixel_f1"] and casia.n_authentic == 2
