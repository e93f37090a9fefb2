"""A corpus of real photographs, rebuilt by a script from package registries.

forgeloc's default detector is trained on forgeries made from real photographs
(:mod:`forgeloc.data.realsynth`). The photographs are not committed: :func:`build_corpus` (the
``forgeloc corpus build`` command) rebuilds the same corpus from

* Debian packages, fetched with ``apt-get download NAME`` (or taken from a folder of ``.deb`` files)
  and unpacked with ``dpkg-deb`` — nothing is installed;
* the photographs bundled with scikit-image and matplotlib;
* any folder of the user's own photographs (``extra``).

What is kept is decided by explicit, reviewed allow-lists (:data:`SOURCES`): photographs only, no
rendered or abstract art, logos, charts, calibration targets or tampered demo images; a few frames
of each camera sequence. The same picture stored at several resolutions is kept once, at its largest
(same theme folder, or a perceptual hash). Files are copied byte for byte — a photo's JPEG history is
what a forensic detector learns from.

``DIR/manifest.json`` records, for every photo, its source package and version, its path in the
package, its licence, size, format and sha256, and every left-out file with the reason. The committed
:data:`PACKAGE_MANIFEST` documents the corpus the shipped weights were trained on; each build is
checked against it and differences (e.g. a newer package version) are reported, not fatal.
:func:`load_corpus` gives the training pipeline the photo paths.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CORPUS_FORMAT",
    "DUPLICATE_DISTANCE",
    "PACKAGE_MANIFEST",
    "SOURCES",
    "CorpusError",
    "CorpusReport",
    "Frames",
    "Keep",
    "Source",
    "build_corpus",
    "load_corpus",
    "parse_copyright",
    "perceptual_hash",
]

# Bump when the layout or the meaning of manifest fields changes.
CORPUS_FORMAT = 1

PACKAGE_MANIFEST = Path(__file__).with_name("corpus_manifest.json")

# Two pictures whose 255-bit DCT hashes differ in at most this many bits are the same picture.
# Measured on the sources: the same picture at other sizes or as JPEG/PNG differs by 0-4 bits, the
# next frame of a video by 6-20, different photographs by 44 or more (mostly ~100).
DUPLICATE_DISTANCE = 24

_RASTER = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".pnm"})
_OTHER_IMAGES = frozenset({".svg", ".gif", ".xpm", ".ico", ".jxl", ".avif", ".heic"})
_IMAGES = _RASTER | _OTHER_IMAGES
_NOT_ON_LIST = "not on the reviewed allow-list (not reviewed)"


class CorpusError(RuntimeError):
    """A source cannot be fetched or unpacked, or a folder is not a corpus."""


# ------------------------------------------------------------------------------------------------
# Source specifications (the reviewed allow-lists)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keep:
    """Keep the file(s) matching ``pattern`` (a glob relative to the source's folder).

    All files matched by one rule are the same picture (e.g. the sizes in a wallpaper's theme
    folder): the largest is kept. ``name`` names the photo (default: the file's stem).
    """

    pattern: str
    name: str | None = None
    licence: str | None = None  # overrides the package's licence (bundled Python data)
    note: str = ""


@dataclass(frozen=True)
class Frames:
    """A camera sequence: keep ``count`` frames spread evenly over it (the rest are near-duplicates)."""

    pattern: str
    label: str
    count: int = 3
    note: str = ""


@dataclass(frozen=True)
class Source:
    """Where photos come from and which of its files are photographs.

    ``kind``: ``deb`` (a Debian package), ``python`` (data shipped inside an importable module) or
    ``extra`` (a user folder: every raster image is kept). ``root``: the folder examined, relative to
    the package's file system (deb) or to the module's folder (python). ``source_prefix``: what
    the package's DEP-5 copyright file calls ``root`` (its ``Files:`` patterns are source paths).
    ``exclude``: reviewed ``(glob, reason)`` pairs, first match wins; images matched by no rule are
    reported as not reviewed.
    """

    name: str
    kind: str
    root: str
    keep: tuple[Keep, ...] = ()
    frames: tuple[Frames, ...] = ()
    exclude: tuple[tuple[str, str], ...] = ()
    source_prefix: str = ""
    module: str = ""  # python: module whose folder holds ``root``
    note: str = ""
    kde_metadata: bool = False  # plasma themes: author and licence in THEME/metadata.json


_NO_PHOTOS = "examined, no photographs"

_MATE_PHOTOS = (
    "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
    "TwoWings", "Wood", "YellowFlower",
)
_PLASMA_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
    "OneStandsOut", "Path", "summer_1am",
)
_UBUNTU_1604_PHOTOS = (
    "aitzgorri_by_Aitzol_Berasategi", "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "free_by_Peter_Nerlich",
    "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
    "picosdeeuropa_by_Aitzol_Berasategi", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
    "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi", "Wine_by_Jakkub_Mede",
)
_OPENCV_PHOTOS = (
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "blox.jpg", "board.jpg",
    "box.png", "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg",
    "fruits.jpg", "graf1.png", "graf3.png", "home.jpg", "left.jpg", "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg",
    "orange.jpg", "pca_test1.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "stuff.jpg",
    "sudoku.png",
)

SOURCES: tuple[Source, ...] = (
    Source(
        "mate-backgrounds", "deb", "usr/share/backgrounds/mate",
        keep=tuple(Keep(f"nature/{n}.jpg") for n in _MATE_PHOTOS),
        exclude=(
            ("abstract/Elephants*", "digital painting"),
            ("abstract/*", "abstract art"),
            ("desktop/Ubuntu-Mate-*", "rendered aurora and starfield"),
            ("desktop/*", "rendered or graphic desktop background (logo, stripes)"),
        ),
        note="nature/ holds the photographs; GreenMeadow (grass, 1280x1024) is one of them",
    ),
    Source(
        "plasma-workspace-wallpapers", "deb", "usr/share/wallpapers",
        keep=tuple(Keep(f"{t}/contents/images/*", name=t) for t in _PLASMA_PHOTOS),
        exclude=(
            ("*/contents/screenshot.*", "theme preview (a small copy of the wallpaper)"),
            ("Autumn/*", "painted illustration"),
            ("Volna/*", "3D render (low-poly beach), not a photograph"),
            ("*", "rendered or abstract wallpaper"),
        ),
        kde_metadata=True,
        note="one image per theme: the largest of its sizes",
    ),
    Source(
        "gnome-backgrounds", "deb", "usr/share", exclude=(("*", "rendered or abstract wallpaper"),), note=_NO_PHOTOS,
    ),
    Source(
        "ukui-wallpapers", "deb", "usr/share",
        exclude=(("*", "rendered or abstract wallpaper (illustrations, 3D renders)"),), note=_NO_PHOTOS,
    ),
    Source(
        "lomiri-wallpapers", "deb", "usr/share",
        exclude=(("*", "rendered wallpaper (or an empty file)"),), note=_NO_PHOTOS,
    ),
    Source(
        "lomiri-wallpapers-16.04", "deb", "usr/share/backgrounds", source_prefix="16.04",
        keep=tuple(Keep(f"{n}.jpg") for n in _UBUNTU_1604_PHOTOS),
        exclude=(
            ("analogpattern_by_Peter_Nerlich.jpg", "close-up of a textured surface, mostly abstract colour"),
            ("umang_by_Abhishek_Mudgal.jpg", "rendered colour gradient"),
            ("*", "rendered wallpaper"),
        ),
        note="Ubuntu 16.04's contest wallpapers (each a photographer's, licence per file)",
    ),
    Source(
        "lomiri-wallpapers-20.04", "deb", "usr/share/backgrounds", source_prefix="20.04",
        keep=(Keep("Kleiber_by_Lukas_Baubkus.jpg"),),
        exclude=(
            ("Fossa_by_Jasper_Roks.jpg", "rendered abstract wallpaper"),
            ("Infinite-Sea_by_Aury88.jpg", "digital composite (starfield over a sea)"),
            ("Painting-Colors_by__herobrine7gamer.jpg", "flat colour stripes"),
            ("*", "rendered wallpaper"),
        ),
        note="Ubuntu 20.04's contest wallpapers: one photograph",
    ),
    Source(
        "sway-backgrounds", "deb", "usr/share",
        exclude=(("*", "graphic wallpaper with a logo"),), note=_NO_PHOTOS,
    ),
    Source(
        "opencv-doc", "deb", "usr/share/doc/opencv-doc/examples/data", source_prefix="samples/data",
        keep=tuple(Keep(n) for n in _OPENCV_PHOTOS),
        exclude=(
            ("aloeR.jpg", "right view of the aloeL stereo pair (near-duplicate)"),
            ("right.jpg", "right view of the left.jpg stereo pair (near-duplicate)"),
            ("basketball2.png", "next frame after basketball1 (near-duplicate)"),
            ("rubberwhale2.png", "next frame after rubberwhale1 (near-duplicate)"),
            ("ela_modified.jpg", "a tampered image (error-level-analysis demo), not authentic"),
            ("licenseplate_motion.jpg", "motion-blurred test image (deblurring demo)"),
            ("text_*.jpg", "blurred text (deblurring demo)"),
            ("left[0-9][0-9].jpg", "chessboard calibration sequence"),
            ("right[0-9][0-9].jpg", "chessboard calibration sequence"),
            ("chessboard.png", "chessboard pattern"),
            ("starry_night.jpg", "painting"),
            ("Blender_Suzanne*", "3D render"),
            ("HappyFish.jpg", "drawing"),
            ("ml.png", "drawing"),
            ("*Logo*", "logo"),
            ("opencv-logo*", "logo"),
            ("aloeGT.png", "disparity map"),
            ("digits.png", "handwritten digits sheet"),
            ("imageText*", "synthetic text"),
            ("notes.png", "music notation"),
            ("*", "synthetic drawing or test pattern"),
        ),
        note="examples/data only; lena is removed from the Debian source",
    ),
    Source(
        "visp-images-data", "deb", "usr/share/visp-images-data/ViSP-images",
        keep=(Keep("Solvay/Solvay_conference_1927_Version2_*", name="Solvay_conference_1927"),),
        frames=(
            Frames("cube/image.*.pgm", "cube"),
            Frames("mbt/cube/image*.pgm", "mbt_cube"),
            Frames("mbt-depth/castel/castel/image_*.pgm", "castel"),
            Frames("mire-2/image.*.pgm", "mire-2"),
        ),
        exclude=(
            ("faces/1280px-Solvay_conference_1927.png", "another scan and crop of the Solvay 1927 photograph"),
            ("Klimt/*", "painting (Klimt)"),
            ("Gaussian-filter/*", "blurred copies of a painting"),
            ("warp/*", "warped copies of a painting"),
            ("AprilTag/*", "fiducial markers"),
            ("calibration/*", "calibration grid"),
            ("mire/*", "dot target"),
            ("circle/*", "synthetic shape"),
            ("ellipse/*", "synthetic shape"),
            ("ellipse-1/*", "camera sequence of a plain ellipse: no photographic content"),
            ("line/*", "camera sequence of a plain line: no photographic content"),
            ("mbt-depth/Castle-simu/*", "simulated (rendered) sequence"),
            ("mbt/cube.ppm", "annotated with drawn numbers"),
            ("mbt-depth/castel/chateau.ppm", "annotated with drawn markers"),
        ),
        note="a few frames of each real camera sequence; the Solvay 1927 photograph once",
    ),
    Source(
        "scikit-image", "python", "data", module="skimage",
        keep=(
            Keep("astronaut.png", licence="public domain (NASA photograph)"),
            Keep("brick.png", licence="CC0-1.0 (cc0textures.com Bricks25; warped, cropped, scaled by scikit-image)"),
            Keep("camera.png", licence="CC0-1.0 (photographer Lav Varshney)"),
            Keep("chelsea.png", licence="CC0-1.0 (photographer Stefan van der Walt)"),
            Keep("coffee.png", licence="CC0-1.0 (photographer Rachel Michetti)"),
            Keep("coins.png", licence="no known copyright restrictions (Brooklyn Museum collection)"),
            Keep("grass.png", licence="CC0-1.0 (DeviantArt linolafett Grass-01; cropped, grey, by scikit-image)"),
            Keep("gravel.png", licence="CC0-1.0 (cc0textures.com Gravel04; rescaled, cropped, grey, by scikit-image)"),
            Keep("motorcycle_left.png",
                 licence="Middlebury 2014 stereo benchmark, no licence stated (downsampled 4x by scikit-image)"),
            Keep("rocket.jpg", licence="public domain (SpaceX photograph)"),
        ),
        exclude=(
            ("motorcycle_right.png", "right view of the motorcycle stereo pair (near-duplicate)"),
            ("moon.png", "no source or licence documented"),
            ("hubble_deep_field.jpg", "telescope composite, not a camera photograph"),
            ("retina.jpg", "fundus camera image (medical, circular mask)"),
            ("cell.png", "microscopy"),
            ("ihc.png", "microscopy"),
            ("microaneurysms.png", "retinal angiography crop"),
            ("clock_motion.png", "synthetic motion blur"),
            ("page.png", "scanned text page"),
            ("text.png", "text, little photographic content"),
            ("*", "synthetic test image, logo or drawing"),
        ),
        note="the photographs bundled in the scikit-image wheel (no download)",
    ),
    Source(
        "matplotlib", "python", "mpl-data/sample_data", module="matplotlib",
        keep=(Keep("grace_hopper.jpg", licence="public domain (U.S. Navy photograph)"),),
        exclude=(("*", "clip-art or logo"),),
        note="matplotlib's sample data, if installed",
    ),
)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
@dataclass
class CorpusReport:
    """What :func:`build_corpus` did. ``photos``/``excluded``/``duplicates`` are manifest entries."""

    out: Path
    photos: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source_warnings: list[str] = field(default_factory=list)  # about the sources themselves (in the manifest)
    errors: list[str] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    removed: int = 0

    @property
    def ok(self) -> bool:
        """No source failed (skipped sources and checksum differences are warnings)."""
        return not self.errors

    @property
    def kept(self) -> int:
        return len(self.photos)

    @property
    def n_excluded(self) -> int:
        return sum(e.get("count", 1) for e in self.excluded)

    @property
    def n_duplicates(self) -> int:
        return len(self.duplicates)

    @property
    def megapixels(self) -> float:
        return sum(p["width"] * p["height"] for p in self.photos) / 1e6

    @property
    def mismatches(self) -> list[dict[str, Any]]:
        return list(self.verification.get("mismatches", []))

    def reasons(self, kind: str = "excluded") -> Counter[str]:
        """How many files were left out for each reason (``kind``: excluded or duplicates)."""
        counts: Counter[str] = Counter()
        for e in getattr(self, kind):
            counts[e["reason"] if kind == "excluded" else _reason_kind(e["reason"])] += e.get("count", 1)
        return counts

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _match(path: str, pattern: str) -> bool:
    """Glob match on a ``/``-separated path; ``*`` also crosses ``/`` (as in DEP-5 ``Files:``)."""
    return fnmatch.fnmatchcase(path, pattern)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "photo"


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT64 = _dct_matrix(64)


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """255-bit DCT hash: grey, 64×64, the 16×16 lowest frequencies (DC left out) against their median.

    Robust to resizing and recompression; see :data:`DUPLICATE_DISTANCE`.
    """
    grey = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = (_DCT64 @ grey @ _DCT64.T)[:16, :16].ravel()[1:]
    return coeffs > np.median(coeffs)


def _hash_hex(bits: np.ndarray) -> str:
    return np.packbits(np.append(bits, False)).tobytes().hex()


def _run(cmd: Sequence[str], *, cwd: Path | None = None, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=not binary, check=False)
    except FileNotFoundError as err:
        raise CorpusError(f"{cmd[0]} not found: {_TOOL_HINT}") from err


_TOOL_HINT = ("building the corpus from Debian packages needs apt-get and dpkg-deb (a Debian or Ubuntu system); "
              "elsewhere pass --debs DIR with the .deb files or extracted package folders")


def _dpkg_version_cmp(a: str, b: str) -> int:
    if a == b:
        return 0
    res = _run(["dpkg", "--compare-versions", a, "lt", b])
    return -1 if res.returncode == 0 else 1


# ------------------------------------------------------------------------------------------------
# Debian copyright files (DEP-5)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Copyright:
    """A parsed ``usr/share/doc/PKG/copyright``: ``files`` = [(patterns, licence)] in file order."""

    machine_readable: bool
    files: tuple[tuple[tuple[str, ...], str], ...]
    licences: tuple[str, ...]

    def licence_for(self, source_path: str) -> str:
        """The licence of a source path (the last matching ``Files:`` paragraph wins, as DEP-5 says)."""
        found = None
        for patterns, licence in self.files:
            if any(_match(source_path, p) for p in patterns):
                found = licence
        if found is not None:
            return found
        if self.licences:
            return " / ".join(self.licences)
        return "unknown (see the copyright file)"


def parse_copyright(text: str) -> Copyright:
    """Parse a Debian copyright file: machine-readable (DEP-5) paragraphs, or ``License:`` lines."""
    paragraphs: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line.startswith(("#",)) or not line.strip():
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
                continue
            name, sep, value = line.partition(":")
            if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
                key = name.lower()
                fields[key] = value.strip()
        if fields:
            paragraphs.append(fields)
    machine = bool(paragraphs) and "copyright-format" in paragraphs[0].get("format", "")
    files = []
    licences: list[str] = []
    for p in paragraphs:
        short = p.get("license", "").split("\n")[0].strip()
        if short and short not in licences and "files" in p:
            licences.append(short)
        if machine and "files" in p and short:
            files.append((tuple(p["files"].split()), short))
    if not machine:  # free-form file: every License: line anywhere
        licences = list(dict.fromkeys(m.strip() for m in re.findall(r"(?mi)^\s*License:\s*(\S.*)$", text)))
    return Copyright(machine, tuple(files), tuple(licences))


# ------------------------------------------------------------------------------------------------
# Getting a package's files
# ------------------------------------------------------------------------------------------------
@dataclass
class _Tree:
    """Files of one source: ``files`` are paths relative to ``base`` (``/``-separated)."""

    base: Path
    files: list[str]
    version: str
    origin: str  # where it came from (for the report)
    deb: Path | None = None  # files are extracted on demand from this .deb into ``base``
    copyright: Copyright | None = None
    licence_file: str = ""


def _deb_members(deb: Path) -> list[str]:
    """Regular files in a .deb's data archive (``dpkg-deb --fsys-tarfile``), without ``./``."""
    names: list[str] = []
    with _fsys_tar(deb) as tar:
        for member in tar:
            if member.isfile():
                names.append(_clean_member(member.name))
    return names


@contextlib.contextmanager
def _fsys_tar(deb: Path):
    """The data archive of ``deb`` as a streamed tar (``dpkg-deb --fsys-tarfile``; nothing installed)."""
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as err:
            raise CorpusError(f"dpkg-deb not found: {_TOOL_HINT}") from err
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar
            while proc.stdout.read(1 << 20):  # the end-of-archive padding: let dpkg-deb finish cleanly
                pass
        except tarfile.TarError as err:
            raise CorpusError(f"{deb}: cannot read the package's files ({err})") from err
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip().splitlines()
            raise CorpusError(f"dpkg-deb --fsys-tarfile {deb} failed: {text[-1] if text else f'exit {code}'}")


def _clean_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return str(PurePosixPath(name.lstrip("/")))


def _deb_extract(deb: Path, wanted: set[str], dest: Path) -> None:
    """Unpack only ``wanted`` (paths inside the package) from ``deb`` into ``dest`` (nothing installed)."""
    with _fsys_tar(deb) as tar:
        for member in tar:
            name = _clean_member(member.name)
            if not member.isfile() or name not in wanted:
                continue
            parts = PurePosixPath(name).parts
            if ".." in parts:
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with open(target, "wb") as fh:
                shutil.copyfileobj(src, fh)


def _deb_field(deb: Path, name: str) -> str:
    res = _run(["dpkg-deb", "-f", str(deb), name])
    if res.returncode != 0:
        raise CorpusError(f"dpkg-deb -f {deb} {name} failed: {(res.stderr or '').strip()}")
    return res.stdout.strip()


def _control_version(folder: Path) -> str:
    control = folder / "DEBIAN" / "control"
    if control.is_file():
        for line in control.read_text(errors="replace").splitlines():
            if line.lower().startswith("version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _walk(base: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                files.append(p.relative_to(base).as_posix())
    return files


class _Fetcher:
    """Finds a package in ``debs``, in the download cache, or downloads it with ``apt-get download``."""

    def __init__(self, debs: Path | None, cache: Path, download: bool, reference: dict[str, str],
                 say: Callable[[str], None]):
        self.debs, self.cache, self.download, self.reference, self.say = debs, cache, download, reference, say

    def _local(self, name: str) -> tuple[str, Path] | None:
        for folder in (self.debs, self.cache):
            if folder is None or not folder.is_dir():
                continue
            tree = folder / name
            if tree.is_dir() and ((tree / "usr").is_dir() or (tree / "DEBIAN").is_dir()):
                return "dir", tree
            found = sorted(folder.glob(f"{name}_*.deb"))
            if found:
                return "deb", self._choose(name, found)
        return None

    def _choose(self, name: str, debs: list[Path]) -> Path:
        if len(debs) == 1:
            return debs[0]
        versions = {d: _deb_field(d, "Version") for d in debs}
        wanted = self.reference.get(name)
        for d, v in versions.items():
            if v == wanted:  # the version the committed manifest was built from
                return d
        return max(debs, key=functools.cmp_to_key(lambda a, b: _dpkg_version_cmp(versions[a], versions[b])))

    def get(self, name: str) -> tuple[str, Path] | None:
        """``("deb", file)`` or ``("dir", folder)``; None when absent and downloads are off."""
        local = self._local(name)
        if local is not None or not self.download:
            return local
        self.cache.mkdir(parents=True, exist_ok=True)
        self.say(f"{name}: apt-get download {name} (into {self.cache})")
        res = _run(["apt-get", "download", name], cwd=self.cache)
        found = sorted(self.cache.glob(f"{name}_*.deb"))
        if res.returncode != 0 or not found:
            detail = ((res.stderr or "") + (res.stdout or "")).strip().splitlines()
            raise CorpusError(
                f"`apt-get download {name}` failed ({detail[-1] if detail else f'exit {res.returncode}'}): "
                "run `apt-get update` first (as root) so that apt knows the package, then run this again; "
                "or pass --debs DIR with the .deb files"
            )
        return "deb", self._choose(name, found)


def _open_deb_source(src: Source, fetcher: _Fetcher, staging: Path) -> _Tree | None:
    """List a package's files (a .deb is not unpacked yet: see :func:`_materialize`)."""
    got = fetcher.get(src.name)
    if got is None:
        return None
    kind, path = got
    if kind == "dir":
        return _Tree(path, _walk(path), _control_version(path), path.name)
    package = _deb_field(path, "Package")
    if package != src.name:
        raise CorpusError(f"{path} holds package {package!r}, not {src.name!r}")
    tree = _Tree(staging / src.name, _deb_members(path), _deb_field(path, "Version"), path.name, deb=path)
    tree.base.mkdir(parents=True, exist_ok=True)
    return tree


def _materialize(tree: _Tree, name: str, wanted: set[str]) -> None:
    """Unpack ``wanted`` and the copyright file (from a .deb), then read the copyright file."""
    doc = f"usr/share/doc/{name}/copyright"
    if tree.deb is not None:
        _deb_extract(tree.deb, (wanted | {doc}) & set(tree.files), tree.base)
    copyright_file = tree.base / doc
    if copyright_file.is_file():
        tree.copyright = parse_copyright(copyright_file.read_text(errors="replace"))
        tree.licence_file = doc


def _open_python_source(src: Source) -> _Tree | None:
    try:
        module = __import__(src.module)
    except ImportError:
        return None
    base = Path(module.__file__).parent
    site = base.parent
    folder = base / src.root
    if not folder.is_dir():
        return None
    rel = folder.relative_to(site).as_posix()
    files = [f"{rel}/{f}" for f in _walk(folder)]
    version = str(getattr(module, "__version__", "unknown"))
    return _Tree(site, files, version, f"the installed {src.name} {version} ({rel})")


# ------------------------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    source: str
    source_rank: int
    version: str
    path: str  # inside the package (or relative to an extra folder)
    file: Path  # where to read it now
    name: str
    group: str | None
    licence: str
    extra_fields: dict[str, Any] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    size: int = 0
    sha256: str = ""
    phash: np.ndarray | None = None

    @property
    def area(self) -> int:
        return self.width * self.height

    def rank(self) -> tuple:
        # Largest first; at equal size the JPEG (its compression history is in the file), then the
        # earlier source, then the larger file, then the path: the choice never depends on the disk.
        return (-self.area, self.format != "JPEG", self.source_rank, -self.size, self.path)


def _select(src: Source, files: Sequence[str], root_rel: str):
    """Split the images under ``root_rel`` into kept rules' matches, sampled frames and exclusions.

    Returns ``(chosen, excluded, warnings)``: chosen = [(path, name, group, Keep|Frames)],
    excluded = [{path, reason, count?}].
    """
    prefix = root_rel.rstrip("/") + "/" if root_rel else ""
    images = sorted(f for f in files if f.startswith(prefix) and PurePosixPath(f).suffix.lower() in _IMAGES)
    rel = {f: f[len(prefix):] for f in images}
    chosen: list[tuple[str, str, str | None, Keep | Frames]] = []
    excluded: list[dict[str, Any]] = []
    warnings: list[str] = []
    taken: set[str] = set()
    for rule in src.keep:
        matched = [f for f in images if _match(rel[f], rule.pattern) and f not in taken]
        if not matched:
            warnings.append(f"{src.name}: allow-listed {prefix}{rule.pattern} not found in this version")
        for f in matched:
            if PurePosixPath(f).suffix.lower() not in _RASTER:
                continue
            taken.add(f)
            name = rule.name or PurePosixPath(f).stem
            chosen.append((f, name, f"{src.name}:{rule.pattern}" if len(matched) > 1 else None, rule))
    for seq in src.frames:
        matched = [f for f in images if _match(rel[f], seq.pattern) and f not in taken]
        if not matched:
            warnings.append(f"{src.name}: camera sequence {prefix}{seq.pattern} not found in this version")
            continue
        n = len(matched)
        count = max(1, min(seq.count, n))
        picks = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
        for i in picks:
            f = matched[i]
            chosen.append((f, f"{seq.label}_{PurePosixPath(f).stem}", None, seq))
        taken.update(matched)
        if n > len(picks):
            excluded.append({"path": f"{prefix}{seq.pattern}", "count": n - len(picks), "frames": n,
                             "reason": "near-duplicate frames of a camera sequence (a few frames kept)"})
    for f in images:
        if f in taken:
            continue
        reason = next((r for pattern, r in src.exclude if _match(rel[f], pattern)), _NOT_ON_LIST)
        excluded.append({"path": f, "reason": reason})
    return chosen, excluded, warnings


def _measure(c: _Candidate) -> str | None:
    """Fill size, format, sha256 and hash; the reason it cannot be used, or None."""
    try:
        c.size = c.file.stat().st_size
        if c.size == 0:
            return "empty file"
        with Image.open(c.file) as im:
            c.width, c.height = im.size
            c.mode = im.mode
            fmt = im.format or c.file.suffix.lstrip(".").upper()
            if fmt == "PPM":
                fmt = {"1": "PBM", "L": "PGM", "I": "PGM", "I;16": "PGM", "I;16B": "PGM"}.get(im.mode, "PPM")
            c.format = fmt
            if im.format == "JPEG":
                im.draft("RGB" if im.mode != "L" else "L", (128, 128))
            c.phash = perceptual_hash(im)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be decoded ({type(err).__name__}: {err})"
    c.sha256 = _sha256(c.file)
    return None


# ------------------------------------------------------------------------------------------------
# The build
# ------------------------------------------------------------------------------------------------
def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dumps(data: dict[str, Any]) -> str:
    """JSON with one top-level key per line and one list entry per line (short, diff-friendly)."""
    lines = ["{"]
    items = list(data.items())
    for k, (key, value) in enumerate(items):
        comma = "," if k < len(items) - 1 else ""
        if isinstance(value, list) and value:
            entries = [json.dumps(v, ensure_ascii=False) for v in value]
            lines.append(f"{json.dumps(key)}: [")
            lines.extend(f"  {e}{',' if j < len(entries) - 1 else ''}" for j, e in enumerate(entries))
            lines.append(f"]{comma}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    return "\n".join(lines) + "\n}\n"


def _write_json(path: Path, data: dict[str, Any]) -> bool:
    """Write ``data`` atomically; False (and no write) when the file already holds exactly this."""
    text = _dumps(data)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _copy_if_changed(src: Path, dest: Path, sha: str) -> bool:
    if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == src.stat().st_size and _sha256(dest) == sha:
        return False
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True


def build_corpus(
    out: str | os.PathLike,
    debs: str | os.PathLike | None = None,
    extra: Iterable[str | os.PathLike] = (),
    download: bool = True,
    *,
    sources: Sequence[str] | None = None,
    reference: str | os.PathLike | None = PACKAGE_MANIFEST,
    write_package_manifest: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> CorpusReport:
    """Rebuild the photo corpus into ``out`` (``photos/`` and ``manifest.json``).

    ``debs``: a folder of ``.deb`` files (``NAME_VERSION_ARCH.deb``) or of extracted packages
    (``NAME/usr/...``, version from ``NAME/DEBIAN/control``), used before any download; it is only
    read. ``download``: fetch missing packages with ``apt-get download`` into ``cache`` (default
    ``out/.cache/debs``); off, missing packages are skipped with a warning. ``extra``: folders of the
    user's own photos, every raster image kept. ``sources``: restrict to these :data:`SOURCES` names.
    ``reference``: the manifest to check sha256s against (default the committed one; None: no check).
    ``write_package_manifest``: also write the manifest there (the committed copy documents the
    training data; refused with ``extra`` folders, which no one else can rebuild).

    Idempotent: a second run rewrites nothing. Only files this command wrote before (listed in the
    previous ``manifest.json``) are ever removed from ``out/photos``; sources are never modified.
    """
    say = progress or (lambda _msg: None)
    out = Path(out)
    extras = [Path(e) for e in extra]
    selected = _selected_sources(sources, extras, write_package_manifest)

    out.mkdir(parents=True, exist_ok=True)
    photos_dir = out / "photos"
    photos_dir.mkdir(exist_ok=True)
    report = CorpusReport(out=out)
    ref = _load_json(Path(reference)) if reference is not None else None
    ref_versions = {s["name"]: s.get("version", "") for s in (ref or {}).get("sources", [])}
    fetcher = _Fetcher(Path(debs) if debs is not None else None,
                       Path(cache) if cache is not None else out / ".cache" / "debs", download, ref_versions, say)

    candidates: list[_Candidate] = []
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out) as staging_dir:
        for rank, src in enumerate(selected):
            candidates.extend(_source_candidates(rank, src, fetcher, Path(staging_dir), report, say))
        for i, folder in enumerate(extras):
            candidates.extend(_extra_candidates(folder, extras[:i], len(selected) + i, report))
        report.warnings[:0] = report.source_warnings
        kept = _deduplicate(candidates, report)
        _assign_names(kept)
        _write_photos(kept, out, photos_dir, report)

    _count_per_source(report)
    report.verification = _verify(report, ref, Path(reference) if reference is not None else None)
    _warn_about_verification(report)
    manifest = _manifest(report)
    _write_json(out / "manifest.json", {**manifest, "verification": report.verification})
    if write_package_manifest is not None:
        incomplete = [s["name"] for s in report.sources if s.get("status") not in ("used", _NO_PHOTOS)]
        if report.errors or incomplete:
            report.errors.append(f"package manifest {write_package_manifest} not written: the build is incomplete "
                                 f"({', '.join(incomplete) or 'errors above'})")
        else:
            _write_json(Path(write_package_manifest), manifest)
    return report


def _selected_sources(sources: Sequence[str] | None, extras: list[Path],
                      write_package_manifest: str | os.PathLike | None) -> list[Source]:
    """The :data:`SOURCES` to build from; a :class:`CorpusError` for options that cannot work."""
    if write_package_manifest is not None and extras:
        raise CorpusError("the package manifest documents a corpus anyone can rebuild: leave out --extra folders")
    for e in extras:
        if not e.is_dir():
            raise CorpusError(f"--extra {e}: not a folder")
    known = {s.name for s in SOURCES}
    if sources is not None:
        unknown = sorted(set(sources) - known)
        if unknown:
            raise CorpusError(f"unknown source(s) {unknown}; known: {', '.join(s.name for s in SOURCES)}")
    return [s for s in SOURCES if sources is None or s.name in sources]


def _source_candidates(rank: int, src: Source, fetcher: _Fetcher, staging: Path, report: CorpusReport,
                       say: Callable[[str], None]) -> list[_Candidate]:
    """Open one package or Python source, select its photos and measure them; what went wrong is
    recorded in ``report`` (the source then gives no candidate)."""
    examined = src.root if src.kind == "deb" else f"{src.module}/{src.root}"
    info: dict[str, Any] = {"name": src.name, "kind": src.kind, "examined": examined, "note": src.note}
    report.sources.append(info)
    try:
        tree = _open_deb_source(src, fetcher, staging) if src.kind == "deb" else _open_python_source(src)
    except CorpusError as err:
        info.update(status="unavailable", error=str(err))
        report.errors.append(f"{src.name}: {err}")
        return []
    if tree is None:
        why = ("skipped: no .deb in --debs and downloads are off (--no-download)" if src.kind == "deb"
               else f"unavailable ({src.module} is not installed)")
        info["status"] = why
        report.warnings.append(f"{src.name}: {why}")
        return []
    root_rel = examined
    info.update(version=tree.version, origin=tree.origin)
    if src.kind == "python":
        info["copyright_licences"] = "per photo (the notes in the package's data docstrings)"
    if tree.deb is not None:
        info["deb_sha256"] = _sha256(tree.deb)
    chosen, excluded, warnings = _select(src, tree.files, root_rel)
    report.source_warnings.extend(warnings)
    if src.kind == "deb":
        wanted = {f for f, *_ in chosen}
        if src.kde_metadata:
            wanted |= {_kde_metadata_path(f) for f in wanted}
        try:
            _materialize(tree, src.name, wanted)
        except CorpusError as err:
            info.update(status="unavailable", error=str(err))
            report.errors.append(f"{src.name}: {err}")
            return []
        if tree.licence_file:
            info["licence_file"] = tree.licence_file
            info["copyright_licences"] = " / ".join(tree.copyright.licences) if tree.copyright else ""
    source_cands = [_candidate(src, rank, tree, root_rel, *item) for item in chosen]
    _measure_all(source_cands, excluded)
    for e in excluded:
        e["source"] = src.name
    report.excluded.extend(excluded)
    info["status"] = "used" if (src.keep or src.frames) else _NO_PHOTOS
    say(f"{src.name} {tree.version}: {len(source_cands)} candidate(s), "
        f"{sum(e.get('count', 1) for e in excluded)} left out")
    return source_cands


def _candidate(src: Source, rank: int, tree: Any, root_rel: str, path: str, name: str, group: Any,
               rule: Any) -> _Candidate:
    licence = getattr(rule, "licence", None) or _licence(tree, src, path, root_rel)
    c = _Candidate(src.name, rank, tree.version, path, tree.base / path, name, group, licence)
    if isinstance(rule, Frames):
        c.extra_fields["note"] = f"frame of the camera sequence {root_rel}/{rule.pattern}"
    elif rule.note:
        c.extra_fields["note"] = rule.note
    if src.kde_metadata:
        c.extra_fields.update(_kde_metadata(tree.base / _kde_metadata_path(path)))
    return c


def _extra_candidates(folder: Path, before: Sequence[Path], rank: int, report: CorpusReport) -> list[_Candidate]:
    """Every raster image of a user's ``--extra`` folder; other image formats are left out with a reason."""
    name = _extra_name(folder, before)
    files = _walk(folder)
    info = {"name": name, "kind": "extra", "examined": str(folder.resolve()), "status": "used",
            "version": "", "note": "user folder: every raster image kept"}
    report.sources.append(info)
    excluded = []
    source_cands = []
    for f in files:
        suffix = PurePosixPath(f).suffix.lower()
        if suffix in _RASTER:
            stem = str(PurePosixPath(f).with_suffix(""))
            source_cands.append(_Candidate(name, rank, "", f, folder / f, stem, None, "user-supplied (unknown)"))
        elif suffix in _OTHER_IMAGES:
            excluded.append({"path": f, "reason": "vector, animated or unsupported image format"})
    _measure_all(source_cands, excluded)
    for e in excluded:
        e["source"] = name
    report.excluded.extend(excluded)
    return source_cands


def _count_per_source(report: CorpusReport) -> None:
    for info in report.sources:
        n = info["name"]
        info["photos"] = sum(p["source"] == n for p in report.photos)
        info["megapixels"] = round(sum(p["width"] * p["height"] for p in report.photos if p["source"] == n) / 1e6, 3)
        info["excluded"] = sum(e.get("count", 1) for e in report.excluded if e["source"] == n)
        info["duplicates"] = sum(d["source"] == n for d in report.duplicates)


def _warn_about_verification(report: CorpusReport) -> None:
    """A warning per photo whose sha256 differs from the committed manifest, one per reason photos are missing."""
    for m in report.verification.get("mismatches", []):
        report.warnings.append(f"{m['file']}: sha256 differs from the committed manifest ({m['why']})")
    missing: dict[str, list[str]] = {}
    for m in report.verification.get("missing", []):
        missing.setdefault(m["why"], []).append(m["file"])
    for why, files in missing.items():
        report.warnings.append(f"{len(files)} photo(s) of the committed manifest not rebuilt ({why}): "
                               f"{', '.join(files[:3])}{' ...' if len(files) > 3 else ''}")


def _extra_name(folder: Path, before: Sequence[Path]) -> str:
    base = "extra-" + _safe_name(folder.resolve().name)
    taken = {"extra-" + _safe_name(p.resolve().name) for p in before}
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def _kde_metadata_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if "contents" in parts:
        return str(PurePosixPath(*parts[: parts.index("contents")]) / "metadata.json")
    return str(PurePosixPath(path).parent / "metadata.json")


def _kde_metadata(path: Path) -> dict[str, str]:
    data = _load_json(path) if path.is_file() else None
    plugin = (data or {}).get("KPlugin", {})
    found: dict[str, str] = {}
    if plugin.get("License"):
        found["upstream_licence"] = str(plugin["License"])
    authors = [a.get("Name", "") for a in plugin.get("Authors", []) if isinstance(a, dict)]
    if any(authors):
        found["author"] = ", ".join(a for a in authors if a)
    return found


def _licence(tree: _Tree, src: Source, path: str, root_rel: str) -> str:
    if tree.copyright is None:
        return "unknown (no copyright file)"
    rel = path[len(root_rel):].lstrip("/") if root_rel and path.startswith(root_rel) else path
    source_path = f"{src.source_prefix.strip('/')}/{rel}" if src.source_prefix else rel
    return tree.copyright.licence_for(source_path)


def _measure_all(cands: list[_Candidate], excluded: list[dict[str, Any]]) -> None:
    usable = []
    for c in cands:
        why = _measure(c)
        if why is None:
            usable.append(c)
        else:
            excluded.append({"path": c.path, "reason": why})
    cands[:] = usable


def _deduplicate(cands: list[_Candidate], report: CorpusReport) -> list[_Candidate]:
    """Same picture kept once, at its largest: same keep-rule group, same bytes, or a near hash."""
    def drop(c: _Candidate, winner: _Candidate, reason: str) -> None:
        report.duplicates.append({"source": c.source, "path": c.path, "width": c.width, "height": c.height,
                                  "format": c.format, "kept": f"{winner.source}:{winner.path}", "reason": reason})

    survivors = _one_per_group(cands, drop)
    clusters, distance = _duplicate_clusters(survivors)
    n_bits = len(survivors[0].phash) if survivors else 0
    kept: list[_Candidate] = []
    for members in clusters:
        members.sort(key=lambda i: survivors[i].rank())
        w = members[0]
        kept.append(survivors[w])
        for i in members[1:]:
            c = survivors[i]
            if c.sha256 == survivors[w].sha256:
                reason = "same file (identical bytes)"
            else:
                d = distance.get((min(i, w), max(i, w)))
                d_text = f"hash distance {d}" if d is not None else "hash chain"
                reason = (f"same picture by perceptual hash ({d_text} of {n_bits} bits; "
                          f"kept {survivors[w].width}x{survivors[w].height} {survivors[w].format})")
            drop(c, survivors[w], reason)
    kept.sort(key=lambda c: (c.source_rank, c.path))
    report.duplicates.sort(key=lambda d: (d["source"], d["path"]))
    return kept


def _one_per_group(cands: list[_Candidate], drop: Callable[[_Candidate, _Candidate, str], None]) -> list[_Candidate]:
    """The best-ranked candidate of each keep-rule group, and every candidate of no group (sorted by source, path)."""
    survivors: list[_Candidate] = []
    groups: dict[str, list[_Candidate]] = {}
    for c in cands:
        if c.group is None:
            survivors.append(c)
        else:
            groups.setdefault(c.group, []).append(c)
    for members in groups.values():
        members.sort(key=_Candidate.rank)
        survivors.append(members[0])
        for c in members[1:]:
            drop(c, members[0], f"same picture, other size or format (same allow-list entry; "
                                f"kept {members[0].width}x{members[0].height} {members[0].format})")
    survivors.sort(key=lambda c: (c.source_rank, c.path))
    return survivors


def _duplicate_clusters(survivors: list[_Candidate]) -> tuple[list[list[int]], dict[tuple[int, int], int]]:
    """Groups of indices joined by identical bytes or a near perceptual hash (union-find), and the
    hash distance of each near pair."""
    parent = list(range(len(survivors)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    distance: dict[tuple[int, int], int] = {}
    if survivors:
        bits = np.stack([c.phash for c in survivors])
        for i in range(len(survivors)):
            d = (bits[i + 1:] != bits[i]).sum(axis=1)
            for j in np.flatnonzero(d <= DUPLICATE_DISTANCE) + i + 1:
                distance[(i, int(j))] = int(d[j - i - 1])
                parent[find(int(j))] = find(i)
    first_with: dict[str, int] = {}
    for i, c in enumerate(survivors):
        j = first_with.setdefault(c.sha256, i)
        if j != i:
            parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(survivors)):
        clusters.setdefault(find(i), []).append(i)
    return list(clusters.values()), distance


def _assign_names(kept: list[_Candidate]) -> None:
    used: set[str] = set()
    for c in kept:
        suffix = c.file.suffix.lower()
        base = f"{c.source}__{_safe_name(c.name)}"
        name, k = base + suffix, 2
        while name.lower() in used:
            name, k = f"{base}_{k}{suffix}", k + 1
        used.add(name.lower())
        c.extra_fields["file"] = name


def _write_photos(kept: list[_Candidate], out: Path, photos_dir: Path, report: CorpusReport) -> None:
    previous = _load_json(out / "manifest.json") or {}
    old = {p["file"]: p.get("sha256") for p in previous.get("photos", []) if isinstance(p, dict) and "file" in p}
    new_names = set()
    for c in kept:
        name = c.extra_fields.pop("file")
        new_names.add(name)
        if _copy_if_changed(c.file, photos_dir / name, c.sha256):
            report.written += 1
        else:
            report.unchanged += 1
        entry = {"file": name, "source": c.source, "version": c.version, "path": c.path, "licence": c.licence}
        entry.update({k: v for k, v in c.extra_fields.items() if k in ("upstream_licence", "author")})
        entry.update(width=c.width, height=c.height, format=c.format, mode=c.mode, bytes=c.size,
                     sha256=c.sha256, phash=_hash_hex(c.phash))
        if "note" in c.extra_fields:
            entry["note"] = c.extra_fields["note"]
        report.photos.append(entry)
    report.photos.sort(key=lambda p: p["file"])
    for name, sha in sorted(old.items()):
        stale = photos_dir / name
        if name in new_names or not stale.is_file():
            continue
        if sha and _sha256(stale) == sha:
            stale.unlink()
            report.removed += 1
        else:
            report.warnings.append(f"photos/{name}: no longer part of the corpus but changed since it was written; "
                                   "left in place")
    ours = new_names | {f".{n}.tmp" for n in new_names}
    strangers = sorted(p.name for p in photos_dir.iterdir() if p.name not in ours)
    if strangers:
        report.warnings.append(f"photos/ holds {len(strangers)} file(s) this command did not write "
                               f"(left alone, not in the manifest): {', '.join(strangers[:5])}"
                               f"{' ...' if len(strangers) > 5 else ''}")


def _verify(report: CorpusReport, ref: dict[str, Any] | None, ref_path: Path | None) -> dict[str, Any]:
    if ref is None:
        return {"reference": str(ref_path) if ref_path else None, "status": "skipped (no committed manifest)"}
    ref_sources = {s["name"]: s for s in ref.get("sources", [])}
    built = {s["name"]: s for s in report.sources}
    ref_photos = {p["file"]: p for p in ref.get("photos", [])}
    mismatches, missing, new = [], [], []
    for p in report.photos:
        r = ref_photos.get(p["file"])
        if r is None:
            if p["source"] in ref_sources:
                new.append({"file": p["file"], "version": p["version"]})
            continue
        if r.get("sha256") != p["sha256"]:
            why = (f"committed from {r.get('source')} {r.get('version')}, rebuilt from {p['version']}"
                   if r.get("version") != p["version"] else "same package version, different bytes")
            mismatches.append({"file": p["file"], "expected": r.get("sha256"), "got": p["sha256"], "why": why})
    rebuilt = {p["file"] for p in report.photos}
    for name, r in sorted(ref_photos.items()):
        src = built.get(r.get("source"))
        if name in rebuilt or src is None:  # sources not built this time are not compared
            continue
        if src.get("status") not in ("used", _NO_PHOTOS):
            why = f"source {src['name']} {src.get('status')}"
        elif src.get("version") != r.get("version"):
            why = f"committed from {r.get('version')}, built from {src.get('version')}"
        else:
            why = "not selected this time"
        missing.append({"file": name, "why": why})
    return {"reference": ref_path.name if ref_path else None,
            "status": "ok" if not (mismatches or missing or new) else "differences",
            "checked": sum(p["file"] in ref_photos for p in report.photos),
            "mismatches": mismatches, "missing": missing, "new": new}


def _manifest(report: CorpusReport) -> dict[str, Any]:
    return {
        "format": CORPUS_FORMAT,
        "description": "Real photographs for forgeloc's training (forgeloc.data.corpus); "
                       "rebuild with: forgeloc corpus build --out DIR",
        "summary": {
            "photos": report.kept,
            "megapixels": round(report.megapixels, 3),
            "excluded": report.n_excluded,
            "duplicates": report.n_duplicates,
            "duplicate_hash_distance": DUPLICATE_DISTANCE,
        },
        "sources": report.sources,
        "photos": report.photos,
        "duplicates": report.duplicates,
        "excluded": sorted(report.excluded, key=lambda e: (e["source"], e["path"])),
        "warnings": report.source_warnings,
    }


# ------------------------------------------------------------------------------------------------
# Reading a corpus
# ------------------------------------------------------------------------------------------------
def load_corpus(directory: str | os.PathLike, *, check: bool = False) -> list[Path]:
    """The photos of a corpus built by :func:`build_corpus`, in manifest order.

    ``directory``: the ``--out`` folder (or its ``photos/``). Files in ``photos/`` that the manifest
    does not list are ignored. ``check``: also verify every sha256 (slower).
    """
    folder = Path(directory)
    if not (folder / "manifest.json").is_file() and folder.name == "photos":
        folder = folder.parent
    manifest = _load_json(folder / "manifest.json")
    if manifest is None or not isinstance(manifest.get("photos"), list):
        raise CorpusError(f"{directory}: not a corpus (no readable manifest.json); "
                          "build one with `forgeloc corpus build --out DIR`")
    paths, missing, changed = [], [], []
    for p in manifest["photos"]:
        path = folder / "photos" / p["file"]
        if not path.is_file():
            missing.append(p["file"])
        elif check and _sha256(path) != p.get("sha256"):
            changed.append(p["file"])
        paths.append(path)
    if missing or changed:
        parts = [f"{len(names)} photo(s) {what} ({', '.join(names[:3])}{' ...' if len(names) > 3 else ''})"
                 for what, names in (("missing", missing), ("changed", changed)) if names]
        raise CorpusError(f"{folder}: {'; '.join(parts)}; rebuild with `forgeloc corpus build --out {folder}`")
    return paths
