"""ImageNet normalisation: the one step between a decoded photo and a model's input tensor.

It lives apart from :mod:`forgeloc.data.transforms` (training augmentation, which needs
albumentations) so that prediction needs only numpy and torch.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "denormalize", "normalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN_255 = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD_255 = 1.0 / (np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0)


def normalize(image: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 RGB → ``3×H×W`` float32 ``(x/255 − mean)/std`` with ImageNet statistics."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize expects an HxWx3 image, got shape {image.shape}")
    # Same arithmetic as albumentations Normalize(max_pixel_value=255): (x − 255·mean) · 1/(255·std).
    x = (image.astype(np.float32) - _MEAN_255) * _INV_STD_255
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: ``3×H×W`` (or ``1×3×H×W``) tensor → ``H×W×3`` uint8 (rounded)."""
    x = tensor.detach().to("cpu", torch.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"denormalize expects a 3xHxW tensor, got shape {tuple(tensor.shape)}")
    hwc = x.numpy().transpose(1, 2, 0)
    out = hwc * np.asarray(IMAGENET_STD, np.float32) * 255.0 + _MEAN_255
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
