"""The one evaluation loop: training-time validation, ``forgeloc test`` and robustness all use it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from forgeloc.engine.checkpointing import unwrap
from forgeloc.engine.runtime import autocast_context, move_batch
from forgeloc.metrics import ForgeryMetrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    device: torch.device,
    *,
    definition: str = "forgeloc",
    threshold: float = 0.5,
    image_score: str = "max",
    amp: str = "none",
    channels_last: bool = False,
    on_batch: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and return every metric (synced across processes).

    Each process must see a disjoint shard of the dataset (see ``ShardSampler``); the metrics
    de-duplicate by the samples' ``index`` in any case. ``on_batch(batch, output)`` lets callers
    collect predictions (e.g. sample heatmaps for TensorBoard) without a second loop.
    """
    from forgeloc.models.fusion import fused_for_inference

    net = unwrap(model)
    was_training = net.training
    net.eval()
    metrics = ForgeryMetrics(definition=definition, threshold=threshold, image_score=image_score)
    metrics.to(device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    # On the CPU without autocast the blocks' inference kernels run, as in Predictor.
    with fused_for_inference(net, enabled=device.type == "cpu" and amp == "none"):
        for batch in loader:
            batch = move_batch(batch, device, channels_last)
            with autocast_context(device, amp):
                out = net(batch)
            pred = out["pred_mask"].float()
            metrics.update(
                pred,
                batch["mask"],
                shape_mask=batch.get("shape_mask"),
                label=batch.get("label"),
                pred_label=None if out.get("pred_label") is None else out["pred_label"].float(),
                index=batch.get("index"),
            )
            if out.get("loss") is not None:
                n = pred.shape[0]
                loss_sum += torch.tensor([float(out["loss"]) * n, n], dtype=torch.float64, device=device)
            if on_batch is not None:
                on_batch(batch, out)
    results = dict(metrics.compute())
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
    if loss_sum[1] > 0:
        results["loss"] = float(loss_sum[0] / loss_sum[1])
    net.train(was_training)
    return results


def evaluate_photos(
    predictor: Any,
    source: str,
    *,
    definition: str = "forgeloc",
    threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    mode: str = "auto",
) -> dict[str, Any]:
    """Evaluate a :class:`~forgeloc.inference.predictor.Predictor` photo by photo, at each photo's
    own resolution (what a user of ``forgeloc predict`` gets), on the dataset ``source``; ``mode``
    is ``predict``'s (``auto``, ``resize`` or ``tile``, for models with a fixed input size).

    The metrics are :class:`~forgeloc.metrics.ForgeryMetrics` with the predictor's image score as
    the image-level score, plus ``authentic_flagged``: the mean share of pixels flagged
    (``heatmap > threshold``) on authentic images, the false-alarm rate a practitioner sees.
    Masks whose size differs from their image are an error (as in training and ``forgeloc test``).
    """
    import math

    import numpy as np

    from forgeloc.data.datasets import load_records
    from forgeloc.data.io import read_mask

    thr = predictor.threshold if threshold is None else float(threshold)
    records = [r for r in load_records(source) if r.label is not None]
    metrics = ForgeryMetrics(definition=definition, threshold=thr, image_score="max")
    flagged: list[float] = []
    for i, rec in enumerate(records):
        pred = predictor.predict(rec.image, threshold=thr, mode=mode)
        h, w = pred.heatmap.shape
        if rec.mask is None:
            mask = np.zeros((h, w), np.uint8)
            flagged.append(pred.tampered_fraction)
        else:
            mask = read_mask(rec.mask, image_size=(w, h), image_path=rec.image)
        metrics.update(
            torch.from_numpy(pred.heatmap)[None, None],
            torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None],
            label=torch.tensor([float(rec.label)]),
            pred_label=torch.tensor([float(pred.score)]),
            index=torch.tensor([i]),
        )
        if progress is not None:
            progress(i + 1, len(records))
    out = dict(metrics.compute())
    out["authentic_flagged"] = float(np.mean(flagged)) if flagged else math.nan
    return out
