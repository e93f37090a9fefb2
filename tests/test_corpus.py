"""The real-photo corpus builder: selection, dedup, manifest, idempotency, verification, CLI.

Everything runs on tiny fake package trees; no network. The .deb paths use a .deb built here with
``dpkg-deb --build`` (skipped without dpkg-deb) and a fake ``apt-get`` on PATH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from forgeloc.data.corpus import (
    DUPLICATE_DISTANCE,
    PACKAGE_MANIFEST,
    SOURCES,
    CorpusError,
    Frames,
    Keep,
    Source,
    _select,
    build_corpus,
    load_corpus,
    parse_copyright,
    perceptual_hash,
)

FAKE_SOURCES = ["mate-backgrounds", "plasma-workspace-wallpapers", "opencv-doc", "gnome-backgrounds"]
HAS_DPKG = shutil.which("dpkg-deb") is not None


def picture(seed: int, size: tuple[int, int] = (640, 400)) -> Image.Image:
    """A smooth random 'photo': distinct seeds give unrelated perceptual hashes."""
    rng = np.random.default_rng(seed)
    low = (rng.random((6, 9, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 6, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (sha(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2020 someone
License: GPL-2+

Files: nature/Garden.jpg
Copyright: 2021 a photographer
License: CC0-1.0

License: GPL-2+
 The full text.
"""


def make_packages(root: Path) -> Path:
    """Extracted fake packages, as ``dpkg-deb -x`` (plus DEBIAN/control) would leave them."""
    mate = root / "mate-backgrounds"
    (mate / "DEBIAN").mkdir(parents=True)
    (mate / "DEBIAN" / "control").write_text("Package: mate-backgrounds\nVersion: 1.0-1\n")
    nature = mate / "usr/share/backgrounds/mate/nature"
    save(picture(1, (800, 500)), nature / "Aqua.jpg", quality=90)
    save(picture(2, (640, 400)), nature / "Garden.jpg", quality=85)
    save(picture(3, (160, 100)), mate / "usr/share/backgrounds/mate/abstract/Elephants.jpg")
    save(picture(4, (160, 100)), mate / "usr/share/backgrounds/mate/desktop/Stripes.png")
    (mate / "usr/share/doc/mate-backgrounds").mkdir(parents=True)
    (mate / "usr/share/doc/mate-backgrounds/copyright").write_text(DEP5)

    plasma = root / "plasma-workspace-wallpapers"
    (plasma / "DEBIAN").mkdir(parents=True)
    (plasma / "DEBIAN" / "control").write_text("Package: plasma-workspace-wallpapers\nVersion: 4:5.0-1\n")
    kite = plasma / "usr/share/wallpapers/Kite"
    big = picture(5, (960, 600))
    save(big, kite / "contents/images/960x600.jpg", quality=92)
    save(big.resize((640, 400), Image.Resampling.LANCZOS), kite / "contents/images/640x400.jpg", quality=80)
    save(big.resize((320, 200)), kite / "contents/screenshot.jpg")
    (kite / "metadata.json").write_text(json.dumps({"KPlugin": {"License": "LGPLv3", "Authors": [{"Name": "R. S."}]}}))
    save(picture(6, (320, 200)), plasma / "usr/share/wallpapers/Volna/contents/images/320x200.jpg")
    (plasma / "usr/share/doc/plasma-workspace-wallpapers").mkdir(parents=True)
    (plasma / "usr/share/doc/plasma-workspace-wallpapers/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nLicense: GPL-2+\n")

    ocv = root / "opencv-doc"
    data = ocv / "usr/share/doc/opencv-doc/examples/data"
    # baboon: the mate Aqua picture again, smaller (a cross-package duplicate for the perceptual hash)
    save(picture(1, (800, 500)).resize((400, 250), Image.Resampling.LANCZOS), data / "baboon.jpg", quality=75)
    save(picture(7, (300, 300)), data / "fruits.jpg")
    save(Image.new("L", (64, 64), 255), data / "chessboard.png")
    save(picture(8, (100, 100)), data / "new_thing.png")
    (data / "notes.txt").write_text("not an image")
    (ocv / "usr/share/doc/opencv-doc").mkdir(parents=True, exist_ok=True)
    (ocv / "usr/share/doc/opencv-doc/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nLicense: Apache-2.0 AND BSD-3-Clause\n\nFiles: data/*\nLicense: BSD-3-Clause\n")

    gnome = root / "gnome-backgrounds"
    (gnome / "usr/share/backgrounds/gnome").mkdir(parents=True)
    (gnome / "usr/share/backgrounds/gnome/blobs-l.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return root


@pytest.fixture(scope="module")
def _packages(tmp_path_factory) -> Path:
    return make_packages(tmp_path_factory.mktemp("packages") / "debs")


@pytest.fixture
def debs(tmp_path, _packages) -> Path:
    """A fresh copy of the fake packages for each test (tests check that sources stay untouched)."""
    return Path(shutil.copytree(_packages, tmp_path / "debs"))


def build(out: Path, debs: Path, **kw):
    kw.setdefault("sources", FAKE_SOURCES)
    kw.setdefault("reference", None)
    return build_corpus(out, debs=debs, download=False, **kw)


def by_file(report) -> dict[str, dict]:
    return {p["file"]: p for p in report.photos}


# ------------------------------------------------------------------------------------------------
def test_build_from_extracted_packages(tmp_path, debs):
    out = tmp_path / "corpus"
    report = build(out, debs)
    assert report.ok, report.errors
    photos = by_file(report)
    assert sorted(photos) == [
        "mate-backgrounds__Aqua.jpg", "mate-backgrounds__Garden.jpg",
        "opencv-doc__fruits.jpg", "plasma-workspace-wallpapers__Kite.jpg",
    ]
    aqua = photos["mate-backgrounds__Aqua.jpg"]
    src = debs / "mate-backgrounds/usr/share/backgrounds/mate/nature/Aqua.jpg"
    assert aqua["source"] == "mate-backgrounds" and aqua["version"] == "1.0-1"
    assert aqua["path"] == "usr/share/backgrounds/mate/nature/Aqua.jpg"
    assert (aqua["width"], aqua["height"], aqua["format"]) == (800, 500, "JPEG")
    # bytes copied unchanged
    assert aqua["sha256"] == sha(src) == sha(out / "photos" / aqua["file"])
    assert (out / "photos" / aqua["file"]).read_bytes() == src.read_bytes()
    # licences from the DEP-5 file: the last matching Files paragraph wins
    assert aqua["licence"] == "GPL-2+"
    assert photos["mate-backgrounds__Garden.jpg"]["licence"] == "CC0-1.0"
    # opencv: examples/data is samples/data in the source, not the top-level data/
    assert photos["opencv-doc__fruits.jpg"]["licence"] == "Apache-2.0 AND BSD-3-Clause"
    kite = photos["plasma-workspace-wallpapers__Kite.jpg"]
    assert (kite["width"], kite["height"]) == (960, 600)
    assert kite["path"].endswith("Kite/contents/images/960x600.jpg")
    assert kite["upstream_licence"] == "LGPLv3" and kite["author"] == "R. S."
    assert kite["version"] == "4:5.0-1"

    # duplicates: a smaller size in the theme folder, and the same picture in another package
    dups = {d["path"].rsplit("/", 1)[-1]: d for d in report.duplicates}
    assert set(dups) == {"640x400.jpg", "baboon.jpg"}
    assert "same allow-list entry" in dups["640x400.jpg"]["reason"]
    assert "perceptual hash" in dups["baboon.jpg"]["reason"]
    assert dups["baboon.jpg"]["kept"].endswith("nature/Aqua.jpg")

    reasons = {e["path"].rsplit("/", 1)[-1]: e["reason"] for e in report.excluded}
    assert reasons["Elephants.jpg"] == "digital painting"
    assert "3D render" in reasons["320x200.jpg"]
    assert "preview" in reasons["screenshot.jpg"]
    assert reasons["chessboard.png"] == "chessboard pattern"
    assert "not reviewed" in reasons["new_thing.png"] or reasons["new_thing.png"].startswith("synthetic")
    assert "blobs-l.svg" in reasons
    assert "notes.txt" not in reasons  # not an image
    status = {s["name"]: s["status"] for s in report.sources}
    assert status["gnome-backgrounds"] == "examined, no photographs"
    assert status["mate-backgrounds"] == "used"
    # allow-listed files absent from this (fake) version are reported, not fatal
    assert any("nature/Blinds.jpg" in w for w in report.source_warnings)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["photos"] == report.photos
    assert manifest["summary"]["photos"] == 4 and manifest["summary"]["duplicates"] == 2
    assert manifest["summary"]["excluded"] == report.n_excluded
    assert abs(manifest["summary"]["megapixels"] - report.megapixels) < 1e-3
    assert not list(out.glob(".staging-*"))
    assert sorted(p.name for p in (out / "photos").iterdir()) == sorted(photos)


def test_idempotent_and_sources_untouched(tmp_path, debs):
    before = snapshot(debs)
    out = tmp_path / "corpus"
    first = build(out, debs)
    assert first.written == 4 and first.unchanged == 0
    manifest = (out / "manifest.json").read_bytes()
    photos = snapshot(out / "photos")
    second = build(out, debs)
    assert second.written == 0 and second.unchanged == 4 and second.removed == 0
    assert (out / "manifest.json").read_bytes() == manifest
    assert snapshot(out / "photos") == photos  # not even rewritten (same mtimes)
    assert snapshot(debs) == before


def test_extra_folders_and_stale_files(tmp_path, debs):
    extra = tmp_path / "my photos"
    save(picture(20, (500, 400)), extra / "holiday.jpg", quality=88)
    save(picture(21, (300, 200)), extra / "sub" / "cat.png")
    save(picture(2, (640, 400)).resize((320, 200)), extra / "garden_small.jpg")  # mate Garden, smaller
    (extra / "readme.txt").write_text("hello")
    (extra / "drawing.svg").write_text("<svg/>")
    before = snapshot(extra)
    out = tmp_path / "corpus"
    report = build(out, debs, extra=[extra])
    photos = by_file(report)
    assert {"extra-my_photos__holiday.jpg", "extra-my_photos__sub_cat.png"} <= set(photos)
    assert photos["extra-my_photos__holiday.jpg"]["licence"].startswith("user-supplied")
    assert photos["extra-my_photos__sub_cat.png"]["path"] == "sub/cat.png"
    assert any(d["path"] == "garden_small.jpg" and d["kept"].endswith("Garden.jpg") for d in report.duplicates)
    assert any(e["path"] == "drawing.svg" for e in report.excluded)
    assert snapshot(extra) == before

    # a file someone else put in photos/ is left alone; the extra photos go when --extra goes
    stranger = out / "photos" / "hand_made.jpg"
    stranger.write_bytes(b"not ours")
    again = build(out, debs)
    assert again.removed == 2
    assert not (out / "photos" / "extra-my_photos__holiday.jpg").exists()
    assert stranger.read_bytes() == b"not ours"
    assert any("hand_made.jpg" in w for w in again.warnings)
    assert [p.name for p in load_corpus(out)] == sorted(by_file(again))


def test_verification_against_committed_manifest(tmp_path, debs):
    ref = tmp_path / "corpus_manifest.json"
    out = tmp_path / "corpus"
    report = build(out, debs, write_package_manifest=ref)
    assert report.ok and ref.is_file()
    committed = json.loads(ref.read_text())
    assert "verification" not in committed and committed["photos"] == report.photos

    clean = build(out, debs, reference=ref)
    assert clean.verification["status"] == "ok" and clean.verification["checked"] == 4 and not clean.mismatches

    committed["photos"][0]["sha256"] = "0" * 64
    committed["photos"].append({**committed["photos"][1], "file": "mate-backgrounds__Gone.jpg"})
    ref.write_text(json.dumps(committed))
    report = build(out, debs, reference=ref)
    assert report.ok  # warn, keep going
    assert [m["file"] for m in report.mismatches] == [committed["photos"][0]["file"]]
    assert [m["file"] for m in report.verification["missing"]] == ["mate-backgrounds__Gone.jpg"]
    assert any("sha256 differs" in w for w in report.warnings)
    assert any("1 photo(s) of the committed manifest not rebuilt" in w and "Gone" in w for w in report.warnings)
    on_disk = json.loads((out / "manifest.json").read_text())["verification"]
    assert on_disk["status"] == "differences" and len(on_disk["mismatches"]) == 1
    assert len(load_corpus(out)) == 4  # the photos are still there


def test_package_manifest_needs_a_complete_reproducible_build(tmp_path, debs):
    extra = tmp_path / "x"
    save(picture(30), extra / "a.jpg")
    with pytest.raises(CorpusError, match="--extra"):
        build(tmp_path / "c", debs, extra=[extra], write_package_manifest=tmp_path / "m.json")
    report = build(tmp_path / "c", debs, sources=[*FAKE_SOURCES, "sway-backgrounds"],
                   write_package_manifest=tmp_path / "m.json")
    assert not report.ok and not (tmp_path / "m.json").exists()
    assert any("sway-backgrounds" in e for e in report.errors)


def test_load_corpus(tmp_path, debs):
    out = tmp_path / "corpus"
    build(out, debs)
    paths = load_corpus(out)
    assert [p.name for p in paths] == sorted(p.name for p in (out / "photos").iterdir())
    assert load_corpus(out / "photos") == paths
    paths[0].write_bytes(b"changed")
    assert len(load_corpus(out)) == 4
    with pytest.raises(CorpusError, match="changed"):
        load_corpus(out, check=True)
    paths[1].unlink()
    with pytest.raises(CorpusError, match="missing"):
        load_corpus(out)
    with pytest.raises(CorpusError, match="not a corpus"):
        load_corpus(tmp_path)


def test_select_samples_camera_sequences():
    src = Source("seq", "deb", "r", keep=(Keep("one.jpg"),), frames=(Frames("s/img*.pgm", "s", count=3),),
                 exclude=(("junk.*", "junk"),))
    files = ["r/one.jpg", "r/junk.png", "r/other.png", "r/readme.txt"] + [f"r/s/img{i:03d}.pgm" for i in range(10)]
    chosen, excluded, warnings = _select(src, files, "r")
    assert [(c[0], c[1]) for c in chosen] == [
        ("r/one.jpg", "one"), ("r/s/img000.pgm", "s_img000"), ("r/s/img004.pgm", "s_img004"),
        ("r/s/img009.pgm", "s_img009"),
    ]
    agg = [e for e in excluded if e.get("count")]
    assert agg == [{"path": "r/s/img*.pgm", "count": 7, "frames": 10,
                    "reason": "near-duplicate frames of a camera sequence (a few frames kept)"}]
    assert {"path": "r/junk.png", "reason": "junk"} in excluded
    assert any(e["path"] == "r/other.png" and "not reviewed" in e["reason"] for e in excluded)
    assert not warnings


def test_parse_copyright():
    cr = parse_copyright(DEP5)
    assert cr.machine_readable
    assert cr.licence_for("nature/Garden.jpg") == "CC0-1.0"
    assert cr.licence_for("nature/Aqua.jpg") == "GPL-2+"
    free = parse_copyright("This package was debianized by X.\n\nLicense: MIT\n\nLicense: CC-BY-3.0\n")
    assert not free.machine_readable and free.licence_for("anything") == "MIT / CC-BY-3.0"
    assert "unknown" in parse_copyright("Copyright 2001 nobody").licence_for("x")


def test_perceptual_hash_threshold():
    a = picture(40, (800, 600))
    b = a.resize((400, 300), Image.Resampling.LANCZOS)
    near = int((perceptual_hash(a) != perceptual_hash(b)).sum())
    far = int((perceptual_hash(a) != perceptual_hash(picture(41, (800, 600)))).sum())
    assert near <= DUPLICATE_DISTANCE < far


def test_sources_are_consistent():
    names = [s.name for s in SOURCES]
    assert len(set(names)) == len(names)
    assert {s.kind for s in SOURCES} <= {"deb", "python"}
    for s in SOURCES:
        if s.note == "examined, no photographs":
            assert not s.keep and not s.frames
    if PACKAGE_MANIFEST.is_file():  # the committed manifest documents the shipped weights' data
        committed = json.loads(PACKAGE_MANIFEST.read_text())
        files = [p["file"] for p in committed["photos"]]
        assert len(set(files)) == len(files) and "verification" not in committed
        for p in committed["photos"]:
            assert p["source"] in names and p["file"].startswith(p["source"] + "__")
            assert {"version", "path", "licence", "width", "height", "format", "sha256"} <= set(p)
            assert not p["path"].startswith("/")


# ------------------------------------------------------------------------------------------------
# .deb files, apt-get download (faked), CLI
# ------------------------------------------------------------------------------------------------
def make_deb(tree: Path, dest: Path, name: str, version: str) -> Path:
    control = tree / "DEBIAN" / "control"
    control.write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
                       "Description: test\n")
    dest.mkdir(parents=True, exist_ok=True)
    deb = dest / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


def fake_apt_get(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "apt-get"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.skipif(not HAS_DPKG, reason="needs dpkg-deb")
def test_build_from_deb_files(tmp_path, debs):
    deb = make_deb(debs / "mate-backgrounds", tmp_path / "debfiles", "mate-backgrounds", "2.0-1")
    deb_sha = sha(deb)
    out = tmp_path / "corpus"
    report = build(out, tmp_path / "debfiles", sources=["mate-backgrounds"])
    assert report.ok, report.errors
    photos = by_file(report)
    assert sorted(photos) == ["mate-backgrounds__Aqua.jpg", "mate-backgrounds__Garden.jpg"]
    assert {p["version"] for p in photos.values()} == {"2.0-1"}
    assert photos["mate-backgrounds__Garden.jpg"]["licence"] == "CC0-1.0"
    src = debs / "mate-backgrounds/usr/share/backgrounds/mate/nature/Aqua.jpg"
    assert (out / "photos/mate-backgrounds__Aqua.jpg").read_bytes() == src.read_bytes()
    info = next(s for s in report.sources if s["name"] == "mate-backgrounds")
    assert info["origin"] == deb.name and info["deb_sha256"] == deb_sha
    assert sha(deb) == deb_sha and not list(out.glob(".staging-*"))


def test_download_failure_says_apt_get_update(tmp_path, monkeypatch):
    fake_apt_get(tmp_path / "bin", 'echo "E: Unable to locate package $2" >&2; exit 100')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    report = build_corpus(tmp_path / "corpus", sources=["mate-backgrounds", "scikit-image"], reference=None)
    assert not report.ok
    assert any("run `apt-get update` first" in e and "Unable to locate package" in e for e in report.errors)
    assert any(s["name"] == "scikit-image" and s["status"] == "used" for s in report.sources)  # kept going
    assert report.kept > 0

    app = typer.Typer()
    from forgeloc.cli.corpus import register

    register(app)
    result = CliRunner().invoke(app, ["corpus", "build", "--out", str(tmp_path / "c2"), "--only", "mate-backgrounds",
                                      "--no-verify", "-q"])
    assert result.exit_code == 1
    assert "apt-get update" in result.output


@pytest.mark.skipif(not HAS_DPKG, reason="needs dpkg-deb")
def test_download_with_apt_get(tmp_path, debs, monkeypatch):
    deb = make_deb(debs / "mate-backgrounds", tmp_path / "repo", "mate-backgrounds", "3.0-1")
    calls = tmp_path / "calls"
    fake_apt_get(tmp_path / "bin", f'echo "$@" >> "{calls}"; cp "{deb}" .')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "corpus"
    report = build_corpus(out, sources=["mate-backgrounds"], reference=None)
    assert report.ok, report.errors
    assert calls.read_text().split() == ["download", "mate-backgrounds"]
    assert (out / ".cache/debs" / deb.name).is_file()
    assert {p["version"] for p in report.photos} == {"3.0-1"}
    again = build_corpus(out, sources=["mate-backgrounds"], reference=None)
    assert again.written == 0 and calls.read_text().count("download") == 1  # the cached .deb is reused


def test_cli_build(tmp_path, debs):
    app = typer.Typer()
    from forgeloc.cli.corpus import register

    register(app)
    out = tmp_path / "corpus"
    args = ["corpus", "build", "--out", str(out), "--debs", str(debs), "--no-download", "--no-verify"]
    for s in FAKE_SOURCES:
        args += ["--only", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4 photos" in text and "digital painting" in text and "4 written" in text
    result = CliRunner().invoke(app, [*args, "-q"])
    assert result.exit_code == 0 and "0 written, 4 unchanged" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["corpus", "build", "--out", str(out), "--only", "nope", "--no-download"])
    assert result.exit_code == 2 and "unknown source" in result.output
