"""Building blocks shared by several model families (kept here so they are written once).

Key names inside these modules are part of the authors' checkpoint layouts; do not rename
attributes.
"""

from __future__ import annotations

import functools
import math
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

# Where CPU float32 GEMMs of :func:`linear` run: oneDNN (default on x86-64) or PyTorch's BLAS
# (``F.linear``; the default elsewhere). ``FORGELOC_CPU_LINEAR=blas|onednn`` overrides.
_CPU_LINEAR_BACKEND = os.environ.get(
    "FORGELOC_CPU_LINEAR", "onednn" if platform.machine().lower() in ("x86_64", "amd64") else "blas"
).strip().lower()
if _CPU_LINEAR_BACKEND not in ("onednn", "blas"):
    raise ValueError(f"FORGELOC_CPU_LINEAR must be 'onednn' or 'blas', got {_CPU_LINEAR_BACKEND!r}")


def cpu_linear_backend() -> str:
    """``"onednn"`` or ``"blas"``: where :func:`linear` runs CPU float32 GEMMs in this process."""
    usable = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return "onednn" if _CPU_LINEAR_BACKEND == "onednn" and usable else "blas"


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _onednn_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` is a float32 CPU tensor for oneDNN's float32 kernels.

    Not under tracing (see :func:`linear`) nor under CPU autocast, where PyTorch already runs
    ``F.linear`` in bf16 through oneDNN (faster than a bf16 1x1 convolution) and where the fused
    ops, which autocast does not know, would stay in float32.
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.jit.is_tracing()
        and cpu_linear_backend() == "onednn"
        and not _autocast_on_cpu()
    )


def _fused_inference(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether oneDNN's fused ``conv + activation`` op may run (it has no autograd)."""
    if not _onednn_float32(x):
        return False
    if not torch.is_grad_enabled():
        return True
    return not (x.requires_grad or any(p is not None and p.requires_grad for p in params))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then exact GELU if ``gelu``); on CPU in float32 run by oneDNN.

    PyTorch sends CPU ``linear``/``matmul`` to its BLAS (MKL in the official wheels) and
    convolutions to oneDNN. MKL picks its kernels by CPU vendor: on AMD processors it runs an AVX2
    path, about half the float32 GEMM throughput that oneDNN gets from the same AVX-512 cores
    (210 vs 460 GFLOP/s on 2 threads of an AMD EPYC; on Intel CPUs the two are close). A 1x1
    convolution over the M tokens laid out as a (1, K, rows, cols) channels-last image *is* that
    GEMM, with autograd like any convolution. Same float32 arithmetic, another summation order:
    results differ from ``F.linear`` by rounding only (~1e-7 relative). Under tracing (fvcore's
    FLOP counter) it stays ``F.linear`` so that the count is filed under "linear". With ``gelu``,
    inference fuses the activation into the GEMM (see :func:`conv2d_gelu`).
    """
    if not _onednn_float32(x) or x.ndim < 2:
        out = F.linear(x, weight, bias)
        return F.gelu(out) if gelu else out
    lead, k = x.shape[:-1], x.shape[-1]
    rows, cols = _grid(x.numel() // k)
    # (1, K, rows, cols) with channels-last strides; a grid with both sides > 1 is unambiguously
    # channels-last, so the backward pass keeps that layout too (with a 1-row image its gradients
    # come back as NCHW and every layer pays a transposing copy).
    tokens = x.reshape(1, rows, cols, k).permute(0, 3, 1, 2)
    weight = weight.view(*weight.shape, 1, 1)
    out = conv2d_gelu(tokens, weight, bias) if gelu else F.conv2d(tokens, weight, bias)
    return out.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])


@functools.lru_cache(maxsize=256)
def _grid(m: int) -> tuple[int, int]:
    """``m`` tokens as a rows x cols grid, as square as the divisors of ``m`` allow."""
    rows = math.isqrt(m)
    while m % rows:
        rows -= 1
    return rows, m // rows


def conv2d_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0, groups: int = 1
) -> torch.Tensor:
    """``F.gelu(F.conv2d(x, weight, bias, padding=padding, groups=groups))`` (stride 1, exact GELU).

    At inference on CPU (float32, no autograd, no autocast) oneDNN applies the erf GELU as a
    post-op of the convolution: one pass over the output instead of two, and no second buffer of
    the widest activation in the block (an MLP's hidden layer). oneDNN's erf differs from ATen's
    by float32 rounding (~1e-6 absolute).
    """
    if _fused_inference(x, weight, bias):
        pad = [padding, padding]
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, [1, 1], [1, 1], groups, "gelu", [], "none")
    return F.gelu(F.conv2d(x, weight, bias, padding=padding, groups=groups))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) running through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# Inference splits per-token (or per-row) work so that no intermediate exceeds about this many
# elements (4 MB in float32): the same numbers, a smaller peak of resident memory.
INFERENCE_CHUNK_ELEMENTS = 1 << 20


def chunked_inference(x: torch.Tensor) -> bool:
    """Whether to run the chunked, in-place inference paths: CPU, no autograd, no autocast, no tracing.

    On a GPU the extra kernel launches would cost more than the memory saved; under CPU bf16
    autocast the chunks' dtype casts cost more than they save (Mesorch-P 0.31 s chunked against
    0.26 s whole, `forgeloc bench --amp bf16`), and bf16 activations are half the size anyway.
    """
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not _autocast_on_cpu()
    )


def inference_chunk(width: int) -> int:
    """How many rows of ``width`` elements one inference chunk holds (at least one)."""
    return max(1, INFERENCE_CHUNK_ELEMENTS // width)


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

    def forward(self, x: torch.Tensor, H: int, W: int, gelu: bool = False) -> torch.Tensor:
        C = x.shape[-1]
        x = tokens_to_grid(x, H, W)
        conv = self.dwconv
        x = conv2d_gelu(x, conv.weight, conv.bias, padding=1, groups=C) if gelu else conv(x)
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
        wide = x.shape[0] * x.shape[1] * self.fc1.out_features > INFERENCE_CHUNK_ELEMENTS
        if wide and chunked_inference(x):  # (not under tracing: FLOP counts without halo rows)
            return self._forward_bands(x, H, W)
        # the GELU (``act``, exact) runs inside the depthwise conv: conv2d_gelu
        x = self.dwconv(self.fc1(x), H, W, gelu=True)
        x = self.drop(x)
        return self.drop(self.fc2(x))

    def _forward_bands(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The same function, computed in horizontal bands of the grid (inference).

        Each band runs fc1 on its rows plus one halo row above and below (what the 3x3 depthwise
        conv needs; zero padding still applies at the image border), so the widest activation
        (the hidden layer, 4x the tokens) exists for one band at a time.
        """
        B, N, C = x.shape
        hidden = self.fc1.out_features
        grid = x.view(B, H, W, C)
        out = x.new_empty(B, H, W, self.fc2.out_features)
        rows = inference_chunk(B * W * hidden)
        conv = self.dwconv.dwconv
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            a, b = max(0, r0 - 1), min(H, r1 + 1)
            h = self.fc1(grid[:, a:b]).permute(0, 3, 1, 2)  # (B, hidden, b - a, W), channels-last
            h = conv2d_gelu(h, conv.weight, conv.bias, padding=1, groups=hidden)[:, :, r0 - a : r1 - a]
            out[:, r0:r1] = self.drop(self.fc2(self.drop(h.permute(0, 2, 3, 1))))
        return out.view(B, N, -1)
