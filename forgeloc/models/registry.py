"""Model registry and ``create_model``, in the manner of ``timm.create_model``.

A model family registers constructor functions with :func:`register_model`::

    @register_model
    def sparsevit(**kwargs) -> SparseViT:
        return SparseViT(**kwargs)

``create_model(name, checkpoint=PATH, **kwargs)`` calls the constructor, records the name and
keyword arguments on the model (so checkpoint folders can rebuild it), and loads weights strictly
from a safetensors file, a forgeloc checkpoint folder, or an authors' ``.pth`` (never unpickling
code, see :mod:`forgeloc.checkpoint`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def create_model(name: str, checkpoint: str | Path | None = None, strict: bool = True, **kwargs: Any) -> nn.Module:
    """Build a registered model and optionally load weights.

    Args:
        name: a registered model name (see :func:`list_models`).
        checkpoint: a ``.safetensors`` file, a forgeloc checkpoint folder (``model.safetensors``
            inside), or an authors' ``.pth`` checkpoint (loaded without executing pickled code).
        strict: load with ``strict=True`` (the default: the key sets must match exactly).
        **kwargs: constructor arguments of the model (its configuration).
    """
    ctor = get_model_constructor(name)
    sig = inspect.signature(ctor)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in sig.parameters and not accepts_any]
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {unknown}; options: {list(sig.parameters)}")
    model = ctor(**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    if checkpoint is not None:
        from forgeloc.checkpoint import load_model_weights

        load_model_weights(model, checkpoint, strict=strict)
    return model
