"""Building blocks shared by several model families (kept here so they are written once).

Key names inside these modules are part of the authors' checkpoint layouts; do not rename
attributes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# ``FORGELOC_CPU_LINEAR=blas`` sends :class:`Linear` back to ``F.linear`` (PyTorch's BLAS path).
_CPU_LINEAR_BACKEND = os.environ.get("FORGELOC_CPU_LINEAR", "onednn").strip().lower()
if _CPU_LINEAR_BACKEND not in ("onednn", "blas"):
    raise ValueError(f"FORGELOC_CPU_LINEAR must be 'onednn' or 'blas', got {_CPU_LINEAR_BACKEND!r}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on CPU in float32 computed by oneDNN as a 1x1 convolution.

    PyTorch sends CPU ``linear``/``matmul`` to its BLAS (MKL in the official wheels) and
    convolutions to oneDNN. MKL picks its kernels by CPU vendor: on AMD processors it runs an AVX2
    path, about half the float32 GEMM throughput that oneDNN gets from the same AVX-512 cores
    (210 vs 460 GFLOP/s on 2 threads of an AMD EPYC; on Intel CPUs the two are close). A 1x1
    convolution over the tokens laid out as a (1, K, 1, M) channels-last image *is* that GEMM, with
    autograd and autocast like any convolution. Same float32 arithmetic, another summation order:
    results differ from ``F.linear`` by rounding only (~1e-7 relative). Under tracing (fvcore's
    FLOP counter) it stays ``F.linear`` so that the count is filed under "linear".
    """
    if (
        _CPU_LINEAR_BACKEND == "blas"
        or torch.jit.is_tracing()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or x.ndim < 2
        or not torch.backends.mkldnn.is_available()
        or not torch.backends.mkldnn.enabled
    ):
        return F.linear(x, weight, bias)
    lead, k = x.shape[:-1], x.shape[-1]
    tokens = x.reshape(1, 1, -1, k).permute(0, 3, 1, 2)  # (1, K, 1, M), channels-last strides
    out = F.conv2d(tokens, weight.view(*weight.shape, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) running through :func:`linear`."""

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


class DWConv(nn.Module):
    """3x3 depthwise convolution applied to a token sequence laid out on an H x W grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


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
        x = self.act(self.dwconv(self.fc1(x), H, W))
        x = self.drop(x)
        return self.drop(self.fc2(x))
