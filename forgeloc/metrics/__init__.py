"""Exact evaluation metrics for image manipulation localization.

``ForgeryMetrics`` is the object the engine uses (``update`` / ``compute`` / ``reset``, synced
across processes); ``forgeloc.metrics.functional`` holds the pure per-image functions. Two
definitions are available by name: ``"forgeloc"`` (default, exact, authentic images out of the
pixel F1/IoU/AUC) and ``"imdlbenco"`` (IMDLBenCo 0.1.45's numbers). See ``docs/metrics.md``.
"""

from forgeloc.metrics import functional
from forgeloc.metrics.collection import ForgeryMetrics
from forgeloc.metrics.functional import imdlbenco_droplast_mean

__all__ = ["ForgeryMetrics", "functional", "imdlbenco_droplast_mean"]
