"""Inference for people: predict on photos of any size, save pictures, write reports, serve a page.

* :func:`load` / :class:`Predictor` / :class:`Prediction` (:mod:`forgeloc.inference.predictor`);
* resize vs full-resolution tiled prediction (:mod:`forgeloc.inference.tiling`);
* colour maps and overlays (:mod:`forgeloc.inference.visualize`);
* many files into one folder, as ``forgeloc predict`` does (:mod:`forgeloc.inference.batch`; output
  names in :mod:`forgeloc.inference.outputs`);
* a self-contained HTML report (:mod:`forgeloc.inference.report`);
* a local web page + JSON API (:mod:`forgeloc.inference.server`, needs FastAPI/uvicorn).
"""

from forgeloc.inference.predictor import (
    MODES,
    Prediction,
    PredictionCancelledError,
    PredictionFailure,
    Predictor,
    ProgressFn,
    WorkPlan,
    load,
)

__all__ = ["MODES", "Prediction", "PredictionCancelledError", "PredictionFailure", "Predictor", "ProgressFn",
           "WorkPlan", "load"]
