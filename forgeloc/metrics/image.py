"""Image-level metrics: detection accuracy, AUC and F1 from one score per image.

The score is the model's own ``pred_label`` when it has one, else a reduction of the predicted
mask over its valid pixels (:func:`forgeloc.metrics.functional.reduce_image_score`; default
``"max"``, the MVSS-Net convention). IMDLBenCo only consumes ``pred_label``, so for models without
an image head (SparseViT, Mesorch, ...) it reports no image metric at all; forgeloc always can.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import forgeloc.metrics.functional as FM

IMAGE_SCORES = ("max", "mean", "topk_mean")


def aggregate_image(
    score: np.ndarray, label: np.ndarray, positive: np.ndarray, definition: str = "forgeloc"
) -> dict[str, float]:
    """``image_acc``, ``image_auc`` and ``image_f1`` over a whole (de-duplicated) set of images.

    ``positive`` is the decision ``score > threshold``, taken by the caller in the score's own
    dtype (a float32 score equal to ``float32(threshold)`` is not positive, as in IMDLBenCo).

    * accuracy: mean of ``positive == label``;
    * AUC: tie-grouped, identical to ``sklearn.metrics.roc_auc_score`` (IMDLBenCo calls sklearn
      too), NaN when only one class is present (where IMDLBenCo's sklearn call raises);
    * F1: exact 2TP/(2TP+FP+FN) (NaN when 0/0) in the forgeloc definition, IMDLBenCo's formula
      with eps 1e-9 (0 instead of NaN) in the imdlbenco one.
    """
    if score.size == 0:
        return {"image_acc": math.nan, "image_auc": math.nan, "image_f1": math.nan}
    s = torch.from_numpy(np.asarray(score, dtype=np.float64))
    truth = torch.from_numpy(np.asarray(label, dtype=np.float64) > 0.5)
    pos = torch.from_numpy(np.asarray(positive, dtype=np.float64) > 0.5)
    tp, fp, fn = (pos & truth).sum(), (pos & ~truth).sum(), (~pos & truth).sum()
    if definition == "imdlbenco":
        f1 = FM.imdlbenco_f1_from_counts(tp, fp, fn, eps=1e-9)
    else:
        f1 = FM.f1_from_counts(tp, fp, fn)
    return {
        "image_acc": float((pos == truth).double().mean().item()),
        "image_auc": FM.roc_auc(s, truth.double()),
        "image_f1": float(f1.item()),
    }
