"""Mesorch and Mesorch-P.

Zhu, Ma et al., "Mesoscopic Insights: Orchestrating Multi-scale & Hybrid Architecture for Image
Manipulation Localization", AAAI 2025 (arXiv 2412.13753); reference code github.com/scu-zjz/Mesorch.

Two encoders look at the same image:

* a ConvNeXt-Tiny (Liu et al., CVPR 2022) fed with the image and a DCT high-pass copy of it
  (6 channels) — the "micro" branch;
* a SegFormer MiT-B3 (Xie et al., NeurIPS 2021) fed with the image and a DCT low-pass copy
  (6 channels) — the "macro" branch.

Each yields four maps (strides 4, 8, 16, 32). Transposed-convolution stacks bring every map to
stride 4, a 1×1 convolution per scale turns each into one logit map, and the maps are mixed:

* **Mesorch**: per-pixel softmax weights from a small "score network" (the paper's adaptive
  weighting) over all 8 scales;
* **Mesorch-P** (pruned): only 5 scales (ConvNeXt strides 4 and 16, MiT strides 8, 16, 32), summed.

The mixed stride-4 logits are resized bilinearly (``align_corners=True``) and trained with
BCE-with-logits. Parameter names equal the authors' state dicts (timm ConvNeXt names, NVlabs MiT
names), so the released ``mesorch-98.pth`` / ``mesorch_p-118.pth`` load strictly.

Differences from the reference code (outputs are the same at 512×512; see docs/models/mesorch.md):

* the output follows the input size (the reference always returns 512×512);
* the frequency filters use a low-rank form of the same orthonormal DCT (cheaper, exact in real
  arithmetic) and always run in float32; a constant image gives zeros instead of NaN;
* the score network folds its three consecutive linear convolutions (3×3, 1×1, 1×1, no activation
  between them) into one 3×3 convolution at run time; the parameters stay separate;
* each per-scale 1×1 head is folded into the last transposed convolution of its stack.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.io.state_dict import KeyReport, load_state_dict_file
from forgeloc.models.base import ForgeryModel
from forgeloc.models.layers import DropPath, LayerNorm2d, Linear, MixFFN, tokens_to_grid
from forgeloc.models.registry import register_model

logger = logging.getLogger(__name__)

__all__ = [
    "ConvNeXt",
    "DctFrequencyExtractor",
    "Mesorch",
    "MixVisionTransformer",
    "ScoreNetwork",
    "checkpoint_filter_fn",
    "dct_matrix",
    "load_convnext_pretrained",
    "load_mit_pretrained",
    "load_pretrained",
    "mesorch",
    "mesorch_p",
    "mesorch_p_tiny",
    "mesorch_tiny",
]

# Where the authors' training code gets its ImageNet backbones (spec §4, §5). Nothing downloads.
CONVNEXT_TINY_SOURCES = (
    "timm's convnext_tiny.in12k_ft_in1k 'model.safetensors' from "
    "https://huggingface.co/timm/convnext_tiny.in12k_ft_in1k, or Facebook's 'convnext_tiny_1k_224_ema.pth' "
    "from https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth"
)
MIT_B3_SOURCE = (
    "NVlabs' ImageNet-1k 'mit_b3.pth', linked (Google Drive / OneDrive) in the Training section of "
    "https://github.com/NVlabs/SegFormer"
)
RELEASED_CHECKPOINTS = (
    "'mesorch-98.pth' / 'mesorch_p-118.pth' from the authors' Google Drive folder "
    "https://drive.google.com/drive/folders/1jwYv-S3HAZqzz0YxM9bJynBiPv-O9-6x (see github.com/scu-zjz/Mesorch)"
)

ALL_SCALES = ("c1", "c2", "c3", "c4", "s1", "s2", "s3", "s4")
PRUNED_SCALES = ("c1", "c3", "s2", "s3", "s4")


# --------------------------------------------------------------------------------------------------
# DCT frequency extractors
# --------------------------------------------------------------------------------------------------
def dct_matrix(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n×n): ``D[k, j] = s_k cos(π k (2j+1) / 2n)``.

    ``s_0 = 1/√n``, ``s_k = √(2/n)``; ``X = D x`` is ``scipy.fft.dct(x, norm="ortho")`` and
    ``x = Dᵀ X`` inverts it. Built in float64 (the cosine argument reaches ~πn, where float32 loses
    digits) and cast to ``dtype``.
    """
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = math.sqrt(2.0 / n) * torch.cos(math.pi * k * (2 * j + 1) / (2 * n))
    d[0] = 1.0 / math.sqrt(n)
    return d.to(device=device, dtype=dtype)


class DctFrequencyExtractor(nn.Module):
    """Mesorch's parameter-free DCT filter (spec §3): 2-D DCT-II per channel, zero a corner, invert.

    * ``mode="high"`` (alpha 0.05): zero the coefficients with row < ⌊αH⌋ **and** column < ⌊αW⌋
      (the lowest frequencies, a 25×25 block at 512).
    * ``mode="low"`` (alpha 0.95): zero row ≥ H−⌊αH⌋ **and** column ≥ W−⌊αW⌋, i.e. keep the
      L-shaped region row < 26 **or** column < 26 at 512 (not a square box).

    Then each sample is min-max normalised jointly over channels and pixels to [0, 1].

    Only a few DCT rows are ever needed. With ``U = D_H[:r]`` and ``V = D_W[:c]`` (the first rows of
    the orthonormal matrices, so ``UᵀU`` and ``VᵀV`` are projections):

    * high-pass: ``x − Uᵀ (U x Vᵀ) V``  (r, c = ⌊αH⌋, ⌊αW⌋);
    * low-pass: ``x − (I − UᵀU) x (I − VᵀV) = P + (x − P) VᵀV`` with ``P = UᵀU x``
      (r, c = H−⌊αH⌋, W−⌊αW⌋).

    That is the reference's full-matrix DCT → mask → inverse DCT in exact arithmetic at about a
    twentieth of the cost at 512. The matrices are cached per size, device and dtype (not in the
    state dict). The filter always runs in float32 (also under autocast).
    """

    def __init__(self, alpha: float, mode: str) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if mode not in ("high", "low"):
            raise ValueError(f"mode must be 'high' or 'low', got {mode!r}")
        self.alpha = float(alpha)
        self.mode = mode
        self._cache: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}

    def cut(self, n: int) -> int:
        """Number of leading DCT rows that the projection uses for a side of length ``n``."""
        # int() truncates like the reference (0.95 * 512 = 486.4 -> 486).
        a = int(self.alpha * n)
        return a if self.mode == "high" else n - a

    def _rows(self, n: int, device: torch.device) -> torch.Tensor:
        r = self.cut(n)
        key = (n, r, str(device), torch.float32)
        mat = self._cache.get(key)
        if mat is None:
            mat = dct_matrix(n, device=device)[:r].contiguous()
            self._cache[key] = mat
        return mat

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The band-filtered image before the min-max normalisation."""
        H, W = x.shape[-2:]
        U = self._rows(H, x.device)
        V = self._rows(W, x.device)
        if self.mode == "high":
            coeff = U @ x @ V.T  # the zeroed low-frequency block
            return x - U.T @ coeff @ V
        P = U.T @ (U @ x)
        return P + ((x - P) @ V.T) @ V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = self.filtered(x.float())
            flat = y.flatten(1)
            lo = flat.amin(dim=1).view(-1, 1, 1, 1)
            span = flat.amax(dim=1).view(-1, 1, 1, 1) - lo
            # The reference divides by the span unguarded (NaN for a constant image); 1 keeps zeros.
            span = torch.where(span > 0, span, torch.ones_like(span))
            return (y - lo) / span

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, mode={self.mode}"


# --------------------------------------------------------------------------------------------------
# ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022), timm parameter names
# --------------------------------------------------------------------------------------------------
class ConvMlp(nn.Module):
    """Linear → GELU → Linear on channels-last tokens (timm ``Mlp`` names ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """7×7 depthwise conv → LayerNorm → MLP (×4) → layer scale ``gamma`` → residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, ls_init_value: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # channels-last tokens for the LayerNorm and MLP
        # Layer scale in channels-last, before permuting back: one broadcast over the last axis.
        y = self.mlp(self.norm(y)) * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtStage(nn.Module):
    """Optional downsampling (LayerNorm-2d + 2×2/2 conv) then a sequence of blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, drop_path: Sequence[float]) -> None:
        super().__init__()
        if downsample:
            self.downsample: nn.Module = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, 2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, drop_path[i]) for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtHead(nn.Module):
    """timm's classifier head (global average pool → LayerNorm → Linear); Mesorch never calls it."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean((2, 3), keepdim=True)).flatten(1))


class ConvNeXt(nn.Module):
    """ConvNeXt backbone returning every stage's output (no final norm), as Mesorch uses it.

    The stem is a bias-free ``in_chans``→dims[0] 4×4/4 conv (Mesorch: 6 = image ⊕ high-pass) and a
    LayerNorm-2d. ``num_classes`` > 0 keeps timm's classifier head in the module (the authors'
    Mesorch state dict carries it, 1000×768, although it is never used); 0 drops it.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_chans: int = 6,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError("ConvNeXt: depths and dims must have the same length")
        self.dims = tuple(dims)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4, bias=False), LayerNorm2d(dims[0], eps=1e-6))
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, cur, prev = [], 0, dims[0]
        for s, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            stages.append(ConvNeXtStage(prev, dim, depth, downsample=s > 0, drop_path=dpr[cur : cur + depth]))
            cur, prev = cur + depth, dim
        self.stages = nn.Sequential(*stages)
        self.head = ConvNeXtHead(dims[-1], num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ConvNeXt init; then the stem's extra input channels get Kaiming-normal (as the
        # reference does when it widens the stem from 3 to 6 channels).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.stem[0].weight[:, 3:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


# --------------------------------------------------------------------------------------------------
# SegFormer's Mix Transformer (Xie et al., NeurIPS 2021), NVlabs parameter names
# --------------------------------------------------------------------------------------------------
class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows, then LayerNorm (eps 1e-5) on the tokens."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride, padding=patch_size // 2, bias=bias)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a grid reduced ``sr_ratio``× per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = Linear(dim, dim)
        self.kv = Linear(dim, 2 * dim)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        heads = self.num_heads
        q = self.q(x).view(B, N, heads, C // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            grid = tokens_to_grid(x, H, W)
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block (LayerNorms eps 1e-6): efficient attention, then Mix-FFN."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop: float = 0.0,
        attn_drop: float = 0.0, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class MixVisionTransformer(nn.Module):
    """MiT encoder (NVlabs layout: ``patch_embed{i}``, ``block{i}``, ``norm{i}``), four stage outputs.

    The first patch embedding takes ``in_chans`` (Mesorch: 6 = image ⊕ low-pass) without bias.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratio: float = 4.0,
        depths: Sequence[int] = (3, 4, 18, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        in_chans: int = 6,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if not (len(num_heads) == len(depths) == len(sr_ratios) == n):
            raise ValueError("MixVisionTransformer: embed_dims, num_heads, depths, sr_ratios differ in length")
        self.num_stages = n
        prev = in_chans
        for i, dim in enumerate(embed_dims):
            first = i == 0
            embed = OverlapPatchEmbed(prev, dim, 7 if first else 3, 4 if first else 2, bias=not first)
            setattr(self, f"patch_embed{i + 1}", embed)
            prev = dim
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        for i, dim in enumerate(embed_dims):
            blocks = nn.ModuleList(
                MiTBlock(dim, num_heads[i], mlp_ratio, sr_ratios[i], drop_rate, attn_drop_rate, dpr[cur + j])
                for j in range(depths[i])
            )
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
            cur += depths[i]
        self._init_weights()

    def _init_weights(self) -> None:
        # NVlabs' init (trunc-normal linears, fan-out normal convs); then Kaiming-normal for the
        # extra input channels of the first patch embedding, as the reference's stem swap does.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            nn.init.kaiming_normal_(self.patch_embed1.proj.weight[:, 3:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        B = x.shape[0]
        outs = []
        for i in range(1, self.num_stages + 1):
            x, H, W = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i}")(x)
            # (B, H, W, C) viewed as NCHW: channels-last strides, which the next conv accepts as is.
            x = x.view(B, H, W, -1).permute(0, 3, 1, 2)
            outs.append(x)
        return outs


# --------------------------------------------------------------------------------------------------
# Multi-scale heads
# --------------------------------------------------------------------------------------------------
def _transposed_stack(dims: Sequence[int], level: int) -> nn.Module:
    """Transposed convs (4×4, stride 2, padding 1: exact ×2) from stride 2^(level+1) to stride 4.

    Channels go down the backbone's pyramid (e.g. 768→384→192→96). No norm or activation between
    them (as in the reference). A single step is a bare layer, several a Sequential (key names).
    """
    chans = [dims[i] for i in range(level - 1, -1, -1)]
    layers = [nn.ConvTranspose2d(a, b, 4, 2, 1) for a, b in itertools.pairwise(chans)]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _stack_layers(module: nn.Module) -> list[nn.ConvTranspose2d]:
    return list(module) if isinstance(module, nn.Sequential) else [module]


class MultiScaleUpsample(nn.Module):
    """``upsample``: one transposed-conv stack per kept scale of stride > 4 (``upsample{c,s}{2,3,4}``)."""

    def __init__(self, conv_dims: Sequence[int], mit_dims: Sequence[int], scales: Sequence[str]) -> None:
        super().__init__()
        # Registration order c2, s2, c3, s3, c4, s4 is the authors' state-dict order.
        for level in range(2, max(len(conv_dims), len(mit_dims)) + 1):
            for branch, dims in (("c", conv_dims), ("s", mit_dims)):
                if f"{branch}{level}" in scales:
                    setattr(self, f"upsample{branch}{level}", _transposed_stack(dims, level))

    def stack(self, scale: str) -> nn.Module | None:
        """The stack for ``scale`` (e.g. ``"c3"``), or None for the stride-4 scales (identity)."""
        return getattr(self, f"upsample{scale}", None)

    def forward(self, scale: str, x: torch.Tensor) -> torch.Tensor:
        stack = self.stack(scale)
        return x if stack is None else stack(x)


class ScoreNetwork(nn.Module):
    """``gate``: per-pixel softmax weights over the scales from image ⊕ high ⊕ low (9 channels).

    conv 7×7/2 (9→d) → [LayerNorm-2d → conv 3×3 → conv 1×1 (d→4d) → conv 1×1 (4d→d) → GELU] + skip
    → conv 7×7/2 (d→scales) → softmax over channels (float32). The paper's adaptive weighting.

    The three convolutions inside the bracket have no activation between them, so they compose to
    a single 3×3 convolution; it is formed from the parameters on every call (differentiable, so
    training sees the same function and gradients) and saves ~19 GFLOPs at 512.
    """

    def __init__(self, in_chans: int = 9, dim: int = 192, expansion: int = 4, num_scales: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim, 7, 2, 3)
        self.invert = nn.Sequential(
            LayerNorm2d(dim, eps=1e-6),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.Conv2d(dim, expansion * dim, 1),
            nn.Conv2d(expansion * dim, dim, 1),
            nn.GELU(),
        )
        self.conv2 = nn.Conv2d(dim, num_scales, 7, 2, 3)

    def folded_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the single 3×3 conv equal to ``invert[3] ∘ invert[2] ∘ invert[1]``."""
        conv3, pw1, pw2 = self.invert[1], self.invert[2], self.invert[3]
        w1 = pw1.weight.flatten(1)  # (4d, d)
        w2 = pw2.weight.flatten(1)  # (d, 4d)
        w21 = w2 @ w1
        weight = (w21 @ conv3.weight.flatten(1)).view_as(conv3.weight)
        bias = F.linear(conv3.bias, w21) + F.linear(pw1.bias, w2) + pw2.bias
        return weight, bias

    def inverted_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """``invert(x)``: LayerNorm-2d, the three linear convolutions as one folded 3×3 conv, GELU."""
        weight, bias = self.folded_conv()
        x = F.conv2d(self.invert[0](x), weight.to(x.dtype), bias.to(x.dtype), padding=1)
        return self.invert[4](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x + self.inverted_bottleneck(x)
        return self.conv2(x).float().softmax(dim=1)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class Mesorch(ForgeryModel):
    """Mesorch / Mesorch-P (AAAI 2025): hybrid ConvNeXt + MiT encoders over DCT-filtered inputs.

    Args:
        scales: which stride-4 logit maps are mixed, in order, from ``c1..c4`` (ConvNeXt stages)
            and ``s1..s4`` (MiT stages). Mesorch: all eight; Mesorch-P: ``c1 c3 s2 s3 s4``.
        fusion: ``"gate"`` (score-network softmax weights, Mesorch) or ``"sum"`` (Mesorch-P).
        conv_depths, conv_dims: ConvNeXt configuration (Tiny: 3-3-9-3, 96-192-384-768). Stages
            deeper than the deepest kept ``c`` scale are not built (Mesorch-P drops stage 4).
        conv_num_classes: size of the unused ConvNeXt classifier head kept for checkpoint
            compatibility (1000 in Mesorch; 0 = no head, as Mesorch-P).
        mit_dims, mit_heads, mit_depths, mit_sr_ratios, mit_mlp_ratio, mit_drop_path_rate: MiT
            configuration (B3: 64-128-320-512, heads 1-2-5-8, depths 3-4-18-3, sr 8-4-2-1, ×4, 0.1).
        gate_dim, gate_expansion: score-network width (192) and its 1×1 expansion (×4).
        high_alpha, low_alpha: DCT filter cut-offs (0.05 and 0.95).
        input_size: the square side the model insists on (512, the training size; None = any
            multiple of 32).
        channels_last: keep conv weights and branch inputs in NHWC memory layout (same values; about
            25 % faster on CPU and 1.8× faster bf16 training on an H100). Its state-dict tensors
            are then not contiguous: save them with ``forgeloc.io.save_state_dict`` (or
            ``.contiguous()`` them) rather than a bare ``safetensors.torch.save_file``.

    The ImageNet backbones are loaded by :func:`load_pretrained` (``create_model("mesorch",
    pretrained={"conv_pretrained_path": ..., "seg_pretrained_path": ...})``), not by the constructor.

    Output: ``pred_mask`` and ``logits`` (B,1,H,W) at the input resolution (the reference always
    resizes to 512; identical at 512), ``features`` = the MiT stage-3 map (B, mit_dims[2], H/16,
    W/16), and with a mask ``loss`` = BCE-with-logits (``loss_terms["bce"]``).
    """

    size_divisor = 32

    def __init__(
        self,
        scales: Sequence[str] = ALL_SCALES,
        fusion: str = "gate",
        conv_depths: Sequence[int] = (3, 3, 9, 3),
        conv_dims: Sequence[int] = (96, 192, 384, 768),
        conv_num_classes: int = 1000,
        conv_drop_path_rate: float = 0.0,
        mit_dims: Sequence[int] = (64, 128, 320, 512),
        mit_heads: Sequence[int] = (1, 2, 5, 8),
        mit_depths: Sequence[int] = (3, 4, 18, 3),
        mit_sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mit_mlp_ratio: float = 4.0,
        mit_drop_path_rate: float = 0.1,
        gate_dim: int = 192,
        gate_expansion: int = 4,
        high_alpha: float = 0.05,
        low_alpha: float = 0.95,
        input_size: int | None = 512,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        scales = tuple(scales)
        unknown = [s for s in scales if s not in ALL_SCALES]
        if unknown or not scales or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct names from {ALL_SCALES}, got {scales}")
        if list(scales) != sorted(scales, key=ALL_SCALES.index):
            raise ValueError(f"scales must be listed in the order {ALL_SCALES}, got {scales}")
        if fusion not in ("gate", "sum"):
            raise ValueError(f"fusion must be 'gate' or 'sum', got {fusion!r}")
        if len(conv_dims) != 4 or len(mit_dims) != 4:
            raise ValueError("Mesorch needs four ConvNeXt and four MiT stages (strides 4 to 32)")
        if input_size is not None and input_size % self.size_divisor:
            raise ValueError(f"input_size must be a multiple of {self.size_divisor}, got {input_size}")
        self.scales = scales
        self.fusion = fusion
        self.input_size = input_size
        conv_stages = max(int(s[1]) for s in scales if s[0] == "c") if any(s[0] == "c" for s in scales) else 1

        self.convnext = ConvNeXt(
            conv_depths[:conv_stages], conv_dims[:conv_stages], in_chans=6,
            num_classes=conv_num_classes, drop_path_rate=conv_drop_path_rate,
        )
        self.segformer = MixVisionTransformer(
            mit_dims, mit_heads, mit_mlp_ratio, mit_depths, mit_sr_ratios, in_chans=6,
            drop_path_rate=mit_drop_path_rate,
        )
        self.upsample = MultiScaleUpsample(conv_dims, mit_dims, scales)
        # Parameter-free modules in the reference's order (they hold no state-dict entries).
        self.low_dct = DctFrequencyExtractor(low_alpha, "low")
        self.high_dct = DctFrequencyExtractor(high_alpha, "high")
        self.inverse = nn.ModuleList(
            nn.Conv2d(conv_dims[0] if s[0] == "c" else mit_dims[0], 1, 1) for s in scales
        )
        self.gate = ScoreNetwork(9, gate_dim, gate_expansion, len(scales)) if fusion == "gate" else None
        self.channels_last = bool(channels_last)
        if self.channels_last:  # conv weights in NHWC like the activations (see _channels_last)
            self.to(memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------------------------
    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC strides for the branch inputs when ``channels_last``.

        With the conv weights also NHWC every conv stays NHWC, and ConvNeXt's channels-last
        LayerNorm/MLP and MiT's token layout need no transposing copies (measured in
        docs/models/mesorch.md).
        """
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        self.check_input_size(image)
        high, low = self.frequency_views(image)
        feats = self.encode(image, high, low)
        maps = torch.cat([self.scale_logits(k, s, feats[s]) for k, s in enumerate(self.scales)], dim=1)
        low_res = self.mix(maps, self.scale_weights(image, high, low))
        logits = F.interpolate(low_res, size=image.shape[-2:], mode="bilinear", align_corners=True).float()
        return self.sigmoid_bce_output(logits, batch, features=feats["s3"])

    def frequency_views(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DCT high-pass and low-pass copies of the image (computed in float32, returned in its dtype)."""
        return self.high_dct(image).to(image.dtype), self.low_dct(image).to(image.dtype)

    def encode(self, image: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> dict[str, torch.Tensor]:
        """ConvNeXt on image ⊕ high-pass, MiT on image ⊕ low-pass: maps ``c1``.. and ``s1``..``s4``."""
        conv_feats = self.convnext(self._layout(torch.cat([image, high], dim=1)))
        mit_feats = self.segformer(self._layout(torch.cat([image, low], dim=1)))
        feats = {f"c{i + 1}": f for i, f in enumerate(conv_feats)}
        feats.update({f"s{i + 1}": f for i, f in enumerate(mit_feats)})
        return feats

    def scale_logits(self, index: int, scale: str, feat: torch.Tensor) -> torch.Tensor:
        """One scale's stride-4 logit map: ``inverse[index](upsample(scale, feat))``.

        The 1×1 head is folded into the last transposed conv of the stack. The head (C→1) is
        linear and pointwise, so applied after a transposed conv it equals a transposed conv to
        one channel with weight Σ_c w_c·W[:, c] and bias w·b + b₀: one output channel is computed
        instead of C at the largest resolution. :meth:`forward_intermediates` runs them unfolded.
        """
        head = self.inverse[index]
        stack = self.upsample.stack(scale)
        if stack is None:
            return head(feat)
        layers = _stack_layers(stack)
        for layer in layers[:-1]:
            feat = layer(feat)
        last = layers[-1]
        w = head.weight.flatten(1)  # (1, C)
        weight = torch.einsum("ickl,oc->iokl", last.weight, w)
        bias = F.linear(last.bias, w) + head.bias
        return F.conv_transpose2d(feat, weight.to(feat.dtype), bias.to(feat.dtype), stride=2, padding=1)

    def scale_weights(self, image: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor | None:
        """The score network's per-pixel softmax over the scales (Mesorch), or None: summed (Mesorch-P)."""
        if self.gate is None:
            return None
        return self.gate(self._layout(torch.cat([image, high, low], dim=1)))

    @staticmethod
    def mix(maps: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The stride-4 logits: the scales' maps weighted per pixel, or summed when ``weights`` is None."""
        return (maps if weights is None else weights * maps).sum(dim=1, keepdim=True)

    def forward_intermediates(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named intermediate of the reference forward (for parity checks and analysis).

        Keys: ``high_freq``, ``low_freq``, ``convnext.stage{i}``, ``segformer.stage{i}``,
        ``upsample.{k}`` (the k-th kept scale at stride 4, full channels), ``reduced.{k}``,
        ``gate`` (if any), ``logits_lowres``, ``logits``. This path runs the transposed convs
        and the 1×1 heads unfolded.
        """
        high, low = self.frequency_views(image)
        out: dict[str, torch.Tensor] = {"high_freq": high, "low_freq": low}
        feats = self.encode(image, high, low)
        for name, feat in feats.items():
            branch = "convnext" if name[0] == "c" else "segformer"
            out[f"{branch}.stage{int(name[1]) - 1}"] = feat
        reduced = []
        for k, scale in enumerate(self.scales):
            out[f"upsample.{k}"] = up = self.upsample(scale, feats[scale])
            out[f"reduced.{k}"] = self.inverse[k](up)
            reduced.append(out[f"reduced.{k}"])
        weights = self.scale_weights(image, high, low)
        if weights is not None:
            out["gate"] = weights
        out["logits_lowres"] = low_res = self.mix(torch.cat(reduced, dim=1), weights)
        out["logits"] = F.interpolate(low_res, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return out


# --------------------------------------------------------------------------------------------------
# ImageNet backbones (training only)
# --------------------------------------------------------------------------------------------------
def _require_file(path: str | Path, what: str, expected: str, source: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} does not exist. Expected {expected}, published as {source}. "
            "forgeloc never downloads weights; fetch the file and pass its local path."
        )
    return path


def convnext_timm_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Facebook's ConvNeXt checkpoint names → timm's (identity for a timm state dict).

    Facebook: ``downsample_layers.0`` (stem), ``downsample_layers.{s}``, ``stages.{s}.{i}.dwconv``,
    ``pwconv1/2``, final ``norm``, ``head``; timm: ``stem``, ``stages.{s}.downsample``,
    ``stages.{s}.blocks.{i}.conv_dw``, ``mlp.fc1/2``, ``head.norm``, ``head.fc``.
    """
    if not any(k.startswith("downsample_layers.") for k in sd):
        return dict(sd)
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "downsample_layers":
            s = int(parts[1])
            new = ["stem", *parts[2:]] if s == 0 else ["stages", parts[1], "downsample", *parts[2:]]
        elif parts[0] == "stages":
            rest = [{"dwconv": "conv_dw", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2"}.get(p, p) for p in parts[3:]]
            new = ["stages", parts[1], "blocks", parts[2], *rest]
        elif parts[0] == "norm":
            new = ["head", "norm", *parts[1:]]
        elif parts[0] == "head":
            new = ["head", "fc", *parts[1:]]
        else:
            new = parts
        out[".".join(new)] = value
    return out


def _load_backbone(module: nn.Module, sd: dict[str, torch.Tensor], first: str, source: Path) -> None:
    """Strict load of everything but the first conv, whose RGB filters go to input channels 0–2."""
    rgb = sd.pop(f"{first}.weight", None)
    sd.pop(f"{first}.bias", None)  # the widened first conv has no bias (reference)
    own = module.state_dict()
    report = KeyReport.compare(sd, own)
    report.missing.remove(f"{first}.weight")  # compared below: only its RGB part comes from the file
    target = own[f"{first}.weight"]
    if rgb is None or rgb.shape[0] != target.shape[0] or rgb.shape[1] != 3 or rgb.shape[2:] != target.shape[2:]:
        found = None if rgb is None else tuple(rgb.shape)
        report.wrong_shape.append(f"{first}.weight: file {found} vs the RGB part of {tuple(target.shape)}")
    report.check(source, f"the {type(module).__name__} backbone", strict=True)
    module.load_state_dict(sd, strict=False)
    with torch.no_grad():
        weight = module.get_parameter(f"{first}.weight")
        weight[:, :3].copy_(rgb)
        nn.init.kaiming_normal_(weight[:, 3:])


def load_convnext_pretrained(convnext: ConvNeXt, path: str | Path) -> None:
    """Load ImageNet ConvNeXt weights (timm or Facebook layout) and widen the stem to 6 channels.

    As the reference (spec §4): the pretrained RGB stem filters go to input channels 0–2, channels
    3–5 are Kaiming-normal, the stem bias is dropped. Stages and head absent from ``convnext``
    (Mesorch-P keeps three stages and no head) are skipped; every other tensor must match.
    """
    path = _require_file(path, "conv_pretrained_path", "ImageNet ConvNeXt-Tiny weights", CONVNEXT_TINY_SOURCES)
    sd = convnext_timm_layout(load_state_dict_file(path))
    n_stages = len(convnext.stages)
    sd = {
        k: v for k, v in sd.items()
        if not (k.startswith("stages.") and int(k.split(".")[1]) >= n_stages)
        and not (k.startswith("head.") and convnext.head is None)
        and not k.startswith("norm_pre.")
    }
    _load_backbone(convnext, sd, "stem.0", path)
    logger.info("Mesorch: ConvNeXt initialised from %s", path)


def load_mit_pretrained(mit: MixVisionTransformer, path: str | Path) -> None:
    """Load NVlabs' ImageNet MiT weights (``mit_b3.pth``) and widen the first patch embedding.

    The classifier ``head.*`` of the file is ignored (the reference loads with ``strict=False``);
    the RGB filters of ``patch_embed1.proj`` go to channels 0–2, channels 3–5 are Kaiming-normal,
    its bias is dropped. Unlike the reference, any other missing or unexpected key is an error.
    """
    path = _require_file(path, "seg_pretrained_path", "NVlabs' ImageNet 'mit_b3.pth'", MIT_B3_SOURCE)
    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("head.")}
    _load_backbone(mit, sd, "patch_embed1.proj", path)
    logger.info("Mesorch: MiT initialised from %s", path)


def load_pretrained(
    model: Mesorch, conv_pretrained_path: str | Path | None = None, seg_pretrained_path: str | Path | None = None
) -> None:
    """Initialise the two encoders from local ImageNet weights (training only); ``None`` leaves one
    at its random init and says so.

    ``conv_pretrained_path``: ConvNeXt weights, timm or Facebook layout (:func:`load_convnext_pretrained`);
    ``seg_pretrained_path``: NVlabs' ``mit_b3.pth`` (:func:`load_mit_pretrained`).
    """
    if conv_pretrained_path is not None:
        load_convnext_pretrained(model.convnext, conv_pretrained_path)
    else:
        logger.info("Mesorch: no conv_pretrained_path given; ConvNeXt starts from random weights")
    if seg_pretrained_path is not None:
        load_mit_pretrained(model.segformer, seg_pretrained_path)
    else:
        logger.info("Mesorch: no seg_pretrained_path given; MiT starts from random weights")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Mesorch) -> dict[str, torch.Tensor]:
    """The authors' checkpoints already use this model's keys (the module tree mirrors theirs): as is.

    (ImageNet backbone files are another matter: :func:`convnext_timm_layout` maps Facebook's
    ConvNeXt names for :func:`load_pretrained`.)
    """
    return dict(state_dict)


# --------------------------------------------------------------------------------------------------
# Registered configurations
# --------------------------------------------------------------------------------------------------
# Small but complete: the same code with one block per stage, narrow widths and 128 px inputs.
_TINY = dict(
    conv_depths=(1, 1, 1, 1), conv_dims=(16, 32, 64, 128), conv_num_classes=0,
    mit_dims=(16, 32, 64, 128), mit_heads=(1, 1, 2, 4), mit_depths=(1, 1, 1, 1),
    gate_dim=16, input_size=128,
)


@register_model
def mesorch(**kwargs: Any) -> Mesorch:
    """Mesorch (AAAI 2025): ConvNeXt-Tiny + MiT-B3, 8 scales, score-network weighting, 512 px.

    Loads the authors' ``mesorch-98.pth`` strictly (85,753,944 parameters).
    """
    return Mesorch(**kwargs)


@register_model
def mesorch_p(**kwargs: Any) -> Mesorch:
    """Mesorch-P: the pruned variant (scales c1 c3 s2 s3 s4 summed, ConvNeXt stage 4 and head removed).

    Loads the authors' ``mesorch_p-118.pth`` strictly (62,235,365 parameters).
    """
    kwargs.setdefault("scales", PRUNED_SCALES)
    kwargs.setdefault("fusion", "sum")
    kwargs.setdefault("conv_num_classes", 0)
    return Mesorch(**kwargs)


@register_model
def mesorch_tiny(**kwargs: Any) -> Mesorch:
    """A CPU-sized Mesorch for tests and smoke runs (same code, ~0.3 M parameters, 128 px)."""
    for key, value in _TINY.items():
        kwargs.setdefault(key, value)
    return Mesorch(**kwargs)


@register_model
def mesorch_p_tiny(**kwargs: Any) -> Mesorch:
    """A CPU-sized Mesorch-P (same code as ``mesorch_p``, widths of ``mesorch_tiny``)."""
    for key, value in _TINY.items():
        kwargs.setdefault(key, value)
    return mesorch_p(**kwargs)
