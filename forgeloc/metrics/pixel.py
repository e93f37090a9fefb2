"""Pixel-level metrics: per-image statistics for a batch, and their data-set aggregation.

Two definitions (see ``docs/metrics.md`` for the full table):

* ``"forgeloc"`` (default): exact formulas; authentic images (no tampered valid pixel) are left
  out of F1 / IoU / AUC / best-threshold F1 (per image and pooled) but count in pixel accuracy;
  AUC groups ties like ``sklearn.metrics.roc_auc_score``; undefined values are NaN and counted.
* ``"imdlbenco"``: IMDLBenCo 0.1.45's per-image numbers, quirks included (authentic → 0 averaged
  in, untied AUC, epsilons, IoU thresholding after multiplying by ``shape_mask``).

Orientation ("permute", Mesorch's ``test_permute``): ``"origin"`` scores the prediction,
``"reverse"`` its complement (``pred <= threshold`` is tampered; scores ``1 - pred``), and
``"double"`` keeps, per image and per metric, the better of the two.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

import forgeloc.metrics.functional as FM

Definition = Literal["forgeloc", "imdlbenco"]
Orientation = Literal["origin", "reverse", "double"]

DEFINITIONS = ("forgeloc", "imdlbenco")
ORIENTATIONS = ("origin", "reverse", "double")

# Columns of the per-image table produced by ``pixel_stats``. ``tp..tn`` are the confusion counts
# in the orientation the F1 chose (what pooled F1/IoU sum), ``flip_auc`` says whether the AUC chose
# the complement (what the pooled histogram adds).
PIXEL_COLUMNS = ("n_valid", "n_pos", "tp", "fp", "fn", "tn", "f1", "iou", "acc", "auc", "f1_best", "flip_auc")


def _pick(origin: Tensor, reverse: Tensor, orientation: str) -> Tensor:
    if orientation == "origin":
        return origin
    if orientation == "reverse":
        return reverse
    return torch.maximum(origin, reverse)


def pixel_stats(
    pred: Tensor,
    mask: Tensor,
    shape_mask: Tensor | None = None,
    *,
    threshold: float = 0.5,
    definition: Definition = "forgeloc",
    orientation: Orientation = "origin",
    tie_order: str = "stable",
) -> Tensor:
    """Per-image pixel statistics, float64 tensor of shape ``(B, len(PIXEL_COLUMNS))``.

    ``pred``, ``mask`` and ``shape_mask`` are ``(B, 1, H, W)``; only pixels with ``shape_mask == 1``
    are counted (except in IMDLBenCo's IoU quirk, which cannot be affected by padding for
    thresholds >= 0). Values follow ``definition``; an undefined value is NaN. ``tie_order`` only
    matters for IMDLBenCo's untied AUC (see :func:`forgeloc.metrics.functional.imdlbenco_pixel_auc`).
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown definition {definition!r}; use one of {DEFINITIONS}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; use one of {ORIENTATIONS}")
    counts = FM.confusion_counts(pred, mask, threshold, shape_mask)
    tp, fp, fn, tn = counts.unbind(1)
    n_valid = counts.sum(1)
    n_pos = tp + fn
    # the complement of the binarised prediction swaps TP<->FN and FP<->TN
    if definition == "forgeloc":
        f1_o, f1_r = FM.f1_from_counts(tp, fp, fn), FM.f1_from_counts(fn, tn, tp)
        iou = _pick(FM.iou_from_counts(tp, fp, fn), FM.iou_from_counts(fn, tn, tp), orientation)
    else:
        f1_o = FM.imdlbenco_f1_from_counts(tp, fp, fn).double()
        f1_r = FM.imdlbenco_f1_from_counts(fn, tn, tp).double()
        iou = _pick(
            FM.imdlbenco_iou(pred, mask, threshold, shape_mask).double(),
            FM.imdlbenco_iou(1 - pred, mask, threshold, shape_mask).double(),
            orientation,
        )
    f1 = _pick(f1_o, f1_r, orientation)
    acc_o = (tp + tn).double() / n_valid.double()
    acc = _pick(acc_o, 1 - acc_o, orientation)
    # pooled F1/IoU add the counts of the orientation the per-image F1 kept (ties keep "origin")
    use_rev = torch.zeros_like(tp, dtype=torch.bool)
    if orientation == "reverse":
        use_rev[:] = True
    elif orientation == "double":
        use_rev = torch.nan_to_num(f1_r, nan=-1.0) > torch.nan_to_num(f1_o, nan=-1.0)
    chosen = torch.where(use_rev.unsqueeze(1), torch.stack([fn, tn, tp, fp], 1), counts)

    auc = torch.empty(pred.shape[0], dtype=torch.float64)
    best = torch.empty_like(auc)
    flip = torch.zeros_like(auc)
    for i in range(pred.shape[0]):
        scores, truth = pred[i].flatten(), mask[i].flatten()
        if shape_mask is not None:
            keep = shape_mask[i].flatten() > 0.5
            scores, truth = scores[keep], truth[keep]
        auc[i], best[i], flip[i] = _ranking_stats(scores, truth, definition, orientation, tie_order)

    columns = [n_valid, n_pos, *chosen.unbind(1), f1, iou, acc]
    table = torch.stack([c.double().cpu() for c in columns], 1)
    return torch.cat([table, auc[:, None], best[:, None], flip[:, None]], 1)


def _ranking_stats(
    scores: Tensor, truth: Tensor, definition: str, orientation: str, tie_order: str
) -> tuple[float, float, float]:
    """(AUC, best-threshold F1, 1.0 if the AUC kept the complement) for one image's valid pixels."""
    auc_o, best_o, best_r = FM.ranking_summary(scores, truth)
    auc_r = 1.0 - auc_o  # exact for the tie-grouped AUC
    if definition == "imdlbenco":
        auc_o = FM.imdlbenco_pixel_auc(scores, truth, tie_order) if orientation != "reverse" else math.nan
        auc_r = FM.imdlbenco_pixel_auc(1 - scores, truth, tie_order) if orientation != "origin" else math.nan
        # IMDLBenCo has no best-threshold F1; keep its convention that an authentic image scores 0
        best_o, best_r = (0.0, 0.0) if math.isnan(best_o) else (best_o, best_r)
    best = best_o if orientation == "origin" else best_r if orientation == "reverse" else max(best_o, best_r)
    if orientation == "origin":
        return auc_o, best, 0.0
    if orientation == "reverse":
        return auc_r, best, 1.0
    flip = auc_r > auc_o  # False when either is NaN: keep the prediction as is
    # IMDLBenCo's ``max`` of python floats: NaN only if the first one is NaN
    auc = auc_r if flip else auc_o
    return auc, best, float(flip)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def aggregate_pixel(table: np.ndarray, definition: Definition = "forgeloc") -> dict[str, float]:
    """Data-set pixel metrics from a de-duplicated per-image table (rows = images, ``PIXEL_COLUMNS``)."""
    col = {name: table[:, i] for i, name in enumerate(PIXEL_COLUMNS)}
    tampered = col["n_pos"] > 0
    counted = tampered if definition == "forgeloc" else np.ones_like(tampered)
    auc = col["auc"][counted]
    undefined_auc = tampered & np.isnan(col["auc"])
    if definition == "forgeloc":
        auc = auc[~np.isnan(auc)]
    tp, fp, fn = (float(col[k][counted].sum()) for k in ("tp", "fp", "fn"))
    tp_all, fp_all, fn_all, tn_all = (float(col[k].sum()) for k in ("tp", "fp", "fn", "tn"))
    pooled_den = 2 * tp + fp + fn
    all_den = tp_all + fp_all + fn_all + tn_all
    return {
        "pixel_f1": _mean(col["f1"][counted]),
        "pixel_f1_pooled": 2 * tp / pooled_den if pooled_den > 0 else math.nan,
        "pixel_f1_best_thr": _mean(col["f1_best"][counted]),
        "pixel_auc": _mean(auc),
        "pixel_iou": _mean(col["iou"][counted]),
        "pixel_iou_pooled": tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan,
        "pixel_acc": _mean(col["acc"]),
        "pixel_acc_pooled": (tp_all + tn_all) / all_den if all_den > 0 else math.nan,
        "n_tampered": float(tampered.sum()),
        "n_authentic": float((~tampered).sum()),
        "n_auc_undefined": float(undefined_auc.sum()),
    }
