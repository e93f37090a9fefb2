"""A small U-Net baseline — *not* a paper model.

It exists so that the engine, the quickstart and the tests can train something useful on a CPU in
minutes. Architecture: a fixed high-pass residual stem (three SRM-style kernels, Fridrich &
Kodovsky 2012, as used by many IML networks to expose noise inconsistencies) concatenated with
the RGB input, a four-level U-Net (Ronneberger et al., 2015) with BatchNorm + ReLU blocks, and a
1×1 sigmoid head. Loss: BCE-with-logits with a positive-class weight (tampered pixels are usually a
small minority; without it a briefly trained model stays below 0.5 everywhere) plus a soft Dice
term (Milletari et al., 2016) that keeps small tampered regions from being ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.models.base import ForgeryModel
from forgeloc.models.registry import register_model


def _srm_kernels() -> torch.Tensor:
    """Three classic 5×5 SRM residual filters (first-order, second-order, 'square' 5×5)."""
    first = torch.zeros(5, 5)
    first[2, 1:4] = torch.tensor([1.0, -2.0, 1.0])
    first = first / 2.0
    square = torch.tensor(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        dtype=torch.float32,
    ) / 12.0
    second = torch.zeros(5, 5)
    second[1:4, 1:4] = torch.tensor([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], dtype=torch.float32) / 4.0
    return torch.stack([first, second, square])


class SRMStem(nn.Module):
    """Fixed high-pass residuals of the grey image, 3 channels, not trained."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", _srm_kernels().unsqueeze(1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grey = image.mean(dim=1, keepdim=True)
        # Reflect, not zero, padding: a zero border would put a huge artificial residual along
        # the image edge, which the network learns as a position cue.
        grey = F.pad(grey, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(grey, self.kernels.to(grey.dtype))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged over the batch (images without tampering included)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = mask.flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    return (1 - dice).mean()


class UNetBaseline(ForgeryModel):
    """Compact U-Net baseline for CPU training (see module docstring). Any input size divisible by 2^depth."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        dice_weight: float = 0.5,
        pos_weight: float = 5.0,
        srm: bool = True,
    ) -> None:
        super().__init__()
        self.pos_weight = float(pos_weight)
        self.size_divisor = 2 ** (len(widths) - 1)
        self.dice_weight = float(dice_weight)
        self.srm = SRMStem() if srm else None
        # Residuals are ~1/100 of the normalised RGB values; without rescaling the first
        # convolution all but ignores them, and they carry the noise traces this model relies on.
        self.srm_norm = nn.BatchNorm2d(3) if srm else None
        cin = 6 if srm else 3
        self.down = nn.ModuleList()
        for w in widths:
            self.down.append(_conv_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w_skip, w_deep in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(w_deep, w_skip, 2, stride=2))
            self.fuse.append(_conv_block(2 * w_skip, w_skip))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        self.check_input_size(image)
        x = torch.cat([image, self.srm_norm(self.srm(image))], dim=1) if self.srm is not None else image
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        features = x
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], dim=1))
        logits = self.head(x)
        out: dict[str, Any] = {"pred_mask": torch.sigmoid(logits), "logits": logits, "features": features}
        mask = batch.get("mask")
        if mask is not None:
            bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=logits.new_tensor(self.pos_weight))
            terms = {"bce": bce}
            if self.dice_weight:
                terms["dice"] = self.dice_weight * soft_dice_loss(logits, mask)
            out["loss"] = sum(terms.values())
            out["loss_terms"] = terms
        return out


@register_model
def unet_baseline(**kwargs: Any) -> UNetBaseline:
    """The default baseline: widths 16/32/64/128 (≈0.5 M parameters), weighted BCE + 0.5 Dice."""
    return UNetBaseline(**kwargs)


@register_model
def unet_baseline_tiny(**kwargs: Any) -> UNetBaseline:
    """A smaller baseline for unit tests: widths 8/16/32."""
    kwargs.setdefault("widths", (8, 16, 32))
    return UNetBaseline(**kwargs)
