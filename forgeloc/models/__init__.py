"""Model families (one file each), the registry and the factory. See :mod:`forgeloc.models.base`
for the contract, :mod:`forgeloc.models.registry` for names → constructors and
:mod:`forgeloc.models.factory` for building models and loading checkpoints.

CPU performance switches: :func:`set_cpu_linear_backend` / :func:`cpu_linear_backend` (where Linear
GEMMs run, :mod:`forgeloc.models.fast_cpu`) and :func:`fuse_for_inference` / :func:`unfuse` (the
inference-only block variants, :mod:`forgeloc.models.fusion`).
"""

from typing import Any

from forgeloc.models.base import ForgeryModel
from forgeloc.models.factory import create_model, load_model
from forgeloc.models.fast_cpu import cpu_linear_backend, set_cpu_linear_backend
from forgeloc.models.registry import list_models, register_model

__all__ = [
    "ForgeryModel",
    "cpu_linear_backend",
    "create_model",
    "fuse_for_inference",
    "fused_for_inference",
    "list_models",
    "load_model",
    "register_model",
    "set_cpu_linear_backend",
    "unfuse",
]

_FUSION_NAMES = ("fuse_for_inference", "fused_for_inference", "unfuse")


def __getattr__(name: str) -> Any:
    # forgeloc.models.fusion imports the model families; only load them when fusion is asked for.
    if name in _FUSION_NAMES:
        from forgeloc.models import fusion

        return getattr(fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
