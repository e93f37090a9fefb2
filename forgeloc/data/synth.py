"""Synthetic tampering: a small manipulation-localization dataset with exact masks, in seconds.

Each sample starts from a random crop/scale/flip of a natural photo (the *base*). It is then

* **splicing** – an object-shaped region (smooth blob, star polygon or irregular ellipse, randomly
  rotated) is cut from a view of a *different* photo (itself rescaled and rotated), colour-matched
  to the target neighbourhood by a mean/std transfer in CIELAB (Reinhard et al., "Color Transfer
  between Images", IEEE CG&A 2001) and pasted with a hard edge, a feathered alpha, or Poisson
  blending (Pérez et al., "Poisson Image Editing", SIGGRAPH 2003, via ``cv2.seamlessClone``);
* **copy-move** – a region of the same view is copied elsewhere in it (optionally rotated and
  rescaled); the mask is the pasted *target* region, the source region is recorded separately;
* **removal** – a region is filled by inpainting (``cv2.inpaint``: Telea 2004 or Navier-Stokes);
* **authentic** – left untouched (mask all zero, listed as ``"Negative"``).

Exactness: every edit is confined to its intended region (``np.where(region, edited, base)``), and
the mask is *defined* as the pixels whose value changed, ``(tampered != base).any(-1)``. A sample is
redrawn when fewer than ``min_coverage`` of the region's pixels changed (e.g. a copy inside flat
sky), so masks are the region up to a few pixels that happened to keep their value.

Post-processing is then applied to the whole image, tampered and authentic alike, so that it is
not a cue: an optional down-and-back-up resize (the geometry is the identity, so the mask is
unchanged) and an optional JPEG round trip at a random quality. The final image is stored as a
lossless PNG, so its JPEG artefacts are exactly those of the recorded quality.

Determinism: sample ``i`` draws everything from ``np.random.default_rng([seed, i])`` and its type
from a low-discrepancy sequence of ``(seed, i)``, so it does not depend on ``n`` or on the number
of worker processes, and the same seed gives the same bytes (for the same OpenCV/numpy versions,
which the manifest records).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "AUTHENTIC",
    "MANIPULATIONS",
    "SYNTH_VERSION",
    "SynthConfig",
    "SynthError",
    "SynthSample",
    "bundled_photo_names",
    "bundled_photos",
    "load_photo_folder",
    "sample_kind",
    "sample_rng",
    "synthesize",
    "synthesize_one",
]

# Bump whenever a change alters the bytes produced for a given seed.
SYNTH_VERSION = 1

MANIPULATIONS = ("splicing", "copy-move", "removal")
AUTHENTIC = "authentic"
NEGATIVE = "Negative"


# name -> (skimage.data function, index into a tuple result or None, scene).
# Only images that ship inside the scikit-image wheel (no pooch download). ``cat`` duplicates
# ``chelsea``; the two stereo views share a scene so they are never spliced into each other.
_BUNDLED: dict[str, tuple[str, int | None, str]] = {
    "astronaut": ("astronaut", None, "astronaut"),
    "chelsea": ("chelsea", None, "chelsea"),
    "coffee": ("coffee", None, "coffee"),
    "rocket": ("rocket", None, "rocket"),
    "immunohistochemistry": ("immunohistochemistry", None, "immunohistochemistry"),
    "hubble_deep_field": ("hubble_deep_field", None, "hubble_deep_field"),
    "retina": ("retina", None, "retina"),
    "motorcycle_left": ("stereo_motorcycle", 0, "stereo_motorcycle"),
    "motorcycle_right": ("stereo_motorcycle", 1, "stereo_motorcycle"),
    "camera": ("camera", None, "camera"),
    "moon": ("moon", None, "moon"),
    "brick": ("brick", None, "brick"),
    "grass": ("grass", None, "grass"),
    "gravel": ("gravel", None, "gravel"),
}

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_MARGIN = 3  # keeps regions off the border: cv2.seamlessClone rejects masks that touch it
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]


class SynthError(ValueError):
    """Invalid generator input (photos, options) or a sample that cannot be made."""


# ------------------------------------------------------------------------------------------------
# Photos
# ------------------------------------------------------------------------------------------------
def bundled_photo_names() -> list[str]:
    """Names of the photos bundled with scikit-image that :func:`bundled_photos` can load offline."""
    return list(_BUNDLED)


def bundled_photos(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Load scikit-image's bundled photos (no download) as ``name -> HxWx3 uint8 RGB``.

    Grayscale photos (camera, moon, brick, grass, gravel) are replicated to three channels.
    """
    import skimage.data

    names = list(_BUNDLED) if names is None else list(names)
    unknown = [n for n in names if n not in _BUNDLED]
    if unknown:
        raise SynthError(f"unknown bundled photo(s) {unknown}; available: {', '.join(_BUNDLED)}")
    out: dict[str, np.ndarray] = {}
    for name in names:
        func, index, _ = _BUNDLED[name]
        img = getattr(skimage.data, func)()
        if index is not None:
            img = img[index]
        out[name] = _as_rgb(np.asarray(img), name)
    return out


def _as_rgb(img: np.ndarray, name: str) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        raise SynthError(f"photo {name!r} must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise SynthError(f"photo {name!r} must be HxW or HxWx3, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _read_photo(path: Path) -> np.ndarray:
    from forgeloc.data.io import ImageReadError, read_image

    try:
        return read_image(path)
    except ImageReadError as err:
        raise SynthError(f"cannot read photo {path}: {err}") from err


def load_photo_folder(folder: str | Path, *, min_side: int = 1) -> dict[str, np.ndarray]:
    """Read every image under ``folder`` (recursively) as ``relative/path/stem -> HxWx3 uint8``.

    Raises :class:`SynthError` naming the file when one is unreadable or its short side is below
    ``min_side``, and when the folder holds no image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SynthError(f"photo folder {folder} does not exist or is not a folder")
    from forgeloc.data.files import list_folder
    from forgeloc.data.io import IMAGE_EXTENSIONS

    files = list_folder(folder, recursive=True, skip=None).images
    if not files:
        raise SynthError(f"no photos ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {folder}")
    out: dict[str, np.ndarray] = {}
    for path in files:
        img = _read_photo(path)
        if min(img.shape[:2]) < min_side:
            raise SynthError(
                f"photo {path} is {img.shape[1]}x{img.shape[0]}; its short side must be at least "
                f"{min_side} px (half the output size: more upscaling would make resampling the main cue)"
            )
        out[path.relative_to(folder).with_suffix("").as_posix()] = img
    return out


def _resolve_photos(
    photos: str | Path | Sequence[np.ndarray] | Mapping[str, np.ndarray] | None,
    photo_names: Sequence[str] | None,
    size: int,
) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """Photos as (name -> RGB, name -> scene, description of the source)."""
    min_side = (size + 1) // 2
    if photos is None:
        pool = bundled_photos(photo_names)
        scenes = {n: _BUNDLED[n][2] for n in pool}
        return pool, scenes, "scikit-image bundled photos"
    if isinstance(photos, (str, Path)):
        pool = load_photo_folder(photos, min_side=min_side)
        source = f"folder {photos}"
    elif isinstance(photos, Mapping):
        pool = {str(k): _as_rgb(np.asarray(v), str(k)) for k, v in photos.items()}
        source = "arrays"
    else:
        pool = {f"photo_{i:03d}": _as_rgb(np.asarray(v), f"photo_{i:03d}") for i, v in enumerate(photos)}
        source = "arrays"
    if photo_names is not None:
        missing = [n for n in photo_names if n not in pool]
        if missing:
            raise SynthError(f"photo name(s) {missing} not among the given photos: {', '.join(pool)}")
        pool = {n: pool[n] for n in photo_names}
    for name, img in pool.items():
        if min(img.shape[:2]) < min_side:
            raise SynthError(
                f"photo {name!r} is {img.shape[1]}x{img.shape[0]}; its short side must be at least {min_side} px"
            )
    return pool, {n: n for n in pool}, source


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """Knobs of one generated sample (all ranges inclusive)."""

    size: int = 256
    area_range: tuple[float, float] = (0.015, 0.2)  # region area / image area, log-uniform
    view_scale: tuple[float, float] = (0.4, 1.0)  # crop side / photo short side
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (70, 95)
    resize_prob: float = 0.5
    resize_range: tuple[float, float] = (0.8, 1.0)
    min_coverage: float = 0.95  # fraction of the region that must actually change
    max_attempts: int = 40

    def validate(self) -> None:
        if self.size < 32:
            raise SynthError(f"size must be >= 32, got {self.size}")
        lo, hi = self.area_range
        if not 0 < lo <= hi <= 0.5:
            raise SynthError(f"area_range must satisfy 0 < lo <= hi <= 0.5, got {self.area_range}")
        if lo * self.size**2 < 16:
            raise SynthError(f"area_range lower bound {lo} gives regions under 16 pixels at size {self.size}")
        for name in ("jpeg_prob", "resize_prob", "min_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SynthError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        qlo, qhi = self.jpeg_quality
        if not 1 <= qlo <= qhi <= 100:
            raise SynthError(f"jpeg_quality must satisfy 1 <= lo <= hi <= 100, got {self.jpeg_quality}")
        rlo, rhi = self.resize_range
        if not 0.25 <= rlo <= rhi <= 1.0:
            raise SynthError(f"resize_range must satisfy 0.25 <= lo <= hi <= 1, got {self.resize_range}")


@dataclass
class SynthSample:
    """One generated sample: every stage, so that exactness can be checked before post-processing.

    ``mask`` is exactly ``(tampered != base).any(-1)``; ``final``/``final_mask`` are what is written.
    """

    kind: str
    base: np.ndarray  # HxWx3 uint8, the untouched view
    tampered: np.ndarray  # HxWx3 uint8, after the manipulation, before post-processing
    mask: np.ndarray  # HxW bool, changed pixels
    region: np.ndarray  # HxW bool, intended region (mask ⊆ region)
    final: np.ndarray  # HxWx3 uint8, after post-processing
    final_mask: np.ndarray  # HxW bool, the mask in the final geometry
    source_mask: np.ndarray | None = None  # copy-move: where the pasted pixels came from
    info: dict[str, Any] = field(default_factory=dict)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of ``n`` and of the other samples."""
    return np.random.default_rng([int(seed), int(index)])


def sample_kind(seed: int, index: int, authentic_fraction: float, types: Sequence[str]) -> str:
    """Type of sample ``index``, from a golden-ratio sequence with a seed-dependent offset.

    Any prefix of the sequence is close to the requested proportions (within about 1/n), unlike
    independent draws, and sample ``i``'s type still does not depend on ``n``.
    """
    offset = np.random.default_rng([int(seed), 0x5EED]).random()
    u = (offset + index * _GOLDEN) % 1.0
    if u < authentic_fraction or not types:
        return AUTHENTIC
    k = int((u - authentic_fraction) / (1.0 - authentic_fraction) * len(types))
    return types[min(k, len(types) - 1)]


def _random_view(photo: np.ndarray, rng: np.random.Generator, size: int, scale: tuple[float, float]):
    """Random square crop (side = scale × short side, upscaling at most 2×) resized to size, maybe flipped."""
    h, w = photo.shape[:2]
    short = min(h, w)
    side = round(rng.uniform(*scale) * short)
    side = int(min(short, max(side, math.ceil(size / 2), 8)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = photo[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    view = cv2.resize(crop, (size, size), interpolation=interp)
    flip = bool(rng.random() < 0.5)
    if flip:
        view = view[:, ::-1]
    return np.ascontiguousarray(view), {"crop_xy": [x0, y0], "crop_side": side, "flip": flip}


def _random_outline(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A closed, star-shaped outline around the origin (not area-normalised) and its family name."""
    family = str(rng.choice(["blob", "polygon", "ellipse"]))
    if family == "polygon":
        k = int(rng.integers(3, 11))
        # Jittered, sorted angles keep the polygon simple (star-shaped around the origin).
        theta = (np.arange(k) + rng.uniform(0.1, 0.9, k)) * (2 * np.pi / k)
        r = rng.uniform(0.45, 1.0, k)
    else:
        theta = np.linspace(0, 2 * np.pi, 120, endpoint=False)
        j = np.arange(1, 7)[:, None] if family == "blob" else np.arange(3, 13)[:, None]
        amp = (rng.normal(0, 0.3, (len(j), 1)) if family == "blob" else rng.normal(0, 0.04, (len(j), 1))) / j
        phase = rng.uniform(0, 2 * np.pi, (len(j), 1))
        wobble = np.exp((amp * np.cos(j * theta + phase)).sum(0))
        if family == "ellipse":
            a, b = 1.0, rng.uniform(0.3, 1.0)
            base = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
            r = base * wobble
        else:
            r = wobble
    pts = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    pts[:, 1] *= rng.uniform(0.5, 1.0)  # anisotropy before the rotation
    ang = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return pts @ rot.T, family


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _sized_outline(rng: np.random.Generator, size: int, area_fraction: float, max_extent: float):
    """Outline centred on the origin with the requested area, shrunk if wider/taller than max_extent."""
    pts, family = _random_outline(rng)
    pts = pts * math.sqrt(area_fraction * size * size / _polygon_area(pts))
    extent = float((pts.max(0) - pts.min(0)).max())
    if extent > max_extent:
        pts = pts * (max_extent / extent)
    return pts, family


def _place(pts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Integer translation that keeps the outline at least _MARGIN px inside the image."""
    lo = _MARGIN - pts.min(0)
    hi = size - 1 - _MARGIN - pts.max(0)
    shift = [rng.integers(math.ceil(lo[i]), math.floor(hi[i]) + 1) for i in range(2)]
    return np.array(shift, dtype=np.float64)


def _rasterise(pts: np.ndarray, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    # 4 fractional bits: sub-pixel vertices, binary (non-antialiased) fill.
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _is_grey(img: np.ndarray) -> bool:
    return int((img.max(-1).astype(np.int16) - img.min(-1)).max()) <= 2


def _to_lab(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def _colour_transfer(
    src: np.ndarray, src_region: np.ndarray, apply_box: tuple[slice, slice], target_pixels: np.ndarray,
    strength: float, grey: bool,
) -> np.ndarray:
    """Reinhard-style LAB mean/std transfer of ``src`` (stats over src_region) towards target_pixels.

    Applied to the pixels inside ``apply_box`` (the region's box plus a small border, so that Poisson
    blending sees consistent gradients at the region edge).
    """
    lab_s = _to_lab(src[src_region])
    lab_t = _to_lab(target_pixels)
    mu_s, sd_s = lab_s.mean(0), lab_s.std(0)
    mu_t, sd_t = lab_t.mean(0), lab_t.std(0)
    ratio = np.clip(sd_t / np.maximum(sd_s, 1e-3), 0.25, 4.0)
    box = src[apply_box]
    lab = _to_lab(box.reshape(-1, 3))
    lab = lab + strength * ((lab - mu_s) * ratio + mu_t - lab)
    if grey:
        lab[:, 1:] = 0.0  # a forger pasting into a black-and-white photo makes the paste grey too
    lab[:, 0] = np.clip(lab[:, 0], 0, 100)
    rgb = cv2.cvtColor(lab.reshape(-1, 1, 3).astype(np.float32), cv2.COLOR_Lab2RGB).reshape(box.shape)
    out = src.copy()
    out[apply_box] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out


def _blend(base: np.ndarray, patch: np.ndarray, region: np.ndarray, mode: str, rng: np.random.Generator):
    """Paste ``patch`` into ``base`` over ``region``; nothing outside the region can change."""
    info: dict[str, Any] = {"blend": mode}
    if mode == "hard":
        out = patch
    elif mode == "feather":
        width = float(rng.uniform(1.5, 5.0))
        dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = np.clip(dist / width, 0.0, 1.0)[:, :, None]
        out = np.rint(alpha * patch + (1.0 - alpha) * base).astype(np.uint8)
        info["feather_px"] = round(width, 3)
    elif mode == "poisson":
        m = region.astype(np.uint8) * 255
        x, y, w, h = cv2.boundingRect(m)
        # OpenCV places the mask's box at center - size//2: this centre aligns patch and base exactly.
        out = cv2.seamlessClone(patch, base, m, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    else:  # pragma: no cover - internal
        raise SynthError(f"unknown blend mode {mode!r}")
    return np.where(region[:, :, None], out, base), info


def _neighbourhood(region: np.ndarray, size: int) -> np.ndarray:
    k = max(3, size // 16) | 1
    return cv2.dilate(region.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def _box_around(region: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(region)
    h, w = region.shape
    return (slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
            slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)))


def _capped(area_range: tuple[float, float], cap: float) -> tuple[float, float]:
    lo, hi = area_range
    return min(lo, cap), min(hi, cap)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ------------------------------------------------------------------------------------------------
# Manipulations: each returns (tampered, region, source_mask or None, info)
# ------------------------------------------------------------------------------------------------
def _splice(base, rng, cfg: SynthConfig, photos, scenes, base_name):
    size = cfg.size
    donors = [n for n in photos if scenes[n] != scenes[base_name]]
    if not donors:
        raise SynthError("splicing needs photos from at least two different scenes")
    donor = donors[int(rng.integers(len(donors)))]
    view, view_info = _random_view(photos[donor], rng, size, cfg.view_scale)
    angle, scale = float(rng.uniform(-30, 30)), float(rng.uniform(0.8, 1.25))
    centre = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
    rot = cv2.getRotationMatrix2D(centre, angle, scale)
    donor_canvas = cv2.warpAffine(
        view, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )

    area = _log_uniform(rng, *cfg.area_range)
    pts, family = _sized_outline(rng, size, area, size - 2 * _MARGIN - 2)
    pts = pts + _place(pts, size, rng)
    region = _rasterise(pts, size)
    strength = float(rng.uniform(0.6, 1.0))
    target = base[_neighbourhood(region, size)]
    patch = _colour_transfer(donor_canvas, region, _box_around(region, 2), target, strength, _is_grey(base))
    mode = str(rng.choice(["hard", "feather", "poisson"]))
    tampered, blend_info = _blend(base, patch, region, mode, rng)
    info = {
        "source_photo": donor, "source_view": view_info, "source_rotation_deg": round(angle, 3),
        "source_scale": round(scale, 4), "shape": family, "colour_transfer": round(strength, 4), **blend_info,
    }
    return tampered, region, None, info


def _copy_move(base, rng, cfg: SynthConfig, photos, scenes, base_name):
    size = cfg.size
    area = _log_uniform(rng, *_capped(cfg.area_range, 0.12))  # two copies must fit
    transformed = bool(rng.random() < 0.5)
    angle = float(rng.uniform(-45, 45)) if transformed else 0.0
    scale = float(rng.uniform(0.8, 1.25)) if transformed else 1.0
    pts, family = _sized_outline(rng, size, area, (size - 2 * _MARGIN - 2) / 2.0)
    a = np.deg2rad(angle)
    # Target pixel p takes its value at src = A (p - c_t) + c_s.
    A = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    src_pts = pts @ A.T
    for _ in range(20):
        c_t, c_s = _place(pts, size, rng), _place(src_pts, size, rng)
        region, source = _rasterise(pts + c_t, size), _rasterise(src_pts + c_s, size)
        if not (region & source).any():
            break
    else:
        raise _RetryError("no non-overlapping source/target placement")
    M = np.concatenate([A, (c_s - A @ c_t)[:, None]], 1)
    moved = cv2.warpAffine(base, M, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
    mode = "hard" if rng.random() < 0.6 else "feather"
    tampered, blend_info = _blend(base, moved, region, mode, rng)
    info = {
        "shape": family, "rotation_deg": round(angle, 3), "scale": round(scale, 4),
        "target_to_source": [[round(float(v), 6) for v in row] for row in M], **blend_info,
    }
    return tampered, region, source, info


def _removal(base, rng, cfg: SynthConfig, photos, scenes, base_name):
    size = cfg.size
    area = _log_uniform(rng, *_capped(cfg.area_range, 0.08))  # larger fills are mostly smear
    pts, family = _sized_outline(rng, size, area, size - 2 * _MARGIN - 2)
    region = _rasterise(pts + _place(pts, size, rng), size)
    method = "telea" if rng.random() < 0.5 else "ns"
    radius = int(rng.integers(3, 10))
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    filled = cv2.inpaint(base, region.astype(np.uint8), radius, flag)
    tampered = np.where(region[:, :, None], filled, base)
    return tampered, region, None, {"shape": family, "inpaint": method, "inpaint_radius": radius}


class _RetryError(Exception):
    pass


_MANIPULATORS = {"splicing": _splice, "copy-move": _copy_move, "removal": _removal}


def _post_process(img: np.ndarray, rng: np.random.Generator, cfg: SynthConfig):
    """Whole-image resize round trip and JPEG round trip (both optional, drawn for every sample)."""
    size = cfg.size
    do_resize, factor = rng.random() < cfg.resize_prob, float(rng.uniform(*cfg.resize_range))
    do_jpeg = rng.random() < cfg.jpeg_prob
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    out = img
    if do_resize:
        small = max(8, round(size * factor))
        out = cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA)
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)
    if do_jpeg:
        # OpenCV encodes BGR; converting keeps the YCbCr chroma of the real colours.
        bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV failure
            raise SynthError("JPEG encoding failed")
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    info = {
        "resize_factor": round(factor, 4) if do_resize else None,
        "jpeg_quality": quality if do_jpeg else None,
    }
    return np.ascontiguousarray(out), info


def synthesize_one(
    photos: Mapping[str, np.ndarray],
    kind: str,
    rng: np.random.Generator,
    config: SynthConfig | None = None,
    scenes: Mapping[str, str] | None = None,
) -> SynthSample:
    """Make one sample of ``kind`` ("splicing", "copy-move", "removal" or "authentic").

    ``photos`` maps names to HxWx3 uint8 RGB arrays; ``scenes`` maps names to a scene id (photos
    of one scene are never spliced into each other; default: every photo its own scene).
    """
    cfg = config or SynthConfig()
    if kind != AUTHENTIC and kind not in _MANIPULATORS:
        choices = ", ".join((*MANIPULATIONS, AUTHENTIC))
        raise SynthError(f"unknown manipulation {kind!r}; choose from {choices}")
    if not photos:
        raise SynthError("no photos given")
    scenes = dict(scenes) if scenes is not None else {n: n for n in photos}
    names = list(photos)
    last = ""
    for attempt in range(1, cfg.max_attempts + 1):
        base_name = names[int(rng.integers(len(names)))]
        base, view_info = _random_view(photos[base_name], rng, cfg.size, cfg.view_scale)
        info: dict[str, Any] = {"type": kind, "photo": base_name, "view": view_info}
        if kind == AUTHENTIC:
            tampered, region, source = base, np.zeros(base.shape[:2], bool), None
        else:
            try:
                manipulate = _MANIPULATORS[kind]
                tampered, region, source, extra = manipulate(base, rng, cfg, photos, scenes, base_name)
            except _RetryError as why:
                last = str(why)
                continue
            info.update(extra)
        mask = (tampered != base).any(-1)
        if kind != AUTHENTIC:
            coverage = float(mask.sum()) / max(1, int(region.sum()))
            if coverage < cfg.min_coverage:
                last = f"only {coverage:.0%} of the region changed"
                continue
            info["coverage"] = round(coverage, 4)
        info["attempts"] = attempt
        final, post_info = _post_process(tampered, rng, cfg)
        info.update(post_info)
        # The post-processing geometry is the identity (resize down and back up), so the mask stays.
        return SynthSample(kind, base, tampered, mask, region, final, mask.copy(), source, info)
    raise SynthError(
        f"could not make a {kind} sample in {cfg.max_attempts} attempts ({last}); "
        f"the photos may be too flat or too small for this manipulation"
    )


# ------------------------------------------------------------------------------------------------
# Dataset writer
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    photos: Mapping[str, np.ndarray]
    scenes: Mapping[str, str]
    cfg: SynthConfig
    out_dir: Path
    seed: int
    authentic_fraction: float
    types: tuple[str, ...]


def _write_png(path: Path, img: np.ndarray) -> None:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, _PNG_PARAMS)
    if not ok:  # pragma: no cover - OpenCV failure
        raise SynthError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _make_and_write(job: _Job, index: int) -> dict[str, Any]:
    kind = sample_kind(job.seed, index, job.authentic_fraction, job.types)
    sample = synthesize_one(job.photos, kind, sample_rng(job.seed, index), job.cfg, job.scenes)
    out = job.out_dir
    stem = f"{index:05d}"
    record: dict[str, Any] = {"index": index, "image": f"images/{stem}.png", "mask": NEGATIVE,
                              "seed": [job.seed, index]}
    _write_png(out / record["image"], sample.final)
    n_px = int(sample.final_mask.sum())
    if kind != AUTHENTIC:
        record["mask"] = f"masks/{stem}.png"
        _write_png(out / record["mask"], sample.final_mask.astype(np.uint8) * 255)
        record["region_pixels"] = n_px
        record["region_fraction"] = round(n_px / sample.final_mask.size, 6)
        record["intended_region_pixels"] = int(sample.region.sum())
    if sample.source_mask is not None:
        record["source_mask"] = f"source_masks/{stem}.png"
        _write_png(out / record["source_mask"], sample.source_mask.astype(np.uint8) * 255)
        ys, xs = np.nonzero(sample.source_mask)
        record["source_bbox_xyxy"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    record.update(sample.info)
    return record


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    ours = ("images", "masks", "source_masks", "dataset.json", "manifest.json")
    existing = [p for p in ours if (out / p).exists()]
    if existing:
        manifest = out / "manifest.json"
        generated = False
        if manifest.is_file():
            try:
                generated = json.loads(manifest.read_text()).get("generator") == "forgeloc.synth"
            except (OSError, ValueError):
                generated = False
        if not overwrite:
            raise SynthError(f"{out} already holds {', '.join(existing)}; pass overwrite=True (--overwrite)")
        if not generated:
            raise SynthError(f"{out} holds {', '.join(existing)} but no forgeloc synth manifest; "
                             f"refusing to delete them, choose an empty folder")
        for p in ours:
            target = out / p
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for sub in ("images", "masks", "source_masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _checked_types(n: int, seed: int, authentic_fraction: float, types: Sequence[str]) -> tuple[str, ...]:
    """The manipulation types as a tuple; a :class:`SynthError` for a count, seed or mix that cannot work."""
    if int(n) < 1:
        raise SynthError(f"n must be >= 1, got {n}")
    if int(seed) < 0:
        raise SynthError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= authentic_fraction <= 1.0:
        raise SynthError(f"authentic_fraction must be in [0, 1], got {authentic_fraction}")
    types = tuple(types)
    unknown = [t for t in types if t not in MANIPULATIONS]
    if unknown or len(set(types)) != len(types):
        raise SynthError(f"types must be distinct values of {', '.join(MANIPULATIONS)}; got {list(types)}")
    if not types and authentic_fraction < 1.0:
        raise SynthError("no manipulation types given; set authentic_fraction=1 for an all-authentic set")
    return types


def _dump(obj: Any) -> Any:
    return lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n")


def _manifest(records: list[dict[str, Any]], *, seed: int, n: int, cfg: SynthConfig, authentic_fraction: float,
              types: tuple[str, ...], source: str, pool: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``manifest.json``: how the set was made (generator, seed, settings, photos, libraries) and every sample."""
    counts = {k: sum(r["type"] == k for r in records) for k in (*types, AUTHENTIC)}
    return {
        "generator": "forgeloc.synth",
        "version": SYNTH_VERSION,
        "seed": int(seed),
        "n": int(n),
        "size": cfg.size,
        "authentic_fraction": authentic_fraction,
        "types": list(types),
        "config": asdict(cfg),
        "photo_source": source,
        "photos": {k: list(v.shape) for k, v in pool.items()},
        "counts": counts,
        "mask_definition": "pixels changed by the manipulation, before post-processing (copy-move: target)",
        "libraries": {"numpy": np.__version__, "opencv": cv2.__version__},
        "samples": records,
    }


def synthesize(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    photos: str | Path | Sequence[np.ndarray] | Mapping[str, np.ndarray] | None = None,
    photo_names: Sequence[str] | None = None,
    size: int = 256,
    authentic_fraction: float = 0.25,
    types: Sequence[str] = MANIPULATIONS,
    jpeg_prob: float = 0.5,
    jpeg_quality: tuple[int, int] = (70, 95),
    resize_prob: float = 0.5,
    resize_range: tuple[float, float] = (0.8, 1.0),
    area_range: tuple[float, float] = (0.015, 0.2),
    min_coverage: float = 0.95,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` samples to ``out_dir`` and return the path of its ``dataset.json``.

    ``photos``: None (scikit-image's bundled photos), a folder, a list of arrays or a name->array
    mapping; ``photo_names`` keeps only those names (use disjoint name lists for train and test).
    ``workers`` > 1 uses a thread pool; the output bytes do not depend on it. ``min_coverage`` is the
    fraction of a region's pixels that must change (samples below it are redrawn). See
    :class:`SynthConfig` and ``docs/synth.md`` for the other knobs.
    """
    types = _checked_types(n, seed, authentic_fraction, types)
    cfg = SynthConfig(
        size=int(size), area_range=tuple(area_range), jpeg_prob=jpeg_prob, jpeg_quality=tuple(jpeg_quality),
        resize_prob=resize_prob, resize_range=tuple(resize_range), min_coverage=min_coverage,
    )
    cfg.validate()
    pool, scenes, source = _resolve_photos(photos, photo_names, cfg.size)
    if "splicing" in types and len(set(scenes.values())) < 2:
        raise SynthError("splicing needs at least two photos of different scenes")

    out = Path(out_dir).expanduser()
    _prepare_out_dir(out, overwrite)
    job = _Job(pool, scenes, cfg, out, int(seed), float(authentic_fraction), types)
    make = partial(_make_and_write, job)
    workers = max(1, min(int(workers), int(n)))
    if workers == 1:
        records = [make(i) for i in range(int(n))]
    else:
        # Threads, not processes: OpenCV releases the GIL in its heavy calls, and forking a
        # process whose OpenCV/torch thread pools are running can deadlock the children.
        with ThreadPoolExecutor(workers) as ex:
            records = list(ex.map(make, range(int(n))))

    from forgeloc.io import atomic_write

    manifest = _manifest(records, seed=seed, n=n, cfg=cfg, authentic_fraction=authentic_fraction, types=types,
                         source=source, pool=pool)
    dataset = [[r["image"], r["mask"]] for r in records]
    atomic_write(out / "manifest.json", _dump(manifest))
    return atomic_write(out / "dataset.json", _dump(dataset))
