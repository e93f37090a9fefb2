"""SparseViT: parity with the authors' network, checkpoint loading, pretrained-backbone rules, training.

Parity fixtures (``shared/parity/sparsevit``) were produced with IMDLBenCo's reference SparseViT on
name-seeded weights; tolerances are the fixture README's.
"""

from __future__ import annotations

import argparse
import logging
import math
import pathlib

import pytest
import torch
from conftest import shared_path
from parity_weights import parity_state_dict
from safetensors.torch import load_file
from torch.testing import assert_close

from forgeloc.models import create_model
from forgeloc.models.sparsevit import (
    SparseViT,
    load_uniformer_weights,
    sparse_group,
    sparse_ungroup,
)

TOL = {"rtol": 1e-4, "atol": 1e-4}  # features, logits, probabilities, loss, block outputs, tokens
TOL_STAGE12 = {"rtol": 1e-4, "atol": 2e-2}  # conv stages with |x| up to ~5e3
TOL_GRAD = {"rtol": 1e-3, "atol": 1e-6}
TOL_BN = {"rtol": 1e-4, "atol": 1e-4}


def fixture(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(shared_path("parity", "sparsevit", name)))


def read_tsv(name: str) -> list[tuple[str, str, str]]:
    lines = shared_path("parity", "sparsevit", name).read_text().splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines]


def load_parity(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(parity_state_dict(model.state_dict()), strict=True)
    return model


def set_drop_path(model: torch.nn.Module, p: float) -> None:
    for m in model.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = p


def capture(model: SparseViT, extra: dict[str, str] | None = None):
    """Forward hooks: backbone feature dict, LFF logits, and optional named submodule outputs."""
    store: dict[str, object] = {}
    handles = [
        model.encoder_net.register_forward_hook(lambda m, i, o: store.__setitem__("features", o)),
        model.lmu.register_forward_hook(lambda m, i, o: store.__setitem__("lmu_logits", o[0])),
    ]
    modules = dict(model.named_modules())
    for key, name in (extra or {}).items():
        handles.append(modules[name].register_forward_hook(lambda m, i, o, key=key: store.__setitem__(key, o)))
    return store, handles


def nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) grid → NCHW, for comparing with the reference's NCHW intermediates."""
    return x.permute(0, 3, 1, 2)


def blob_batch(n: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic images with a brighter, noisier disc and its mask (a learnable 'tampering')."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * size * 0.5 + size * 0.25).tolist()
        r = size * (0.15 + 0.1 * torch.rand(1, generator=g).item())
        m = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float()
        img = torch.randn(3, size, size, generator=g) * 0.3 + m * (1.0 + 0.8 * torch.randn(3, size, size, generator=g))
        images.append(img)
        masks.append(m[None])
    return {"image": torch.stack(images), "mask": torch.stack(masks)}


# --------------------------------------------------------------------------------------------------
# Fixtures: one default-size model shared by the parity tests (built once, ~2 s)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper_model() -> SparseViT:
    return create_model("sparsevit")


@pytest.fixture(scope="module")
def b1_run(paper_model: SparseViT):
    """One eval forward on fixture b1 with every intermediate of b1 and b1_stages captured."""
    fx = fixture("sparsevit_b1.safetensors")
    model = load_parity(paper_model).eval()
    store, handles = capture(
        model,
        {
            "stem": "encoder_net.patch_embed1",
            "stage1": f"encoder_net.blocks1.{len(model.encoder_net.blocks1) - 1}",
            "stage2": f"encoder_net.blocks2.{len(model.encoder_net.blocks2) - 1}",
            "blocks3.0": "encoder_net.blocks3.0",
            "blocks3.0.norm1": "encoder_net.blocks3.0.norm1",
            "blocks3.0.attn": "encoder_net.blocks3.0.attn",
            "blocks3.15": "encoder_net.blocks3.15",
            "blocks4.0": "encoder_net.blocks4.0",
        },
    )
    try:
        with torch.no_grad():
            out = model({"image": fx["image"], "mask": fx["mask"]})
    finally:
        for h in handles:
            h.remove()
    return fx, out, store


# --------------------------------------------------------------------------------------------------
# Layout: names, shapes, dtypes, parameter count
# --------------------------------------------------------------------------------------------------
def test_state_dict_layout_matches_reference(paper_model: SparseViT) -> None:
    rows = read_tsv("statedict.tsv")
    sd = paper_model.state_dict()
    assert list(sd) == [r[0] for r in rows]  # same names, same order
    for name, shape, dtype in rows:
        got = "x".join(str(s) for s in sd[name].shape) or "()"
        assert (got, str(sd[name].dtype).removeprefix("torch.")) == (shape, dtype), name


def test_tiny_state_dict_layout_matches_reference() -> None:
    rows = read_tsv("statedict_tiny.tsv")
    sd = create_model("sparsevit_tiny").state_dict()
    assert list(sd) == [r[0] for r in rows]
    for name, shape, dtype in rows:
        got = "x".join(str(s) for s in sd[name].shape) or "()"
        assert (got, str(sd[name].dtype).removeprefix("torch.")) == (shape, dtype), name


def test_parameter_count_and_config(paper_model: SparseViT) -> None:
    assert sum(p.numel() for p in paper_model.parameters()) == 50_345_921  # spec §8 / §10
    assert paper_model.input_size == 512
    bb = paper_model.encoder_net
    # sparse_size = 32 // rate (stage 3, rate per 5 blocks) and 16 // rate (stage 4, per 4 blocks)
    assert [b.sparse_size for b in bb.blocks3] == [4] * 5 + [8] * 5 + [16] * 5 + [32] * 5
    assert [b.sparse_size for b in bb.blocks4] == [8] * 4 + [16] * 3
    # stochastic depth 0.2 * k / 39 over the 40 blocks in order
    blocks = [*bb.blocks1, *bb.blocks2, *bb.blocks3, *bb.blocks4]
    assert [b.drop_path.drop_prob for b in blocks] == pytest.approx([0.2 * k / 39 for k in range(40)])
    assert bb.feature_names == ["third1", "third2", "third3", "third", "last1", "last"]
    assert [b.attn.num_heads for b in bb.blocks3] == [5] * 20
    assert [b.attn.num_heads for b in bb.blocks4] == [8] * 7


def test_init_follows_reference() -> None:
    torch.manual_seed(0)
    model = create_model("sparsevit_tiny")
    blk = model.encoder_net.blocks3[0]
    assert torch.all(blk.gamma_1 == 1e-6) and torch.all(model.lmu.gamma6 == 1e-6)
    assert torch.all(blk.norm1.weight == 1) and torch.all(blk.attn.qkv.bias == 0)
    assert blk.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    dw = blk.mlp.dwconv.dwconv.weight
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05) and torch.all(blk.mlp.dwconv.dwconv.bias == 0)


# --------------------------------------------------------------------------------------------------
# Sparse grouping
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("H", "S"), [(32, 4), (32, 8), (32, 16), (32, 32), (16, 8), (16, 16)])
def test_sparse_groups_match_reference(H: int, S: int) -> None:
    ref = fixture("sparse_groups.safetensors")
    ids = torch.arange(H * H).view(1, H, H, 1)
    groups = sparse_group(ids, S).squeeze(-1)
    assert torch.equal(groups, ref[f"group_tokens.H{H}.S{S}"])  # membership and reference order
    group_id = torch.empty(H * H, dtype=torch.long)
    group_id[groups.flatten()] = torch.arange(groups.shape[0]).repeat_interleave(S * S)
    assert torch.equal(group_id.view(H, H), ref[f"group_id.H{H}.S{S}"])
    g = H // S
    hh, ww = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    assert torch.equal(group_id.view(H, H), (hh % g) * g + ww % g)  # token (h, w) → group (h mod g, w mod g)


def test_sparse_ungroup_inverts_group() -> None:
    x = torch.randn(2, 16, 16, 6)
    for S in (2, 4, 8, 16):
        assert torch.equal(sparse_ungroup(sparse_group(x, S), 2, 16, 16), x)
    with pytest.raises(ValueError, match="multiple of the group side"):
        sparse_group(torch.randn(1, 12, 12, 3), 8)


# --------------------------------------------------------------------------------------------------
# Parity with the reference (fp32, CPU)
# --------------------------------------------------------------------------------------------------
def test_parity_b1_outputs(b1_run) -> None:
    fx, out, store = b1_run
    for name, value in store["features"].items():
        assert_close(value, fx[f"features.{name}"], **TOL, msg=name)
    assert list(store["features"]) == ["third1", "third2", "third3", "third", "last1", "last"]
    assert_close(store["lmu_logits"], fx["lmu_logits"], **TOL)
    assert_close(out["logits"], fx["logits"], **TOL)
    assert_close(out["pred_mask"], fx["pred_mask"], **TOL)
    assert_close(out["loss"], fx["backward_loss"], **TOL)
    assert_close(out["loss_terms"]["bce"], fx["backward_loss"], **TOL)
    assert out["features"].shape == (1, 512, 32, 32)  # the fused LFF map after its LayerNorm


def test_parity_b1_intermediates(b1_run) -> None:
    _, _, store = b1_run
    ref = fixture("sparsevit_b1_stages.safetensors")
    assert_close(nchw(store["stem"]), ref["stem"], **TOL_STAGE12)
    assert_close(store["stage1"], ref["stage1"], **TOL_STAGE12)
    assert_close(store["stage2"], ref["stage2"], **TOL_STAGE12)
    for name in ("blocks3.0", "blocks3.15", "blocks4.0"):
        assert_close(nchw(store[name]), ref[name], **TOL, msg=name)
    # Tokens in the reference's group order: our grouping reproduces it (block 0: S = 4, 64 groups).
    assert_close(sparse_group(store["blocks3.0.norm1"], 4), ref["blocks3.0.norm1_tokens"], **TOL)
    assert_close(sparse_group(store["blocks3.0.attn"], 4), ref["blocks3.0.attn_tokens"], **TOL)


def test_parity_b2(paper_model: SparseViT) -> None:
    fx = fixture("sparsevit_b2.safetensors")
    model = load_parity(paper_model).eval()
    store, handles = capture(model)
    with torch.no_grad():
        out = model({"image": fx["image"], "mask": fx["mask"]})
    for h in handles:
        h.remove()
    for name in ("third", "last"):
        assert_close(store["features"][name], fx[f"features.{name}"], **TOL, msg=name)
    assert_close(store["lmu_logits"], fx["lmu_logits"], **TOL)
    assert_close(out["logits"], fx["logits"], **TOL)
    assert_close(out["pred_mask"], fx["pred_mask"], **TOL)
    assert_close(out["loss"], fx["backward_loss"], **TOL)


def test_parity_train_b2(paper_model: SparseViT) -> None:
    """Train mode (batch statistics, drop-path 0): outputs, 14 gradients, BN running stats."""
    inputs = fixture("sparsevit_b2.safetensors")
    ref = fixture("sparsevit_train_b2.safetensors")
    model = load_parity(paper_model).train()
    set_drop_path(model, 0.0)
    model.zero_grad(set_to_none=True)
    store, handles = capture(model)
    try:
        torch.manual_seed(0)
        out = model({"image": inputs["image"], "mask": inputs["mask"]})
        out["loss"].backward()
    finally:
        for h in handles:
            h.remove()
        model.eval()
    assert_close(store["lmu_logits"], ref["lmu_logits"], **TOL)
    assert_close(out["pred_mask"], ref["pred_mask"], **TOL)
    assert_close(out["loss"], ref["backward_loss"], **TOL)
    params = dict(model.named_parameters())
    grads = [k for k in ref if k.startswith("grad.")]
    assert len(grads) == 14
    for key in grads:
        assert_close(params[key[len("grad."):]].grad, ref[key], **TOL_GRAD, msg=key)
    buffers = dict(model.named_buffers())
    bn_keys = [k for k in ref if k.startswith("bn_after.")]
    assert len(bn_keys) == 4
    for key in bn_keys:
        assert_close(buffers[key[len("bn_after."):]], ref[key], **TOL_BN, msg=key)
    model.zero_grad(set_to_none=True)


def test_parity_tiny_eval_and_train() -> None:
    fx = fixture("sparsevit_tiny.safetensors")
    model = load_parity(create_model("sparsevit_tiny")).eval()
    batch = {"image": fx["image"], "mask": fx["mask"]}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        set_drop_path(model, 0.0)
        store, handles = capture(model)
        torch.manual_seed(0)
        with torch.set_grad_enabled(mode == "train"):
            out = model(batch)
        for h in handles:
            h.remove()
        for name, value in store["features"].items():
            assert_close(value, fx[f"{mode}.features.{name}"], **TOL, msg=f"{mode} {name}")
        assert_close(store["lmu_logits"], fx[f"{mode}.lmu_logits"], **TOL)
        assert_close(out["logits"], fx[f"{mode}.logits"], **TOL)
        assert_close(out["pred_mask"], fx[f"{mode}.pred_mask"], **TOL)
        assert_close(out["loss"], fx[f"{mode}.backward_loss"], **TOL)
    out["loss"].backward()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    grads = [k for k in fx if k.startswith("train.grad.")]
    assert len(grads) == 11
    for key in grads:
        assert_close(params[key[len("train.grad."):]].grad, fx[key], **TOL_GRAD, msg=key)
    for key in (k for k in fx if k.startswith("train.bn_after.")):
        assert_close(buffers[key[len("train.bn_after."):]], fx[key], **TOL_BN, msg=key)


# --------------------------------------------------------------------------------------------------
# Contract, sizes, configuration errors
# --------------------------------------------------------------------------------------------------
def test_output_contract_and_input_size() -> None:
    model = create_model("sparsevit_tiny").eval()
    assert (model.input_size, model.size_divisor) == (128, 32)
    batch = blob_batch(2, 128)
    with torch.no_grad():
        out = model({"image": batch["image"]})
        assert set(out) == {"pred_mask", "logits", "features"}
        assert out["pred_mask"].shape == out["logits"].shape == (2, 1, 128, 128)
        assert_close(out["pred_mask"], torch.sigmoid(out["logits"]))
        assert out["features"].shape == (2, 512, 8, 8)
        out = model(batch)
    assert set(out["loss_terms"]) == {"bce"} and out["loss"].ndim == 0
    assert_close(out["loss"], torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], batch["mask"]))
    for size in (96, 160, 256):
        with pytest.raises(ValueError, match=r"takes exactly 128x128"):
            model({"image": torch.zeros(1, 3, size, size)})
    with pytest.raises(ValueError, match=r"takes 128x128"):
        model.encoder_net(torch.zeros(1, 3, 160, 160))


def test_bad_configurations_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="6 feature maps"):
        SparseViT(depth=[1, 1, 10, 4], embed_dim=[16, 32, 320, 512], img_size=128, s_blocks3=[8, 4], s_blocks4=[4])
    with pytest.raises(ValueError, match="sparsity rate #1"):
        SparseViT(depth=[1, 1, 15, 4], embed_dim=[16, 32, 320, 512], img_size=128, s_blocks3=[8], s_blocks4=[4])
    with pytest.raises(ValueError, match="cannot be cut into groups"):  # 256 px: 16x16 stage 3, global S=32
        create_model("sparsevit", img_size=256)
    with pytest.raises(TypeError, match="not_an_option"):
        create_model("sparsevit_tiny", not_an_option=1)


def test_fvcore_counts_tiny_attention_matmuls() -> None:
    """fvcore traces the dict-in/dict-out model and counts the attention matmuls (SDPA is spelled out
    under tracing). Analytic count for the tiny config at 128 px, batch 1 (one multiply-add = 1 FLOP):
    stage 3 (8x8, C=320): 5 blocks with 4 groups of 16 tokens, 10 global blocks of 64 tokens;
    stage 4 (4x4, C=512): 4 global blocks of 16 tokens; two matmuls (q·kᵀ, attn·v) of N²·C each."""
    from fvcore.nn import FlopCountAnalysis

    model = create_model("sparsevit_tiny").eval()
    flops = FlopCountAnalysis(model, ({"image": torch.randn(1, 3, 128, 128)},))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    expected = 5 * 2 * 4 * 16**2 * 320 + 10 * 2 * 64**2 * 320 + 4 * 2 * 16**2 * 512
    assert flops.by_operator()["matmul"] == expected
    assert flops.total() > expected


@pytest.mark.slow
def test_fvcore_flops_paper_config(paper_model: SparseViT) -> None:
    """46.17 GFLOPs at 512 (spec §8, measured on the reference with fvcore); ~10 s to trace."""
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(paper_model.eval(), ({"image": torch.randn(1, 3, 512, 512)},))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert flops.total() / 1e9 == pytest.approx(46.17, abs=0.01)
    ops = flops.by_operator()
    assert ops["linear"] / 1e9 == pytest.approx(30.80, abs=0.01)
    assert ops["conv"] / 1e9 == pytest.approx(10.51, abs=0.01)
    assert ops["matmul"] / 1e9 == pytest.approx(4.73, abs=0.01)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def test_tiny_trains_loss_falls() -> None:
    torch.manual_seed(0)
    model = create_model("sparsevit_tiny", drop_path_rate=0.0).train()
    batch = blob_batch(2, 128, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05, foreach=True)  # paper optimiser
    losses = []
    for _ in range(8):
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    # BCE of a constant prior on these masks is ~0.3-0.5: below it the model localises the blobs.
    assert losses[-1] < 0.25 * losses[0], losses
    assert min(losses[-3:]) < min(losses[:3]), losses


# --------------------------------------------------------------------------------------------------
# Pretrained UniFormer backbone
# --------------------------------------------------------------------------------------------------
def fake_uniformer(backbone: torch.nn.Module, path: pathlib.Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A UniFormer-style ImageNet checkpoint: the backbone's floating tensors with distinct values
    (parity rule), plus classifier / final-norm keys the backbone lacks, under ``model``."""
    sd = {k: v for k, v in parity_state_dict(backbone.state_dict()).items() if v.is_floating_point()}
    sd = {prefix + k: v for k, v in sd.items()}
    dim = backbone.embed_dim[-1]
    sd.update({"head.weight": torch.randn(1000, dim), "head.bias": torch.zeros(1000), "norm.weight": torch.ones(dim)})
    torch.save({"model": sd, "epoch": 300}, path)
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _kinds(backbone: torch.nn.Module) -> dict[str, str]:
    kinds = {}
    for mname, mod in backbone.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            key = f"{mname}.{pname}" if mname else pname
            kinds[key] = "linear_norm" if isinstance(mod, (torch.nn.Linear, torch.nn.LayerNorm)) else "other"
    return kinds


@pytest.mark.parametrize("keep", [False, True])
def test_pretrained_backbone_quirk_and_switch(tmp_path, caplog, keep: bool) -> None:
    path = tmp_path / "uniformer_base_ls_in1k.pth"
    file_sd = fake_uniformer(create_model("sparsevit_tiny").encoder_net, path, prefix="backbone.")
    caplog.set_level(logging.INFO, logger="forgeloc.models.sparsevit")
    model = create_model("sparsevit_tiny", pretrained_path=str(path), keep_pretrained_linear_norm=keep)
    assert "loaded" in caplog.text and "3 keys ignored" in caplog.text
    sd = model.encoder_net.state_dict()
    kinds = _kinds(model.encoder_net)
    n_checked = 0
    for key, kind in kinds.items():
        if kind == "linear_norm" and not keep:
            assert not torch.equal(sd[key], file_sd[key]), key  # fresh init, as in the authors' code
        else:
            assert torch.equal(sd[key], file_sd[key]), key  # convs, BN, layer scale (and all with keep)
        n_checked += 1
    assert n_checked == len(kinds) > 300
    assert torch.equal(sd["blocks1.0.norm1.running_var"], file_sd["blocks1.0.norm1.running_var"])
    # reset LayerNorms really are at their init
    assert torch.all(sd["norm3.weight"] == (file_sd["norm3.weight"] if keep else 1.0))


def test_pretrained_counts_paper_config(paper_model: SparseViT, tmp_path) -> None:
    """Spec §6: with a fake checkpoint holding every floating backbone tensor, the reference resets
    340 (Linear + LayerNorm) and keeps 430."""
    path = tmp_path / "uniformer.pth"
    fake_uniformer(paper_model.encoder_net, path)
    report = load_uniformer_weights(paper_model.encoder_net, path)
    assert (len(report["reset"]), len(report["loaded"]), len(report["ignored"])) == (340, 430, 3)
    report = load_uniformer_weights(paper_model.encoder_net, path, keep_linear_norm=True)
    assert (len(report["reset"]), len(report["loaded"])) == (0, 770)
    assert report["missing"] and all(k.endswith("num_batches_tracked") for k in report["missing"])


def test_pretrained_missing_file_and_random_init(tmp_path, caplog) -> None:
    with pytest.raises(FileNotFoundError, match=r"uniformer_base_ls_in1k\.pth.*1XPjAXhDS6nGNXb11VzgdNqEeM7X0p2t9"):
        create_model("sparsevit_tiny", pretrained_path=str(tmp_path / "nope.pth"))
    caplog.set_level(logging.INFO, logger="forgeloc.models.sparsevit")
    create_model("sparsevit_tiny")
    assert "random weights" in caplog.text


def test_pretrained_wrong_shapes_rejected(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {"patch_embed1.proj.weight": torch.zeros(8, 3, 4, 4)}}, path)
    with pytest.raises(ValueError, match="do not fit"):
        create_model("sparsevit_tiny", pretrained_path=str(path))


# --------------------------------------------------------------------------------------------------
# The authors' released checkpoint format and `forgeloc convert`
# --------------------------------------------------------------------------------------------------
def fake_authors_checkpoint(path: pathlib.Path, model: torch.nn.Module, with_path_arg: bool) -> dict[str, torch.Tensor]:
    """What the official main_train.py saves (utils/misc.save_model): DDP-prefixed model, optimizer,
    epoch, GradScaler state and the argparse Namespace of the run."""
    sd = parity_state_dict(model.state_dict())
    params = [p for p in sd.values() if p.is_floating_point()][:2]
    args = argparse.Namespace(
        batch_size=16, test_batch_size=2, pretrain_path="/ckpt/uniformer_base_ls_in1k.pth", epochs=200,
        test_period=4, accum_iter=1, weight_decay=0.05, lr=2e-4, blr=1e-3, min_lr=5e-7, warmup_epochs=4,
        data_path="/data/balanced_dataset.json", output_dir="./output_dir", device="cuda", seed=42, resume="",
        start_epoch=0, num_workers=8, pin_mem=True, world_size=1, local_rank=-1, dist_url="env://",
        distributed=False, gpu=None, betas=[0.9, 0.999], eps=1e-8,
    )
    if with_path_arg:
        args.log_dir = pathlib.Path("./output_dir/logs")  # not on weights_only's allow-list
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in sd.items()},
            "optimizer": {
                "state": {
                    i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                    for i, p in enumerate(params)
                },
                "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                                  "amsgrad": False, "params": [0, 1]}],
            },
            "epoch": 3,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 12},
            "args": args,
        },
        path,
    )
    return sd


@pytest.mark.parametrize("with_path_arg", [False, True], ids=["namespace", "namespace_with_pathlib"])
def test_authors_checkpoint_loads_and_converts(tmp_path, with_path_arg: bool) -> None:
    import typer
    from typer.testing import CliRunner

    from forgeloc.checkpoint import read_checkpoint_object
    from forgeloc.cli import convert as convert_cmd

    src = tmp_path / "checkpoint.pth"
    expected = fake_authors_checkpoint(src, create_model("sparsevit_tiny"), with_path_arg)
    _, how = read_checkpoint_object(src)
    assert how == ("restricted" if with_path_arg else "weights_only")

    model = create_model("sparsevit_tiny", checkpoint=src)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k

    # Only the convert command, so that this test does not depend on the other sub-commands.
    app = typer.Typer()
    app.callback()(lambda: None)
    convert_cmd.register(app)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out"), "--model", "sparsevit_tiny"])
    assert result.exit_code == 0, result.output
    for source in (tmp_path / "out", tmp_path / "out" / "model.safetensors"):
        converted = create_model("sparsevit_tiny", checkpoint=source)
        for k, v in converted.state_dict().items():
            assert torch.equal(v, expected[k]), k
    batch = {"image": torch.randn(1, 3, 128, 128)}
    with torch.no_grad():
        assert torch.equal(model.eval()(batch)["logits"], converted.eval()(batch)["logits"])


def test_checkpoint_of_another_config_is_rejected(tmp_path) -> None:
    from forgeloc.checkpoint import CheckpointError

    src = tmp_path / "tiny.pth"
    fake_authors_checkpoint(src, create_model("sparsevit_tiny"), with_path_arg=False)
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("sparsevit_tiny", checkpoint=src, mlp_ratio=2.0)
