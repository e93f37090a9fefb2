"""Building blocks shared by several model families (kept here so they are written once).

Plain PyTorch layers; the CPU kernels live in :mod:`forgeloc.models.fast_cpu`, the inference-only
variants of the blocks in :mod:`forgeloc.models.fusion`.

Key names inside these modules are part of the authors' checkpoint layouts; do not rename
attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgeloc.models.fast_cpu import linear


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose GEMM runs through
    :func:`forgeloc.models.fast_cpu.linear` (oneDNN on x86-64 CPUs, with autograd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (Huang et al., 2016): zero whole residual branches at random."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth as a module; identity in eval mode or when ``drop_prob`` is 0."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (same parameters as ``nn.LayerNorm(C)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def tokens_to_grid(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H·W, C) tokens as a (B, C, H, W) map with channels-last strides (a view when contiguous).

    Spelled ``view(B, H, W, C).permute``: the shorter ``transpose(1, 2).reshape(B, C, H, W)`` gives
    a size-1 batch a stride that PyTorch does not recognise as channels-last, and the convolution
    then runs (and returns its gradients) in NCHW, with transposing copies around it.
    """
    B, _, C = x.shape
    return x.reshape(B, H, W, C).permute(0, 3, 1, 2)


class DWConv(nn.Module):
    """3x3 depthwise convolution applied to a token sequence laid out on an H x W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.dwconv(tokens_to_grid(x, H, W))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Mix-FFN of SegFormer (Xie et al., NeurIPS 2021): Linear → 3x3 depthwise conv → GELU → Linear.

    The depthwise conv on the token grid gives the FFN its positional information. Used by
    SparseViT's sparse-attention blocks and by MiT in Mesorch (same parameter names).
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(self.dwconv(x, H, W))
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)
