"""Image perturbations for robustness evaluation (protocol section d) and their named levels.

Every perturbation is a small frozen dataclass that is called as ``perturb(image, rng) -> image``
on an ``H×W×3`` uint8 RGB image at its native resolution — the signature
:class:`forgeloc.data.transforms.SampleTransform` expects for its ``perturb`` argument. ``rng`` is
the numpy Generator the dataset derives from the sample's seed, so a perturbed evaluation is
repeatable bit for bit. The image's size never changes, so the ground-truth mask is untouched.

The protocol's attacks are those of IMDLBenCo ``test_robust.py`` (also Mesorch's), which wraps
albumentations 1.3.0 transforms; each class below says how it reproduces that transform:

========  ===========================================  =====================================
kind      protocol levels                              what a level means
========  ===========================================  =====================================
jpeg      50, 60, 70, 80, 90, 100                      JPEG quality (OpenCV encoder)
blur      3, 7, 11, 15, 19, 23                         Gaussian kernel size in pixels
noise     3, 7, 11, 15, 19, 23                         noise *variance* (0–255 scale)
resize    0.25, 0.5, 0.75 (forgeloc-only, no protocol) down-then-up scale factor
========  ===========================================  =====================================

Level ``0`` (or the word ``none``) of any kind means "no perturbation": the clean evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import cv2
import numpy as np

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "PERTURBATIONS",
    "GaussianBlur",
    "GaussianNoise",
    "JpegCompression",
    "Perturbation",
    "PerturbationKind",
    "Rescale",
    "gaussian_blur",
    "gaussian_noise",
    "get_perturbation_kind",
    "jpeg_compress",
    "make_perturbation",
    "opencv_gaussian_sigma",
    "parse_levels",
    "parse_perturbation_names",
    "rescale_down_up",
]


class Perturbation(Protocol):
    """What :class:`SampleTransform` calls: ``perturb(image_uint8_hwc, rng) -> image_uint8_hwc``."""

    kind: ClassVar[str]

    @property
    def level(self) -> float: ...

    @property
    def label(self) -> str: ...

    def params(self) -> dict[str, Any]: ...

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


def _check_image(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"perturbations take an HxWx3 uint8 image, got {got}")
    return np.ascontiguousarray(image)


def _fmt(value: float) -> str:
    """``7.0`` → ``"7"``, ``0.5`` → ``"0.5"`` (levels in labels and file names)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------
def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode ``image`` as JPEG with OpenCV at ``quality`` (0–100) and decode it again.

    The array is handed to ``cv2.imencode`` as it is stored (RGB), exactly as albumentations
    1.3.0's ``ImageCompression`` (IMDLBenCo's ``JpegCompression``) does, although OpenCV reads it as
    BGR: the encoder's luma/chroma split therefore weights red and blue the other way round. This
    keeps the numbers comparable with published robustness tables. OpenCV's default chroma
    subsampling (4:2:0) applies, so even quality 100 changes images with colour detail.
    """
    image = _check_image(image)
    quality = int(quality)
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(decoded.reshape(image.shape))


def opencv_gaussian_sigma(kernel: int) -> float:
    """The sigma OpenCV derives from a kernel size when sigma is 0: 0.3·((k − 1)·0.5 − 1) + 0.8.

    (OpenCV ``getGaussianKernel`` documentation.) For k ≤ 7 OpenCV does not use this sigma but a
    fixed binomial-like table (k = 3: ¼, ½, ¼); :func:`gaussian_blur` inherits that, as
    albumentations and IMDLBenCo do.
    """
    return 0.3 * ((int(kernel) - 1) * 0.5 - 1) + 0.8


def gaussian_blur(image: np.ndarray, kernel: int) -> np.ndarray:
    """``cv2.GaussianBlur`` with a ``kernel × kernel`` window and sigma 0 (derived from the size).

    This is albumentations 1.3.0 ``GaussianBlur(blur_limit=(k, k))`` with its default
    ``sigma_limit=0``, as IMDLBenCo's robustness test uses it; borders are reflected (OpenCV's
    ``BORDER_REFLECT_101`` default). Works on uint8 and float images.
    """
    kernel = int(kernel)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be a positive odd integer, got {kernel}")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError("gaussian_blur takes an HxW or HxWxC array")
    return np.ascontiguousarray(cv2.GaussianBlur(image, (kernel, kernel), 0).reshape(image.shape))


def gaussian_noise(
    image: np.ndarray,
    variance: float,
    rng: np.random.Generator,
    rounding: Literal["truncate", "round"] = "truncate",
) -> np.ndarray:
    """Add zero-mean Gaussian noise of ``variance`` (grey levels², 0–255 scale), per pixel and channel.

    albumentations 1.3.0 ``GaussNoise(var_limit=(v, v))`` draws ``normal(0, √v)`` independently for
    every pixel and channel, adds it in floating point and converts back with
    ``np.clip(x, 0, 255).astype(uint8)`` — which *truncates*, so its output is on average about half
    a grey level darker. ``rounding="truncate"`` reproduces that; ``"round"`` rounds to the nearest
    level instead (unbiased).
    """
    image = _check_image(image)
    variance = float(variance)
    if not math.isfinite(variance) or variance < 0:
        raise ValueError(f"noise variance must be a finite number >= 0, got {variance}")
    if rounding not in ("truncate", "round"):
        raise ValueError(f"rounding must be 'truncate' or 'round', got {rounding!r}")
    noisy = image.astype(np.float64) + rng.normal(0.0, math.sqrt(variance), size=image.shape)
    if rounding == "round":
        noisy = np.rint(noisy)
    return np.ascontiguousarray(np.clip(noisy, 0, 255).astype(np.uint8))


def rescale_down_up(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale ``image`` by ``factor`` and back to its original size (a resampling attack).

    Shrinking uses ``INTER_AREA`` (what image editors and web services use to downscale) and
    enlarging ``INTER_LINEAR``; so ``factor < 1`` is area-downscale then bilinear upscale, and
    ``factor > 1`` is bilinear upscale then area-downscale. The intermediate side is
    ``max(1, round(side · factor))``. The output has the input's size, so the mask is unchanged.
    """
    image = _check_image(image)
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"scale factor must be a finite number > 0, got {factor}")
    h, w = image.shape[:2]
    mid = (max(1, round(w * factor)), max(1, round(h * factor)))
    if mid == (w, h):
        return image.copy()
    there = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    back = cv2.INTER_LINEAR if factor < 1 else cv2.INTER_AREA
    small = cv2.resize(image, mid, interpolation=there)
    return np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=back).reshape(image.shape))


# --------------------------------------------------------------------------------------------------
# Perturbation objects (picklable, so they travel to DataLoader workers)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JpegCompression:
    """JPEG re-compression at ``quality`` (protocol d).

    Protocol mode (default, ``exact=False``): each image's quality is drawn uniformly from
    {q − 1, q}, as IMDLBenCo's ``JpegCompression(quality_lower=q − 1, quality_upper=q)``, but from
    the sample's seeded generator, so runs repeat. It is the default because it is what published
    robustness tables measured. ``exact=True`` always uses q.
    """

    quality: int
    exact: bool = False
    kind: ClassVar[str] = "jpeg"

    def __post_init__(self) -> None:
        low = 0 if self.exact else 1
        if not isinstance(self.quality, (int, np.integer)) or not low <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be an integer in {low}..100, got {self.quality!r}")

    @property
    def level(self) -> int:
        return int(self.quality)

    @property
    def qualities(self) -> tuple[int, ...]:
        """The qualities an image can get."""
        return (int(self.quality),) if self.exact else (int(self.quality) - 1, int(self.quality))

    @property
    def label(self) -> str:
        return f"jpeg q={self.quality}" + (" exact" if self.exact else "")

    def params(self) -> dict[str, Any]:
        return {"quality": int(self.quality), "qualities": list(self.qualities),
                "mode": "exact" if self.exact else "protocol: uniform over {q-1, q} per image"}

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        q = self.qualities
        quality = q[0] if len(q) == 1 else int(rng.integers(q[0], q[-1] + 1))
        return jpeg_compress(image, quality)


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with a ``kernel × kernel`` window and OpenCV's sigma for it (protocol d)."""

    kernel: int
    kind: ClassVar[str] = "blur"

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, (int, np.integer)) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"blur kernel size must be a positive odd integer, got {self.kernel!r}")

    @property
    def level(self) -> int:
        return int(self.kernel)

    @property
    def sigma(self) -> float:
        return opencv_gaussian_sigma(self.kernel)

    @property
    def label(self) -> str:
        return f"blur k={self.kernel}"

    def params(self) -> dict[str, Any]:
        weights = "OpenCV fixed table" if self.kernel <= 7 else f"Gaussian, sigma {self.sigma:.2f}"
        return {"kernel": int(self.kernel), "sigma": round(self.sigma, 4), "weights": weights}

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return gaussian_blur(_check_image(image), self.kernel)


@dataclass(frozen=True)
class GaussianNoise:
    """Additive Gaussian noise whose level is a **variance** in grey levels² (protocol d).

    Level v = 3 … 23 means std √v ≈ 1.73 … 4.80 grey levels (IMDLBenCo passes v as albumentations
    ``var_limit``). ``rounding``: see :func:`gaussian_noise`; ``truncate`` is albumentations'.
    """

    variance: float
    rounding: Literal["truncate", "round"] = "truncate"
    kind: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        if not isinstance(self.variance, (int, float, np.number)) or not (
            math.isfinite(self.variance) and self.variance > 0
        ):
            raise ValueError(f"noise variance must be a finite number > 0, got {self.variance!r}")
        if self.rounding not in ("truncate", "round"):
            raise ValueError(f"rounding must be 'truncate' or 'round', got {self.rounding!r}")

    @property
    def level(self) -> float:
        return float(self.variance)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def label(self) -> str:
        return f"noise var={_fmt(self.variance)} (std {self.std:.2f})"

    def params(self) -> dict[str, Any]:
        return {"variance": float(self.variance), "std": round(self.std, 4), "mean": 0.0,
                "per_channel": True, "rounding": self.rounding}

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return gaussian_noise(image, self.variance, rng, self.rounding)


@dataclass(frozen=True)
class Rescale:
    """Down-then-up (or up-then-down) resampling by ``factor`` — forgeloc-only, not in the protocol."""

    factor: float
    kind: ClassVar[str] = "resize"

    def __post_init__(self) -> None:
        if not isinstance(self.factor, (int, float, np.number)) or not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"scale factor must be a finite number > 0, got {self.factor!r}")

    @property
    def level(self) -> float:
        return float(self.factor)

    @property
    def label(self) -> str:
        return f"resize x{_fmt(self.factor)}"

    def params(self) -> dict[str, Any]:
        down, up = ("INTER_AREA", "INTER_LINEAR") if self.factor < 1 else ("INTER_LINEAR", "INTER_AREA")
        return {"factor": float(self.factor), "there": down, "back": up, "protocol": False}

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rescale_down_up(image, self.factor)


# --------------------------------------------------------------------------------------------------
# Registry of named perturbations
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerturbationKind:
    """A named perturbation family: its levels, how to build one, and how to plot its axis."""

    name: str
    title: str
    description: str
    default_levels: tuple[float, ...]
    protocol_levels: tuple[float, ...] | None  # None: not part of the IML protocol
    axis_label: str
    build: Callable[..., Perturbation]
    integer_levels: bool
    clean_level: float | None  # where "no perturbation" sits on the axis (None: nowhere)
    stronger_when_lower: bool = False  # JPEG quality and scale factor: smaller = harsher
    tick_label: Callable[[float], str] = field(default=_fmt)

    def perturbation(self, level: float, **options: Any) -> Perturbation:
        return self.build(level, **options)


def _noise_tick(v: float) -> str:
    return f"{_fmt(v)}\n({math.sqrt(v):.2f})"


PERTURBATIONS: dict[str, PerturbationKind] = {
    "jpeg": PerturbationKind(
        name="jpeg",
        title="JPEG compression",
        description="JPEG re-compression (OpenCV); quality drawn from {q-1, q} per image unless exact",
        default_levels=(50, 60, 70, 80, 90, 100),
        protocol_levels=(50, 60, 70, 80, 90, 100),
        axis_label="JPEG quality",
        build=lambda level, jpeg_exact=False, **_: JpegCompression(int(level), exact=jpeg_exact),
        integer_levels=True,
        clean_level=None,
        stronger_when_lower=True,
    ),
    "blur": PerturbationKind(
        name="blur",
        title="Gaussian blur",
        description="Gaussian blur, kernel k x k px, OpenCV sigma 0.3((k-1)/2-1)+0.8",
        default_levels=(3, 7, 11, 15, 19, 23),
        protocol_levels=(3, 7, 11, 15, 19, 23),
        axis_label="kernel size k (px), sigma from k",
        build=lambda level, **_: GaussianBlur(int(level)),
        integer_levels=True,
        clean_level=0,
    ),
    "noise": PerturbationKind(
        name="noise",
        title="Gaussian noise",
        description="additive Gaussian noise; level = variance in grey levels^2 (std = sqrt(level))",
        default_levels=(3, 7, 11, 15, 19, 23),
        protocol_levels=(3, 7, 11, 15, 19, 23),
        axis_label="noise variance, grey levels² (std)",
        build=lambda level, noise_rounding="truncate", **_: GaussianNoise(float(level), rounding=noise_rounding),
        integer_levels=False,
        clean_level=0,
        tick_label=_noise_tick,
    ),
    "resize": PerturbationKind(
        name="resize",
        title="resize down and up (forgeloc-only)",
        description="forgeloc-only (not in the protocol): scale by the factor and back (INTER_AREA / INTER_LINEAR)",
        default_levels=(0.25, 0.5, 0.75),
        protocol_levels=None,
        axis_label="scale factor (×, then back)",
        build=lambda level, **_: Rescale(float(level)),
        integer_levels=False,
        clean_level=1.0,
        stronger_when_lower=True,
    ),
}

#: What ``forgeloc robustness`` runs when ``--perturb`` is not given.
DEFAULT_PERTURBATIONS: tuple[str, ...] = ("jpeg", "blur", "noise", "resize")

_CLEAN_WORDS = ("none", "clean", "0")


def get_perturbation_kind(name: str) -> PerturbationKind:
    """The registered :class:`PerturbationKind` called ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[key]


def make_perturbation(kind: str, level: float | str, **options: Any) -> Perturbation | None:
    """The perturbation ``kind`` at ``level``; ``None`` for level 0 / ``"none"`` (the clean run).

    ``options``: ``jpeg_exact`` (bool) for JPEG, ``noise_rounding`` (``truncate``/``round``) for
    noise; options that do not concern ``kind`` are ignored.
    """
    spec = get_perturbation_kind(kind)
    if isinstance(level, str):
        if level.strip().lower() in _CLEAN_WORDS:
            return None
        level = float(level)
    if float(level) == 0:
        return None
    if spec.integer_levels and not float(level).is_integer():
        raise ValueError(f"{spec.name} levels are integers, got {level!r}")
    return spec.perturbation(level, **options)


def parse_perturbation_names(text: str | Iterable[str] | None) -> list[str]:
    """``"jpeg,blur"`` (or a list of such strings) → ``["jpeg", "blur"]``, validated, in order."""
    if text is None:
        return list(DEFAULT_PERTURBATIONS)
    items = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part in ("all", "default"):
                names.extend(n for n in DEFAULT_PERTURBATIONS if n not in names)
                continue
            if part in ("none", "clean"):
                continue  # the clean evaluation is always run
            get_perturbation_kind(part)
            if part not in names:
                names.append(part)
    return names


def parse_levels(specs: Sequence[str] | None) -> dict[str, list[float]]:
    """``["jpeg=50,70,90", "blur=3,7"]`` → ``{"jpeg": [50, 70, 90], "blur": [3, 7]}``.

    Levels keep the given order; ``0``/``none`` stands for the clean evaluation; a kind named twice
    is an error.
    """
    out: dict[str, list[float]] = {}
    for spec in specs or ():
        name, sep, values = str(spec).partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--levels takes KIND=L1,L2,... (e.g. jpeg=50,70,90), got {spec!r}")
        kind = get_perturbation_kind(name)
        if kind.name in out:
            raise ValueError(f"levels for {kind.name!r} given twice")
        levels: list[float] = []
        for raw in values.split(","):
            raw = raw.strip()
            if not raw:
                continue
            if raw.lower() in _CLEAN_WORDS:
                value = 0.0
            else:
                try:
                    value = float(raw)
                except ValueError:
                    raise ValueError(f"{kind.name}: level {raw!r} is not a number") from None
            if value != 0:
                make_perturbation(kind.name, value)  # validates the level now, not mid-run
            levels.append(int(value) if kind.integer_levels and value.is_integer() else value)
        out[kind.name] = levels
    return out
