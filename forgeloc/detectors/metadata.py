"""Facts from the file itself: camera, software, dates, the embedded EXIF thumbnail and the JPEG
quantization tables, with plain-language hints. Facts, not verdicts: no score, no heatmap; every
value is JSON-serialisable.

Sources: EXIF (IFD0, the Exif IFD 0x8769 and the thumbnail IFD1) through Pillow, XMP's
``CreatorTool``, PNG text chunks, and Pillow's reading of the JPEG DQT segments. Damaged EXIF never
raises: Pillow's warnings about it are captured, reported under ``exif_problems`` and not printed.

JPEG quality: libjpeg (IJG) scales the example tables of the JPEG standard (ITU-T T.81 Annex K) by
``s = 5000 / q`` for ``q < 50`` else ``200 − 2q``, step ``= clip((base · s + 50) // 100, 1, 255)``
(``jcparam.c``, ``jpeg_quality_scaling``/``jpeg_add_quant_table``). A luma table equal to one of the
100 scaled tables gives the exact quality; any other table gets the nearest IJG quality (least mean
absolute log ratio over the 64 steps) and is called non-standard. We keep no table of "known
signatures" (camera makers and editors change them between models and versions).
"""

from __future__ import annotations

import io
import re
import warnings
from datetime import datetime
from typing import Any

import cv2
import numpy as np
from PIL import ExifTags, Image

from forgeloc.detectors.base import CueResult, ImageInput

__all__ = ["KNOWN_EDITORS", "estimate_jpeg_quality", "ijg_table", "read_metadata"]

NAME = "metadata"
MAX_TEXT = 200  # characters kept of any free-text value
MAX_PNG_TEXT_KEYS = 20

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
IFD0_TAGS = {"make": 0x010F, "model": 0x0110, "software": 0x0131, "datetime": 0x0132, "artist": 0x013B}
EXIF_TAGS = {"datetime_original": 0x9003, "datetime_digitized": 0x9004, "lens_model": 0xA434}
THUMBNAIL_OFFSET, THUMBNAIL_LENGTH = 0x0201, 0x0202

#: Editors recognised in the Software tag, XMP CreatorTool or a PNG "Software" text (first match
#: wins, so the more specific names come first).
KNOWN_EDITORS: tuple[tuple[str, str], ...] = (
    ("Adobe Lightroom", r"lightroom"),
    ("Adobe Photoshop", r"photoshop"),
    ("Adobe Camera Raw", r"camera raw"),
    ("GIMP", r"\bgimp\b"),
    ("Affinity Photo", r"affinity"),
    ("Snapseed", r"snapseed"),
    ("Pixelmator", r"pixelmator"),
    ("Paint.NET", r"paint\.net"),
    ("Canva", r"\bcanva\b"),
    ("Photopea", r"photopea"),
    ("Luminar", r"luminar"),
    ("Capture One", r"capture ?one"),
    ("darktable", r"darktable"),
    ("RawTherapee", r"rawtherapee"),
    ("Corel PaintShop Pro", r"paintshop|paint shop pro"),
    ("ACDSee", r"acdsee"),
    ("Krita", r"\bkrita\b"),
    ("PicsArt", r"picsart"),
    ("Fotor", r"\bfotor\b"),
    ("Facetune", r"facetune"),
    ("Meitu", r"meitu"),
    ("PhotoScape", r"photoscape"),
    ("Picasa", r"picasa"),
)

# Landscape (width, height) of common monitors and phone screens (StatCounter's most used desktop
# resolutions and the native sizes of popular phones); portrait orientations match too.
SCREEN_SIZES = frozenset({
    (1280, 720), (1280, 800), (1280, 1024), (1360, 768), (1366, 768), (1440, 900), (1536, 864),
    (1600, 900), (1680, 1050), (1920, 1080), (1920, 1200), (2048, 1152), (2560, 1080), (2560, 1440),
    (2560, 1600), (2880, 1800), (3024, 1964), (3440, 1440), (3840, 2160), (1334, 750), (1792, 828),
    (2208, 1242), (2436, 1125), (2532, 1170), (2556, 1179), (2688, 1242), (2778, 1284), (2796, 1290),
    (2340, 1080), (2400, 1080), (3200, 1440), (2048, 1536), (2732, 2048), (2388, 1668),
})

# Annex K example tables, natural (row-major) order.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int64).reshape(8, 8)
IJG_CHROMA = np.full((8, 8), 99, dtype=np.int64)
IJG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

# Thumbnail agreement: a genuine thumbnail is the same picture downscaled (differences come from
# resampling, JPEG and the camera's own tone rendering); an edited photo whose thumbnail was not
# regenerated differs where it was edited, or in framing after a crop.
THUMB_MAX_ASPECT_MISMATCH = 0.05  # |log| of the aspect-ratio ratio (≈ 5 %)
THUMB_MAX_MEAN_DIFF = 12.0  # grey levels, whole thumbnail
THUMB_MAX_LOCAL_DIFF = 40.0  # grey levels, mean over a window of 1/8 of the thumbnail side


def ijg_table(quality: int, chroma: bool = False, baseline: bool = True) -> np.ndarray:
    """The 8×8 quantization table libjpeg writes at ``quality`` (1–100), natural order."""
    q = int(np.clip(quality, 1, 100))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = IJG_CHROMA if chroma else IJG_LUMA
    return np.clip((base * scale + 50) // 100, 1, 255 if baseline else 32767)


def _is_ijg(table: np.ndarray, quality: int, chroma: bool) -> bool:
    """Whether ``table`` is libjpeg's at ``quality``, baseline (steps ≤ 255) or not."""
    table = table.reshape(8, 8)
    return any(np.array_equal(table, ijg_table(quality, chroma, baseline)) for baseline in (True, False))


def estimate_jpeg_quality(luma_table: np.ndarray, chroma_table: np.ndarray | None = None) -> dict[str, Any]:
    """IJG quality of a luma table (natural order): exact when the table is one of libjpeg's, else the
    nearest; see the module docstring."""
    table = np.asarray(luma_table, dtype=np.int64).reshape(8, 8)
    for q in range(1, 101):
        if _is_ijg(table, q, chroma=False):
            chroma_exact = None if chroma_table is None else _is_ijg(np.asarray(chroma_table), q, chroma=True)
            return {"quality": q, "exact_ijg": True, "chroma_exact_ijg": chroma_exact}
    logs = np.log(np.maximum(table, 1))
    errors = [float(np.abs(logs - np.log(ijg_table(q))).mean()) for q in range(1, 101)]
    best = int(np.argmin(errors)) + 1
    return {"quality": best, "exact_ijg": False, "chroma_exact_ijg": None,
            "mean_log_distance": round(errors[best - 1], 4)}


def _text(value: Any) -> str | None:
    """A tag value as clean text (NULs and padding stripped, length bounded), or None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:MAX_TEXT] or None


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M"):
        try:
            return datetime.strptime(value[:19], fmt)
        except ValueError:
            continue
    return None


def _open(data: bytes) -> tuple[Image.Image | None, list[str]]:
    """Open the file with Pillow, keeping EXIF warnings as facts instead of printing them."""
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = Image.open(io.BytesIO(data))
            exif = img.getexif()
            for ifd in (EXIF_IFD, GPS_IFD, ExifTags.IFD.IFD1):
                exif.get_ifd(ifd)  # parse now, inside the warning capture
        except Exception as err:  # unreadable or damaged file: report, don't raise
            return None, [f"the file could not be read: {err}"[:MAX_TEXT]]
    for w in caught:
        if "TiffImagePlugin" in str(w.filename) or "exif" in str(w.message).lower():
            problems.append(str(w.message)[:MAX_TEXT])
        else:  # not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return img, sorted(set(problems))


def _exif_facts(img: Image.Image) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exif = img.getexif()
        sub = exif.get_ifd(EXIF_IFD)
        gps = exif.get_ifd(GPS_IFD)
    facts: dict[str, Any] = {}
    for key, tag in IFD0_TAGS.items():
        if (value := _text(exif.get(tag))) is not None:
            facts[key] = value
    for key, tag in EXIF_TAGS.items():
        if (value := _text(sub.get(tag))) is not None:
            facts[key] = value
    if gps:
        facts["has_gps"] = True
    return facts


def _xmp_creator_tool(img: Image.Image) -> str | None:
    xmp = img.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", errors="replace")
    if not isinstance(xmp, bytes):
        return None
    match = re.search(rb'CreatorTool(?:="([^"]*)"|>([^<]*)<)', xmp)
    return None if match is None else _text(match.group(1) or match.group(2))


def _png_text(img: Image.Image) -> dict[str, str]:
    text = getattr(img, "text", None) if img.format == "PNG" else None
    if not text:
        return {}
    out = {}
    for key in list(text)[:MAX_PNG_TEXT_KEYS]:
        if key.lower().startswith("raw profile") or key in ("XML:com.adobe.xmp",):
            continue  # binary payloads, read through their own facts
        if (value := _text(text[key])) is not None:
            out[_text(key) or "?"] = value
    return out


def _editing_software(sources: dict[str, str | None]) -> dict[str, str] | None:
    for field, value in sources.items():
        if not value:
            continue
        for name, pattern in KNOWN_EDITORS:
            if re.search(pattern, value, flags=re.IGNORECASE):
                return {"name": name, "value": value, "field": field}
    return None


def _thumbnail_bytes(img: Image.Image) -> bytes | None:
    """The JPEG thumbnail of EXIF's IFD1 (JPEG APP1, PNG eXIf, WebP EXIF), or None."""
    raw = img.info.get("exif")
    if not isinstance(raw, bytes) or img.format == "TIFF":  # a TIFF's IFD1 is a second page
        return None
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ifd1 = img.getexif().get_ifd(ExifTags.IFD.IFD1)
    offset, length = ifd1.get(THUMBNAIL_OFFSET), ifd1.get(THUMBNAIL_LENGTH)
    if not isinstance(offset, int) or not isinstance(length, int) or length <= 0:
        return None
    thumb = tiff[offset: offset + length]
    return thumb if thumb.startswith(b"\xff\xd8") else None


def _trim_dark_bars(thumb: np.ndarray) -> np.ndarray:
    """Drop black letterbox bars (cameras pad 3:2 pictures into 4:3 thumbnails), at most 1/4 per side."""
    luma = thumb.mean(axis=2)
    dark_rows = luma.max(axis=1) < 24
    dark_cols = luma.max(axis=0) < 24
    top = _leading_true(dark_rows, len(dark_rows) // 4)
    bottom = _leading_true(dark_rows[::-1], len(dark_rows) // 4)
    left = _leading_true(dark_cols, len(dark_cols) // 4)
    right = _leading_true(dark_cols[::-1], len(dark_cols) // 4)
    return thumb[top: thumb.shape[0] - bottom, left: thumb.shape[1] - right]


def _leading_true(flags: np.ndarray, limit: int) -> int:
    count = 0
    while count < limit and flags[count]:
        count += 1
    return count


def _compare_thumbnail(thumb: np.ndarray, rgb: np.ndarray) -> dict[str, Any]:
    image_aspect = rgb.shape[1] / rgb.shape[0]
    candidates = [thumb, _trim_dark_bars(thumb)]
    mismatches = [abs(float(np.log((c.shape[1] / c.shape[0]) / image_aspect))) for c in candidates]
    best = int(np.argmin(mismatches))
    thumb, mismatch = candidates[best], mismatches[best]
    small = cv2.resize(rgb, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
    diff = np.abs(small.astype(np.float32) - thumb.astype(np.float32)).mean(axis=2)
    window = max(3, min(diff.shape) // 8)
    local = float(cv2.blur(diff, (window, window)).max())
    mean = float(diff.mean())
    disagrees = mismatch > THUMB_MAX_ASPECT_MISMATCH or mean > THUMB_MAX_MEAN_DIFF or local > THUMB_MAX_LOCAL_DIFF
    return {"aspect_mismatch": round(mismatch, 4), "mean_difference": round(mean, 2),
            "max_local_difference": round(local, 2), "letterbox_trimmed": bool(best == 1),
            "disagrees": bool(disagrees)}


def _thumbnail_facts(img: Image.Image, image: ImageInput) -> dict[str, Any]:
    data = _thumbnail_bytes(img)
    if data is None:
        return {"present": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as t:
                thumb = np.asarray(t.convert("RGB"))
    except Exception:
        return {"present": True, "readable": False}
    # The thumbnail is stored like the main image: the same EXIF orientation applies to it.
    thumb = np.ascontiguousarray(image.to_display(thumb))
    facts = {"present": True, "readable": True, "width": int(thumb.shape[1]), "height": int(thumb.shape[0])}
    if min(thumb.shape[:2]) < 8:
        return {**facts, "disagrees": None}
    return {**facts, **_compare_thumbnail(thumb, image.rgb)}


def _quantization_facts(img: Image.Image) -> dict[str, Any] | None:
    # Pillow opens camera JPEGs that carry extra pictures (an MPF preview) as "MPO": still a JPEG.
    tables = getattr(img, "quantization", None) if img.format in ("JPEG", "MPO") else None
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    luma = np.array(tables[0], dtype=np.int64)
    chroma = np.array(tables[1], dtype=np.int64) if 1 in tables and len(tables[1]) == 64 else None
    facts = estimate_jpeg_quality(luma, chroma)
    if facts["exact_ijg"]:
        facts["note"] = (f"standard libjpeg table at quality {facts['quality']}: used by many programs "
                         "(image libraries, editors' defaults, web services)")
    else:
        facts["note"] = (f"non-standard table (closest libjpeg quality ≈ {facts['quality']}): typical of camera "
                         "firmware or of editors with their own tables")
    facts["luma_table"] = luma.tolist()
    return facts


def _date_hints(exif: dict[str, Any]) -> list[str]:
    original = _parse_date(exif.get("datetime_original"))
    modified = _parse_date(exif.get("datetime"))
    digitized = _parse_date(exif.get("datetime_digitized"))
    hints = []
    if original and modified and abs((modified - original).total_seconds()) > 2:
        later = "after" if modified > original else "before"
        hints.append(f"dates disagree: the file was last written (DateTime {exif['datetime']}) {later} the photo "
                     f"was taken (DateTimeOriginal {exif['datetime_original']}): it was saved again by some "
                     "program; that alone does not say what changed")
    if original and digitized and abs((digitized - original).total_seconds()) > 2:
        hints.append(f"dates disagree: digitized {exif['datetime_digitized']} vs taken {exif['datetime_original']} "
                     "(normal for scanned photos)")
    return hints


def _hints(facts: dict[str, Any], width: int, height: int) -> list[str]:
    exif = facts["exif"]
    camera = bool(exif.get("make") or exif.get("model") or exif.get("datetime_original"))
    hints = []
    if not camera:
        hints.append("no camera metadata (EXIF) — common for screenshots, social-media downloads and edited "
                     "images; not evidence of tampering by itself")
    if not camera and facts["format"] == "PNG" and (max(width, height), min(width, height)) in SCREEN_SIZES:
        hints.append(f"looks like a screenshot: PNG without camera metadata at a common screen size ({width}×{height})")
    if editor := facts["editing_software"]:
        hints.append(f"{editor['field']} names an editor ({editor['value']}): the file was saved by {editor['name']}; "
                     "this says nothing about what was changed")
    hints += _date_hints(exif)
    thumb = facts["thumbnail"]
    if thumb.get("disagrees"):
        hints.append(f"the embedded EXIF thumbnail differs from the picture (mean difference "
                     f"{thumb['mean_difference']} grey levels, aspect mismatch {thumb['aspect_mismatch']}): the "
                     "picture was changed or cropped after the thumbnail was made, by a program that kept the old one")
    quant = facts["quantization"]
    if quant and quant["exact_ijg"] and camera and exif.get("make"):
        hints.append(f"EXIF names a camera ({exif['make']}) but the JPEG uses libjpeg's standard tables (quality "
                     f"{quant['quality']}): many cameras use their own tables, so the file was probably re-saved "
                     "by software after capture")
    if facts.get("exif_problems"):
        hints.append("the EXIF block is damaged (see exif_problems): some metadata could not be read")
    return hints


def read_metadata(image: ImageInput) -> CueResult:
    """Facts from ``image.data`` (see the module docstring); not applicable without file bytes."""
    if image.data is None:
        return CueResult.not_applicable(NAME, "no file bytes: metadata are read from the file itself", kind="facts")
    img, problems = _open(image.data)
    if img is None:
        facts = {"readable": False, "exif_problems": problems, "hints": ["the file's metadata could not be read"]}
        return CueResult(name=NAME, heatmap=None, score=None, kind="facts", extra=facts)
    with img:
        exif = _exif_facts(img)
        xmp_tool = _xmp_creator_tool(img)
        png_text = _png_text(img)
        facts: dict[str, Any] = {
            "readable": True,
            "format": img.format,
            "width": int(img.width),
            "height": int(img.height),
            "has_exif": bool(exif),
            "exif": exif,
            "xmp_creator_tool": xmp_tool,
            "png_text": png_text,
            "exif_problems": problems,
            "editing_software": _editing_software({
                "Software": exif.get("software"), "XMP CreatorTool": xmp_tool, "PNG Software": png_text.get("Software"),
            }),
            "thumbnail": _thumbnail_facts(img, image),
            "quantization": _quantization_facts(img),
        }
    facts["hints"] = _hints(facts, facts["width"], facts["height"])
    return CueResult(name=NAME, heatmap=None, score=None, kind="facts", extra=facts)
