"""NCL's standalone losses (forgeloc.losses): test vectors, edge cases, and the aux-loss wrapper."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from safetensors.torch import load_file
from torch import nn

from forgeloc.checkpoint import load_model_weights, save_state_dict
from forgeloc.losses import AuxLossWrapper, strip_aux_state_dict, wrap_with_aux_loss
from forgeloc.losses.contrastive import (
    CONTOUR,
    IGNORE,
    NCLLoss,
    NCLLossConfig,
    compute_ncl_loss,
    patch_fractions,
    patch_labels,
    pivot_consistency_loss,
    supervised_contrastive_loss,
    switch_contour,
)
from forgeloc.models.base import ForgeryModel

TAUS = ("0.07", "0.1", "0.5")


@pytest.fixture(scope="module")
def vectors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_file(str(shared_path("parity", "ncl", "ncl_loss_vectors.safetensors")))
    scalars = json.loads(shared_path("parity", "ncl", "ncl_loss_vectors.json").read_text())
    return tensors, scalars


def _rel(tau: str, dtype: torch.dtype) -> float:
    # Fixture README: float64 1e-10 relative; float32 1e-5 (1e-4 at τ = 0.07).
    if dtype == torch.float64:
        return 1e-10
    return 1e-4 if tau == "0.07" else 1e-5


# --------------------------------------------------------------------------------------------------
# Test vectors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [8, 16, 32, 64])
def test_patch_labels_cov1t(vectors, grid):
    t, j = vectors
    mask = t["cov1t.mask512"]
    labels = patch_labels(mask, grid)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, t[f"cov1t.grid{grid}.labels"])
    torch.testing.assert_close(patch_fractions(mask, grid), t[f"cov1t.grid{grid}.fraction"], rtol=0, atol=1e-12)
    counts = [int((labels == c).sum()) for c in (0, 1, 2)]
    assert counts == j[f"cov1t.grid{grid}.counts_auth_tamp_cont"]
    # Same labels for the (B, 1, H, W) float layout the models receive.
    batched = patch_labels(mask.float()[None, None].repeat(2, 1, 1, 1), grid)
    assert batched.shape == (2, grid, grid) and torch.equal(batched[1], labels)


@pytest.mark.parametrize("grid", [4, 2])
def test_patch_labels_tiny_mask(vectors, grid):
    t, _ = vectors
    assert torch.equal(patch_labels(t["tiny_mask.mask"], grid), t[f"tiny_mask.grid{grid}.labels"])
    torch.testing.assert_close(patch_fractions(t["tiny_mask.mask"], grid), t[f"tiny_mask.grid{grid}.fraction"])


@pytest.mark.parametrize("tau", ["1.0", "0.5"])
@pytest.mark.parametrize("variant", ["supcon", "cfl"])
@pytest.mark.parametrize("branch", ["T", "A"])
def test_hand_vectors(vectors, tau, variant, branch):
    t, j = vectors
    labels = switch_contour(t["hand.labels3"], "tampered" if branch == "T" else "authentic")
    per_anchor = supervised_contrastive_loss(t["hand.z"], labels, float(tau), variant, reduction="none")
    torch.testing.assert_close(per_anchor, t[f"hand.tau{tau}.{variant}.branch{branch}.per_anchor"],
                               rtol=1e-10, atol=0, equal_nan=True)
    mean = supervised_contrastive_loss(t["hand.z"], labels, float(tau), variant)
    assert mean.item() == pytest.approx(j[f"hand.tau{tau}.{variant}.branch{branch}"], rel=1e-10)


def test_hand_note_worked_example():
    # The fixture's worked example, recomputed here from first principles: L_0 = log(2 + e^-1).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    labels = switch_contour(torch.tensor([1, 1, 0, CONTOUR]), "tampered")
    per_anchor = supervised_contrastive_loss(z, labels, 1.0, "supcon", reduction="none")
    assert per_anchor[0].item() == pytest.approx(math.log(2 + math.exp(-1)), rel=1e-12)
    assert math.isnan(per_anchor[2].item())  # the lone authentic anchor has no positive


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("variant", ["supcon", "cfl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rand256_vectors(vectors, tau, variant, dtype):
    t, j = vectors
    ref = j[f"rand256.tau{tau}.{variant}"]
    zt, za, labels = t["rand256.z_T"].to(dtype), t["rand256.z_A"].to(dtype), t["rand256.labels3"]
    rel = _rel(tau, dtype)
    got_t = supervised_contrastive_loss(zt, switch_contour(labels, "tampered"), float(tau), variant)
    got_a = supervised_contrastive_loss(za, switch_contour(labels, "authentic"), float(tau), variant)
    pc_a = pivot_consistency_loss(zt, za, labels, "A")
    pc_b = pivot_consistency_loss(zt, za, labels, "B")
    assert got_t.dtype == dtype
    assert got_t.item() == pytest.approx(ref["branch_T"], rel=rel)
    assert got_a.item() == pytest.approx(ref["branch_A"], rel=rel)
    assert pc_a.item() == pytest.approx(ref["pc_candidate_A"], rel=rel)
    assert pc_b.item() == pytest.approx(ref["pc_candidate_B"], rel=rel)


def test_rand256_contour_roles(vectors):
    t, j = vectors
    ref = j["rand256.z_T_only.tau0.1.supcon"]
    names = {"tampered": "contour_as_T", "authentic": "contour_as_A", "own": "contour_as_own_class",
             "drop": "contour_dropped"}
    for role, key in names.items():
        got = supervised_contrastive_loss(t["rand256.z_T"], switch_contour(t["rand256.labels3"], role), 0.1)
        assert got.item() == pytest.approx(ref[key], rel=1e-10), role


class _Slice(nn.Module):
    """A stand-in projection head returning fixed channels of the feature map."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]


@pytest.mark.parametrize("candidate", ["A", "B"])
@pytest.mark.parametrize("variant", ["supcon", "cfl"])
def test_full_objective_matches_totals(vectors, candidate, variant):
    # The rand256 patches are the 16×16 grid of the cov1t mask: build a feature map holding z_T and
    # z_A and check the whole objective (labels from the mask + both branches + pivot loss).
    t, j = vectors
    feats = torch.cat([t["rand256.z_T"], t["rand256.z_A"]], dim=1).T.reshape(1, 64, 16, 16)
    mask = t["cov1t.mask512"].float()[None, None]
    cfg = NCLLossConfig(tau=0.1, variant=variant, pc_loss=candidate)
    out = compute_ncl_loss(feats, mask, _Slice(0, 32), _Slice(32, 64), cfg)
    assert torch.equal(out["patch_labels"][0].flatten(), t["rand256.labels3"])
    ref = j[f"rand256.tau0.1.{variant}"]
    assert out["loss"].item() == pytest.approx(ref[f"total_cand{candidate}_lam1"], rel=1e-5)
    assert out["loss_terms"]["con_t"].item() == pytest.approx(ref["branch_T"], rel=1e-5)
    # λ weights scale their terms.
    cfg2 = NCLLossConfig(tau=0.1, variant=variant, pc_loss=candidate, lambda_c=0.5, lambda_pc=2.0)
    out2 = compute_ncl_loss(feats, mask, _Slice(0, 32), _Slice(32, 64), cfg2)
    expected = 0.5 * (ref["branch_T"] + ref["branch_A"]) + 2.0 * ref[f"pc_candidate_{candidate}"]
    assert out2["loss"].item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Batching and edge cases
# --------------------------------------------------------------------------------------------------
def test_batch_is_mean_over_images_with_both_classes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 8, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (3, 4, 4), generator=g)
    labels[2] = 0  # a single-class image: skipped, not counted as 0
    for variant in ("supcon", "cfl"):
        batched = supervised_contrastive_loss(z, labels, 0.1, variant)
        singles = [supervised_contrastive_loss(z[i:i + 1], labels[i:i + 1], 0.1, variant) for i in range(2)]
        assert batched.item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-12)
        assert supervised_contrastive_loss(z[2:], labels[2:], 0.1, variant).item() == 0.0
    # (B, D, h, w) and (B, N, D) layouts agree.
    rows = z.flatten(2).transpose(1, 2)
    assert supervised_contrastive_loss(rows, labels.flatten(1), 0.1).item() == pytest.approx(
        supervised_contrastive_loss(z, labels, 0.1).item(), rel=1e-12)


def _blob_mask(b: int, size: int, aligned: bool) -> torch.Tensor:
    mask = torch.zeros(b, 1, size, size)
    if aligned:  # tampered region on cell boundaries of a 16-px grid: no contour patch
        mask[:, :, 16:48, 32:64] = 1
    else:
        mask[:, :, 10:45, 20:57] = 1
    return mask


@pytest.mark.parametrize(
    "case", ["authentic", "all_tampered", "no_contour", "one_image", "contour", "padding"]
)
@pytest.mark.parametrize("switch_mode", ["dual", "alternate"])
def test_edge_cases_finite(case, switch_mode):
    torch.manual_seed(0)
    size = 64
    b = 1 if case == "one_image" else 2
    mask = {
        "authentic": torch.zeros(b, 1, size, size),
        "all_tampered": torch.ones(b, 1, size, size),
        "no_contour": _blob_mask(b, size, aligned=True),
        "one_image": _blob_mask(b, size, aligned=False),
        "contour": _blob_mask(b, size, aligned=False),
        "padding": _blob_mask(b, size, aligned=False),
    }[case]
    valid = None
    if case == "padding":
        valid = torch.ones_like(mask)
        valid[..., :, 40:] = 0
    opts = {"pc_loss": None} if switch_mode == "alternate" else {}
    loss_mod = NCLLoss(16, head_hidden=16, embed_dim=8, switch_mode=switch_mode, **opts).train()
    feats = torch.randn(b, 16, 4, 4, requires_grad=True)
    out = loss_mod(feats, mask, valid)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(feats.grad).all()
    for p in loss_mod.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    labels = out["patch_labels"]
    if case in ("authentic", "all_tampered"):
        assert out["loss"].item() == 0.0  # one class only: nothing to contrast, no contour
    if case == "no_contour":
        assert not (labels == CONTOUR).any() and out["loss"].item() > 0
        if switch_mode == "dual":
            assert out["loss_terms"]["pc"].item() == 0.0
    if case == "padding":
        assert (labels[..., 3] == IGNORE).all() and not (labels[..., :2] == IGNORE).any()
    if case in ("contour", "one_image"):
        assert (labels == CONTOUR).any() and out["loss"].item() > 0


def test_padding_cells_are_ignored():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1
    valid = torch.ones_like(mask)
    valid[..., :, 6:] = 0  # right quarter is padding
    frac = patch_fractions(mask, 4, valid)
    assert torch.isnan(frac[0, :, 3]).all()
    labels = patch_labels(mask, 4, valid=valid)
    assert (labels[0, :, 3] == IGNORE).all() and (labels[0, :2, :2] == 1).all()


def test_contour_eps():
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., :1, :] = 1  # 10 % of the single cell
    assert patch_labels(mask, 1).item() == CONTOUR
    assert patch_labels(mask, 1, contour_eps=0.1).item() == 0
    assert patch_labels(1 - mask, 1, contour_eps=0.1).item() == 1
    with pytest.raises(ValueError, match="contour_eps"):
        patch_labels(mask, 1, contour_eps=0.5)


def test_autocast_keeps_fp32():
    loss_mod = NCLLoss(8, head_hidden=8, embed_dim=4)
    feats = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_mod(feats, _blob_mask(2, 64, aligned=False))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_alternate_mode_flips_contour_role():
    torch.manual_seed(0)
    loss_mod = NCLLoss(8, head_hidden=8, embed_dim=4, switch_mode="alternate", pc_loss=None, switch_every=2)
    assert loss_mod.head_a is None
    loss_mod.eval()  # fixed BN statistics so that the embeddings are the same at every call
    feats = torch.randn(1, 8, 4, 4)
    mask = _blob_mask(1, 64, aligned=False)
    out = loss_mod(feats, mask)
    labels = out["patch_labels"]
    as_t = supervised_contrastive_loss(out["z_t"], switch_contour(labels, "tampered"), 0.1)
    as_a = supervised_contrastive_loss(out["z_t"], switch_contour(labels, "authentic"), 0.1)
    assert as_t.item() != pytest.approx(as_a.item())
    seen = []
    for step in range(4):
        loss_mod.step = step
        seen.append(loss_mod(feats, mask)["loss"].item())
    assert seen == pytest.approx([as_t.item(), as_t.item(), as_a.item(), as_a.item()], rel=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="alternate"):
        NCLLossConfig(switch_mode="alternate")  # pivot loss needs two branches
    with pytest.raises(ValueError, match="variant"):
        NCLLossConfig(variant="infonce")
    with pytest.raises(ValueError, match="pc_loss"):
        NCLLossConfig(pc_loss="C")
    assert NCLLossConfig(pc_loss="none").pc_loss is None
    with pytest.raises(TypeError, match="unknown NCL loss option"):
        NCLLoss(8, temperature=0.1)
    with pytest.raises(ValueError, match="variant"):
        supervised_contrastive_loss(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), variant="x")
    with pytest.raises(ValueError, match="candidate"):
        pivot_consistency_loss(torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 2, 1, 1]), "C")


def test_patch_grid_pools_embeddings():
    loss_mod = NCLLoss(8, head_hidden=8, embed_dim=4, patch_grid=3)
    out = loss_mod(torch.randn(2, 8, 7, 5), _blob_mask(2, 64, aligned=False)[..., :56, :40])
    assert out["z_t"].shape == (2, 4, 3, 3) and out["patch_labels"].shape == (2, 3, 3)
    torch.testing.assert_close(out["z_t"].norm(dim=1), torch.ones(2, 3, 3))


# --------------------------------------------------------------------------------------------------
# wrap_with_aux_loss on a model that knows nothing about NCL
# --------------------------------------------------------------------------------------------------
class DummyForgeryModel(ForgeryModel):
    """Two convs: a stride-4 encoder whose output is ``features`` and a 1×1 sigmoid head."""

    size_divisor = 4

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 4, stride=4), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        features = self.encoder(image)
        logits = F.interpolate(self.head(features), size=image.shape[-2:], mode="bilinear", align_corners=False)
        out = {"pred_mask": torch.sigmoid(logits), "logits": logits, "features": features}
        if batch.get("mask") is not None:
            bce = F.binary_cross_entropy_with_logits(logits, batch["mask"])
            out["loss"], out["loss_terms"] = bce, {"bce": bce}
        return out


def _synthetic_batch(b: int = 4, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, size, size, generator=g) * 0.5
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = torch.zeros(b, 1, size, size)
    for i in range(b):
        cy, cx = torch.randint(16, size - 16, (2,), generator=g).tolist()
        r = 8 + 3 * i
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        mask[i, 0][blob] = 1.0
        image[i, :, blob] += torch.tensor([1.0, -0.5, 0.8])[:, None]  # a learnable trace
    return {"image": image, "mask": mask}


def test_wrapper_adds_weighted_terms_and_keeps_inner_keys(tmp_path):
    torch.manual_seed(0)
    inner = DummyForgeryModel()
    wrapped = wrap_with_aux_loss(inner, {"name": "ncl", "weight": 0.5, "in_channels": 12, "head_hidden": 16,
                                         "embed_dim": 8})
    assert isinstance(wrapped, AuxLossWrapper) and isinstance(wrapped, ForgeryModel)
    assert wrapped.model is inner and wrapped.size_divisor == 4
    keys = list(wrapped.state_dict())
    assert {k.split(".")[0] for k in keys} == {"model", "aux"}
    assert [k for k in keys if k.startswith("model.")] == [f"model.{k}" for k in inner.state_dict()]

    batch = _synthetic_batch()
    wrapped.train()
    out = wrapped(batch)
    inner_loss = F.binary_cross_entropy_with_logits(out["logits"], batch["mask"])
    terms = out["loss_terms"]
    assert set(terms) == {"bce", "ncl_con_t", "ncl_con_a", "ncl_pc"}
    torch.testing.assert_close(out["loss"], sum(terms.values()))
    aux_total = terms["ncl_con_t"] + terms["ncl_con_a"] + terms["ncl_pc"]
    torch.testing.assert_close(out["loss"], inner_loss + aux_total)
    assert terms["ncl_con_t"].item() > 0
    out["loss"].backward()
    assert inner.encoder[0].weight.grad is not None and wrapped.aux.head_t[0].weight.grad is not None

    # Eval: inner loss only (heads idle) unless asked for; no mask: no loss at all.
    wrapped.eval()
    with torch.no_grad():
        assert set(wrapped(batch)["loss_terms"]) == {"bce"}
        assert "loss" not in wrapped({"image": batch["image"]})

    # The inner weights round-trip to a fresh inner model, both ways.
    fresh = DummyForgeryModel()
    fresh.load_state_dict(wrapped.inner_state_dict(), strict=True)
    fresh.load_state_dict(strip_aux_state_dict(wrapped.state_dict()), strict=True)
    with pytest.raises(ValueError, match="model"):
        strip_aux_state_dict(inner.state_dict())
    # ... and an inner-only checkpoint loads into a wrapped model (heads keep their values).
    path = save_state_dict(fresh, tmp_path / "inner.safetensors")
    other = wrap_with_aux_loss(DummyForgeryModel(), {"name": "ncl", "in_channels": 12})
    head_before = other.aux.head_t[0].weight.clone()
    load_model_weights(other, path, strict=True)
    torch.testing.assert_close(other.model.head.weight, fresh.head.weight)
    torch.testing.assert_close(other.aux.head_t[0].weight, head_before)


def test_wrapper_infers_channels_and_lr_scale():
    inner = DummyForgeryModel(width=10)
    assert not hasattr(inner, "feature_channels")
    wrapped = wrap_with_aux_loss(inner, {"name": "ncl", "lr_scale": 3.0})  # probe forward
    assert wrapped.aux.in_channels == 10 and inner.training  # mode restored after the probe
    assert wrapped.lr_scale("aux.head_t.0.weight") == 3.0
    assert wrapped.lr_scale("model.head.weight") == 1.0
    inner.lr_scale = lambda name: 7.0 if name.startswith("head") else 1.0
    assert wrapped.lr_scale("model.head.weight") == 7.0
    with pytest.raises(ValueError, match="unknown auxiliary loss"):
        wrap_with_aux_loss(inner, {"name": "triplet"})
    with pytest.raises(TypeError, match="temperature"):
        wrap_with_aux_loss(inner, {"name": "ncl", "temperature": 0.1, "in_channels": 10})


def test_wrapper_training_lowers_loss():
    torch.manual_seed(0)
    wrapped = wrap_with_aux_loss(DummyForgeryModel(), {"name": "ncl", "head_hidden": 32, "embed_dim": 16})
    wrapped.train()
    batch = _synthetic_batch(size=48)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=5e-3)
    losses, aux = [], []
    for _ in range(8):
        out = wrapped(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        aux.append(sum(v.item() for k, v in out["loss_terms"].items() if k.startswith("ncl_")))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.85 * losses[0]
    assert aux[-1] < 0.9 * aux[0]
