"""Optional dependencies: which pip extra provides which package, and the one-line message a
missing one gives.

``pip install forgeloc`` installs what ``forgeloc.load(...).predict(...)`` and ``forgeloc predict``
need; the rest comes with an extra (see ``pyproject.toml``). Code that needs an extra's package
calls :func:`require` first, or lets the ``ModuleNotFoundError`` reach the command line, which turns
it into the same message (``forgeloc.cli.main``).
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF_MODULE", "MissingExtraError", "extra_for", "install_hint", "require"]

#: Top-level import name → the extra that installs it.
EXTRA_OF_MODULE = {
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "albumentations": "train",
    "torchmetrics": "train",
    "tensorboard": "train",
    "matplotlib": "train",
    "skimage": "demo",
    "fvcore": "bench",
    "onnx": "onnx",
    "onnxruntime": "onnx",
}


class MissingExtraError(ImportError):
    """A package of an optional extra is not installed; the message names the pip command."""


def extra_for(module: str | None) -> str | None:
    """The extra that installs the import name ``module`` (``"fastapi.responses"`` → ``"serve"``), or None."""
    return EXTRA_OF_MODULE.get((module or "").split(".")[0])


def install_hint(what: str, extra: str, missing: str | None = None) -> str:
    """``"forgeloc serve needs the serve extra (fastapi is not installed): pip install 'forgeloc[serve]'"``."""
    because = f" ({missing} is not installed)" if missing else ""
    return f"{what} needs the {extra} extra{because}: pip install 'forgeloc[{extra}]'"


def require(extra: str, what: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming the pip command when one of ``modules`` is missing.

    Checked with ``find_spec`` (nothing is imported), so it is cheap enough to call before work starts.
    """
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise MissingExtraError(install_hint(what, extra, name))
