"""The model registry: names → constructors, in the manner of timm's ``_registry``.

A model family registers constructor functions with :func:`register_model`::

    @register_model
    def sparsevit(**kwargs) -> SparseViT:
        return SparseViT(**kwargs)

Building a model by name and loading its weights is :func:`forgeloc.models.factory.create_model`
(also ``forgeloc.create_model``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# Modules that register models when imported. Imported lazily so that ``import forgeloc`` stays fast.
_MODEL_MODULES = (
    "forgeloc.models.baseline",
    "forgeloc.models.sparsevit",
    "forgeloc.models.mesorch",
    "forgeloc.models.ncl",
    "forgeloc.models.gridnet",
)
_imported = False


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def _import_model_modules() -> None:
    global _imported
    if _imported:
        return
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # A model family that is not part of this install is simply absent; any other import
            # error is a bug and must surface.
            if err.name != module:
                raise
    _imported = True


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _import_model_modules()
    return sorted(_MODELS)


def get_model_constructor(name: str) -> Callable[..., nn.Module]:
    _import_model_modules()
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}") from None
