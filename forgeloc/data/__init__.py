"""Data layer: reading images and masks, dataset formats, per-sample transforms, dataset checks.

Submodules: :mod:`~forgeloc.data.io` (readers), :mod:`~forgeloc.data.datasets` (formats, records,
PyTorch datasets), :mod:`~forgeloc.data.transforms` (augmentation, resize/pad),
:mod:`~forgeloc.data.normalization` (ImageNet normalisation, all that prediction needs),
:mod:`~forgeloc.data.check` (``forgeloc data check/convert``), :mod:`~forgeloc.data.files` (the one
image-folder walker). The names below are re-exported lazily, so ``import forgeloc.data.io`` does
not import albumentations.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "io": (
        "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "DecompressionBombError", "ImageReadError", "MaskError",
        "MaskSizeError", "authentic_mask", "image_info", "mask_stats", "read_image", "read_mask",
    ),
    "datasets": (
        "NEGATIVE", "BalancedDataset", "DatasetError", "ForgeryDataset", "Problem", "Record", "list_images",
        "load_records", "open_dataset", "scan_records",
    ),
    "normalization": ("IMAGENET_MEAN", "IMAGENET_STD", "denormalize", "normalize"),
    "transforms": ("Augmentations", "SampleTransform", "augmentation_preset", "build_augmentations", "edge_mask"),
    "check": ("DatasetReport", "check_dataset", "convert_to_json"),
    "files": ("FolderListing", "broken_link", "expand_inputs", "list_folder"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'forgeloc.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"forgeloc.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
