"""``ForgeryMetrics``: the one metric object the engine updates batch by batch.

It is a ``torchmetrics.Metric``: ``update(...)`` per batch, ``compute()`` once, ``reset()``; when
``torch.distributed`` is initialised (gloo on CPU, nccl on GPU) ``compute()`` gathers every rank's
state first, so every rank returns the same numbers.

What is kept (memory is bounded by the number of images, not pixels):

* one row of scalars per image (its sample ``index``, confusion counts, F1, IoU, AUC, ...);
* for the pooled pixel AUC, two histograms of ``pooled_auc_bins`` bins (tampered / authentic
  pixels) summed over images, plus the histogram of the most recent image kept apart (see below).

Images are de-duplicated by ``index`` — a ``DistributedSampler`` pads the last round by repeating
the first samples, so an image may be seen on two ranks: it counts once. Within one rank a
repeated index is skipped at ``update``. Across ranks, the copy that is kept is a non-latest image
where possible; the padded copy a ``DistributedSampler`` adds is always the *last* image of its
rank, whose histogram is still held apart and can be left out exactly. Any other cross-rank
duplicate makes the pooled histogram metrics NaN (with a warning); the per-image metrics stay exact.
Without ``index`` nothing is de-duplicated.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

import forgeloc.metrics.functional as FM
from forgeloc.metrics.image import IMAGE_SCORES, aggregate_image
from forgeloc.metrics.pixel import DEFINITIONS, PIXEL_COLUMNS, aggregate_pixel, pixel_stats

_ID_COLUMNS = ("index", "rank", "seq", "score", "score_pos", "label", "score_from_model")
COLUMNS = _ID_COLUMNS + PIXEL_COLUMNS
_COL = {name: i for i, name in enumerate(COLUMNS)}

_PERMUTE = {False: "origin", "origin": "origin", True: "double", "double": "double", "reverse": "reverse"}


def _take(keep: list[int], pred: Tensor, mask: Tensor, *optional: Tensor | None) -> tuple[Tensor | None, ...]:
    """The batch rows ``keep`` of every tensor (``None`` stays ``None``)."""
    sel = torch.tensor(keep, device=pred.device)
    return pred[sel], mask[sel], *(None if t is None else t[sel.to(t.device)] for t in optional)


def _checked_maps(pred_mask: Tensor, mask: Tensor, shape_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``pred_mask`` as float probabilities in [0, 1], ``mask`` and ``shape_mask`` binary, all (B, 1, H, W)
    on ``pred_mask``'s device; a clear error for anything else."""
    pred = _as_4d("pred_mask", pred_mask)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    if not pred.is_floating_point():
        raise TypeError(f"pred_mask must be floating point probabilities, got {pred.dtype}")
    if not bool(((pred >= 0) & (pred <= 1)).all()):
        raise ValueError("pred_mask must hold probabilities in [0, 1] without NaN (apply sigmoid first)")
    mask = _as_4d("mask", mask, pred).to(pred.device)
    _check_binary("mask", mask)
    if shape_mask is not None:
        shape_mask = _as_4d("shape_mask", shape_mask, pred).to(pred.device)
        _check_binary("shape_mask", shape_mask)
        if bool((shape_mask.flatten(1).sum(1) == 0).any()):
            raise ValueError("an image has no valid pixel (its shape_mask is all zero)")
    return pred, mask, shape_mask


def _as_4d(name: str, x: Tensor, like: Tensor | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)} like pred_mask")
    return x


def _check_binary(name: str, x: Tensor) -> None:
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must only hold 0 and 1 (binarise it first, e.g. mask > 0.5)")


def _per_image(name: str, x: Tensor | None, batch: int) -> Tensor | None:
    if x is None:
        return None
    x = torch.as_tensor(x)
    if x.numel() != batch:
        raise ValueError(f"{name} must hold one value per image ({batch}), got shape {tuple(x.shape)}")
    return x.reshape(batch)


class ForgeryMetrics(Metric):
    """Pixel- and image-level IML metrics over a data set, exact and DDP-aware.

    Args:
        definition: ``"forgeloc"`` (default; exact definitions, authentic images out of pixel
            F1/IoU/AUC) or ``"imdlbenco"`` (IMDLBenCo 0.1.45's per-image numbers, quirks
            included). See ``docs/metrics.md``.
        threshold: pixel threshold; a pixel is predicted tampered iff ``pred > threshold``.
        image_score: how an image score is derived from the predicted mask when the model gives
            no ``pred_label``: ``"max"`` (default), ``"mean"`` or ``"topk_mean"``.
        permute: ``False`` scores the prediction; ``True`` ("double", Mesorch's ``test_permute``)
            keeps per image the better of the prediction and its complement; ``"reverse"`` scores
            only the complement.
        pooled_auc_bins: number of histogram bins over [0, 1] for the pooled pixel AUC and pooled
            best-threshold F1 (default 2**16; ``None`` disables both). Exact for scores that are
            multiples of 1/bins; otherwise the AUC error is at most the reported
            ``pixel_auc_pooled_err_bound`` (½·Σ_b pos_b·neg_b / (P·N), the fraction of
            tampered/authentic pixel pairs sharing a bin).
        image_threshold: threshold of the image score (default 0.5).
        use_pred_label: use the model's ``pred_label`` when it is passed (default). If ``False``
            the ``image_score`` reduction is always used.
        topk_fraction: fraction of valid pixels averaged by ``image_score="topk_mean"``.
        imdlbenco_tie_order: only for ``definition="imdlbenco"``'s untied pixel AUC, whose value
            under tied scores depends on the sort: ``"stable"`` (default, = IMDLBenCo on CUDA,
            device-independent) or ``"torch_cpu"`` (= IMDLBenCo on CPU, as in the parity fixture).
        **kwargs: passed to ``torchmetrics.Metric`` (e.g. ``process_group``).

    ``compute()`` returns a flat ``dict[str, float]``: ``pixel_f1``, ``pixel_f1_pooled``,
    ``pixel_f1_best_thr``, ``pixel_auc``, ``pixel_iou``, ``pixel_iou_pooled``, ``pixel_acc``,
    ``pixel_acc_pooled``, ``image_acc``, ``image_auc``, ``image_f1``, the pooled histogram metrics
    ``pixel_auc_pooled``, ``pixel_auc_pooled_err_bound``, ``pixel_f1_best_thr_pooled`` (absent
    when ``pooled_auc_bins=None``), and the counts ``n_images``, ``n_tampered``, ``n_authentic``,
    ``n_auc_undefined``, ``n_duplicates``, ``n_label_mask_mismatch``, ``n_score_from_model``.
    Undefined values are NaN, never 0 in the forgeloc definition. :meth:`describe` returns the
    configuration (definition, thresholds, image score) to print beside the numbers.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        definition: str = "forgeloc",
        threshold: float = 0.5,
        image_score: str = "max",
        permute: bool | str = False,
        pooled_auc_bins: int | None = 2**16,
        *,
        image_threshold: float = 0.5,
        use_pred_label: bool = True,
        topk_fraction: float = 0.01,
        imdlbenco_tie_order: str = "stable",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if definition not in DEFINITIONS:
            raise ValueError(f"unknown definition {definition!r}; use one of {DEFINITIONS}")
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"unknown image_score {image_score!r}; use one of {IMAGE_SCORES}")
        if permute not in _PERMUTE:
            raise ValueError(f"permute must be False, True, 'double' or 'reverse', got {permute!r}")
        if pooled_auc_bins is not None and pooled_auc_bins < 2:
            raise ValueError(f"pooled_auc_bins must be >= 2 or None, got {pooled_auc_bins}")
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
        if imdlbenco_tie_order not in ("stable", "torch_cpu"):
            raise ValueError(f"imdlbenco_tie_order must be 'stable' or 'torch_cpu', got {imdlbenco_tie_order!r}")
        self.tie_order = imdlbenco_tie_order
        self.definition = definition
        self.threshold = float(threshold)
        self.image_threshold = float(image_threshold)
        self.image_score = image_score
        self.orientation = _PERMUTE[permute]
        self.bins = pooled_auc_bins
        self.use_pred_label = use_pred_label
        self.topk_fraction = topk_fraction

        self.add_state("rows", default=[], dist_reduce_fx="cat")
        if self.bins:
            self.add_state("hist", default=torch.zeros(2, self.bins, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("pending_hist", default=[], dist_reduce_fx="cat")
            self.add_state("pending_key", default=[], dist_reduce_fx="cat")
        self._reset_local()

    # ------------------------------------------------------------------------------------------
    def _reset_local(self) -> None:
        self._seen: set[int] = set()
        self._seq = 0
        # torchmetrics gathers an empty list state as a 1-D tensor, whose shape then disagrees with
        # the other ranks' (N, K) tensors; an empty (0, K) tensor keeps every rank's shape compatible.
        self.rows.append(torch.zeros(0, len(COLUMNS), dtype=torch.float64, device=self.device))
        if self.bins:
            self.pending_hist.append(torch.zeros(0, 2, self.bins, dtype=torch.long, device=self.device))
            self.pending_key.append(torch.zeros(0, 2, dtype=torch.float64, device=self.device))

    def reset(self) -> None:
        """Forget every image seen so far (local state; call it on every rank)."""
        super().reset()
        self._reset_local()

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Calling the metric updates it; per-batch values are meaningless for data-set metrics."""
        self.update(*args, **kwargs)

    def merge_state(self, incoming_state: Any) -> None:
        raise NotImplementedError("ForgeryMetrics cannot merge states; update one object per process instead")

    def describe(self) -> dict[str, Any]:
        """The configuration that defines the numbers (print it beside ``compute()``)."""
        return {
            "definition": self.definition,
            "threshold": self.threshold,
            "image_threshold": self.image_threshold,
            "image_score": ("pred_label if given, else " if self.use_pred_label else "") + self.image_score,
            "permute": self.orientation,
            "pooled_auc_bins": self.bins,
            **({"imdlbenco_tie_order": self.tie_order} if self.definition == "imdlbenco" else {}),
        }

    # ------------------------------------------------------------------------------------------
    def update(
        self,
        pred_mask: Tensor,
        mask: Tensor,
        *,
        shape_mask: Tensor | None = None,
        label: Tensor | None = None,
        pred_label: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            pred_mask: (B, 1, H, W) tamper probabilities in [0, 1] (a model's ``pred_mask``).
            mask: (B, 1, H, W) ground truth in {0, 1}.
            shape_mask: (B, 1, H, W) in {0, 1}; pixels with 0 (padding) never count anywhere.
            label: (B,) image labels in {0, 1}; default: 1 iff the mask has a tampered valid pixel.
            pred_label: (B,) the model's own image probability, used as the image score.
            index: (B,) integer data-set indices; a repeated index counts once.
        """
        pred, mask, shape_mask = _checked_maps(pred_mask, mask, shape_mask)
        batch = pred.shape[0]
        label = _per_image("label", label, batch)
        if label is not None:
            _check_binary("label", label)
        pred_label = _per_image("pred_label", pred_label, batch)
        index = _per_image("index", index, batch)

        if index is not None:
            keep = self._first_seen(index)
            if not keep:
                return
            if len(keep) < batch:
                pred, mask, shape_mask, label, pred_label, index = _take(
                    keep, pred, mask, shape_mask, label, pred_label, index)
                batch = len(keep)

        stats = pixel_stats(
            pred, mask, shape_mask, threshold=self.threshold, definition=self.definition,
            orientation=self.orientation, tie_order=self.tie_order,
        )
        if label is None:
            label = (stats[:, PIXEL_COLUMNS.index("n_pos")] > 0).double()
        score_native, from_model = self._image_scores(pred, shape_mask, pred_label)
        # the decision is taken in the score's own dtype, as IMDLBenCo compares float32 scores
        score_pos = score_native > self.image_threshold
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        ident = torch.stack(
            [
                index.double().cpu() if index is not None else torch.full((batch,), -1.0, dtype=torch.float64),
                torch.full((batch,), float(rank), dtype=torch.float64),
                torch.arange(self._seq, self._seq + batch, dtype=torch.float64),
                score_native.double().cpu(), score_pos.double().cpu(), label.double().cpu(),
                torch.full((batch,), from_model, dtype=torch.float64),
            ],
            1,
        )
        self.rows.append(torch.cat([ident, stats], 1).to(self.device))
        if self.bins:
            self._update_histograms(pred, mask, shape_mask, stats, rank, self._seq + batch - 1)
        self._seq += batch

    def _first_seen(self, index: Tensor) -> list[int]:
        """Positions in the batch whose data-set index has not been counted yet (now marked as seen)."""
        if index.is_floating_point() or bool((index < 0).any()):
            raise ValueError("index must hold non-negative integers")
        keep = []
        for i, k in enumerate(index.tolist()):
            if k not in self._seen:
                self._seen.add(k)
                keep.append(i)
        return keep

    def _image_scores(self, pred: Tensor, shape_mask: Tensor | None,
                      pred_label: Tensor | None) -> tuple[Tensor, float]:
        """Each image's score in its native dtype, and 1.0 when it is the model's own ``pred_label``."""
        if pred_label is not None and self.use_pred_label:
            return pred_label.to(pred.device), 1.0
        score = FM.reduce_image_score(pred, shape_mask, self.image_score, self.topk_fraction)
        return score.to(pred.dtype), 0.0

    def _update_histograms(
        self, pred: Tensor, mask: Tensor, shape_mask: Tensor | None, stats: Tensor, rank: int, last_seq: int
    ) -> None:
        flip = stats[:, PIXEL_COLUMNS.index("flip_auc")].to(pred.device).view(-1, 1, 1, 1) > 0.5
        scores = torch.where(flip, 1 - pred, pred)
        valid = torch.ones_like(mask, dtype=torch.bool) if shape_mask is None else shape_mask > 0.5
        if self.definition == "forgeloc":  # authentic images stay out of the pooled AUC
            tampered = (stats[:, PIXEL_COLUMNS.index("n_pos")] > 0).to(pred.device).view(-1, 1, 1, 1)
            valid = valid & tampered
        # the previous latest image is now an ordinary one: fold it into the running sum
        pending = dim_zero_cat(self.pending_hist)
        if pending.numel():
            self.hist += pending.sum(0)
        FM.score_histogram(scores[:-1][valid[:-1]], mask[:-1][valid[:-1]], self.bins, out=self.hist)
        hist_last = torch.zeros(1, 2, self.bins, dtype=torch.long, device=self.device)
        FM.score_histogram(scores[-1][valid[-1]], mask[-1][valid[-1]], self.bins, out=hist_last[0])
        self.pending_hist = [hist_last]
        self.pending_key = [torch.tensor([[float(rank), float(last_seq)]], dtype=torch.float64, device=self.device)]

    # ------------------------------------------------------------------------------------------
    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Gather the states of all ranks (torchmetrics); first checks that NCCL gets CUDA states."""
        if (
            kwargs.get("should_sync", True)
            and dist.is_available()
            and dist.is_initialized()
            and self.device.type == "cpu"
            and dist.get_backend(self.process_group) == "nccl"
        ):
            raise RuntimeError(
                "ForgeryMetrics is on the CPU but the process group uses NCCL, which only moves CUDA "
                "tensors: call metric.to(device) with the rank's GPU before compute()"
            )
        super().sync(*args, **kwargs)

    def _collect(self) -> tuple[np.ndarray, Tensor | None, int, bool]:
        """De-duplicated per-image table (sorted by index), pooled histogram, #dropped, histogram ok."""
        rows = dim_zero_cat(self.rows).reshape(-1, len(COLUMNS)).double().cpu().numpy()
        index, rank, seq = rows[:, _COL["index"]], rows[:, _COL["rank"]], rows[:, _COL["seq"]]
        keys = list(zip(rank.astype(np.int64).tolist(), seq.astype(np.int64).tolist(), strict=True))
        pending_keys: list[tuple[int, int]] = []
        if self.bins:
            pk = dim_zero_cat(self.pending_key).reshape(-1, 2).cpu().numpy().astype(np.int64)
            pending_keys = [tuple(k) for k in pk.tolist()]
        is_pending = np.array([k in set(pending_keys) for k in keys], dtype=bool)

        # keep, per index, a non-latest copy if any, then the lowest (rank, seq)
        order = np.lexsort((seq, rank, is_pending, index))
        sorted_index = index[order]
        repeat = np.zeros(len(rows), dtype=bool)
        repeat[1:] = (sorted_index[1:] == sorted_index[:-1]) & (sorted_index[1:] >= 0)
        keep = np.ones(len(rows), dtype=bool)
        keep[order[repeat]] = False

        hist = None
        hist_ok = True
        if self.bins:
            hist = self.hist.reshape(2, self.bins).clone().cpu()
            pending = dim_zero_cat(self.pending_hist).reshape(-1, 2, self.bins).cpu()
            row_of = {k: i for i, k in enumerate(keys)}
            for j, key in enumerate(pending_keys):
                if key in row_of and keep[row_of[key]]:
                    hist += pending[j]
            hist_ok = not bool((~keep & ~is_pending).any())

        table = rows[keep]
        sort_index = np.where(table[:, _COL["index"]] >= 0, table[:, _COL["index"]], np.inf)
        table = table[np.lexsort((table[:, _COL["seq"]], table[:, _COL["rank"]], sort_index))]
        return table, hist, int((~keep).sum()), hist_ok

    def compute(self) -> dict[str, float]:
        """Data-set metrics (flat dict of floats; NaN = undefined). Same value on every rank."""
        table, hist, n_dup, hist_ok = self._collect()
        pixel_part = table[:, len(_ID_COLUMNS):]
        out: dict[str, float] = {"n_images": float(len(table))}
        out.update(aggregate_pixel(pixel_part, self.definition))
        if self.bins:
            if hist_ok:
                auc, bound = FM.auc_from_histogram(hist)
                best = FM.best_f1_from_histogram(hist)
            else:
                warnings.warn(
                    "ForgeryMetrics: the same index was seen on several ranks in a way that cannot be "
                    "undone for the pooled histogram (it is not the last image of its rank); "
                    "pixel_auc_pooled and pixel_f1_best_thr_pooled are NaN. Per-image metrics are exact.",
                    stacklevel=2,
                )
                auc = bound = best = math.nan
            out["pixel_auc_pooled"] = auc
            out["pixel_auc_pooled_err_bound"] = bound
            out["pixel_f1_best_thr_pooled"] = best
        out.update(
            aggregate_image(
                table[:, _COL["score"]], table[:, _COL["label"]], table[:, _COL["score_pos"]], self.definition
            )
        )
        tampered = table[:, _COL["n_pos"]] > 0
        out["n_duplicates"] = float(n_dup)
        out["n_label_mask_mismatch"] = float(((table[:, _COL["label"]] > 0.5) != tampered).sum())
        out["n_score_from_model"] = float(table[:, _COL["score_from_model"]].sum())
        return out

    def per_image(self) -> dict[str, np.ndarray]:
        """Per-image values after de-duplication (gathered across ranks), sorted by ``index``.

        Keys: ``index`` (-1 where none was given), ``score``, ``label`` and the pixel columns
        ``n_valid, n_pos, tp, fp, fn, tn, f1, iou, acc, auc, f1_best`` (in the metric's
        definition; ``tp..tn`` in the orientation the F1 kept).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            table, _, _, _ = self._collect()
        skip = {"rank", "seq", "score_pos", "score_from_model", "flip_auc"}
        return {name: table[:, i].copy() for i, name in enumerate(COLUMNS) if name not in skip}
