"""GridNet: forgeloc's default learned detector. It localizes splices by where the photo's JPEG
history breaks.

Why this design
---------------
Most photos were JPEG-compressed at least once, and that leaves a lattice in every 8×8 block's DCT
coefficients: they sit near integer multiples of the quantization steps the encoder used. A region
pasted from another photo, resampled, rotated, inpainted, or just shifted by a non-multiple of 8
pixels does not share the host's lattice. CASIA-style splices carry exactly this inconsistency
(aligned and non-aligned double compression: Lin et al., *Pattern Recognition* 2009; Bianchi &
Piva, *IEEE TIFS* 2012). CAT-Net (Kwon et al., *IJCV* 2022) learns such statistics from the file's
quantized DCT coefficients; it needs a large network and corpus. GridNet instead feeds a small
network explicit **lattice features**, so it can learn from a few thousand synthetic forgeries on
a CPU:

``f[k, q] = cos(2π·c_k / q) · 1[|c_k| ≥ q/2]``

for the 15 lowest-frequency luma coefficients ``c_k`` of each block (DC included) and candidate
steps ``q = 2 … 20``. On a lattice of step ``q`` (or a multiple of it) the cosine is near 1; off it,
it averages to 0. The gate drops coefficients that quantize to zero, whose lattice membership says
nothing. Add ``log(1 + |c_k|)`` so that the network knows how much texture a block has.

The coefficients come from one of two places:

* **the file's own JPEG stream**, when the photo is a JPEG (``batch["dct"]``: the quantized
  coefficients times their steps, read with :func:`forgeloc.data.jpeg.read_jpeg_stream`); these
  are exact, and the double-quantization traces of the host survive in them;
* **the decoded pixels** otherwise (PNG, TIFF, arrays): a blockwise DCT of the luma on the grid
  of the last JPEG compression the pixels went through, found per image as the phase whose DC
  coefficients sit on a quantization lattice (:func:`estimate_grid_offset`).

The network then works at block resolution (one pixel per 8×8 block): a 1×1 stem, an image-wide
context vector (what "normal" looks like in this photo), a three-level U-Net, and a one-channel
head, upsampled ×8 to pixel resolution. Its output depends on the block grid, so it must see
the photo at its native resolution, never resized: ``native_resolution = True`` tells the
predictor so.

Loss: BCE-with-logits against the share of tampered pixels per block, plus soft Dice.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from forgeloc.models.base import ForgeryModel
from forgeloc.models.registry import register_model

__all__ = ["GridNet", "block_dct", "estimate_grid_offset", "lattice_features"]

#: The 15 lowest frequencies in JPEG's zig-zag order, as (vertical u, horizontal v).
ZIGZAG_15 = ((0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0),
             (4, 0), (3, 1), (2, 2), (1, 3), (0, 4))
#: Candidate quantization steps probed by the lattice features.
Q_STEPS = tuple(range(2, 21))
BLOCK = 8


def _dct_basis() -> torch.Tensor:
    """Orthonormal 8×8 DCT-II basis (JPEG's), ``(64, 1, 8, 8)``, index ``8u + v``."""
    n = torch.arange(BLOCK, dtype=torch.float64)
    k = n[:, None]
    c = torch.cos((2 * n[None, :] + 1) * k * math.pi / (2 * BLOCK))
    c[0] *= 1 / math.sqrt(2)
    c *= math.sqrt(2 / BLOCK)  # c[k, n]: 1-D basis
    basis = c[:, None, :, None] * c[None, :, None, :]  # (u, v, y, x)
    return basis.reshape(64, 1, BLOCK, BLOCK).float()


def luma(image01: torch.Tensor) -> torch.Tensor:
    """JPEG's Y from RGB in [0, 255] (ITU-R BT.601, as libjpeg), level-shifted by −128. ``(B,1,H,W)``."""
    r, g, b = image01[:, 0:1], image01[:, 1:2], image01[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b - 128.0


#: Largest square (pixels) read to find the block grid: enough blocks, bounded time on big photos.
GRID_SEARCH_SIDE = 1024


def _dc_lattice_scores(y: torch.Tensor) -> torch.Tensor:
    """``(8, 8)`` scores, one per grid phase: how well the blocks' DC coefficients (8 × block mean)
    sit on a lattice of some step 2…16, as they do on the grid of a past JPEG compression."""
    dc = F.avg_pool2d(y, BLOCK, stride=1)[0, 0] * BLOCK  # DC of the block starting at each pixel
    hb, wb = dc.shape[0] // BLOCK, dc.shape[1] // BLOCK
    dc = dc[: hb * BLOCK, : wb * BLOCK].reshape(hb, BLOCK, wb, BLOCK).permute(1, 3, 0, 2).reshape(BLOCK, BLOCK, -1)
    q = dc.new_tensor(range(2, 17)).view(1, 1, 1, -1)
    ratio = dc.unsqueeze(-1) / q
    gate = (ratio.abs() >= 0.5).to(dc.dtype)
    score = (torch.cos(2 * math.pi * ratio) * gate).sum(2) / gate.sum(2).clamp_min(1.0)
    return score.amax(-1)


def _blockiness_phase(y: torch.Tensor) -> tuple[int, int] | None:
    """Grid phase from blocking artifacts (larger jumps between neighbouring pixels across block
    boundaries), or ``None`` when no phase stands out."""
    def phase(diff: torch.Tensor, dim: int) -> int | None:
        n = diff.shape[dim] // BLOCK * BLOCK
        if n < 2 * BLOCK:
            return None
        profile = diff.narrow(dim, 0, n).mean(dim=tuple(d for d in range(diff.ndim) if d != dim))
        per_phase = profile.reshape(-1, BLOCK).median(dim=0).values
        best = int(per_phase.argmax())
        rest = torch.cat([per_phase[:best], per_phase[best + 1:]])
        if per_phase[best] <= 1.05 * rest.median():
            return None
        return (best + 1) % BLOCK  # the jump between pixel p and p+1 is largest when a block starts at p+1

    rows = phase((y[..., 1:, :] - y[..., :-1, :]).abs(), 2)
    cols = phase((y[..., :, 1:] - y[..., :, :-1]).abs(), 3)
    return None if rows is None or cols is None else (rows, cols)


def estimate_grid_offset(y: torch.Tensor) -> tuple[int, int]:
    """The (row, column) phase of the 8×8 block grid of one luma image ``(1,1,H,W)``: where the
    blocks of its last JPEG compression started.

    First choice: the phase whose blocks' DC coefficients lie on a quantization lattice (robust
    down to DC steps of 2, i.e. up to JPEG quality ≈ 90). Otherwise the phase of the strongest
    blocking artifacts. Otherwise (0, 0): the photo shows no grid, and the phase does not matter.
    Reads at most a central ``GRID_SEARCH_SIDE``² square.
    """
    H, W = y.shape[-2:]
    top = max(0, (H - GRID_SEARCH_SIDE) // 2) // BLOCK * BLOCK
    left = max(0, (W - GRID_SEARCH_SIDE) // 2) // BLOCK * BLOCK
    crop = y[..., top: top + GRID_SEARCH_SIDE, left: left + GRID_SEARCH_SIDE]
    if min(crop.shape[-2:]) < 4 * BLOCK:
        return 0, 0
    scores = _dc_lattice_scores(crop)
    best = int(scores.argmax())
    others = torch.cat([scores.flatten()[:best], scores.flatten()[best + 1:]])
    if scores.flatten()[best] >= max(0.1, 2.0 * float(others.median())):
        return best // BLOCK, best % BLOCK  # the crop starts on a multiple of 8: same phase
    return _blockiness_phase(crop) or (0, 0)


def block_dct(y: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Blockwise DCT of ``(B,1,H,W)`` luma on the grid starting at (0, 0): ``(B,64,H/8,W/8)``
    (``H``, ``W`` multiples of 8)."""
    return F.conv2d(y, basis, stride=BLOCK)


def lattice_features(coef: torch.Tensor) -> torch.Tensor:
    """``(B,64,h,w)`` DCT coefficients → ``(B, 15·19 + 15, h, w)`` lattice features (module docstring)."""
    idx = [8 * u + v for u, v in ZIGZAG_15]
    c = coef[:, idx]  # (B,15,h,w)
    B, n, h, w = c.shape
    q = c.new_tensor(Q_STEPS).view(1, 1, -1, 1, 1)
    # The same values as a formula: for coefficients that carry gradients (never the data's), and
    # when traced for ONNX (the tracer does not follow writes into views of a fresh buffer).
    if c.requires_grad or torch.jit.is_tracing():
        ratio = c.unsqueeze(2) / q
        lattice = torch.cos(2 * math.pi * ratio) * (ratio.abs() >= 0.5).to(c.dtype)
        return torch.cat([lattice.flatten(1, 2), torch.log1p(c.abs())], dim=1)
    # Computed in place in the output tensor (the same operations as cos(2π·c/q)·gate, then the
    # log magnitudes, without the temporaries and the concatenation: this is the widest tensor of
    # the network, 285 channels at block resolution).
    out = c.new_empty(B, n * (len(Q_STEPS) + 1), h, w)
    lattice = out[:, : n * len(Q_STEPS)].view(B, n, len(Q_STEPS), h, w)
    torch.div(c.unsqueeze(2), q, out=lattice)  # the ratio c/q
    gate = lattice.abs().ge_(0.5)  # 1.0 where |c/q| >= 1/2, else 0.0
    lattice.mul_(2 * math.pi).cos_().mul_(gate)
    torch.log1p(c.abs(), out=out[:, n * len(Q_STEPS):])
    return out


class ConvBNReLUStack(nn.Sequential):
    """``(conv → BatchNorm → ReLU) × n`` as one ``nn.Sequential`` (its state-dict keys are the
    children's indices). :mod:`forgeloc.models.fusion` swaps in a variant that folds each BatchNorm
    into its conv for CPU inference."""

    def __init__(self, *layers: tuple[int, int, int, int]) -> None:
        modules: list[nn.Module] = []
        for cin, cout, kernel, stride in layers:
            modules += [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                        nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        super().__init__(*modules)


def _block(cin: int, cout: int, stride: int = 1) -> ConvBNReLUStack:
    return ConvBNReLUStack((cin, cout, 3, stride), (cout, cout, 3, 1))


class GridNet(ForgeryModel):
    """Block-resolution U-Net over JPEG lattice features (see the module docstring).

    Batch keys beyond the :mod:`forgeloc.models.base` contract (both optional):

    * ``dct``: float32 ``(B,64,H/8,W/8)`` dequantized luma coefficients from the file's JPEG
      stream, on the grid that starts at pixel (0, 0) of ``image``;
    * ``dct_valid``: bool ``(B,)``, which samples carry ``dct`` (the others use their pixels).
    """

    native_resolution = True
    size_divisor = 1

    def __init__(self, width: int = 64, dice_weight: float = 0.5, pos_weight: float = 3.0) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.pos_weight = float(pos_weight)
        self.register_buffer("basis", _dct_basis(), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        n_feat = len(ZIGZAG_15) * (len(Q_STEPS) + 1)
        w1, w2, w3 = width, width * 3 // 2, width * 2
        self.stem = ConvBNReLUStack((n_feat, w1, 1, 1), (w1, w1, 3, 1))
        self.context = nn.Sequential(nn.Linear(w1, w1), nn.ReLU(inplace=True))
        self.enc1 = _block(2 * w1, w1)
        self.enc2 = _block(w1, w2, stride=2)
        self.enc3 = _block(w2, w3, stride=2)
        self.up3 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _block(2 * w2, w2)
        self.up2 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _block(2 * w1, w1)
        self.head = nn.Conv2d(w1, 1, 1)

    # -- features --------------------------------------------------------------------------------
    def pixel_coefficients(self, image: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Blockwise DCT of each image's luma on its own grid: ``(B,64,⌈H/8⌉,⌈W/8⌉)`` and the grid
        offsets. Each image is shifted so that its grid starts at (0, 0), and reflect-padded at
        the far edges back to a whole number of blocks."""
        y = luma(image * self.std + self.mean)
        H, W = y.shape[-2:]
        hb, wb = -(-H // BLOCK), -(-W // BLOCK)
        out, offsets = [], []
        for i in range(y.shape[0]):
            dy, dx = estimate_grid_offset(y[i:i + 1])
            crop = y[i:i + 1, :, dy:, dx:]
            pad_b, pad_r = hb * BLOCK - crop.shape[-2], wb * BLOCK - crop.shape[-1]
            crop = F.pad(crop, (0, pad_r, 0, pad_b), mode="replicate")
            out.append(block_dct(crop, self.basis))
            offsets.append((dy, dx))
        return torch.cat(out), offsets

    def _coefficients(self, batch: dict[str, Any], image: torch.Tensor):
        """Each sample's coefficients: the JPEG stream's where ``dct_valid`` says so (on the grid at
        (0, 0)), else the pixels' on their estimated grid; and the grid offsets."""
        dct, valid = batch.get("dct"), batch.get("dct_valid")
        if dct is None or valid is None or not bool(valid.any()):
            return self.pixel_coefficients(image)
        blocks = (-(-image.shape[-2] // BLOCK), -(-image.shape[-1] // BLOCK))
        if tuple(dct.shape[-2:]) != blocks:
            raise ValueError(f"batch['dct'] covers {tuple(dct.shape[-2:])} blocks, the image {blocks}")
        coef = dct.to(image.dtype)
        offsets = [(0, 0)] * image.shape[0]
        missing = [i for i, v in enumerate(valid.tolist()) if not v]
        if missing:  # only the samples without a stream pay for the grid search and the pixel DCT
            pixel, pixel_offsets = self.pixel_coefficients(image[missing])
            coef = coef.clone()
            coef[missing] = pixel
            for i, offset in zip(missing, pixel_offsets, strict=True):
                offsets[i] = offset
        return coef, offsets

    # -- network ---------------------------------------------------------------------------------
    def block_logits(self, coef: torch.Tensor) -> torch.Tensor:
        """``(B,64,h,w)`` coefficients → ``(B,1,h,w)`` per-block logits."""
        h, w = coef.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4  # two stride-2 levels
        x = self.stem(lattice_features(coef))
        ctx = self.context(x.mean(dim=(2, 3)))[:, :, None, None].expand_as(x)
        x = F.pad(torch.cat([x, ctx], dim=1), (0, pw, 0, ph), mode="replicate")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up3(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up2(d2), e1], dim=1))
        return self.head(d1)[..., :h, :w]

    @staticmethod
    def _to_pixels(block_map: torch.Tensor, offsets: list[tuple[int, int]], H: int, W: int) -> torch.Tensor:
        """Per-block map on each image's own grid → ``(B,1,H,W)`` pixel map (bilinear between block
        centres; the rows/columns before the grid's start take the first block's value)."""
        up = F.interpolate(block_map, scale_factor=BLOCK, mode="bilinear", align_corners=False)
        out = []
        for i, (dy, dx) in enumerate(offsets):
            m = F.pad(up[i:i + 1], (dx, 0, dy, 0), mode="replicate") if dy or dx else up[i:i + 1]
            out.append(m[..., :H, :W])
        return torch.cat(out)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        H, W = image.shape[-2:]
        coef, offsets = self._coefficients(batch, image)
        logits = self.block_logits(coef)
        out: dict[str, Any] = {"pred_mask": self._to_pixels(torch.sigmoid(logits), offsets, H, W),
                               "block_logits": logits, "grid_offsets": offsets}
        mask = batch.get("mask")
        if mask is not None:
            out.update(self.loss(logits, mask, offsets))
        return out

    def loss(self, logits: torch.Tensor, mask: torch.Tensor, offsets: list[tuple[int, int]]) -> dict[str, Any]:
        """BCE against the tampered share of each block (on each image's grid) + soft Dice."""
        h, w = logits.shape[-2:]
        target = []
        for i, (dy, dx) in enumerate(offsets):
            m = mask[i:i + 1, :, dy:, dx:].to(logits.dtype)
            m = F.pad(m, (0, w * BLOCK - m.shape[-1], 0, h * BLOCK - m.shape[-2]), mode="replicate")
            target.append(F.avg_pool2d(m, BLOCK))
        target = torch.cat(target)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=logits.new_tensor(self.pos_weight))
        terms = {"bce": bce}
        if self.dice_weight:
            prob = torch.sigmoid(logits).flatten(1)
            t = target.flatten(1)
            dice = (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
            terms["dice"] = self.dice_weight * (1 - dice).mean()
        return {"loss": sum(terms.values()), "loss_terms": terms}


@register_model
def gridnet(**kwargs: Any) -> GridNet:
    """forgeloc's default detector network (≈0.6 M parameters at width 64)."""
    return GridNet(**kwargs)


@register_model
def gridnet_tiny(**kwargs: Any) -> GridNet:
    """A narrow GridNet for unit tests."""
    kwargs.setdefault("width", 16)
    return GridNet(**kwargs)
