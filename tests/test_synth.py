"""The synthetic tampering generator: exact masks, determinism, layout, photo folders, CLI."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forgeloc.data.synth import (
    AUTHENTIC,
    MANIPULATIONS,
    SynthConfig,
    SynthError,
    bundled_photo_names,
    bundled_photos,
    sample_kind,
    sample_rng,
    synthesize,
    synthesize_one,
)

SEED = 7
N = 24


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return bundled_photos()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth_a"), N, SEED)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a.astype(np.int16) != b.astype(np.int16), axis=-1)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MANIPULATIONS)
def test_mask_is_exactly_the_changed_pixels(photos, kind):
    cfg = SynthConfig(size=128)
    blends = set()
    for i in range(12):
        s = synthesize_one(photos, kind, sample_rng(11, i), cfg)
        changed = _changed(s.tampered, s.base)
        assert s.mask.dtype == bool and s.mask.shape == (128, 128)
        assert np.array_equal(s.mask, changed)
        # Nothing outside the intended region may change (e.g. Poisson blending spills over its box).
        assert not (changed & ~s.region).any()
        assert changed.sum() >= cfg.min_coverage * s.region.sum() > 0
        assert np.array_equal(s.final_mask, s.mask)
        assert s.final.shape == s.base.shape and s.final.dtype == np.uint8
        blends.add(s.info.get("blend", s.info.get("inpaint")))
    expected = {
        "splicing": {"hard", "feather", "poisson"},
        "copy-move": {"hard", "feather"},
        "removal": {"telea", "ns"},
    }[kind]
    assert blends == expected


def test_authentic_sample_is_untouched_before_post_processing(photos):
    s = synthesize_one(photos, AUTHENTIC, sample_rng(0, 0), SynthConfig(size=96, jpeg_prob=1.0))
    assert np.array_equal(s.tampered, s.base) and not s.mask.any() and not s.region.any()
    # Post-processing applies to authentic images too (so it is not a tamper cue).
    assert s.info["jpeg_quality"] is not None and _changed(s.final, s.base).any()


def test_copy_move_pastes_the_source_pixels(photos):
    """An untransformed, hard-edged copy-move is a pure integer shift of the source region."""
    cfg = SynthConfig(size=128)
    for i in range(40):
        s = synthesize_one(photos, "copy-move", sample_rng(3, i), cfg)
        if s.info["rotation_deg"] == 0 and s.info["blend"] == "hard":
            break
    else:
        pytest.fail("no plain copy-move among 40 samples")
    m = np.asarray(s.info["target_to_source"])
    assert np.allclose(m[:, :2], np.eye(2)) and np.allclose(m[:, 2], np.round(m[:, 2]))
    dx, dy = (round(v) for v in m[:, 2])
    ys, xs = np.nonzero(s.region)
    assert np.array_equal(s.tampered[ys, xs], s.base[ys + dy, xs + dx])
    assert s.source_mask is not None and not (s.source_mask & s.region).any()
    assert s.source_mask.sum() == s.region.sum()


def test_splicing_takes_the_paste_from_another_scene(photos):
    scenes = {n: ("moto" if n.startswith("motorcycle") else n) for n in photos}
    for i in range(15):
        s = synthesize_one(photos, "splicing", sample_rng(5, i), SynthConfig(size=96), scenes)
        assert scenes[s.info["source_photo"]] != scenes[s.info["photo"]]


def test_masks_are_not_rectangles(photos):
    for kind in MANIPULATIONS:
        for i in range(6):
            s = synthesize_one(photos, kind, sample_rng(21, i), SynthConfig(size=128))
            ys, xs = np.nonzero(s.region)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert s.region.sum() < 0.97 * box, (kind, i)


# ------------------------------------------------------------------------------------------------
def test_dataset_layout_and_manifest(dataset, photos):
    root = dataset.parent
    records = json.loads(dataset.read_text())
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(records) == N == manifest["n"] and manifest["seed"] == SEED
    assert set(manifest["photos"]) == set(bundled_photo_names())
    kinds = [s["type"] for s in manifest["samples"]]
    assert set(kinds) == {*MANIPULATIONS, AUTHENTIC}
    # The low-discrepancy type sequence keeps any prefix near the requested 25 % per type.
    assert all(4 <= kinds.count(k) <= 8 for k in (*MANIPULATIONS, AUTHENTIC))

    for i, ((image, mask), sample) in enumerate(zip(records, manifest["samples"], strict=True)):
        assert not Path(image).is_absolute() and (root / image).is_file()
        img = _read(root / image)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        # Regenerating sample i in memory gives exactly the stored bytes' pixels.
        s = synthesize_one(photos, sample["type"], sample_rng(SEED, i), SynthConfig(),
                           {n: ("moto" if n.startswith("motorcycle") else n) for n in photos})
        assert np.array_equal(img, s.final)
        if sample["type"] == AUTHENTIC:
            assert mask == "Negative" and not (root / "masks" / Path(image).name).exists()
            assert not _changed(s.tampered, s.base).any()
            continue
        m = _read(root / mask)
        assert m.shape == (256, 256) and set(np.unique(m)) <= {0, 255}
        assert np.array_equal(m == 255, _changed(s.tampered, s.base))
        assert sample["region_pixels"] == int((m == 255).sum()) > 0
        assert sample["region_fraction"] == pytest.approx(sample["region_pixels"] / 256**2, abs=1e-6)
        if sample["type"] == "copy-move":
            assert (root / sample["source_mask"]).is_file()
        if sample["type"] == "splicing":
            assert sample["source_photo"] != sample["photo"]


def test_dataset_loads_as_json_list(dataset):
    try:
        datasets = importlib.import_module("forgeloc.data.datasets")
    except ImportError:
        datasets = None
    rows = json.loads(dataset.read_text())
    if datasets is not None and hasattr(datasets, "load_records"):
        records = datasets.load_records(dataset)
        assert [r.image for r in records] == [dataset.parent / image for image, _ in rows]
        assert [r.label for r in records] == [0 if mask == "Negative" else 1 for _, mask in rows]
    assert all(isinstance(r, list) and len(r) == 2 for r in rows)
    assert sum(r[1] == "Negative" for r in rows) == sum(
        s["type"] == AUTHENTIC for s in json.loads((dataset.parent / "manifest.json").read_text())["samples"]
    )


def test_same_seed_same_bytes_independent_of_n_and_workers(dataset, tmp_path):
    again = synthesize(tmp_path / "b", N, SEED, workers=2)
    reference = _hashes(dataset.parent)
    assert _hashes(again.parent) == reference
    # Sample i does not depend on n: a shorter run is a prefix of the longer one.
    short = _hashes(synthesize(tmp_path / "c", 6, SEED).parent)
    for name, digest in short.items():
        if name.startswith(("images/", "masks/", "source_masks/")):
            assert reference[name] == digest
    other = _hashes(synthesize(tmp_path / "d", 6, SEED + 1).parent)
    images = [k for k in other if k.startswith("images/")]
    assert all(other[k] != reference[k] for k in images)


def test_sample_kind_is_balanced_and_stable():
    kinds = [sample_kind(3, i, 0.25, MANIPULATIONS) for i in range(400)]
    for k in (*MANIPULATIONS, AUTHENTIC):
        assert abs(kinds.count(k) - 100) <= 3
    assert kinds[:50] == [sample_kind(3, i, 0.25, MANIPULATIONS) for i in range(50)]
    assert [sample_kind(3, i, 1.0, MANIPULATIONS) for i in range(20)] == [AUTHENTIC] * 20


def test_disjoint_photo_subsets(tmp_path):
    names = ["astronaut", "coffee", "rocket"]
    path = synthesize(tmp_path / "train", 12, 1, photo_names=names, size=96)
    samples = json.loads((path.parent / "manifest.json").read_text())["samples"]
    used = {s["photo"] for s in samples} | {s["source_photo"] for s in samples if "source_photo" in s}
    assert used <= set(names) and len(used) > 1
    with pytest.raises(SynthError, match="unknown bundled photo"):
        synthesize(tmp_path / "x", 4, 1, photo_names=["astronaut", "nope"])


def test_existing_output_needs_overwrite(dataset, tmp_path):
    out = dataset.parent
    with pytest.raises(SynthError, match="overwrite"):
        synthesize(out, 2, 0)
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "mine.png").write_bytes(b"x")
    with pytest.raises(SynthError, match="refusing"):
        synthesize(foreign, 2, 0, overwrite=True)
    assert (foreign / "images" / "mine.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be"),
        ({"types": ("splicing", "blur")}, "types must be"),
        ({"authentic_fraction": 1.5}, "authentic_fraction"),
        ({"jpeg_quality": (90, 70)}, "jpeg_quality"),
        ({"size": 16}, "size must be"),
        ({"area_range": (0.0001, 0.1)}, "under 16 pixels"),
    ],
)
def test_invalid_options(tmp_path, kwargs, match):
    args = {"n": 2, **kwargs}
    with pytest.raises(SynthError, match=match):
        synthesize(tmp_path / "o", args.pop("n"), 0, **args)


# ------------------------------------------------------------------------------------------------
def _photo_folder(root: Path, photos: dict[str, np.ndarray]) -> Path:
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photos["astronaut"][:200, :180]).save(folder / "a.png")
    Image.fromarray(photos["coffee"][100:300, 50:290]).save(folder / "b.jpg", quality=95)
    Image.fromarray(photos["camera"][:, :, 0]).save(folder / "sub" / "c.png")  # grayscale file
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_user_photo_folder(tmp_path, photos):
    folder = _photo_folder(tmp_path, photos)
    path = synthesize(tmp_path / "out", 10, 2, photos=folder, size=128)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert set(manifest["photos"]) == {"a", "b", "sub/c"}
    assert manifest["photo_source"] == f"folder {folder}"
    assert _read(path.parent / "images" / "00000.png").shape == (128, 128, 3)


def test_user_photo_folder_errors(tmp_path, photos):
    folder = _photo_folder(tmp_path, photos)
    Image.fromarray(photos["rocket"][:40, :60]).save(folder / "tiny.png")
    with pytest.raises(SynthError, match=r"tiny\.png is 60x40"):
        synthesize(tmp_path / "o1", 4, 0, photos=folder, size=128)
    (folder / "tiny.png").unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(SynthError, match=r"cannot read photo .*broken\.jpg"):
        synthesize(tmp_path / "o2", 4, 0, photos=folder, size=128)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthError, match="no photos"):
        synthesize(tmp_path / "o3", 4, 0, photos=empty)
    with pytest.raises(SynthError, match="different scenes"):
        synthesize(tmp_path / "o4", 4, 0, photos=[photos["astronaut"]])


# ------------------------------------------------------------------------------------------------
def _cli():
    import typer

    from forgeloc.cli import _COMMAND_MODULES
    from forgeloc.cli.synth import register

    assert "synth" in _COMMAND_MODULES
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keeps "synth" a sub-command, as in the real app
        pass

    register(app)
    return app


def test_cli_runs_and_prints_summary(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "cli"
    result = CliRunner().invoke(_cli(), ["synth", "--out", str(out), "--n", "8", "--seed", "4", "--size", "96"])
    assert result.exit_code == 0, result.output
    for word in ("splicing", "copy-move", "removal", "authentic", "dataset.json"):
        assert word in result.output
    assert len(json.loads((out / "dataset.json").read_text())) == 8

    result = CliRunner().invoke(_cli(), ["synth", "--out", str(tmp_path / "x"), "--photos", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())  # rich wraps lines
    result = CliRunner().invoke(_cli(), ["synth", "--list-photos"])
    assert result.exit_code == 0 and "astronaut" in result.output
