"""Dataset formats on the real shared datasets, through the public loaders only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from torch.utils.data import DataLoader, DistributedSampler
from typer.testing import CliRunner

from forgeloc.data.check import check_dataset, convert_to_json
from forgeloc.data.datasets import (
    BalancedDataset,
    ForgeryDataset,
    Record,
    list_images,
    load_records,
    open_dataset,
)
from forgeloc.data.io import DecompressionBombError, read_image, read_mask
from forgeloc.data.transforms import Augmentations, SampleTransform, denormalize

DATASETS = ("coverage", "noso_copymove", "casia2_samples", "single_samples")


def _manifest(name: str) -> tuple[Path, dict]:
    root = shared_path("data", name)
    return root, json.loads((root / "manifest.json").read_text())


def _by_name(records: list[Record]) -> dict[str, Record]:
    return {r.image.name: r for r in records}


@pytest.mark.parametrize("name", DATASETS)
def test_records_match_the_manifest(name):
    root, man = _manifest(name)
    records = load_records(root)
    tampered = [r for r in records if r.label == 1]
    authentic = [r for r in records if r.label == 0]
    assert len(tampered) == man["n_pairs"] == len(man["pairs"])
    assert len(authentic) == man.get("n_authentic", 0)
    got = {(r.image, r.mask) for r in tampered}
    assert got == {(root / p["image"], root / p["mask"]) for p in man["pairs"]}  # paired by name, correctly
    assert all(r.mask is None and r.image.parent.name == "authentic" for r in authentic)
    assert all(r.mask_known for r in records)


@pytest.mark.parametrize("name", DATASETS)
def test_native_samples_are_exact_and_aligned(name):
    root, man = _manifest(name)
    ds = ForgeryDataset(root, SampleTransform(mode="none"))
    records = _by_name(ds.records)
    index = {r.image.name: i for i, r in enumerate(ds.records)}
    for pair in man["pairs"]:
        i = index[Path(pair["image"]).name]
        s = ds[i]
        h, w = pair["height"], pair["width"]
        assert s["image"].shape == (3, h, w) and s["mask"].shape == (1, h, w)
        assert s["origin_shape"].tolist() == [h, w] and s["index"].item() == i and s["name"] == Path(pair["image"]).name
        # pixels exactly as decoded (the 9 MP JPEG is only checked by shape here, to keep CI fast)
        if h * w <= 2_000_000:
            assert np.array_equal(denormalize(s["image"]), read_image(records[s["name"]].image))
        assert s["mask"].mean().item() == pytest.approx(pair["tampered_fraction"], abs=6e-5)
        assert s["label"].item() == 1.0
    for i, r in enumerate(ds.records):
        if r.label == 0:
            s = ds[i]
            assert s["label"].item() == 0.0 and s["mask"].sum() == 0 and s["image"].shape[0] == 3
            break


@pytest.mark.parametrize("name", ["coverage", "noso_copymove"])
def test_masks_mark_the_pixels_that_differ_from_the_authentic_image(name):
    root, man = _manifest(name)
    records = load_records(root)
    authentic = {r.image.name: r for r in records if r.label == 0}
    tampered = _by_name([r for r in records if r.label == 1])
    ious = []
    for pair in man["pairs"]:
        rec = tampered[Path(pair["image"]).name]
        img = read_image(rec.image)
        orig = read_image(authentic[Path(pair["authentic_counterpart"]).name].image)
        mask = read_mask(rec.mask, image_size=(img.shape[1], img.shape[0]), image_path=rec.image) > 0
        diff = (img != orig).any(axis=2)
        iou = (diff & mask).sum() / (diff | mask).sum()
        ious.append(iou)
        if "mask_iou_vs_pixel_difference" in pair:  # the manifest's own measurement
            assert iou == pytest.approx(pair["mask_iou_vs_pixel_difference"], abs=2e-3), pair["id"]
    assert np.median(ious) >= 0.99 and min(ious) >= (0.7 if name == "coverage" else 0.99)


@pytest.mark.parametrize("name", DATASETS)
def test_resize_mode_and_default_collate(name):
    root, man = _manifest(name)
    ds = open_dataset(root, SampleTransform(mode="resize", size=64, edge_width=7))
    fractions = {Path(p["image"]).name: p["tampered_fraction"] for p in man["pairs"]}
    loader = DataLoader(ds, batch_size=3, shuffle=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 1, 64, 64) and batch["edge_mask"].shape == (3, 1, 64, 64)
    assert batch["label"].shape == (3,) and batch["label"].dtype == torch.float32
    assert batch["index"].tolist() == [0, 1, 2] and batch["origin_shape"].shape == (3, 2)
    assert isinstance(batch["name"], list) and batch["name"][0] == ds.records[0].image.name
    assert set(torch.unique(batch["mask"]).tolist()) == {0.0, 1.0}
    assert batch["edge_mask"].sum() > 0
    for k, file_name in enumerate(batch["name"]):
        # nearest-neighbour downscaling keeps the tampered fraction roughly (small regions vary most)
        assert batch["mask"][k].mean().item() == pytest.approx(fractions[file_name], abs=0.02)
        h, w = batch["origin_shape"][k].tolist()
        pair = next(p for p in man["pairs"] if Path(p["image"]).name == file_name)
        assert (w, h) == (pair["width"], pair["height"])


def test_large_jpeg():
    root, man = _manifest("single_samples")
    big = next(p for p in man["pairs"] if p["width"] == 3488)
    records = [r for r in load_records(root) if r.image.name == Path(big["image"]).name]
    s = ForgeryDataset(records, SampleTransform(mode="resize", size=512))[0]
    assert s["origin_shape"].tolist() == [2616, 3488] and s["image"].shape == (3, 512, 512)
    assert s["mask"].mean().item() == pytest.approx(big["tampered_fraction"], abs=2e-3)
    with pytest.raises(DecompressionBombError, match="3488x2616"):
        ForgeryDataset(records, max_pixels=9_000_000)[0]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:  # file systems without symlinks
        dst.write_bytes(src.read_bytes())


def test_json_list_paths_resolve_against_the_json_folder(tmp_path, monkeypatch):
    root, man = _manifest("coverage")
    data = tmp_path / "lists" / "data"
    rows = []
    for pair in man["pairs"][:4]:
        _link(root / pair["image"], data / "img" / Path(pair["image"]).name)
        _link(root / pair["mask"], data / "gt" / Path(pair["mask"]).name)
        rows.append([f"data/img/{Path(pair['image']).name}", f"data/gt/{Path(pair['mask']).name}"])
    _link(root / "authentic" / "1.png", data / "au" / "1.png")
    rows.append(["data/au/1.png", "Negative"])
    rows.append([str(root / man["pairs"][5]["image"]), str(root / man["pairs"][5]["mask"])])  # absolute
    (tmp_path / "lists" / "list.json").write_text(json.dumps(rows, indent=1))
    monkeypatch.chdir(tmp_path)  # relative paths must NOT depend on the working directory
    records = load_records("lists/list.json")
    assert len(records) == 6 and [r.label for r in records] == [1, 1, 1, 1, 0, 1]
    assert records[0].image == Path("lists/data/img") / Path(man["pairs"][0]["image"]).name
    # json.dumps(indent=1) writes each pair over 4 lines: entries start on lines 2, 6, 10, ...
    assert [r.source.rsplit(":", 1)[1] for r in records] == [f"line {2 + 4 * i}" for i in range(6)]
    ds = ForgeryDataset(records, SampleTransform(mode="none"))
    assert ds[0]["mask"].mean().item() == pytest.approx(man["pairs"][0]["tampered_fraction"], abs=6e-5)
    assert ds[4]["label"].item() == 0.0


def test_tp_gt_folder_with_casia_naming(tmp_path):
    root, man = _manifest("casia2_samples")
    ds_root = tmp_path / "CASIA2"
    for pair in man["pairs"]:
        image = root / pair["image"]
        _link(image, ds_root / "Tp" / image.name)
        _link(root / pair["mask"], ds_root / "Gt" / f"{image.stem}_gt.png")
    cov = shared_path("data", "coverage")
    _link(cov / "authentic" / "2.png", ds_root / "Au" / "Au_2.png")
    (ds_root / "Tp" / "Thumbs.db").write_bytes(b"junk")
    (ds_root / "Gt" / ".DS_Store").write_bytes(b"junk")
    records = load_records(ds_root)
    assert len(records) == 18 and sum(r.label == 0 for r in records) == 1
    for r in records:
        if r.mask is not None:
            assert r.mask.name == f"{r.image.stem}_gt.png"
    report = check_dataset(ds_root)
    assert report.ok and (report.n_tampered, report.n_authentic) == (17, 1) and report.format == "tp_gt"


def test_pairing_is_by_name_not_sort_order(tmp_path):
    # sorted(): images [x.png, x_1.png] but masks [x_1_gt.png, x_gt.png] — IMDLBenCo would cross them.
    root = tmp_path / "ds"
    (root / "Tp").mkdir(parents=True)
    (root / "Gt").mkdir()
    from PIL import Image

    for name, size in (("x", (30, 20)), ("x_1", (25, 35))):
        Image.new("RGB", size).save(root / "Tp" / f"{name}.png")
        Image.new("L", size, 255).save(root / "Gt" / f"{name}_gt.png")
    (root / "Gt" / "other-MASK.png").write_bytes((root / "Gt" / "x_gt.png").read_bytes())
    Image.new("RGB", (30, 20)).save(root / "Tp" / "other.jpg")
    records = {r.image.name: r.mask.name for r in load_records(root)}
    assert records == {"x.png": "x_gt.png", "x_1.png": "x_1_gt.png", "other.jpg": "other-MASK.png"}
    ds = ForgeryDataset(root, SampleTransform(mode="none"))
    x_1 = next(i for i, r in enumerate(ds.records) if r.image.name == "x_1.png")
    assert ds[x_1]["mask"].shape == (1, 35, 25)


def test_plain_folder_has_unknown_ground_truth(tmp_path):
    root, man = _manifest("noso_copymove")
    for pair in man["pairs"][:2]:
        _link(root / pair["image"], tmp_path / "photos" / Path(pair["image"]).name)
    for records in (load_records(tmp_path / "photos"), list_images(tmp_path / "photos")):
        assert len(records) == 2 and all(r.mask is None and not r.mask_known and r.label is None for r in records)
    ds = ForgeryDataset(tmp_path / "photos", SampleTransform(mode="resize", size=32, edge_width=3))
    s = ds[0]
    assert not ds.mask_known and "mask" not in s and "label" not in s and "edge_mask" not in s
    assert s["image"].shape == (3, 32, 32) and s["origin_shape"].tolist() == [768, 1024]
    report = check_dataset(tmp_path / "photos")
    assert report.ok and report.n_unknown == 2 and report.n_authentic == 0


def test_convert_roundtrip_and_cli(tmp_path):
    root, _ = _manifest("coverage")
    out = convert_to_json(root, tmp_path / "sub" / "coverage.json")
    rows = json.loads(out.read_text())
    assert len(rows) == 50 and sum(r[1] == "Negative" for r in rows) == 25
    assert not Path(rows[0][0]).is_absolute()
    original = [(os.path.abspath(r.image), r.mask and os.path.abspath(r.mask)) for r in load_records(root)]
    again = [(os.path.abspath(r.image), r.mask and os.path.abspath(r.mask)) for r in load_records(out)]
    assert again == original

    from forgeloc.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["data", "convert", str(root), str(tmp_path / "abs.json"), "--absolute"])
    assert result.exit_code == 0, result.output
    assert "50 entries (25 tampered, 25 authentic)" in result.output
    assert all(Path(r[0]).is_absolute() for r in json.loads((tmp_path / "abs.json").read_text()))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "abs.json"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "no errors" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_tampered"] == 25 and report["n_authentic"] == 25 and report["n_errors"] == 0


def test_check_dataset_statistics():
    root, man = _manifest("coverage")
    report = check_dataset(root)
    assert report.ok and not report.problems and report.format == "images_masks"
    sizes = [(p["width"], p["height"]) for p in man["pairs"]] + [(a["width"], a["height"]) for a in man["authentic"]]
    assert report.min_size == min(sizes, key=lambda s: s[0] * s[1])
    assert report.max_size == max(sizes, key=lambda s: s[0] * s[1])
    assert (report.min_width, report.max_width) == (min(s[0] for s in sizes), max(s[0] for s in sizes))
    fractions = [p["tampered_fraction"] for p in man["pairs"]]
    assert report.mean_tampered_fraction == pytest.approx(np.mean(fractions), abs=1e-4)
    assert report.n_images_read == 50


# ------------------------------------------------------------------------------------------------
# Determinism and the balanced sampler
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(5)
    records = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        m = np.zeros((40, 48), np.uint8)
        m[5 + i: 20 + i, 10:30] = 255
        Image.fromarray(m).save(folder / f"{i}_mask.png")
        records.append(Record(folder / f"{i}.png", folder / f"{i}_mask.png", str(folder / f"{i}.png")))
    return records


def _epoch(ds, workers: int) -> list[dict]:
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers)
    return list(loader)


def test_augmentation_is_identical_across_worker_counts_and_changes_with_epoch(small_records):
    def make():
        aug = Augmentations(scale=0.2, hflip_p=0.5, vflip_p=0.5, rotate90_p=0.5, copy_move_p=0.3,
                            brightness=0.1, contrast=0.1, jpeg_quality=(70, 100), jpeg_p=0.5)
        return ForgeryDataset(small_records, SampleTransform(mode="resize", size=32, augment=aug), seed=7)

    ds = make()
    ds.set_epoch(3)
    a = _epoch(ds, 0)
    b = _epoch(ds, 2)
    fresh = make()  # "after a resume": a new object at the same epoch
    fresh.set_epoch(3)
    c = _epoch(fresh, 0)
    for x, y, z in zip(a, b, c, strict=True):
        for key in ("image", "mask", "label", "origin_shape"):
            assert torch.equal(x[key], y[key]) and torch.equal(x[key], z[key]), key
    ds.set_epoch(4)
    d = _epoch(ds, 0)
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, d, strict=True))


def test_balanced_dataset(small_records):
    first = ForgeryDataset(small_records[:2], SampleTransform(mode="resize", size=16), seed=1)
    second = ForgeryDataset(small_records[2:], SampleTransform(mode="resize", size=16), seed=1)
    bal = BalancedDataset([first, second], samples_per_dataset=50, seed=11)
    assert len(bal) == 100
    locs = [bal.locate(i) for i in range(100)]
    assert all(k == 0 for k, _ in locs[:50]) and all(k == 1 for k, _ in locs[50:])
    counts = np.bincount([j for k, j in locs if k == 1], minlength=4)
    assert counts.sum() == 50 and (counts > 0).all()  # uniform with replacement: every item drawn
    again = BalancedDataset([first, second], samples_per_dataset=50, seed=11)
    assert [again.locate(i) for i in range(100)] == locs  # reproducible
    bal.set_epoch(1)
    assert [bal.locate(i) for i in range(100)] != locs and first.epoch == 1
    other_seed = BalancedDataset([first, second], samples_per_dataset=50, seed=12)
    assert [other_seed.locate(i) for i in range(100)] != locs

    s = bal[73]
    _, j = bal.locate(73)
    assert s["index"].item() == 73 and s["name"] == second.records[j].image.name
    # augmentation is keyed by the epoch position, not the item (an item drawn twice differs)
    assert torch.equal(s["image"], second.get(j, rng_key=(11, 1, 73, 1))["image"])

    # DDP: two ranks of a DistributedSampler cover every position exactly once
    ranks = [list(DistributedSampler(bal, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(100))
    with pytest.raises(ValueError):
        BalancedDataset([first], samples_per_dataset=0)


def test_folder_with_a_dataset_list_is_read_through_it(tmp_path: Path) -> None:
    """``forgeloc synth`` output: images/ holds authentic images too, dataset.json says which."""
    from forgeloc.data.synth import synthesize

    synthesize(tmp_path / "s", 8, seed=1, size=48)
    from_folder = load_records(tmp_path / "s")
    from_list = load_records(tmp_path / "s" / "dataset.json")
    assert from_folder == from_list and any(r.mask is None for r in from_folder)
