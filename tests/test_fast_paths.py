"""The CPU fast paths (oneDNN GEMMs, fused GELU, chunked inference) compute the same functions.

The kernels live in ``forgeloc.models.fast_cpu``; the inference-only block variants are swapped in
by ``forgeloc.models.fuse_for_inference``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from forgeloc import create_model
from forgeloc.models import fuse_for_inference, fused_for_inference, layers, set_cpu_linear_backend, unfuse
from forgeloc.models.fast_cpu import conv2d_gelu, linear
from forgeloc.models.layers import MixFFN


@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24), (1, 3, 4, 24)])
@pytest.mark.parametrize("gelu", [False, True])
def test_linear_equals_f_linear_values_and_gradients(shape, gelu):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    ours = linear(x, w, b, gelu=gelu)
    ref_in = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref = F.linear(*ref_in)
    ref = F.gelu(ref) if gelu else ref
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    ours.backward(grad)
    ref.backward(grad)
    for a, r in zip((x, w, b), ref_in, strict=True):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # the fused inference kernel
        torch.testing.assert_close(linear(x, w, b, gelu=gelu), ref.detach(), atol=1e-5, rtol=1e-5)


def test_linear_takes_non_contiguous_input_and_no_bias():
    x = torch.randn(6, 24).t()  # (24, 6), strided
    w = torch.randn(5, 6)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)


def test_blas_backend_is_f_linear():
    previous = set_cpu_linear_backend("blas")
    try:
        x, w, b = torch.randn(9, 16), torch.randn(8, 16), torch.randn(8)
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    finally:
        set_cpu_linear_backend(previous)


@pytest.mark.parametrize("groups,kernel", [(1, 1), (12, 3), (1, 3)])
def test_conv2d_gelu_fused_equals_two_ops(groups, kernel):
    torch.manual_seed(1)
    x = torch.randn(2, 12, 9, 11).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 12 // groups, kernel, kernel)
    b = torch.randn(12)
    ref = F.gelu(F.conv2d(x, w, b, padding=kernel // 2, groups=groups))
    with torch.inference_mode():
        out = conv2d_gelu(x, w, b, padding=kernel // 2, groups=groups)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_mix_ffn_bands_equal_the_whole_grid():
    """Banded inference (halo rows, zero padding only at the image border) is the same function."""
    torch.manual_seed(2)
    ffn = MixFFN(8, 32).eval()
    H, W = 11, 6
    x = torch.randn(2, H * W, 8)
    whole = ffn(x, H, W)  # grad mode: the plain path
    fuse_for_inference(ffn, chunk_elements=2 * W * 32 * 3)  # bands of 3 rows: 4 bands
    with torch.no_grad():
        banded = ffn(x, H, W)
    torch.testing.assert_close(banded, whole.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_elements", [512, None])  # many chunks and bands / the default size
@pytest.mark.parametrize("name", ["mesorch_tiny", "mesorch_p_tiny", "sparsevit_tiny"])
def test_inference_paths_equal_the_autograd_path(name, chunk_elements):
    """A whole fused model (fused GELU, chunked, in place) gives the training graph's outputs."""
    torch.manual_seed(3)
    model = create_model(name).eval()
    for p in model.parameters():  # layer scales and biases far from their 1e-6 / 0 inits
        p.data.normal_(0, 0.2 if p.ndim > 1 else 0.5)
    size = model.input_size
    image = torch.randn(1, 3, size, size)
    reference = model({"image": image})["logits"].detach()
    fuse_for_inference(model, **({"chunk_elements": chunk_elements} if chunk_elements else {}))
    with torch.inference_mode():
        fast = model({"image": image})["logits"]
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_backend_choice_is_validated_and_reported():
    code = "from forgeloc.models import fast_cpu; print(fast_cpu.cpu_linear_backend())"
    for value, expected in (("blas", "blas"), ("onednn", None)):
        env = {**os.environ, "FORGELOC_CPU_LINEAR": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == (expected or ("onednn" if torch.backends.mkldnn.is_available() else "blas"))
    env = {**os.environ, "FORGELOC_CPU_LINEAR": "mkl"}
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "FORGELOC_CPU_LINEAR must be" in bad.stderr


def test_token_grid_keeps_channels_last_for_a_single_image():
    """A (1, H·W, C) token tensor viewed as a map must read as channels-last (see tokens_to_grid)."""
    x = torch.randn(1, 6 * 5, 7)
    grid = layers.tokens_to_grid(x, 6, 5)
    assert grid.shape == (1, 7, 6, 5) and grid.data_ptr() == x.data_ptr()
    weight = torch.randn(7, 1, 3, 3)
    out = F.conv2d(grid, weight, padding=1, groups=7)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    # the spelling it replaces: the convolution falls back to NCHW
    naive = x.transpose(1, 2).reshape(1, 7, 6, 5)
    assert F.conv2d(naive, weight, padding=1, groups=7).is_contiguous()


def test_backend_switch_is_validated():
    with pytest.raises(ValueError, match="'onednn' or 'blas'"):
        set_cpu_linear_backend("mkl")


@pytest.mark.parametrize("name", ["mesorch_tiny", "sparsevit_tiny"])
def test_fusion_keeps_the_state_dict_and_is_undone_for_training(name):
    model = create_model(name).eval()
    plain_classes = [type(m) for m in model.modules()]
    before = model.state_dict()
    fuse_for_inference(model)
    fused = [m for m in model.modules() if type(m).__name__.startswith("Fused")]
    assert fused, "no block was fused"
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(RuntimeError, match="fused for inference"):
        model({"image": torch.randn(1, 3, model.input_size, model.input_size)})  # autograd on
    model.train()
    assert [type(m) for m in model.modules()] == plain_classes
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(model)
    model.eval()
    unfuse(fuse_for_inference(model))
    assert [type(m) for m in model.modules()] == plain_classes


def test_scoped_fusion_restores_only_what_it_fused():
    model = create_model("sparsevit_tiny").eval()
    block = model.encoder_net.blocks1[0]
    with fused_for_inference(model):
        assert type(block).__name__ == "FusedCBlock"
    assert type(block).__name__ == "CBlock"
    fuse_for_inference(model)
    with fused_for_inference(model):
        pass
    assert type(block).__name__ == "FusedCBlock"
    with fused_for_inference(unfuse(model), enabled=False):
        assert type(block).__name__ == "CBlock"


def test_predictor_fuses_on_the_cpu_only_without_autocast():
    from forgeloc.inference.predictor import Predictor

    model = create_model("mesorch_tiny")
    Predictor(model, device="cpu", amp="bf16")
    assert not any(type(m).__name__.startswith("Fused") for m in model.modules())
    Predictor(model, device="cpu")
    assert any(type(m).__name__.startswith("Fused") for m in model.modules())
