"""From a decoded image and mask to the model's input tensors (protocol sections B1–B3).

Per sample, in this order (IMDLBenCo's order, protocol B1):

1. augmentation at native resolution (:class:`Augmentations` → an albumentations 2 ``Compose``
   applied jointly to image and mask), then an optional ``perturb`` (robustness attack, image only);
2. the mask is binarised (it already is: {0, 1}) and the image label is taken from it;
3. the edge mask (:func:`edge_mask`, protocol B3) is computed at native resolution;
4. ``mode="resize"``: image bilinear (``cv2.INTER_LINEAR``, what albumentations ``Resize`` does),
   masks nearest neighbour, to ``size × size``; ``mode="pad"``: zero padding on the bottom/right
   to at least ``size``, then the top-left ``size × size`` crop — IMDLBenCo's exact behaviour,
   including its quirk that a larger image is *cropped*, not downscaled — with ``shape_mask``
   marking the real pixels; ``mode="none"``: native size (tiling, inference);
5. ImageNet normalisation, HWC → CHW float32 tensors.

Randomness is a pure function of the ``rng_seed`` given to :meth:`SampleTransform.__call__`; the
datasets pass ``(seed, epoch, index)``, so a sample is the same whatever the number of workers
and after a resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would query PyPI on import

import albumentations as A
import cv2
import numpy as np
import torch

# Normalisation lives in a module without albumentations (prediction needs only it); re-exported here.
from forgeloc.data.normalization import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize

__all__ = [
    "AUGMENTATION_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmentations",
    "GaussianBlurCV",
    "RandomCopyMove",
    "RandomInpainting",
    "SampleTransform",
    "augmentation_preset",
    "build_augmentations",
    "denormalize",
    "edge_mask",
    "normalize",
    "seed_augmentations",
]

SeedLike = int | Sequence[int]


# --------------------------------------------------------------------------------------------------
# Edge mask (protocol B3)
# --------------------------------------------------------------------------------------------------
def edge_mask(mask: np.ndarray, width: int) -> np.ndarray:
    """The band around a mask's boundary, as IMDLBenCo's ``EdgeMaskGenerator`` computes it.

    With a plus-shaped structuring element of odd size ``width`` (arms of ``width // 2``), a pixel
    is on the edge when it is within reach of both a tampered and an authentic pixel:
    ``dilate(mask) & dilate(1 − mask)``, both dilations with zero padding outside the image. The
    band is ``width // 2`` pixels on each side of the boundary; all-0 and all-1 masks give an
    empty edge (the image border is not a boundary).
    """
    if not isinstance(width, (int, np.integer)) or width < 1 or width % 2 == 0:
        raise ValueError(f"edge width must be a positive odd integer, got {width!r}")
    m = (np.asarray(mask) > 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (int(width), int(width)))
    grow_in = cv2.dilate(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    grow_out = cv2.dilate(1 - m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.ascontiguousarray(grow_in & grow_out)


# --------------------------------------------------------------------------------------------------
# Custom albumentations transforms
# --------------------------------------------------------------------------------------------------
def _random_window(rnd: Any, h: int, w: int, lo: float, hi: float) -> tuple[int, int]:
    """A window size in [lo, hi) of each side (at least 1 pixel, at most the side − 1)."""
    def side(n: int) -> int:
        a = max(1, int(n * lo))
        b = max(a + 1, int(n * hi))
        return min(rnd.randrange(a, b), max(1, n - 1))

    return side(h), side(w)


class RandomCopyMove(A.DualTransform):
    """Copy a random rectangle of the image elsewhere in it and mark the pasted area tampered.

    IMDLBenCo's ``RandomCopyMove``: window sides drawn between ``min_frac`` and ``max_frac`` of the
    image sides, source and target positions uniform; the target rectangle is set to 1 in the mask
    (it *adds* to the existing mask, so an authentic image becomes a tampered sample).
    """

    def __init__(self, min_frac: float = 0.05, max_frac: float = 0.8, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not 0 < min_frac < max_frac < 1:
            raise ValueError(f"need 0 < min_frac < max_frac < 1, got {min_frac}, {max_frac}")
        self.min_frac = min_frac
        self.max_frac = max_frac

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        wh, ww = _random_window(self.py_random, h, w, self.min_frac, self.max_frac)
        src = (self.py_random.randrange(0, h - wh + 1), self.py_random.randrange(0, w - ww + 1))
        dst = (self.py_random.randrange(0, h - wh + 1), self.py_random.randrange(0, w - ww + 1))
        return {"src": src, "dst": dst, "window": (wh, ww)}

    def apply(self, img: np.ndarray, src: tuple[int, int], dst: tuple[int, int],
              window: tuple[int, int], **params: Any) -> np.ndarray:
        (sy, sx), (dy, dx), (wh, ww) = src, dst, window
        out = img.copy()
        out[dy:dy + wh, dx:dx + ww] = img[sy:sy + wh, sx:sx + ww]
        return out

    def apply_to_mask(self, mask: np.ndarray, dst: tuple[int, int], window: tuple[int, int],
                      **params: Any) -> np.ndarray:
        (dy, dx), (wh, ww) = dst, window
        out = mask.copy()
        out[dy:dy + wh, dx:dx + ww] = 1
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_frac", "max_frac")


class RandomInpainting(A.DualTransform):
    """Inpaint a random rectangle with OpenCV (Telea or Navier–Stokes, 50/50) and mark it tampered.

    IMDLBenCo's ``RandomInpainting`` (window sides ``min_frac``–``max_frac`` of the image sides,
    inpainting radius 3). Large windows are slow (OpenCV inpainting is O(area)); it runs with
    p = 0.1 in the ``imdlbenco`` preset.
    """

    def __init__(self, min_frac: float = 0.05, max_frac: float = 0.8, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not 0 < min_frac < max_frac < 1:
            raise ValueError(f"need 0 < min_frac < max_frac < 1, got {min_frac}, {max_frac}")
        self.min_frac = min_frac
        self.max_frac = max_frac

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        wh, ww = _random_window(self.py_random, h, w, self.min_frac, self.max_frac)
        pos = (self.py_random.randrange(0, h - wh + 1), self.py_random.randrange(0, w - ww + 1))
        method = cv2.INPAINT_TELEA if self.py_random.random() > 0.5 else cv2.INPAINT_NS
        return {"pos": pos, "window": (wh, ww), "method": method}

    def apply(self, img: np.ndarray, pos: tuple[int, int], window: tuple[int, int], method: int,
              **params: Any) -> np.ndarray:
        (y, x), (wh, ww) = pos, window
        hole = np.zeros(img.shape[:2], dtype=np.uint8)
        hole[y:y + wh, x:x + ww] = 1
        return cv2.inpaint(np.ascontiguousarray(img, dtype=np.uint8), hole, 3, method)

    def apply_to_mask(self, mask: np.ndarray, pos: tuple[int, int], window: tuple[int, int],
                      **params: Any) -> np.ndarray:
        (y, x), (wh, ww) = pos, window
        out = mask.copy()
        out[y:y + wh, x:x + ww] = 1
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_frac", "max_frac")


class GaussianBlurCV(A.ImageOnlyTransform):
    """Gaussian blur with an odd kernel in ``kernel_range`` and OpenCV's sigma for that kernel.

    This is albumentations 1.x ``GaussianBlur(blur_limit=(3, 7))`` with ``sigma_limit=0``, which
    IMDLBenCo uses: sigma = 0.3·((k − 1)·0.5 − 1) + 0.8. albumentations 2 no longer derives sigma
    from the kernel (it draws sigma from 0.5–3 by default), hence this small transform.
    """

    def __init__(self, kernel_range: tuple[int, int] = (3, 7), p: float = 0.5) -> None:
        super().__init__(p=p)
        lo, hi = int(kernel_range[0]), int(kernel_range[1])
        if lo < 1 or hi < lo:
            raise ValueError(f"kernel_range must be 1 <= lo <= hi, got {kernel_range}")
        self.kernels = [k for k in range(lo, hi + 1) if k % 2 == 1]
        if not self.kernels:
            raise ValueError(f"kernel_range {kernel_range} contains no odd kernel size")
        self.kernel_range = (lo, hi)

    def get_params(self) -> dict[str, Any]:
        return {"ksize": self.py_random.choice(self.kernels)}

    def apply(self, img: np.ndarray, ksize: int, **params: Any) -> np.ndarray:
        return cv2.GaussianBlur(img, (ksize, ksize), 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("kernel_range",)


# --------------------------------------------------------------------------------------------------
# Augmentation configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentations:
    """Training augmentation knobs; every probability 0 / range ``None`` turns a step off.

    Applied jointly to image and mask at native resolution, in this order (IMDLBenCo's order for
    the steps it has): random scale, copy-move, inpainting, horizontal flip, vertical flip,
    brightness/contrast, saturation/hue, JPEG, rotate-90, free rotation, blur, noise. Geometric
    steps move the mask with the image (nearest neighbour); free rotation fills the corners with
    black, labelled authentic.
    """

    scale: float = 0.0  # random rescale by a factor in [1 − scale, 1 + scale] (p = 1 when > 0)
    copy_move_p: float = 0.0  # synthetic copy-move; adds the pasted rectangle to the mask
    inpaint_p: float = 0.0  # synthetic inpainting; adds the inpainted rectangle to the mask
    synthetic_window: tuple[float, float] = (0.05, 0.8)  # window side range of the two above
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    brightness: float = 0.0  # ± fraction of the maximum value
    contrast: float = 0.0  # ± fraction
    color_p: float = 1.0  # probability of the brightness/contrast step
    saturation: float = 0.0  # ColorJitter saturation ± fraction (with hue, probability color_p)
    hue: float = 0.0  # ColorJitter hue ± fraction of the hue circle (≤ 0.5)
    jpeg_quality: tuple[int, int] | None = None  # OpenCV JPEG re-compression quality range
    jpeg_p: float = 0.0
    rotate90_p: float = 0.0
    rotation: float = 0.0  # free rotation limit in degrees (±)
    rotation_p: float = 0.0
    blur_kernel: tuple[int, int] | None = None  # odd Gaussian kernel sizes, OpenCV sigma
    blur_p: float = 0.0
    noise_std: tuple[float, float] | None = None  # Gaussian noise std in grey levels (0–255 scale)
    noise_p: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any step can change a sample."""
        return bool(
            self.scale > 0 or self.copy_move_p > 0 or self.inpaint_p > 0 or self.hflip_p > 0
            or self.vflip_p > 0 or (self.color_p > 0 and (self.brightness > 0 or self.contrast > 0
                                                          or self.saturation > 0 or self.hue > 0))
            or (self.jpeg_quality and self.jpeg_p > 0) or self.rotate90_p > 0
            or (self.rotation > 0 and self.rotation_p > 0) or (self.blur_kernel and self.blur_p > 0)
            or (self.noise_std and self.noise_p > 0)
        )

    def replace(self, **changes: Any) -> Augmentations:
        """A copy with some knobs changed (``preset.replace(jpeg_p=0)``)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown augmentation knob(s) {unknown}; known: {sorted(names)}")
        return replace(self, **changes)


#: Named presets. ``imdlbenco`` is the protocol B2 training pipeline (note: it includes JPEG
#: re-compression with p = 0.2, which surprises people — Mesorch issue #14).
AUGMENTATION_PRESETS: dict[str, Augmentations | None] = {
    "imdlbenco": Augmentations(
        scale=0.2, copy_move_p=0.1, inpaint_p=0.1, hflip_p=0.5, vflip_p=0.5,
        brightness=0.1, contrast=0.1, color_p=1.0, jpeg_quality=(70, 100), jpeg_p=0.2,
        rotate90_p=0.5, blur_kernel=(3, 7), blur_p=0.2,
    ),
    # Photo-preserving: no synthetic tampering, no upside-down images.
    "light": Augmentations(
        scale=0.1, hflip_p=0.5, brightness=0.1, contrast=0.1, color_p=0.5,
        jpeg_quality=(80, 100), jpeg_p=0.2,
    ),
    "none": None,
}


def augmentation_preset(name: str | Augmentations | None) -> Augmentations | None:
    """The :class:`Augmentations` of a preset name (``imdlbenco``, ``light``, ``none``)."""
    if name is None or isinstance(name, Augmentations):
        return name
    key = str(name).strip().lower()
    if key not in AUGMENTATION_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(AUGMENTATION_PRESETS)}")
    return AUGMENTATION_PRESETS[key]


def build_augmentations(cfg: Augmentations | str) -> A.Compose:
    """An albumentations ``Compose`` for ``cfg`` (image + ``mask`` targets, mask in {0, 1}).

    Seed it per sample with :func:`seed_augmentations` — not ``Compose.set_random_seed``, which in
    albumentations 2 gives every transform the *same* seed, so e.g. the horizontal and the
    vertical flip would always be applied together.
    """
    resolved = augmentation_preset(cfg) if isinstance(cfg, str) else cfg
    if resolved is None:
        return A.Compose([])
    c = resolved
    steps: list[A.BasicTransform] = []
    if c.scale > 0:
        steps.append(A.RandomScale(scale_limit=c.scale, interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    lo, hi = c.synthetic_window
    if c.copy_move_p > 0:
        steps.append(RandomCopyMove(lo, hi, p=c.copy_move_p))
    if c.inpaint_p > 0:
        steps.append(RandomInpainting(lo, hi, p=c.inpaint_p))
    if c.hflip_p > 0:
        steps.append(A.HorizontalFlip(p=c.hflip_p))
    if c.vflip_p > 0:
        steps.append(A.VerticalFlip(p=c.vflip_p))
    if c.color_p > 0 and (c.brightness > 0 or c.contrast > 0):
        steps.append(A.RandomBrightnessContrast(brightness_limit=(-c.brightness, c.brightness),
                                                contrast_limit=(-c.contrast, c.contrast), p=c.color_p))
    if c.color_p > 0 and (c.saturation > 0 or c.hue > 0):
        steps.append(A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0),
                                   saturation=(1 - c.saturation, 1 + c.saturation),
                                   hue=(-c.hue, c.hue), p=c.color_p))
    if c.jpeg_quality and c.jpeg_p > 0:
        steps.append(A.ImageCompression(compression_type="jpeg", quality_range=tuple(c.jpeg_quality),
                                        p=c.jpeg_p))
    if c.rotate90_p > 0:
        steps.append(A.RandomRotate90(p=c.rotate90_p))
    if c.rotation > 0 and c.rotation_p > 0:
        steps.append(A.Rotate(limit=(-c.rotation, c.rotation), interpolation=cv2.INTER_LINEAR,
                              border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                              mask_interpolation=cv2.INTER_NEAREST, p=c.rotation_p))
    if c.blur_kernel and c.blur_p > 0:
        steps.append(GaussianBlurCV(tuple(c.blur_kernel), p=c.blur_p))
    if c.noise_std and c.noise_p > 0:
        s_lo, s_hi = c.noise_std
        steps.append(A.GaussNoise(std_range=(s_lo / 255.0, s_hi / 255.0), mean_range=(0.0, 0.0),
                                  per_channel=True, p=c.noise_p))
    return A.Compose(steps)


def _seed_int(seed: SeedLike) -> np.random.SeedSequence:
    return np.random.SeedSequence(list(seed) if isinstance(seed, Sequence) else int(seed))


def seed_augmentations(compose: A.Compose, seed: SeedLike) -> None:
    """Give the pipeline and each of its transforms its own seed derived from ``seed``."""
    children = _seed_int(seed).spawn(len(compose.transforms) + 1)
    compose.set_random_seed(int(children[0].generate_state(1)[0]))
    for transform, child in zip(compose.transforms, children[1:], strict=True):
        transform.set_random_seed(int(child.generate_state(1)[0]))


# --------------------------------------------------------------------------------------------------
# The per-sample transform
# --------------------------------------------------------------------------------------------------
Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class SampleTransform:
    """Augment, (perturb), binarise, edge mask, resize/pad, normalise — one sample.

    Args:
        mode: ``"resize"`` (to ``size × size``), ``"pad"`` (IMDLBenCo padding + top-left crop to
            ``size × size``, with ``shape_mask``) or ``"none"`` (native size).
        size: output side for ``resize``/``pad``.
        augment: an :class:`Augmentations`, a preset name, or ``None``.
        edge_width: odd width of the edge mask (IML-ViT/MVSS-Net use 7), ``None`` = no edge mask.
        perturb: ``perturb(image, rng) -> image`` applied to the image only, after augmentation and
            at native resolution (robustness tests: JPEG, blur, noise, rescale). ``rng`` is a numpy
            Generator derived from the sample seed. If it changes the image size, the mask is
            resized to match (nearest neighbour).

    Calling it with ``(image uint8 H×W×3, mask uint8 H×W {0,1} or None, rng_seed)`` returns a dict
    of tensors: ``image`` (3,H,W) float32; when a mask is given ``mask`` (1,H,W) float32 and
    ``label`` (float32 scalar: 1 when the augmented native-resolution mask has a tampered pixel);
    ``edge_mask`` (1,H,W) when ``edge_width`` is set and a mask is given; ``shape_mask`` (1,H,W)
    in pad mode; ``origin_shape`` int64 (2,) = (H, W) after augmentation, before resize/pad.
    """

    def __init__(
        self,
        mode: Literal["resize", "pad", "none"] = "resize",
        size: int = 512,
        augment: Augmentations | str | None = None,
        edge_width: int | None = None,
        perturb: Perturbation | None = None,
    ) -> None:
        if mode not in ("resize", "pad", "none"):
            raise ValueError(f"mode must be 'resize', 'pad' or 'none', got {mode!r}")
        if mode != "none" and (not isinstance(size, (int, np.integer)) or size < 1):
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if edge_width is not None and (edge_width < 1 or edge_width % 2 == 0):
            raise ValueError(f"edge_width must be a positive odd integer or None, got {edge_width!r}")
        self.mode = mode
        self.size = int(size)
        self.augment = augmentation_preset(augment) if isinstance(augment, str) else augment
        self.edge_width = edge_width
        self.perturb = perturb
        self._pipeline = (
            build_augmentations(self.augment) if self.augment is not None and self.augment.enabled else None
        )

    def __repr__(self) -> str:
        return (f"SampleTransform(mode={self.mode!r}, size={self.size}, augment={self.augment!r}, "
                f"edge_width={self.edge_width}, perturb={self.perturb!r})")

    def augment_arrays(
        self, image: np.ndarray, mask: np.ndarray | None, rng_seed: SeedLike
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Steps 1–2 only: augmented (and perturbed) native-resolution image and {0,1} mask."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be HxWx3 uint8, got {image.dtype} {image.shape}")
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        seq = _seed_int(rng_seed)
        aug_seed, perturb_seed = seq.spawn(2)
        work_mask = (np.asarray(mask) > 0).astype(np.uint8) if mask is not None else None
        if self._pipeline is not None:
            seed_augmentations(self._pipeline, [int(v) for v in aug_seed.generate_state(2)])
            # Unknown masks still go through the pipeline (zeros) so geometry stays consistent.
            dummy = work_mask if work_mask is not None else np.zeros(image.shape[:2], np.uint8)
            out = self._pipeline(image=image, mask=dummy)
            image = np.ascontiguousarray(out["image"], dtype=np.uint8)
            work_mask = (out["mask"] > 0).astype(np.uint8) if work_mask is not None else None
        if self.perturb is not None:
            image = self.perturb(image, np.random.default_rng(perturb_seed))
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3):
                raise ValueError(f"perturb {self.perturb!r} must return an HxWx3 uint8 image")
            if work_mask is not None and work_mask.shape != image.shape[:2]:
                work_mask = cv2.resize(work_mask, (image.shape[1], image.shape[0]),
                                       interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(image), work_mask

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, rng_seed: SeedLike = 0) -> dict[str, Any]:
        image, mask = self.augment_arrays(image, mask, rng_seed)
        h, w = image.shape[:2]
        out: dict[str, Any] = {"origin_shape": torch.tensor([h, w], dtype=torch.int64)}
        masks: list[np.ndarray] = []
        if mask is not None:
            out["label"] = torch.tensor(float(mask.any()), dtype=torch.float32)
            masks.append(mask)
            if self.edge_width is not None:
                masks.append(edge_mask(mask, self.edge_width))

        shape_mask = None
        if self.mode == "resize":
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            masks = [cv2.resize(m, (self.size, self.size), interpolation=cv2.INTER_NEAREST) for m in masks]
        elif self.mode == "pad":
            image = _pad_crop(image, self.size)
            masks = [_pad_crop(m, self.size) for m in masks]
            shape_mask = np.zeros((self.size, self.size), dtype=np.uint8)
            shape_mask[: min(h, self.size), : min(w, self.size)] = 1

        out["image"] = normalize(image)
        if mask is not None:
            out["mask"] = _mask_tensor(masks[0])
            if self.edge_width is not None:
                out["edge_mask"] = _mask_tensor(masks[1])
        if shape_mask is not None:
            out["shape_mask"] = _mask_tensor(shape_mask)
        return out


def _pad_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad bottom/right to at least ``size`` and keep the top-left ``size × size`` (IMDLBenCo)."""
    h, w = arr.shape[:2]
    pad = [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (arr.ndim - 2)
    return np.ascontiguousarray(np.pad(arr, pad, mode="constant", constant_values=0)[:size, :size])


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
