"""State dicts: finding one in whatever a training script saved, reading one from any supported
file, and comparing one with a model's (the key report every weight loader writes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgeloc.io.errors import CheckpointError, short_text
from forgeloc.io.files import MODEL_FILE, read_safetensors
from forgeloc.io.unpickle import InertObject, kind_of, read_checkpoint_object

__all__ = ["KeyReport", "WeightsMismatchError", "check_finite", "extract_state_dict", "load_state_dict_file"]

# Keys under which training scripts of the field store the model's state dict, most specific first.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "net", "network", "module")

_MAX_TREE_NODES = 100_000
_MAX_TREE_DEPTH = 256
_MAX_STATE_ENTRIES = 1_000_000


def _module_tree_state(root: InertObject, source: str, out: dict[str, torch.Tensor]) -> None:
    """Parameters and persistent buffers of a pickled module tree, in ``state_dict()`` order.

    Iterative and bounded: a crafted tree can be cyclic, very deep, or share one module many times
    over (each sharing doubles what a naive walk visits)."""
    stack: list[tuple[InertObject, str, int]] = [(root, "", 0)]
    visited = 0
    while stack:
        obj, prefix, depth = stack.pop()
        visited += 1
        if visited > _MAX_TREE_NODES or depth > _MAX_TREE_DEPTH or len(out) > _MAX_STATE_ENTRIES:
            raise CheckpointError(f"{source}: the pickled module tree is cyclic or far too large to be a model")
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state)
            state = state[0]
        if not isinstance(state, Mapping):
            continue
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for key in ("_parameters", "_buffers"):
            entries = state.get(key) or {}
            if not isinstance(entries, Mapping):
                continue
            for name, value in entries.items():
                if isinstance(value, torch.Tensor) and not (key == "_buffers" and name in non_persistent):
                    out[f"{prefix}{name}"] = value
        modules = state.get("_modules") or {}
        if isinstance(modules, Mapping):
            children = [(child, f"{prefix}{name}.", depth + 1) for name, child in modules.items()
                        if isinstance(child, InertObject)]
            stack.extend(reversed(children))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model's state dict in whatever a training script saved.

    Accepts a plain state dict, a training dict holding it under ``model`` / ``state_dict`` / ...,
    or a pickled whole module (read by :func:`restricted_load`). ``module.`` prefixes left by
    ``DataParallel`` / ``DistributedDataParallel`` are removed.
    """
    try:
        return _extract_state_dict(obj, source)
    except RecursionError as err:
        raise CheckpointError(f"{source}: its objects are nested too deeply to be a checkpoint") from err


def _extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    while id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, InertObject) and isinstance(obj.state, (Mapping, tuple)):
            sd: dict[str, torch.Tensor] = {}
            _module_tree_state(obj, source, sd)
            if not sd:
                raise CheckpointError(f"{source}: a pickled {obj.qualname} holds no parameters")
            return _strip_prefix(sd)
        if _is_state_dict(obj):
            return _strip_prefix(dict(obj))
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: holds a {kind_of(obj)}, not a state dict or a model")
        key = next((k for k in _STATE_DICT_KEYS if k in obj), None)
        if key is None:
            tensor_free = [short_text(k, 40) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise CheckpointError(
                f"{source}: no state dict found; top-level keys are {sorted(short_text(k, 40) for k in obj)[:12]}"
                + (f" (non-tensor entries: {tensor_free[:6]})" if tensor_free else "")
            )
        obj = obj[key]
    raise CheckpointError(f"{source}: no state dict found (the checkpoint refers to itself)")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd



def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, a forgeloc checkpoint folder or a ``.pth`` file."""
    path = Path(path)
    if path.is_dir():
        inner = path / MODEL_FILE
        if not inner.is_file():
            raise CheckpointError(f"{path}: a checkpoint folder must contain {MODEL_FILE}")
        path = inner
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj, how = read_checkpoint_object(path)
    if how == "safetensors":
        return obj
    return extract_state_dict(obj, str(path))



# --------------------------------------------------------------------------------------------------
# Comparing a state dict with a model's
# --------------------------------------------------------------------------------------------------
class WeightsMismatchError(CheckpointError, ValueError):
    """Weights whose keys or shapes do not fit the module they are loaded into.

    A :class:`CheckpointError` (the file is at fault) and a ``ValueError`` (what backbone loaders
    raised before they shared this report)."""


@dataclass
class KeyReport:
    """How the keys and shapes of a state dict differ from a module's own, in the module's order.

    The one place where the "missing / unexpected / of another shape" report is written: full
    checkpoints (:func:`forgeloc.models.factory.load_weights`) and pretrained backbones use it.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    @classmethod
    def compare(cls, state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> KeyReport:
        return cls(
            missing=[k for k in own if k not in state_dict],
            unexpected=[k for k in state_dict if k not in own],
            wrong_shape=[
                f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                for k in own
                if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
            ],
        )

    def fits(self, strict: bool) -> bool:
        """Shapes must always agree; with ``strict`` the key sets must be equal too."""
        return not self.wrong_shape and not (strict and (self.missing or self.unexpected))

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {self.missing[:5]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {self.unexpected[:5]})")
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} with another shape (e.g. {self.wrong_shape[:3]})")
        return "; ".join(parts) or "no difference"

    def check(self, source: Any, target: str, strict: bool = True) -> None:
        """Raise :class:`WeightsMismatchError` ("SOURCE: does not fit TARGET: ...") unless it fits."""
        if not self.fits(strict):
            raise WeightsMismatchError(f"{source}: does not fit {target}: {self.describe()}")


def check_finite(
    state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: Any
) -> None:
    """Refuse the first (in the model's order) loaded tensor holding NaN or infinity."""
    for key, mine in own.items():
        value = state_dict.get(key)
        if value is None or not (value.is_floating_point() or value.is_complex()):
            continue
        if bool(torch.isfinite(value).all()):
            continue
        floating = mine.is_floating_point() or mine.is_complex()
        if not mine.is_meta and floating and not bool(torch.isfinite(mine).all()):
            continue  # the model holds non-finite values there itself (a -inf mask, say)
        bad = int((~torch.isfinite(value)).sum())
        raise CheckpointError(
            f"{source}: tensor {key!r} holds {bad:,} non-finite value(s) (NaN or infinity) out of {value.numel():,}: "
            "refusing weights that cannot give meaningful predictions"
        )
