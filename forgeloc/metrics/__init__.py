"""Exact evaluation metrics for image manipulation localization.

``ForgeryMetrics`` is the object the engine uses (``update`` / ``compute`` / ``reset``, synced
across processes); ``forgeloc.metrics.functional`` holds the pure per-image functions. Two
definitions are available by name: ``"forgeloc"`` (default, exact, authentic images out of the
pixel F1/IoU/AUC) and ``"imdlbenco"`` (IMDLBenCo 0.1.45's numbers). See ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

from forgeloc.metrics import functional
from forgeloc.metrics.functional import imdlbenco_droplast_mean

__all__ = ["ForgeryMetrics", "functional", "imdlbenco_droplast_mean"]


def __getattr__(name: str) -> Any:
    # Imported on use: ForgeryMetrics needs torchmetrics (the train extra); prediction reads only
    # forgeloc.metrics.image, which must not pull it in.
    if name == "ForgeryMetrics":
        from forgeloc.metrics.collection import ForgeryMetrics

        return ForgeryMetrics
    raise AttributeError(f"module 'forgeloc.metrics' has no attribute {name!r}")
