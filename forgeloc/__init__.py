"""forgeloc: image manipulation localization for researchers and practitioners.

Public API (small on purpose)::

    import forgeloc
    model = forgeloc.create_model("sparsevit", checkpoint="sparsevit.safetensors")
    forgeloc.list_models()
    predictor = forgeloc.load()                           # the default detector, shipped inside
    predictor = forgeloc.load("runs/quickstart")          # or load("sparsevit", checkpoint=PATH)
    predictor.predict("photo.jpg").save("out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgeloc.models.factory import create_model
from forgeloc.models.registry import list_models, register_model
from forgeloc.version import __version__

if TYPE_CHECKING:
    from forgeloc.inference.predictor import Predictor



def load(model_or_checkpoint: Any = None, checkpoint: Any = None, **kwargs: Any) -> Predictor:
    """A ready-to-use predictor (see :func:`forgeloc.inference.predictor.load`).

    ``forgeloc.load()`` for the default detector shipped with forgeloc, ``forgeloc.load(PATH)`` for
    a run/checkpoint folder that names its model, ``forgeloc.load("sparsevit", checkpoint=PATH)``,
    or ``forgeloc.load("copymove")`` for a training-free detector; then ``.predict(image)``.
    """
    # Imported on use: inference pulls in OpenCV and the detectors; ``import forgeloc`` stays light.
    from forgeloc.inference.predictor import load as _load

    return _load(model_or_checkpoint, checkpoint, **kwargs)


__all__ = ["__version__", "create_model", "list_models", "load", "register_model"]
