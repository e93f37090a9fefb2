"""forgeloc.metrics: IMDLBenCo parity on its own fixture, exactness against sklearn / brute force,
batch-split invariance, de-duplication, undefined values and input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import shared_path
from sklearn.metrics import f1_score, roc_auc_score

from forgeloc.metrics import ForgeryMetrics, imdlbenco_droplast_mean
from forgeloc.metrics import functional as FM

MODES = {"origin": False, "reverse": "reverse", "double": True}
COLUMN_OF = {"PixelF1": "f1", "PixelIOU": "iou", "PixelAUC": "auc", "PixelAccuracy": "acc"}
DATASET_KEY = {"PixelF1": "pixel_f1", "PixelIOU": "pixel_iou", "PixelAUC": "pixel_auc", "PixelAccuracy": "pixel_acc"}


@pytest.fixture(scope="module")
def fixture():
    arrays = np.load(shared_path("parity", "metrics", "metrics_fixture.npz"))
    values = json.loads(shared_path("parity", "metrics", "metrics_values.json").read_text())
    tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    return tensors, values


# IMDLBenCo's torch.argsort on the CPU, as the fixture was made (the default "stable" = CUDA order)
CPU_TIES = {"imdlbenco_tie_order": "torch_cpu"}
# IMDLBenCo's PixelAUC call on CUDA tensors for fixture case 6 (H100, torch 2.11.0+cu130): the
# order CUDA leaves ties in is the stable one.
CUDA_CASE6 = {"origin": 0.6703022, "reverse": 0.3364145}


def _run(t, definition="imdlbenco", shape=True, chunks=((0, 8),), **kwargs):
    pred_label = kwargs.pop("_pred_label", None)
    if definition == "imdlbenco":
        kwargs = {**CPU_TIES, **kwargs}
    metric = ForgeryMetrics(definition=definition, **kwargs)
    for a, b in chunks:
        metric.update(
            t["pred"][a:b], t["mask"][a:b], shape_mask=t["shape_mask"][a:b] if shape else None,
            label=t["label"][a:b], index=torch.arange(a, b),
            pred_label=pred_label[a:b] if pred_label is not None else None,
        )
    return metric


def _same(a: dict, b: dict, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(a[k]) or math.isnan(b[k]):
            assert math.isnan(a[k]) and math.isnan(b[k]), k
        else:
            assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


# ---------------------------------------------------------------------------------------------
# IMDLBenCo fixture
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", [True, False], ids=["shape_mask", "no_shape_mask"])
def test_imdlbenco_per_image_values(fixture, mode, shape):
    t, v = fixture
    per = _run(t, shape=shape, permute=MODES[mode]).per_image()
    np.testing.assert_array_equal(per["index"], np.arange(8))
    for cls, col in COLUMN_OF.items():
        ref = np.array(v["pixel"][f"{cls}/{mode}/{'shape_mask' if shape else 'no_shape_mask'}"])
        np.testing.assert_allclose(per[col], ref, atol=1e-6, rtol=0, err_msg=f"{cls}/{mode}")


def test_imdlbenco_threshold_03(fixture):
    t, v = fixture
    per = _run(t, threshold=0.3).per_image()
    for cls in ("PixelF1", "PixelIOU", "PixelAccuracy"):
        ref = np.array(v["pixel"][f"{cls}/origin/shape_mask/thr0.3"])
        np.testing.assert_allclose(per[COLUMN_OF[cls]], ref, atol=1e-6, rtol=0, err_msg=cls)


def test_imdlbenco_dataset_means_and_droplast(fixture):
    t, v = fixture
    for shape in (True, False):
        metric = _run(t, shape=shape)
        out, per = metric.compute(), metric.per_image()
        for cls, key in DATASET_KEY.items():
            ref = v["dataset_mean"][f"{cls}/origin/{'shape_mask' if shape else 'no_shape_mask'}"]
            assert out[key] == pytest.approx(ref["mean_over_all_images"], abs=1e-6), key
            # what IMDLBenCo's tester prints with test batch 3 outside DDP (images 6, 7 never seen)
            logged = imdlbenco_droplast_mean(per[COLUMN_OF[cls]], batch_size=3)
            assert logged == pytest.approx(ref["metriclogger_batch3_droplast"], abs=1e-6), key
            assert ref["images_dropped_by_drop_last"] == 8 % 3
        assert out["n_images"] == 8  # forgeloc never drops the tail


def test_imdlbenco_remain_update_quirk_not_reproduced(fixture):
    """IMDLBenCo's DDP-tail accuracy ignores shape_mask; forgeloc always honours it."""
    t, v = fixture
    per = _run(t).per_image()
    quirk = v["pixel"]["PixelAccuracy/origin/shape_mask/remain_update"]
    assert per["acc"][5] == pytest.approx(1.0) and quirk[5] == pytest.approx(0.46875)


def test_untied_auc_tie_order(fixture):
    """Case 6 (tied scores): IMDLBenCo's untied AUC depends on the order its argsort leaves ties in.
    On the CPU (the fixture) that is torch's introsort order; on CUDA (where IMDLBenCo runs) it is
    the stable order, which forgeloc uses by default on every device."""
    t, v = fixture
    stable = _run(t, imdlbenco_tie_order="stable", permute="reverse").per_image()
    cpu = _run(t, permute="reverse").per_image()
    for mode in ("origin", "reverse"):
        scores, truth = t["pred"][6].flatten(), t["mask"][6].flatten()
        scores = 1 - scores if mode == "reverse" else scores
        ref = v["pixel"][f"PixelAUC/{mode}/no_shape_mask"]
        assert FM.imdlbenco_pixel_auc(scores, truth, "torch_cpu") == pytest.approx(ref[6], abs=1e-6)
        assert FM.imdlbenco_pixel_auc(scores, truth) == pytest.approx(CUDA_CASE6[mode], abs=1e-6)
        assert abs(CUDA_CASE6[mode] - ref[6]) > 5e-3
        # case 7 (an exactly-0.5 region): ties only inside one class, both orders agree
        s7 = 1 - t["pred"][7].flatten() if mode == "reverse" else t["pred"][7].flatten()
        for order in ("stable", "torch_cpu"):
            assert FM.imdlbenco_pixel_auc(s7, t["mask"][7].flatten(), order) == pytest.approx(ref[7], abs=1e-6)
    # the whole per-image list: only case 6 depends on the tie order
    ref = np.array(v["pixel"]["PixelAUC/reverse/shape_mask"])
    np.testing.assert_allclose(cpu["auc"], ref, atol=1e-6)
    differs = np.abs(stable["auc"] - ref) > 1e-6
    assert differs.tolist() == [i == 6 for i in range(8)]


@pytest.mark.parametrize("definition", ["imdlbenco", "forgeloc"])
@pytest.mark.parametrize("chunks", [((0, 8),), ((0, 3), (3, 6), (6, 8))], ids=["one", "split_3_6_remain"])
def test_image_level_fixture(fixture, definition, chunks):
    t, v = fixture
    # image score = max of the predicted mask (no shape_mask: the fixture's max is over all pixels)
    metric = _run(t, definition=definition, shape=False, chunks=chunks)
    out = metric.compute()
    np.testing.assert_allclose(metric.per_image()["score"], t["score_max_of_mask"].double().numpy(), atol=0)
    assert out["n_score_from_model"] == 0
    for name, key in (("ImageF1", "image_f1"), ("ImageAUC", "image_auc"), ("ImageAccuracy", "image_acc")):
        assert out[key] == pytest.approx(v["image"][f"{name}/score_max_of_mask"], abs=1e-6), key
    # the model's own pred_label wins over the mask reduction
    for thr, suffix in ((0.5, ""), (0.7, "/thr0.7")):
        out = _run(t, definition=definition, chunks=chunks, image_threshold=thr, _pred_label=t["score_given"]).compute()
        assert out["n_score_from_model"] == 8
        assert out["image_f1"] == pytest.approx(v["image"][f"ImageF1/score_given{suffix}"], abs=1e-6)
        assert out["image_acc"] == pytest.approx(v["image"][f"ImageAccuracy/score_given{suffix}"], abs=1e-6)
        if not suffix:
            assert out["image_auc"] == pytest.approx(v["image"]["ImageAUC/score_given"], abs=1e-9)


def test_forgeloc_definition_differences(fixture):
    t, v = fixture
    ref_f1 = np.array(v["pixel"]["PixelF1/origin/shape_mask"])
    ref_iou = np.array(v["pixel"]["PixelIOU/origin/shape_mask"])
    ref_acc = np.array(v["pixel"]["PixelAccuracy/origin/shape_mask"])
    sk = v["sklearn_reference_not_imdlbenco"]["roc_auc_score/shape_mask_valid_pixels"]
    metric = _run(t, definition="forgeloc")
    out, per = metric.compute(), metric.per_image()
    tampered = np.arange(8) != 3  # image 3 is authentic
    assert (out["n_images"], out["n_tampered"], out["n_authentic"], out["n_auc_undefined"]) == (8, 7, 1, 0)
    # per-image values agree with IMDLBenCo on tampered images (exact formulas vs epsilons: < 1e-6)
    np.testing.assert_allclose(per["f1"][tampered], ref_f1[tampered], atol=1e-6)
    np.testing.assert_allclose(per["iou"][tampered], ref_iou[tampered], atol=1e-6)
    np.testing.assert_allclose(per["acc"], ref_acc, atol=1e-6)
    # the authentic image: its F1 (0: it has false positives) is left out of the mean here, while
    # IMDLBenCo averages its 0 in; its AUC is undefined (NaN) here, 0 in IMDLBenCo
    assert per["f1"][3] == 0 and ref_f1[3] == 0 and math.isnan(per["auc"][3])
    assert out["pixel_f1"] == pytest.approx(ref_f1[tampered].mean(), abs=1e-6)
    assert out["pixel_f1"] > v["dataset_mean"]["PixelF1/origin/shape_mask"]["mean_over_all_images"]
    assert out["pixel_iou"] == pytest.approx(ref_iou[tampered].mean(), abs=1e-6)
    assert out["pixel_acc"] == pytest.approx(ref_acc.mean(), abs=1e-6)  # accuracy keeps authentic images
    # tie-grouped AUC = sklearn, case 6 included (IMDLBenCo: 0.6785)
    np.testing.assert_allclose(per["auc"][tampered], np.array([x for x in sk if x is not None]), atol=1e-12)
    assert per["auc"][6] == pytest.approx(0.6669438882532418, abs=1e-12)
    assert out["pixel_auc"] == pytest.approx(np.mean([x for x in sk if x is not None]), abs=1e-12)
    assert metric.describe()["definition"] == "forgeloc"


def test_permute_recovers_inverted_prediction(fixture):
    t, _ = fixture
    for definition in ("forgeloc", "imdlbenco"):
        plain = _run(t, definition=definition).per_image()
        double = _run(t, definition=definition, permute=True).per_image()
        assert plain["f1"][4] == pytest.approx(0) and double["f1"][4] == pytest.approx(1)
        assert double["auc"][4] == pytest.approx(1)
        assert np.all(double["f1"][~np.isnan(double["f1"])] >= plain["f1"][~np.isnan(plain["f1"])] - 1e-12)


# ---------------------------------------------------------------------------------------------
# Exactness on random data
# ---------------------------------------------------------------------------------------------
def _random_case(gen: torch.Generator, n: int, levels: int | None, pos_frac: float):
    scores = torch.rand(n, generator=gen)
    if levels:
        scores = torch.floor(scores * levels) / levels  # many ties
    truth = (torch.rand(n, generator=gen) < pos_frac).float()
    # correlate a little so AUCs are not all 0.5
    scores = torch.where(truth > 0, torch.clamp(scores + 0.1, max=1.0), scores)
    if levels:
        scores = torch.floor(scores * levels) / levels
    return scores, truth


def test_auc_matches_sklearn_with_ties_and_tiny_classes():
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(2, 400, (1,), generator=gen))
        levels = [None, 2, 5, 17][trial % 4]
        scores, truth = _random_case(gen, n, levels, pos_frac=[0.5, 0.05, 0.95][trial % 3])
        if trial % 5 == 0:  # exactly one positive
            truth = torch.zeros(n)
            truth[int(torch.randint(0, n, (1,), generator=gen))] = 1
        if trial % 7 == 0:  # exactly one negative
            truth = torch.ones(n)
            truth[0] = 0
        if truth.min() == truth.max():
            assert math.isnan(FM.roc_auc(scores, truth))
            continue
        assert FM.roc_auc(scores, truth) == pytest.approx(roc_auc_score(truth.numpy(), scores.numpy()), abs=1e-12)


def _brute_best_f1(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Max over every threshold (each distinct score, and above all scores) of the plain F1."""
    y = truth.numpy() > 0.5
    best = 0.0
    for thr in torch.unique(scores).tolist():
        p = scores.numpy() >= thr
        tp, fp, fn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def test_best_threshold_f1_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    for trial in range(40):
        scores, truth = _random_case(gen, 150, [None, 4, 9][trial % 3], pos_frac=0.3)
        if truth.sum() == 0:
            continue
        assert FM.best_threshold_f1(scores, truth) == pytest.approx(_brute_best_f1(scores, truth), abs=1e-12)
        # the complement (permute) is the same search on reversed scores
        assert FM.best_threshold_f1(-scores, truth) == pytest.approx(_brute_best_f1(-scores, truth), abs=1e-12)
        auc, best, best_rev = FM.ranking_summary(scores, truth)
        assert (auc, best) == (FM.roc_auc(scores, truth), FM.best_threshold_f1(scores, truth))
        assert best_rev == pytest.approx(_brute_best_f1(1 - scores, truth), abs=1e-12)


def _dataset(seed: int, n: int = 11, size: int = 24):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, 1, size, size, generator=gen)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        if i % 4 == 3:
            continue  # authentic
        y, x = torch.randint(0, size - 8, (2,), generator=gen).tolist()
        mask[i, :, y : y + 8, x : x + 8] = 1
    pred = torch.clamp(pred * 0.7 + mask * 0.35, 0, 1)
    pred = torch.round(pred * 255) / 255  # 8-bit predictions: ties, and exact in the pooled bins
    shape_mask = torch.ones_like(mask)
    shape_mask[1, :, 20:, :] = 0
    shape_mask[5, :, :, 18:] = 0
    return pred, mask, shape_mask


def test_pooled_values_match_sklearn():
    pred, mask, shape_mask = _dataset(2)
    metric = ForgeryMetrics()
    metric.update(pred, mask, shape_mask=shape_mask, index=torch.arange(len(pred)))
    out = metric.compute()
    tampered = mask.flatten(1).sum(1) > 0
    keep = (shape_mask > 0) & tampered.view(-1, 1, 1, 1)
    p, y = pred[keep].numpy(), mask[keep].numpy()
    assert out["pixel_auc_pooled"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)  # quantised: exact
    assert out["pixel_f1_pooled"] == pytest.approx(f1_score(y, p > 0.5), abs=1e-12)
    brute = _brute_best_f1(torch.from_numpy(p), torch.from_numpy(y))
    assert out["pixel_f1_best_thr_pooled"] == pytest.approx(brute, abs=1e-12)
    assert out["n_authentic"] == 2 and out["n_tampered"] == 9
    # per-image AUC equals sklearn per tampered image
    per = metric.per_image()
    for i in np.flatnonzero(tampered.numpy()):
        k = shape_mask[i] > 0
        assert per["auc"][i] == pytest.approx(roc_auc_score(mask[i][k].numpy(), pred[i][k].numpy()), abs=1e-12)


def test_pooled_auc_error_bound_on_unquantised_scores():
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(4, 1, 64, 64, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 1, 64, 64, generator=gen) < 0.3).float()
    pred = torch.clamp(pred + 0.2 * mask, 0, 1)
    exact = roc_auc_score(mask.flatten().numpy(), pred.flatten().numpy())
    for bins in (16, 256, 2**16):
        metric = ForgeryMetrics(pooled_auc_bins=bins)
        metric.update(pred, mask)
        out = metric.compute()
        assert abs(out["pixel_auc_pooled"] - exact) <= out["pixel_auc_pooled_err_bound"] + 1e-12
    assert out["pixel_auc_pooled_err_bound"] < 1e-3  # 2**16 bins: fine enough for float scores


@pytest.mark.parametrize("definition", ["forgeloc", "imdlbenco"])
@pytest.mark.parametrize("permute", [False, True])
def test_batch_split_invariance(definition, permute):
    pred, mask, shape_mask = _dataset(4)
    n = len(pred)
    label = (mask.flatten(1).sum(1) > 0).float()
    label[3] = 1  # one label/mask disagreement, counted
    results = []
    for splits in ([n], [1, 4, 6], [3, 3, 3, 2], [1] * n):
        metric = ForgeryMetrics(definition=definition, permute=permute)
        start = 0
        for size in splits:
            sl = slice(start, start + size)
            metric.update(pred[sl], mask[sl], shape_mask=shape_mask[sl], label=label[sl], index=torch.arange(n)[sl])
            start += size
        results.append(metric.compute())
    for other in results[1:]:
        _same(results[0], other, tol=1e-12)
    assert results[0]["n_label_mask_mismatch"] == 1


def test_repeated_index_counts_once():
    pred, mask, shape_mask = _dataset(5, n=6)
    once = ForgeryMetrics()
    once.update(pred, mask, shape_mask=shape_mask, index=torch.arange(6))
    twice = ForgeryMetrics()
    twice.update(pred[:4], mask[:4], shape_mask=shape_mask[:4], index=torch.arange(4))
    twice.update(pred[2:], mask[2:], shape_mask=shape_mask[2:], index=torch.arange(2, 6))  # 2, 3 again
    twice.update(pred[:1], mask[:1], shape_mask=shape_mask[:1], index=torch.tensor([0]))  # all seen
    _same(once.compute(), twice.compute())
    # without an index nothing is de-duplicated
    no_index = ForgeryMetrics()
    no_index.update(pred, mask, shape_mask=shape_mask)
    no_index.update(pred[:2], mask[:2], shape_mask=shape_mask[:2])
    assert no_index.compute()["n_images"] == 8
    twice.reset()
    twice.update(pred[:2], mask[:2], index=torch.arange(2))
    assert twice.compute()["n_images"] == 2


# ---------------------------------------------------------------------------------------------
# Undefined values, image scores, input checks
# ---------------------------------------------------------------------------------------------
def test_undefined_values_are_nan_and_counted():
    full = torch.ones(1, 1, 8, 8)
    pred = torch.full((1, 1, 8, 8), 0.7)
    pred[0, 0, 0, 0] = 0.2
    # all pixels tampered: AUC undefined
    forgeloc = ForgeryMetrics()
    forgeloc.update(pred, full)
    out = forgeloc.compute()
    assert out["n_auc_undefined"] == 1 and math.isnan(out["pixel_auc"])
    assert out["pixel_f1"] == pytest.approx(2 * 63 / (2 * 63 + 1))
    assert math.isnan(out["image_auc"])  # one class only
    imdl = ForgeryMetrics(definition="imdlbenco")
    imdl.update(pred, full)
    assert math.isnan(imdl.per_image()["auc"][0]) and math.isnan(imdl.compute()["pixel_auc"])
    # authentic images only: pixel F1/IoU/AUC undefined (forgeloc) vs 0 (imdlbenco)
    zero = torch.zeros(2, 1, 8, 8)
    forgeloc.reset()
    forgeloc.update(torch.rand(2, 1, 8, 8) * 0.4, zero)  # nothing predicted: image F1 is 0/0
    out = forgeloc.compute()
    undefined = ("pixel_f1", "pixel_iou", "pixel_auc", "pixel_f1_pooled", "pixel_auc_pooled")
    assert all(math.isnan(out[k]) for k in undefined)
    assert out["n_authentic"] == 2 and not math.isnan(out["pixel_acc"]) and math.isnan(out["image_f1"])
    imdl.reset()
    imdl.update(torch.rand(2, 1, 8, 8) * 0.4, zero)
    out = imdl.compute()
    assert out["pixel_f1"] == 0 and out["pixel_auc"] == 0 and out["image_f1"] == 0


def test_image_score_reductions_ignore_padding():
    pred = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(6)) * 0.5
    shape_mask = torch.ones_like(pred)
    shape_mask[:, :, 10:, :] = 0
    pred[:, :, 15, 15] = 0.99  # garbage in the padding
    valid = pred[:, :, :10, :].flatten(1).double()
    assert torch.allclose(FM.reduce_image_score(pred, shape_mask, "max"), valid.max(1).values)
    assert torch.allclose(FM.reduce_image_score(pred, shape_mask, "mean"), valid.mean(1))
    top = valid.sort(1, descending=True).values[:, :2].mean(1)  # ceil(1% of 200) = 2 pixels
    assert torch.allclose(FM.reduce_image_score(pred, shape_mask, "topk_mean"), top)
    metric = ForgeryMetrics(image_score="topk_mean")
    metric.update(pred, torch.zeros_like(pred), shape_mask=shape_mask, pred_label=torch.ones(3))
    assert metric.compute()["n_score_from_model"] == 3
    metric = ForgeryMetrics(image_score="topk_mean", use_pred_label=False)
    metric.update(pred, torch.zeros_like(pred), shape_mask=shape_mask, pred_label=torch.ones(3))
    np.testing.assert_allclose(metric.per_image()["score"], top.float().double().numpy())


def test_input_checks():
    metric = ForgeryMetrics()
    pred, mask = torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="probabilities"):
        metric.update(pred * 3 - 1, mask)
    with pytest.raises(ValueError, match="only hold 0 and 1"):
        metric.update(pred, mask + 0.5)
    with pytest.raises(ValueError, match="shape"):
        metric.update(pred, mask[:, :, :2])
    with pytest.raises(ValueError, match="no valid pixel"):
        metric.update(pred, mask, shape_mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="one value per image"):
        metric.update(pred, mask, index=torch.arange(3))
    with pytest.raises(ValueError, match="definition"):
        ForgeryMetrics(definition="sklearn")
    with pytest.raises(ValueError, match="image_score"):
        ForgeryMetrics(image_score="median")
    metric.update(pred[:, 0], mask[:, 0])  # (B, H, W) is accepted
    assert metric.compute()["n_images"] == 2
