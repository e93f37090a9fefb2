"""Inference-only variants of the hot blocks, swapped in by one explicit step.

The models' ``forward`` methods are the paper's computation and serve training and inference
alike. For inference on a CPU, :func:`fuse_for_inference` turns the hot blocks into variants that
compute the same function with less memory traffic (``tests/test_fast_paths.py``):

* the exact GELU runs as a oneDNN post-op of the convolution (or GEMM) before it
  (:func:`forgeloc.models.fast_cpu.conv2d_gelu`), which has no autograd;
* ConvNeXt's per-token MLP runs on chunks of tokens written over the depthwise conv's output;
  SparseViT's conv MLP runs on row bands written over the BatchNorm output; Mix-FFN runs on row
  bands with one halo row each. Their 4x-wide hidden layers exist for a few MB at a time.

``Predictor`` (CPU, no autocast), ``forgeloc bench`` (CPU inference without autocast) and the
evaluation loop (same condition) call it; training never sees these variants.

The swap changes each block's class to a subclass that adds no parameter or buffer (the pattern of
``torch.nn.utils.parametrize``), so state-dict keys and values stay those of the plain model.
A fused block refuses to run with autograd enabled; ``model.train()`` turns the blocks back into
their plain classes, and :func:`unfuse` does so explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

from forgeloc.models.fast_cpu import INFERENCE_CHUNK_ELEMENTS, conv2d_gelu, inference_chunk, linear
from forgeloc.models.gridnet import ConvBNReLUStack
from forgeloc.models.layers import MixFFN, tokens_to_grid
from forgeloc.models.mesorch import ConvMlp, ConvNeXtBlock, ScoreNetwork
from forgeloc.models.sparsevit import CBlock, CMlp

__all__ = ["fuse_for_inference", "fused_for_inference", "unfuse"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class _FusedBlock(nn.Module):
    """Base of the fused variants: eval mode only, no autograd, back to ``plain`` on ``train()``."""

    plain: type[nn.Module]
    chunk_elements: int

    def _require_inference(self) -> None:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{self.plain.__name__} is fused for inference (forgeloc.models.fuse_for_inference) and has no "
                "autograd: run the model under torch.inference_mode() or torch.no_grad(), or undo the fusion "
                "with forgeloc.models.unfuse(model)"
            )

    def train(self, mode: bool = True) -> nn.Module:
        if mode:  # training needs the plain blocks (autograd, dropout, drop-path)
            _restore(self)
        return nn.Module.train(self, mode)


class FusedMixFFN(_FusedBlock, MixFFN):
    """Mix-FFN with GELU fused into the depthwise conv; on row bands when the hidden layer is large."""

    plain = MixFFN

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        self._require_inference()
        B, N, _ = x.shape
        if B * N * self.fc1.out_features > self.chunk_elements:
            return self._forward_bands(x, H, W)
        conv = self.dwconv.dwconv
        h = conv2d_gelu(tokens_to_grid(self.fc1(x), H, W), conv.weight, conv.bias, padding=1, groups=conv.groups)
        return self.fc2(h.flatten(2).transpose(1, 2))

    def _forward_bands(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The same function, computed in horizontal bands of the grid.

        Each band runs fc1 on its rows plus one halo row above and below (what the 3x3 depthwise
        conv needs; zero padding still applies at the image border), so the widest activation
        (the hidden layer, 4x the tokens) exists for one band at a time.
        """
        B, N, C = x.shape
        hidden = self.fc1.out_features
        grid = x.view(B, H, W, C)
        out = x.new_empty(B, H, W, self.fc2.out_features)
        rows = inference_chunk(B * W * hidden, self.chunk_elements)
        conv = self.dwconv.dwconv
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            a, b = max(0, r0 - 1), min(H, r1 + 1)
            h = self.fc1(grid[:, a:b]).permute(0, 3, 1, 2)  # (B, hidden, b - a, W), channels-last
            h = conv2d_gelu(h, conv.weight, conv.bias, padding=1, groups=hidden)[:, :, r0 - a : r1 - a]
            out[:, r0:r1] = self.fc2(h.permute(0, 2, 3, 1))
        return out.view(B, N, -1)


class FusedCMlp(_FusedBlock, CMlp):
    """SparseViT's conv MLP with GELU fused into ``fc1``."""

    plain = CMlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        return self.fc2(conv2d_gelu(x, self.fc1.weight, self.fc1.bias))


class FusedCBlock(_FusedBlock, CBlock):
    """UniFormer's CBlock with its MLP residual computed in place, on bands of rows."""

    plain = CBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        # x + mlp(norm2(x)), the per-pixel MLP written band by band over the BatchNorm output:
        # the 4x-wide hidden map exists for one band at a time.
        y = self.norm2(x)
        B, _, H, W = y.shape
        rows = inference_chunk(B * W * self.mlp.fc1.out_channels, self.chunk_elements)
        for r0 in range(0, H, rows):
            band = y[:, :, r0 : r0 + rows]
            band.copy_(self.mlp(band))
        return y.add_(x)


class FusedConvMlp(_FusedBlock, ConvMlp):
    """ConvNeXt's MLP with GELU fused into the ``fc1`` GEMM."""

    plain = ConvMlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, gelu=True))


class FusedConvNeXtBlock(_FusedBlock, ConvNeXtBlock):
    """ConvNeXt block whose LayerNorm → MLP → layer scale runs on chunks of tokens, in place."""

    plain = ConvNeXtBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        # Written over the depthwise conv's output, which then takes the residual; the 4x-wide
        # hidden layer exists for one chunk at a time.
        tokens = y.reshape(-1, y.shape[-1])  # a view when channels-last (the default), else a copy
        step = inference_chunk(self.mlp.fc1.out_features, self.chunk_elements)
        for chunk in tokens.split(step):
            chunk.copy_(self.mlp(self.norm(chunk)).mul_(self.gamma))
        return tokens.view_as(y).add_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FusedScoreNetwork(_FusedBlock, ScoreNetwork):
    """Mesorch's score network with GELU fused into the folded 3×3 conv."""

    plain = ScoreNetwork

    def inverted_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        weight, bias = self.folded_conv()
        return conv2d_gelu(self.invert[0](x), weight.to(x.dtype), bias.to(x.dtype), padding=1)


class FusedConvBNReLUStack(_FusedBlock, ConvBNReLUStack):
    """GridNet's conv → BatchNorm → ReLU stacks with each (eval-mode) BatchNorm folded into its
    conv's weight and bias, computed on each call from the unchanged parameters: one pass over the
    activations less per layer."""

    plain = ConvBNReLUStack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_inference()
        layers = list(self)
        for conv, bn in zip(layers[0::3], layers[1::3], strict=True):
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
            x = torch.relu_(torch.nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding))
        return x


_FUSED: dict[type[nn.Module], type[_FusedBlock]] = {
    cls.plain: cls
    for cls in (FusedMixFFN, FusedCMlp, FusedCBlock, FusedConvMlp, FusedConvNeXtBlock, FusedScoreNetwork,
                FusedConvBNReLUStack)
}


def _restore(block: _FusedBlock) -> None:
    block.__class__ = block.plain
    del block.chunk_elements


def _swap_in(model: nn.Module, chunk_elements: int) -> list[_FusedBlock]:
    """Fuse the plain hot blocks of ``model``; return the blocks that were swapped."""
    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval mode (call model.eval() first)")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    swapped = []
    for module in model.modules():
        fused = _FUSED.get(type(module))
        if fused is not None:
            module.__class__ = fused
            module.chunk_elements = int(chunk_elements)
            swapped.append(module)
    return swapped


def fuse_for_inference(model: ModuleT, chunk_elements: int = INFERENCE_CHUNK_ELEMENTS) -> ModuleT:
    """Swap the hot blocks of ``model`` (in eval mode) for their inference variants; return it.

    The same function on a CPU in float32 with less memory traffic (see the module docstring);
    meant for ``torch.inference_mode()`` on the CPU without autocast. ``chunk_elements`` bounds
    the size of the chunked intermediates (about 16 MB in float32 by default). Modules of other
    types are left alone, so any model may be passed; state-dict keys do not change.
    """
    _swap_in(model, chunk_elements)
    for module in model.modules():
        if isinstance(module, _FusedBlock):
            module.chunk_elements = int(chunk_elements)
    return model


def unfuse(model: ModuleT) -> ModuleT:
    """Turn every fused block of ``model`` back into its plain class (a no-op on a plain model)."""
    for module in model.modules():
        if isinstance(module, _FusedBlock):
            _restore(module)
    return model


@contextmanager
def fused_for_inference(model: ModuleT, enabled: bool = True) -> Iterator[ModuleT]:
    """The model with its plain hot blocks fused for the duration of a ``with`` block (if ``enabled``).

    Blocks fused here are plain again on exit; blocks that were fused on entry stay fused.
    """
    swapped = _swap_in(model, INFERENCE_CHUNK_ELEMENTS) if enabled else []
    try:
        yield model
    finally:
        for module in swapped:
            if isinstance(module, _FusedBlock):  # model.train() inside the block may have restored it
                _restore(module)
