"""Mesorch / Mesorch-P: parity with the authors' code, checkpoint loading, DCT filters, training."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from parity_weights import parity_state_dict
from safetensors.torch import load_file, save_file

from forgeloc import create_model, list_models
from forgeloc.checkpoint import CheckpointError
from forgeloc.models.mesorch import (
    DctFrequencyExtractor,
    Mesorch,
    convnext_timm_layout,
    dct_matrix,
)

# Tolerances of shared/parity/mesorch/README.md ("Recommended for a re-implementation").
TOL_FREQ = dict(atol=5e-5, rtol=1e-5)
TOL_FEAT = dict(atol=1e-4, rtol=1e-4)
TOL_PROB = dict(atol=5e-5, rtol=1e-4)
TOL_LOSS = dict(atol=1e-5, rtol=1e-5)

VARIANTS = {
    "mesorch": ("statedict_mesorch.tsv", "mesorch_head.safetensors", 85_753_944),
    "mesorch_p": ("statedict_mesorch_p.tsv", "mesorch_p_head.safetensors", 62_235_365),
}


def _read_tsv(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    lines = shared_path("parity", "mesorch", name).read_text().splitlines()
    assert lines[0].split("\t") == ["name", "shape", "dtype"]
    rows = []
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")), dtype))
    return rows


def _authors_training_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """What IMDLBenCo's trainer saves (mesorch-98.pth layout): DDP-prefixed model + training state."""
    return {
        "model": {f"module.{k}": v for k, v in state_dict.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0, 1]}]},
        "epoch": 3,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "args": argparse.Namespace(model="Mesorch", lr=1e-4, epochs=150, if_resizing=True, image_size=512),
    }


# --------------------------------------------------------------------------------------------------
# Full-size models with the parity weights, loaded through an authors'-format checkpoint
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parity_models(tmp_path_factory):
    """Each variant built by ``create_model(name, checkpoint=<fake mesorch-98.pth>)``.

    The fake is a DDP training dict holding the parity weights, whose names and shapes come from
    the reference's state-dict listing; loading it checks the authors' key layout end to end.
    """
    models = {}
    folder = tmp_path_factory.mktemp("mesorch_ckpt")
    for name, (tsv, _, _) in VARIANTS.items():
        template = {k: torch.empty(shape) for k, shape, _ in _read_tsv(tsv)}
        path = folder / f"{name}.pth"
        torch.save(_authors_training_dict(parity_state_dict(template)), path)
        del template
        models[name] = create_model(name, checkpoint=path).eval()
        path.unlink()
    return models


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_matches_reference_listing(name, parity_models):
    tsv, _, n_params = VARIANTS[name]
    model = parity_models[name]
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == _read_tsv(tsv)  # same names, shapes, dtypes, and the same order
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not list(model.buffers())  # DCT matrices are cached attributes, not state


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_reference(name, parity_models):
    _, head_file, _ = VARIANTS[name]
    folder = shared_path("parity", "mesorch")
    inputs = load_file(folder / "mesorch_input.safetensors")
    expected = load_file(folder / head_file)
    expected.update(load_file(folder / "mesorch_convnext.safetensors"))
    expected.update(load_file(folder / "mesorch_segformer.safetensors"))
    model = parity_models[name]
    with torch.no_grad():
        inter = model.forward_intermediates(inputs["image"])
        out = model({"image": inputs["image"], "mask": inputs["mask"]})

    torch.testing.assert_close(inter["high_freq"], inputs["high_freq"], **TOL_FREQ)
    torch.testing.assert_close(inter["low_freq"], inputs["low_freq"], **TOL_FREQ)
    # Mesorch-P builds ConvNeXt stages 0-2 only; its branch features equal Mesorch's (README).
    n_conv = 4 if name == "mesorch" else 3
    assert f"convnext.stage{n_conv}" not in inter
    for i in range(n_conv):
        torch.testing.assert_close(inter[f"convnext.stage{i}"], expected[f"convnext.stage{i}"], **TOL_FEAT)
    for i in range(4):
        torch.testing.assert_close(inter[f"segformer.stage{i}"], expected[f"segformer.stage{i}"], **TOL_FEAT)
    n_scales = len(model.scales)
    assert sum(k.startswith("reduced.") for k in expected) == n_scales
    for i in range(n_scales):
        up = inter[f"upsample.{i}"]
        torch.testing.assert_close(up[:, :8], expected[f"upsample.{i}.first8ch"], **TOL_FEAT)
        torch.testing.assert_close(up.mean(1, keepdim=True), expected[f"upsample.{i}.chmean"], **TOL_FEAT)
        torch.testing.assert_close(inter[f"reduced.{i}"], expected[f"reduced.{i}"], **TOL_FEAT)
    if name == "mesorch":
        torch.testing.assert_close(inter["gate"], expected["gate"], **TOL_PROB)
    else:
        assert "gate" not in inter and "gate" not in expected
    torch.testing.assert_close(inter["logits_lowres"], expected["logits_lowres"], **TOL_FEAT)
    torch.testing.assert_close(inter["logits"], expected["logits"], **TOL_FEAT)

    # The fast forward (folded heads and gate) against the same stored outputs.
    torch.testing.assert_close(out["logits"], expected["logits"], **TOL_FEAT)
    torch.testing.assert_close(out["pred_mask"], expected["pred_mask"], **TOL_PROB)
    torch.testing.assert_close(out["loss"].reshape(1), expected["backward_loss"].reshape(1), **TOL_LOSS)
    assert out["loss_terms"]["bce"] is out["loss"]
    torch.testing.assert_close(out["features"], expected["segformer.stage2"], **TOL_FEAT)
    assert out["features"].shape == (1, 320, 32, 32)


def test_preprocessing_matches_fixture():
    """The fixture's model input is OpenCV-bilinear resize + ImageNet normalisation of the raw image."""
    cv2 = pytest.importorskip("cv2")
    inputs = load_file(shared_path("parity", "mesorch", "mesorch_input.safetensors"))
    raw = inputs["image_raw_uint8_hwc"].numpy()
    resized = cv2.resize(raw, (512, 512), interpolation=cv2.INTER_LINEAR)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    image = (torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0 - mean) / std
    torch.testing.assert_close(image.unsqueeze(0), inputs["image"], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# DCT filters
# --------------------------------------------------------------------------------------------------
def test_dct_matrix_is_orthonormal_dct2():
    d = dct_matrix(12, dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(12, dtype=torch.float64))
    x = torch.randn(12, dtype=torch.float64)
    n = torch.arange(12, dtype=torch.float64)
    for k in (0, 1, 5, 11):  # DCT-II with orthonormal scaling, written out
        scale = math.sqrt((1 if k == 0 else 2) / 12)
        expected = scale * (x * torch.cos(math.pi * k * (2 * n + 1) / 24)).sum()
        torch.testing.assert_close((d @ x)[k], expected)


@pytest.mark.parametrize("size", [(512, 512), (64, 96)])
def test_dct_filters_keep_exactly_the_spec_regions(size):
    """Full DCT → mask → inverse DCT (spec §3) equals the low-rank filters, region for region."""
    H, W = size
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    dh, dw = dct_matrix(H, dtype=torch.float64), dct_matrix(W, dtype=torch.float64)
    coeff = dh @ x @ dw.T
    rows = torch.arange(H).view(H, 1)
    cols = torch.arange(W).view(1, W)
    ah, aw = int(0.05 * H), int(0.05 * W)
    keep_high = ~((rows < ah) & (cols < aw))
    bh, bw = int(0.95 * H), int(0.95 * W)
    keep_low = ~((rows >= H - bh) & (cols >= W - bw))
    if size == (512, 512):  # the numbers the spec spells out
        assert (ah, aw, H - bh, W - bw) == (25, 25, 26, 26)
        assert keep_high.sum() == 512 * 512 - 25 * 25
        assert keep_low.sum() == 512 * 512 - 486 * 486  # an L shape: rows < 26 or columns < 26
        assert bool(keep_low[25, 511]) and bool(keep_low[511, 25]) and not bool(keep_low[26, 26])
    for alpha, mode, keep in ((0.05, "high", keep_high), (0.95, "low", keep_low)):
        filt = DctFrequencyExtractor(alpha, mode)
        got = filt.filtered(x.float()).double()
        explicit = dh.T @ (coeff * keep) @ dw
        torch.testing.assert_close(got, explicit, atol=2e-5, rtol=0)
        out = filt(x.float())
        flat = out.flatten(1)
        torch.testing.assert_close(flat.amin(1), torch.zeros(2))
        torch.testing.assert_close(flat.amax(1), torch.ones(2))
        span = explicit.flatten(1).amax(1) - explicit.flatten(1).amin(1)
        expected = (explicit - explicit.flatten(1).amin(1).view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)
        torch.testing.assert_close(out.double(), expected, atol=5e-6, rtol=0)


def test_dct_filters_cache_and_degenerate_inputs():
    filt = DctFrequencyExtractor(0.05, "high")
    out = filt(torch.full((1, 3, 64, 64), 0.7))
    assert torch.equal(out, torch.zeros_like(out))  # the reference would return NaN here
    filt(torch.randn(1, 3, 32, 64))
    assert {k[:2] for k in filt._cache} == {(64, 3), (32, 1)}
    assert not list(filt.state_dict())
    with pytest.raises(ValueError, match="alpha"):
        DctFrequencyExtractor(1.5, "low")


# --------------------------------------------------------------------------------------------------
# Tiny configurations: contract, folding, sizes, training
# --------------------------------------------------------------------------------------------------
def test_registered_names():
    assert {"mesorch", "mesorch_p", "mesorch_tiny", "mesorch_p_tiny"} <= set(list_models())


@pytest.mark.parametrize("name", ["mesorch_tiny", "mesorch_p_tiny"])
def test_tiny_output_contract(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert model.input_size == 128 and model.size_divisor == 32
    image = torch.randn(2, 3, 128, 128)
    mask = (torch.rand(2, 1, 128, 128) > 0.7).float()
    for train in (True, False):
        model.train(train)
        out = model({"image": image, "mask": mask, "label": torch.ones(2), "name": ["a", "b"]})
        assert out["pred_mask"].shape == out["logits"].shape == (2, 1, 128, 128)
        assert out["pred_mask"].dtype == torch.float32
        assert out["pred_mask"].min() >= 0 and out["pred_mask"].max() <= 1
        torch.testing.assert_close(out["pred_mask"], torch.sigmoid(out["logits"]))
        torch.testing.assert_close(out["loss"], F.binary_cross_entropy_with_logits(out["logits"], mask))
        assert set(out["loss_terms"]) == {"bce"}
        assert out["features"].shape == (2, 64, 8, 8)  # MiT stage 3, stride 16
    model.eval()
    with torch.no_grad():
        out = model({"image": image})
    assert "loss" not in out and "loss_terms" not in out


def test_input_size_rules():
    model = create_model("mesorch_tiny").eval()
    with pytest.raises(ValueError, match="128x128"):
        model({"image": torch.randn(1, 3, 160, 160)})
    free = create_model("mesorch_tiny", input_size=None).eval()
    with torch.no_grad():
        out = free({"image": torch.randn(1, 3, 96, 160)})
    assert out["pred_mask"].shape == (1, 1, 96, 160)  # the output follows the input size
    with pytest.raises(ValueError, match="divisible by 32"):
        free({"image": torch.randn(1, 3, 100, 160)})
    with pytest.raises(ValueError, match="scales"):
        Mesorch(scales=("c1", "x9"))
    with pytest.raises(ValueError, match="order"):
        Mesorch(scales=("s1", "c1"))


@pytest.mark.parametrize("name", ["mesorch_tiny", "mesorch_p_tiny"])
def test_folded_computation_equals_plain_layers(name):
    """The fast path (folded gate convs, heads folded into the transposed convs) is the same function."""
    torch.manual_seed(1)
    model = create_model(name, input_size=None).double().eval()
    for p in model.parameters():  # non-trivial biases and scales everywhere
        p.data.normal_(0, 0.3 if p.ndim > 1 else 0.5)
    image = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        inter = model.forward_intermediates(image)
        out = model({"image": image})
        if model.gate is not None:
            g = model.gate
            x = g.conv1(torch.cat([image, inter["high_freq"], inter["low_freq"]], 1))
            plain = g.conv2(x + g.invert(x)).float().softmax(1)
            torch.testing.assert_close(inter["gate"], plain)
    torch.testing.assert_close(out["logits"], inter["logits"].float(), atol=1e-5, rtol=1e-5)
    # The memory layout is an implementation detail: NCHW gives the same numbers.
    nchw = create_model(name, input_size=None, channels_last=False).double().eval()
    nchw.load_state_dict(model.state_dict())
    assert all(v.is_contiguous() for v in nchw.state_dict().values())
    assert not model.convnext.stem[0].weight.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(nchw({"image": image})["logits"], out["logits"], atol=1e-9, rtol=1e-9)


def test_pruned_variant_structure():
    full, pruned = create_model("mesorch_tiny"), create_model("mesorch_p_tiny")
    assert pruned.scales == ("c1", "c3", "s2", "s3", "s4") and pruned.gate is None
    assert len(pruned.convnext.stages) == 3 and pruned.convnext.head is None
    assert len(full.convnext.stages) == 4 and len(full.inverse) == 8
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())


def test_tiny_trains():
    """A few AdamW steps on a fixed synthetic batch (random textures, a pasted blob) lower the loss."""
    torch.manual_seed(0)
    model = create_model("mesorch_tiny").train()
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    images, masks = [], []
    for cy, cx, r in ((40, 50, 22), (90, 70, 28), (64, 30, 18), (30, 96, 20)):
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).float()
        img = torch.randn(3, 128, 128) * 0.3
        img = img + blob * torch.randn(3, 128, 128) * 1.5  # the "tampered" area has another texture
        images.append(img)
        masks.append(blob[None])
    batch = {"image": torch.stack(images), "mask": torch.stack(masks)}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    losses = []
    for _ in range(12):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.7 * losses[0], losses


# --------------------------------------------------------------------------------------------------
# Checkpoints and pretrained backbones
# --------------------------------------------------------------------------------------------------
def test_authors_checkpoint_via_create_model_and_convert(tmp_path):
    import typer
    from typer.testing import CliRunner

    from forgeloc.cli import convert as convert_command

    app = typer.Typer()  # only `convert`: this test must not depend on the other sub-commands

    @app.callback()
    def _root() -> None:
        pass

    convert_command.register(app)

    torch.manual_seed(3)
    source = create_model("mesorch_p_tiny")
    sd = {k: torch.randn_like(v) for k, v in source.state_dict().items()}
    pth = tmp_path / "mesorch_p-118.pth"
    torch.save(_authors_training_dict(sd), pth)

    loaded = create_model("mesorch_p_tiny", checkpoint=pth)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k

    result = CliRunner().invoke(app, ["convert", str(pth), str(tmp_path / "out"), "--model", "mesorch_p_tiny"])
    assert result.exit_code == 0, result.output
    converted = create_model("mesorch_p_tiny", checkpoint=tmp_path / "out")
    for k, v in converted.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # A Mesorch checkpoint does not fit Mesorch-P (extra scales, gate): a clear error, not a silent load.
    full = {k: torch.zeros_like(v) for k, v in create_model("mesorch_tiny").state_dict().items()}
    torch.save(_authors_training_dict(full), tmp_path / "mesorch-98.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        create_model("mesorch_p_tiny", checkpoint=tmp_path / "mesorch-98.pth")


def _fake_imagenet_convnext(model: Mesorch, facebook: bool, extra_stage: bool) -> dict[str, torch.Tensor]:
    """An ImageNet ConvNeXt state dict with the dims of ``model`` (3-channel stem with bias)."""
    sd = {k: torch.randn_like(v) for k, v in model.convnext.state_dict().items()}
    sd["stem.0.weight"] = torch.randn(sd["stem.0.weight"].shape[0], 3, 4, 4)
    sd["stem.0.bias"] = torch.randn(sd["stem.0.weight"].shape[0])
    if extra_stage:  # what Mesorch-P's ConvNeXt drops from the file
        sd["stages.3.blocks.0.gamma"] = torch.randn(7)
        sd["head.fc.weight"] = torch.randn(10, 7)
    if not facebook:
        return sd
    inverse = {}
    for key, value in sd.items():
        key = key.replace("stem.", "downsample_layers.0.")
        parts = key.split(".")
        if parts[0] == "stages" and parts[2] == "downsample":
            key = ".".join(["downsample_layers", parts[1], *parts[3:]])
        elif parts[0] == "stages":
            key = ".".join(["stages", parts[1], *parts[3:]])
            key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        elif parts[0] == "head":
            key = ".".join(parts[2:]) if parts[1] == "norm" else ".".join(["head", *parts[2:]])
            key = "norm." + key if parts[1] == "norm" else key
        inverse[key] = value
    return inverse


@pytest.mark.parametrize("name", ["mesorch_tiny", "mesorch_p_tiny"])
@pytest.mark.parametrize("facebook", [False, True])
def test_convnext_pretrained(tmp_path, name, facebook):
    torch.manual_seed(4)
    template = create_model(name)
    sd = _fake_imagenet_convnext(template, facebook, extra_stage=name == "mesorch_p_tiny")
    if facebook:
        assert "downsample_layers.0.0.weight" in sd and any(".pwconv1." in k for k in sd)
        path = tmp_path / "convnext_tiny_1k_224_ema.pth"
        torch.save({"model": sd}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    timm_sd = convnext_timm_layout(sd)
    model = create_model(name, conv_pretrained_path=path)
    own = model.convnext.state_dict()
    stem = own["stem.0.weight"]
    assert stem.shape[1] == 6
    assert torch.equal(stem[:, :3], timm_sd["stem.0.weight"])
    assert 0.5 < stem[:, 3:].std() * math.sqrt(3 * 16 / 2) < 1.5  # Kaiming normal, fan-in 48
    for k, v in own.items():
        if k != "stem.0.weight":
            assert torch.equal(v, timm_sd[k]), k


def test_mit_pretrained(tmp_path):
    torch.manual_seed(5)
    template = create_model("mesorch_tiny")
    sd = {k: torch.randn_like(v) for k, v in template.segformer.state_dict().items()}
    dim = sd["patch_embed1.proj.weight"].shape[0]
    sd["patch_embed1.proj.weight"] = torch.randn(dim, 3, 7, 7)
    sd["patch_embed1.proj.bias"] = torch.randn(dim)
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 128), torch.randn(1000)  # NVlabs classifier
    path = tmp_path / "mit_b3.pth"
    torch.save(sd, path)
    model = create_model("mesorch_tiny", seg_pretrained_path=path)
    own = model.segformer.state_dict()
    assert torch.equal(own["patch_embed1.proj.weight"][:, :3], sd["patch_embed1.proj.weight"])
    assert "patch_embed1.proj.bias" not in own
    for k, v in own.items():
        if k != "patch_embed1.proj.weight":
            assert torch.equal(v, sd[k]), k
    # A file for another architecture is refused instead of half-loaded.
    del sd["block1.0.attn.q.weight"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="block1.0.attn.q.weight"):
        create_model("mesorch_tiny", seg_pretrained_path=path)


def test_missing_pretrained_files_name_their_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mit_b3\.pth.*NVlabs/SegFormer"):
        create_model("mesorch_tiny", seg_pretrained_path=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"convnext_tiny\.in12k_ft_in1k"):
        create_model("mesorch_p_tiny", conv_pretrained_path=tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------------------------
# FLOP counting (what `forgeloc bench` does)
# --------------------------------------------------------------------------------------------------
def test_fvcore_traces_dict_input():
    fvcore = pytest.importorskip("fvcore.nn")
    flops = {}
    for name in ("mesorch_tiny", "mesorch_p_tiny"):
        model = create_model(name).eval()
        analysis = fvcore.FlopCountAnalysis(model, ({"image": torch.randn(1, 3, 128, 128)},))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        flops[name] = analysis.total()
        by_module = analysis.by_module()
        assert by_module["convnext"] > 0 and by_module["segformer"] > 0
        assert (by_module["gate"] > 0) == (name == "mesorch_tiny")
    assert 0 < flops["mesorch_p_tiny"] < flops["mesorch_tiny"]
