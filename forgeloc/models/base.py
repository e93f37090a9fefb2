"""The contract between models and the rest of forgeloc.

Every model is an ``nn.Module`` subclass of :class:`ForgeryModel`. The engine, the metrics and the
inference tools only ever talk to a model through this contract, so they know nothing about a
particular architecture (the Detectron2 / Lightning convention).

Input: one *batch dict* (what the data loaders collate)

=============== ================================ ==============================================
key             shape / type                     meaning
=============== ================================ ==============================================
``image``       float32 (B, 3, H, W)             ImageNet-normalised RGB (``(x/255 - mean)/std``)
``mask``        float32 (B, 1, H, W) in {0, 1}   ground truth (optional: absent at inference)
``label``       float32 (B,)                     1 = tampered image, 0 = authentic (optional)
``edge_mask``   float32 (B, 1, H, W) in {0, 1}   band around the mask boundary (optional)
``shape_mask``  float32 (B, 1, H, W) in {0, 1}   1 = real pixel, 0 = padding (optional)
=============== ================================ ==============================================

Other keys (``name``, ``index``, ``origin_shape``) may be present and must be ignored.

Output: a dict

================ ============================== ================================================
key              shape / type                   meaning
================ ============================== ================================================
``pred_mask``    float32 (B, 1, H, W)           tamper probability per pixel, at input resolution
``logits``       optional, model-specific       the raw map before the final activation (documented
                                                by each model; the engine never relies on it)
``pred_label``   float32 (B,), optional         the model's own image-level probability
``features``     (B, C, h, w), optional         a feature map that auxiliary losses may use
``loss``         scalar, only if ``mask`` given the total loss to back-propagate
``loss_terms``   dict[str, scalar]              its named terms, for logging (same device)
================ ============================== ================================================

The loss is computed whenever the batch carries a ``mask`` (in ``train()`` and ``eval()`` mode),
so evaluation can report a validation loss and parity tests can compare the reference's loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ForgeryModel(nn.Module):
    """Base class of every forgeloc model (see the module docstring for the batch/output contract).

    Class attributes describe what the model accepts, so that the engine and the inference tools
    can prepare inputs without knowing the architecture:

    * ``input_size``: the square side the model must be fed (e.g. 512 for the paper models, whose
      reference code only accepts that size), or ``None`` if any size that is a multiple of
      ``size_divisor`` works.
    * ``size_divisor``: spatial sizes must be multiples of this.
    * ``has_image_head``: whether ``pred_label`` is produced by the model itself.
    """

    # Plain class attributes: an instance may override them (e.g. a tiny config at 128 px).
    input_size: int | None = None
    size_divisor: int = 1
    has_image_head: bool = False

    def __init__(self) -> None:
        super().__init__()
        # Filled by ``create_model``: the registered name and the keyword arguments used, so that a
        # checkpoint folder can rebuild the same model.
        self.model_name: str = type(self).__name__
        self.model_kwargs: dict[str, Any] = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # Helpers shared by subclasses -------------------------------------------------------------
    @staticmethod
    def require_image(batch: dict[str, Any]) -> torch.Tensor:
        image = batch.get("image")
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"batch['image'] must be a float tensor of shape (B, 3, H, W), got {shape}")
        return image

    def check_input_size(self, image: torch.Tensor) -> None:
        """Raise a clear error when ``image`` has a size the model cannot take."""
        h, w = image.shape[-2:]
        if self.input_size is not None and (h, w) != (self.input_size, self.input_size):
            raise ValueError(
                f"{self.model_name} takes exactly {self.input_size}x{self.input_size} inputs, got {h}x{w}; "
                "resize or tile the image first (forgeloc.inference does this for you)"
            )
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"{self.model_name} needs spatial sizes divisible by {self.size_divisor}, got {h}x{w}"
            )

    def native_size(self, default: int = 512) -> int:
        """The square side to resize inputs to when the model does not impose one."""
        return self.input_size or default

    @staticmethod
    def sigmoid_bce_output(logits: torch.Tensor, batch: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """The output dict of a one-channel sigmoid head trained with plain BCE-with-logits (mean).

        ``pred_mask = sigmoid(logits)``; when the batch carries a mask, ``loss`` and
        ``loss_terms["bce"]`` are added. ``extra`` entries (e.g. ``features``) are passed through.
        """
        out: dict[str, Any] = {"pred_mask": torch.sigmoid(logits), "logits": logits, **extra}
        mask = batch.get("mask")
        if mask is not None:
            bce = F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype))
            out["loss"] = bce
            out["loss_terms"] = {"bce": bce}
        return out
