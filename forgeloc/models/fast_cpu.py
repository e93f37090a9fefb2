"""CPU kernels behind forgeloc's models: oneDNN GEMMs, convolution + GELU fused, inference chunks.

The models' own code reads like their papers; this module holds what makes them fast on a CPU
without changing the function they compute (``tests/test_fast_paths.py`` checks each kernel
against the plain PyTorch ops):

* :func:`linear` runs a float32 CPU GEMM as a oneDNN 1x1 convolution, with autograd, in training
  and inference alike (used by :class:`forgeloc.models.layers.Linear`). Where it runs is chosen
  once per process: ``FORGELOC_CPU_LINEAR=onednn|blas`` in the environment, or
  :func:`set_cpu_linear_backend`; :func:`cpu_linear_backend` says which one is in effect.
* :func:`conv2d_gelu` and :func:`linear` with ``gelu=True`` apply the exact GELU as a oneDNN
  post-op of the convolution when no gradient is needed (the fused op has no autograd).
* :func:`inference_chunk` sizes the row bands and token chunks of the inference-only block
  variants, which :func:`forgeloc.models.fusion.fuse_for_inference` swaps in.
"""

from __future__ import annotations

import functools
import math
import os
import platform

import torch
import torch.nn.functional as F

__all__ = [
    "INFERENCE_CHUNK_ELEMENTS",
    "conv2d_gelu",
    "cpu_linear_backend",
    "inference_chunk",
    "linear",
    "set_cpu_linear_backend",
]

_BACKENDS = ("onednn", "blas")


def _backend_from_environment() -> str:
    default = "onednn" if platform.machine().lower() in ("x86_64", "amd64") else "blas"
    name = os.environ.get("FORGELOC_CPU_LINEAR", default).strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"FORGELOC_CPU_LINEAR must be 'onednn' or 'blas', got {name!r}")
    return name


# Where CPU float32 GEMMs of :func:`linear` run: oneDNN (default on x86-64) or PyTorch's BLAS
# (``F.linear``; the default elsewhere). Read once, at import; :func:`set_cpu_linear_backend` changes it.
_cpu_linear_backend = _backend_from_environment()


def set_cpu_linear_backend(name: str) -> str:
    """Choose where :func:`linear` runs CPU float32 GEMMs from now on: ``"onednn"`` or ``"blas"``.

    ``"blas"`` is plain ``F.linear`` (and unfused GELUs); the environment variable
    ``FORGELOC_CPU_LINEAR`` sets the same choice for a whole process. Returns the previous choice.
    """
    global _cpu_linear_backend
    if name not in _BACKENDS:
        raise ValueError(f"the CPU linear backend must be 'onednn' or 'blas', got {name!r}")
    previous, _cpu_linear_backend = _cpu_linear_backend, name
    return previous


def cpu_linear_backend() -> str:
    """``"onednn"`` or ``"blas"``: where :func:`linear` runs CPU float32 GEMMs in this process."""
    usable = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    return "onednn" if _cpu_linear_backend == "onednn" and usable else "blas"


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


def _fused_op_allowed(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
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

    Without autograd on CPU (float32, no autocast) oneDNN applies the erf GELU as a post-op of
    the convolution: one pass over the output instead of two, and no second buffer of the widest
    activation in the block (an MLP's hidden layer). oneDNN's erf differs from ATen's by float32
    rounding (~1e-6 absolute). Anywhere else it is the two ops.
    """
    if _fused_op_allowed(x, weight, bias):
        pad = [padding, padding]
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, [1, 1], [1, 1], groups, "gelu", [], "none")
    return F.gelu(F.conv2d(x, weight, bias, padding=padding, groups=groups))


# The inference-only block variants split per-token (or per-row) work so that no intermediate
# exceeds about this many elements (16 MB in float32): the same numbers, a smaller peak of resident
# memory. ``fuse_for_inference(model, chunk_elements=...)`` takes another size. Smaller chunks
# save more memory but cut the GEMMs into thin slices that run below the CPU's peak: with 1 << 20
# the three paper models were 2-15 % slower at 512² on 2 threads (AVX-512 and AVX2 alike; measured
# on 2026-12-02 with benchmarks/compare_reference.py), with no chunking at all no faster than this.
INFERENCE_CHUNK_ELEMENTS = 1 << 22


def inference_chunk(width: int, chunk_elements: int = INFERENCE_CHUNK_ELEMENTS) -> int:
    """How many rows of ``width`` elements one inference chunk of ``chunk_elements`` holds (at least one)."""
    return max(1, chunk_elements // width)
