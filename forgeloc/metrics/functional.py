"""Pure metric functions: one image (or one set of image scores) in, numbers out.

Everything here is stateless and works on any device. The stateful, distributed-aware object the
engine uses is :class:`forgeloc.metrics.ForgeryMetrics`; it is built from these functions.

Conventions shared by every function:

* ``pred`` holds probabilities in ``[0, 1]``; a pixel is predicted tampered iff ``pred > threshold``
  (strict, as IMDLBenCo and most IML code bases do).
* ``target`` / ``mask`` holds ``{0, 1}``; 1 = tampered.
* Functions prefixed ``imdlbenco_`` reproduce IMDLBenCo 0.1.45's formulas *including* their
  quirks (epsilons, untied AUC, ...); the others are the exact textbook definitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "auc_from_histogram",
    "best_f1_from_histogram",
    "best_threshold_f1",
    "binary_f1",
    "confusion_counts",
    "f1_from_counts",
    "imdlbenco_droplast_mean",
    "imdlbenco_f1_from_counts",
    "imdlbenco_iou",
    "imdlbenco_pixel_auc",
    "iou_from_counts",
    "ranking_summary",
    "reduce_image_score",
    "roc_auc",
    "score_histogram",
]

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Confusion-matrix based pixel metrics
# ----------------------------------------------------------------------------------------------
def confusion_counts(
    pred: Tensor, target: Tensor, threshold: float = 0.5, valid: Tensor | None = None
) -> Tensor:
    """Per-image ``(TP, FP, FN, TN)`` of ``pred > threshold`` against ``target``.

    ``pred``, ``target`` and the optional ``valid`` (1 = counted pixel) have shape ``(B, ...)``;
    the result is an int64 tensor of shape ``(B, 4)``.
    """
    positive = (pred > threshold).flatten(1)
    truth = target.flatten(1) > 0.5
    keep = torch.ones_like(truth) if valid is None else valid.flatten(1) > 0.5
    tp = (positive & truth & keep).sum(1)
    fp = (positive & ~truth & keep).sum(1)
    fn = (~positive & truth & keep).sum(1)
    tn = (~positive & ~truth & keep).sum(1)
    return torch.stack([tp, fp, fn, tn], dim=1)


def f1_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Exact F1 = 2TP / (2TP + FP + FN) in float64; NaN where the denominator is 0."""
    tp, fp, fn = (x.double() for x in (tp, fp, fn))
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.full_like(den, NAN))


def iou_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Exact IoU (Jaccard) = TP / (TP + FP + FN) in float64; NaN where the denominator is 0."""
    tp, fp, fn = (x.double() for x in (tp, fp, fn))
    den = tp + fp + fn
    return torch.where(den > 0, tp / den.clamp_min(1), torch.full_like(den, NAN))


def imdlbenco_f1_from_counts(tp: Tensor, fp: Tensor, fn: Tensor, eps: float = 1e-8) -> Tensor:
    """IMDLBenCo's F1 (``PixelF1.Cal_F1``; ``ImageF1`` with ``eps=1e-9``), float32 like the original.

    P = TP/(TP+FP+eps), R = TP/(TP+FN+eps), F1 = 2PR/(P+R+eps): 0 (not NaN) when TP = 0, so an
    authentic image always scores F1 = 0 even for a perfect all-zero prediction.
    """
    tp, fp, fn = (x.float() for x in (tp, fp, fn))
    precision = tp / (tp + fp + eps)
    recall = tp / (tp + fn + eps)
    return 2 * precision * recall / (precision + recall + eps)


def imdlbenco_iou(pred: Tensor, target: Tensor, threshold: float = 0.5, shape_mask: Tensor | None = None) -> Tensor:
    """IMDLBenCo's ``PixelIOU.Cal_IOU`` per image, float32, shape ``(B,)``.

    Quirk kept on purpose: prediction and mask are *multiplied* by ``shape_mask`` before the
    threshold and all pixels are then counted (padding becomes "predicted 0, truth 0", which only
    matters for negative thresholds). IoU = I / (U + 1e-8), so an authentic image gives 0.
    """
    pred = pred.float()
    target = target.float()
    if shape_mask is not None:
        pred = pred * shape_mask
        target = target * shape_mask
    positive = (pred > threshold).float().flatten(1)
    target = target.flatten(1)
    inter = (positive * target).sum(1)
    union = positive.sum(1) + target.sum(1) - inter
    return inter / (union + 1e-8)


# ----------------------------------------------------------------------------------------------
# Ranking metrics (AUC, best-threshold F1)
# ----------------------------------------------------------------------------------------------
def _tie_groups(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct score values in *descending* order with the number of positives / negatives each."""
    values, order = torch.sort(scores.flatten(), descending=True)
    truth = (target.flatten() > 0.5)[order].double()
    if values.numel() == 0:
        empty = values.new_zeros(0, dtype=torch.float64)
        return values, empty, empty
    # ties are contiguous after sorting: count per group from cumulative sums at the group ends
    last = torch.ones_like(values, dtype=torch.bool)
    last[:-1] = values[1:] != values[:-1]
    ends = torch.nonzero(last).flatten()
    zero = truth.new_zeros(1)
    pos = torch.diff(torch.cumsum(truth, 0)[ends], prepend=zero)
    total = torch.diff((ends + 1).double(), prepend=zero)
    return values[ends], pos, total - pos


def _auc_from_groups(pos: Tensor, neg: Tensor) -> float:
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return NAN
    # negatives strictly below each (descending) group = all negatives minus those at or above it
    below = n_neg - torch.cumsum(neg, 0)
    return float(((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)).item())


def _best_f1_from_groups(pos: Tensor, neg: Tensor) -> float:
    n_pos = pos.sum()
    if n_pos == 0:
        return NAN
    tp = torch.cumsum(pos, 0)
    fp = torch.cumsum(neg, 0)
    return float((2 * tp / (tp + fp + n_pos)).max().item())


def roc_auc(scores: Tensor, target: Tensor) -> float:
    """Area under the ROC curve with tied scores grouped, identical to ``sklearn.metrics.roc_auc_score``.

    Computed as the Mann–Whitney statistic P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) over all (positive, negative)
    pairs (Hanley & McNeil, Radiology 1982), which equals the trapezoidal area of the ROC curve
    whose points are taken only *between* distinct scores. Returns NaN when one class is absent.
    """
    if scores.numel() != target.numel():
        raise ValueError(f"scores ({scores.numel()}) and target ({target.numel()}) differ in size")
    _, pos, neg = _tie_groups(scores, target)
    return _auc_from_groups(pos, neg)


def best_threshold_f1(scores: Tensor, target: Tensor) -> float:
    """Largest F1 reachable by thresholding this image's scores (the "optimal threshold" F1).

    Exact: every distinct score value is tried as a cut (predict tampered iff ``score >= v``),
    together with the empty prediction, by sorting once and accumulating TP/FP per tie group.
    F1 = 2TP / (TP + FP + P) with P the number of tampered pixels. NaN if the image has no
    tampered pixel (F1 is undefined there).
    """
    _, pos, neg = _tie_groups(scores, target)
    return _best_f1_from_groups(pos, neg)


def ranking_summary(scores: Tensor, target: Tensor) -> tuple[float, float, float]:
    """``(roc_auc, best_threshold_f1, best_threshold_f1 of the complement)`` from a single sort.

    The complement (``1 - score``, "permute") reverses the order, so its AUC is ``1 - auc`` and its
    best F1 is the same search over the tie groups taken in ascending order.
    """
    _, pos, neg = _tie_groups(scores, target)
    return (
        _auc_from_groups(pos, neg),
        _best_f1_from_groups(pos, neg),
        _best_f1_from_groups(torch.flip(pos, [0]), torch.flip(neg, [0])),
    )


def imdlbenco_pixel_auc(scores: Tensor, target: Tensor, tie_order: str = "stable") -> float:
    """IMDLBenCo's ``PixelAUC.Cal_AUC`` on the (already valid-only) pixels of one image.

    * no tampered pixel → ``0.0`` (IMDLBenCo averages that 0 in);
    * otherwise scores are sorted in descending order and the trapezoid rule runs over one ROC
      point *per pixel*: tied scores are not grouped, so the value depends on the order the sort
      leaves ties in. IMDLBenCo calls ``torch.argsort(descending=True)``, whose tie order is an
      implementation detail of the device:

      - ``tie_order="stable"`` (default): ties keep pixel order, which is what that call does on
        CUDA — where IMDLBenCo evaluates — and gives the same number on every device
        (fixture case 6: 0.6703022; measured with IMDLBenCo's call on an H100, torch 2.11);
      - ``tie_order="torch_cpu"``: IMDLBenCo's call on the CPU (introsort order), which is how the
        shared parity fixture was produced (case 6: 0.6785197).

      Without ties both give the same value. Float32 arithmetic as in the original;
    * all pixels tampered → NaN (0/0 in the FPR), as in IMDLBenCo.
    """
    target = target.flatten().float()
    scores = scores.flatten()
    if target.sum() == 0:
        return 0.0
    if tie_order == "stable":
        order = torch.sort(scores, descending=True, stable=True).indices
    elif tie_order == "torch_cpu":
        order = torch.argsort(scores.cpu(), descending=True).to(scores.device)
    else:
        raise ValueError(f"unknown tie_order {tie_order!r}; use 'stable' or 'torch_cpu'")
    truth = target[order]
    n_pos = truth.sum().item()
    n_neg = truth.numel() - n_pos
    tpr = torch.cumsum(truth, 0) / n_pos
    fpr = torch.cumsum(1 - truth, 0) / n_neg
    return float(torch.trapezoid(tpr, fpr).item())


# ----------------------------------------------------------------------------------------------
# Histograms: bounded-memory pooled AUC / best-threshold F1 over a whole data set
# ----------------------------------------------------------------------------------------------
def score_histogram(scores: Tensor, target: Tensor, bins: int, out: Tensor | None = None) -> Tensor:
    """Counts of positive (row 0) and negative (row 1) scores in ``bins`` equal bins over ``[0, 1]``.

    Bin ``b`` holds ``floor(score · bins) == b`` (score 1.0 goes to the last bin). With ``bins`` a
    power of two the mapping is exact in floating point, so any score that is a multiple of
    1/bins (e.g. 8-bit PNG predictions for ``bins >= 256``) lands alone in its bin. Counts are added
    to ``out`` (int64, shape ``(2, bins)``) when given.
    """
    idx = (scores.flatten().double() * bins).floor().clamp_(0, bins - 1).long()
    idx += bins * (target.flatten() <= 0.5).long()
    if out is None:
        out = torch.zeros(2, bins, dtype=torch.long, device=scores.device)
    # scatter_add rather than bincount: torch's multi-threaded CPU bincount with a large
    # minlength costs tens of ms per call
    out.view(-1).scatter_add_(0, idx.to(out.device), torch.ones_like(idx, device=out.device))
    return out


def auc_from_histogram(hist: Tensor) -> tuple[float, float]:
    """ROC AUC of histogrammed scores, and the largest possible error w.r.t. the unbinned scores.

    Scores that share a bin are treated as tied (½ per pair), so the value is *exact* for scores
    constant within each bin (e.g. quantised to the bins), and otherwise off by at most
    ``½ · Σ_b pos_b · neg_b / (P · N)`` — the pairs whose order the binning hides. That bound is
    returned as the second element. NaN, NaN when one class is absent.
    """
    pos, neg = hist[0].double(), hist[1].double()
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return NAN, NAN
    below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
    auc = (pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)
    bound = 0.5 * (pos * neg).sum() / (n_pos * n_neg)
    return float(auc.item()), float(bound.item())


def best_f1_from_histogram(hist: Tensor) -> float:
    """Best F1 of one threshold shared by all pooled pixels, thresholds restricted to bin edges."""
    pos, neg = hist[0].double(), hist[1].double()
    n_pos = pos.sum()
    if n_pos == 0:
        return NAN
    tp = torch.flip(torch.cumsum(torch.flip(pos, [0]), 0), [0])  # positives at or above each bin
    fp = torch.flip(torch.cumsum(torch.flip(neg, [0]), 0), [0])
    return float((2 * tp / (tp + fp + n_pos)).max().clamp_min(0).item())


# ----------------------------------------------------------------------------------------------
# Image level
# ----------------------------------------------------------------------------------------------
def reduce_image_score(
    pred: Tensor, valid: Tensor | None = None, reduction: str = "max", topk_fraction: float = 0.01
) -> Tensor:
    """Image score (B,) from a predicted mask (B, 1, H, W), over valid pixels only.

    * ``"max"``: the largest pixel probability (global max pooling, the MVSS-Net convention);
    * ``"mean"``: the mean probability;
    * ``"topk_mean"``: the mean of the ``ceil(topk_fraction · n_valid)`` largest probabilities
      (at least one pixel) — less sensitive to a single hot pixel than ``max``.
    """
    flat = pred.flatten(1).double()
    keep = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.flatten(1) > 0.5
    n_valid = keep.sum(1)
    if bool((n_valid == 0).any()):
        raise ValueError("an image has no valid pixel (its shape_mask is all zero)")
    if reduction == "max":
        return flat.masked_fill(~keep, -math.inf).amax(1)
    if reduction == "mean":
        return (flat * keep).sum(1) / n_valid
    if reduction == "topk_mean":
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
        ordered = flat.masked_fill(~keep, -math.inf).sort(1, descending=True).values
        k = torch.ceil(n_valid.double() * topk_fraction).long().clamp_min(1)
        ranks = torch.arange(flat.shape[1], device=flat.device).unsqueeze(0)
        return torch.where(ranks < k.unsqueeze(1), ordered, torch.zeros_like(ordered)).sum(1) / k
    raise ValueError(f"unknown image score reduction {reduction!r}; use 'max', 'mean' or 'topk_mean'")


def binary_f1(score: Tensor, label: Tensor, threshold: float = 0.5, eps: float | None = None) -> float:
    """F1 of ``score > threshold`` against ``label`` over a whole set.

    ``eps=None``: exact 2TP/(2TP+FP+FN), NaN when no positive is predicted or present.
    ``eps=1e-9``: IMDLBenCo's ``ImageF1`` formula (0 instead of NaN).
    """
    positive = score > threshold
    truth = label > 0.5
    tp = (positive & truth).sum()
    fp = (positive & ~truth).sum()
    fn = (~positive & truth).sum()
    if eps is None:
        return float(f1_from_counts(tp, fp, fn).item())
    return float(imdlbenco_f1_from_counts(tp, fp, fn, eps=eps).item())


# ----------------------------------------------------------------------------------------------
# What IMDLBenCo prints when its loader drops the last incomplete batch
# ----------------------------------------------------------------------------------------------
def imdlbenco_droplast_mean(per_image_values: Sequence[float] | Tensor, batch_size: int) -> float:
    """The data-set value IMDLBenCo's tester prints outside DDP (``drop_last=True`` test loader).

    Only the first ``len // batch_size`` full batches are evaluated, so the last
    ``len % batch_size`` images never count. ``per_image_values`` must be in the order the loader
    visited the images — IMDLBenCo's non-distributed sampler is a *RandomSampler*, so which images
    it drops changes from run to run. forgeloc itself never drops images; this helper only explains
    a number printed by IMDLBenCo. Under DDP IMDLBenCo evaluates the tail separately, so nothing
    is dropped there and this helper does not apply.
    """
    values = torch.as_tensor(per_image_values, dtype=torch.float64).flatten()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    kept = (values.numel() // batch_size) * batch_size
    if kept == 0:
        raise ValueError(f"{values.numel()} images and batch size {batch_size}: IMDLBenCo evaluates none")
    return float(values[:kept].mean().item())
