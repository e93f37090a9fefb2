"""Loading and saving weights without ever executing code from a file.

Checkpoints are untrusted data. forgeloc reads:

* **safetensors** files (our own format; also what ``forgeloc convert`` writes);
* **forgeloc checkpoint folders** (``model.safetensors`` + ``config.json``, written by the trainer);
* the authors' **PyTorch ``.pth`` files**. These are pickles. They are first opened with
  ``torch.load(weights_only=True)`` and a short allow-list of harmless types (an argparse
  ``Namespace`` holding the training arguments). When that refuses the file — e.g. NCL's checkpoint
  is a pickled *whole model* whose classes live in the authors' code — :func:`restricted_load`
  reads the pickle with an unpickler that imports nothing: every class or function it names
  becomes an inert placeholder that records its arguments and state, tensors are rebuilt from
  their raw storages, and a pickled module tree is walked (``_parameters`` / ``_buffers`` /
  ``_modules``) to recover its state dict. Nothing named by the file is ever imported or called.

Writes are atomic (temporary file in the same folder, ``fsync``, ``os.replace``), so a killed
process never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import nn

__all__ = [
    "CheckpointError",
    "InertObject",
    "atomic_write",
    "extract_state_dict",
    "load_model_weights",
    "load_state_dict_file",
    "read_checkpoint_object",
    "restricted_load",
    "save_state_dict",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# Keys under which training scripts of the field store the model's state dict, most specific first.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "net", "network", "module")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the model; the message names the file."""


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    The temporary file lives in the destination folder (``os.replace`` is atomic only within one
    file system) and is fsynced before the rename, so ``path`` is either the old file or the
    complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor] | nn.Module,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save a state dict (or a module's) as safetensors, atomically."""
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    # safetensors refuses tensors that share memory; a contiguous clone per entry is cheap next to I/O.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: _save_safetensors(tensors, str(tmp), metadata=meta))


# --------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------
class InertObject:
    """Stands in for any class or function a pickle names that is not on the allow-list.

    Calling it, constructing it or restoring its state only *records* what the pickle asked for;
    no code from the file runs. ``qualname`` says what the pickle wanted to import.
    """

    qualname = "?"
    # Class-level defaults: pickle's NEWOBJ builds instances without calling __init__.
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = {}
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list[Any] = []
        self.mapping: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("mapping", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("items", []).append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__.setdefault("items", []).extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(module: str, name: str) -> type:
    qualname = f"{module}.{name}"
    cls = _INERT_CLASSES.get(qualname)
    if cls is None:
        cls = type(f"Inert[{qualname}]", (InertObject,), {"qualname": qualname})
        _INERT_CLASSES[qualname] = cls
    return cls


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any, **__: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: Any, *_: Any, **__: Any) -> Any:
    return data


def _safe_global(module: str, name: str) -> Any:
    """The allow-list: harmless callables a checkpoint may legitimately name."""
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        return _rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        return _rebuild_parameter
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "torch" and name == "Size":
        return torch.Size
    if module == "builtins" and name in ("set", "frozenset", "slice", "complex", "tuple", "list", "dict"):
        return getattr(__import__("builtins"), name)
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} in checkpoint")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, read_record: Callable[[str], bytes]) -> None:
        super().__init__(file, encoding="utf-8")
        self._read_record = read_record
        self._storages: dict[str, torch.Tensor] = {}
        self.inert_names: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) use Python 2 names such as ``__builtin__.set``;
        # translate them as pickle's own find_class does, so allow-listed types are recognised.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        safe = _safe_global(module, name)
        if safe is not None:
            return safe
        self.inert_names.add(f"{module}.{name}")
        return _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 3):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = bytearray(self._read_record(key))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def restricted_load(path: str | Path) -> tuple[Any, set[str]]:
    """Read a PyTorch zip checkpoint without importing or calling anything it names.

    Returns the unpickled object graph (placeholders in place of unknown classes) and the set of
    qualified names that were replaced by placeholders.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (the legacy pre-1.6 format is not supported by the "
            "restricted reader; re-save it with a current PyTorch in a sandbox, then convert)"
        )
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), lambda key: zf.read(f"{prefix}data/{key}"))
        try:
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{path}: could not be read ({type(err).__name__}: {err})") from err
    return obj, unpickler.inert_names


# --------------------------------------------------------------------------------------------------
# From any checkpoint object to a flat state dict
# --------------------------------------------------------------------------------------------------
def _module_tree_state(obj: InertObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state)
        state = state[0]
    if not isinstance(state, Mapping):
        return
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        for name, value in (state.get(key) or {}).items():
            if isinstance(value, torch.Tensor) and not (key == "_buffers" and name in non_persistent):
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            _module_tree_state(child, f"{prefix}{name}.", out)


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
    if isinstance(obj, InertObject) and isinstance(obj.state, (Mapping, tuple)):
        sd: dict[str, torch.Tensor] = {}
        _module_tree_state(obj, "", sd)
        if not sd:
            raise CheckpointError(f"{source}: a pickled {obj.qualname} holds no parameters")
        return _strip_prefix(sd)
    if _is_state_dict(obj):
        return _strip_prefix(dict(obj))
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if key in obj:
                return extract_state_dict(obj[key], source)
        tensor_free = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise CheckpointError(
            f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:12]}"
            + (f" (non-tensor entries: {tensor_free[:6]})" if tensor_free else "")
        )
    raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict or a model")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# Types that appear in the training dicts of IMDLBenCo-style checkpoints and are harmless to build.
_WEIGHTS_ONLY_ALLOWED: list[Any] = [argparse.Namespace]


def read_checkpoint_object(path: str | Path) -> tuple[Any, str]:
    """Open a ``.pth``/``.pt``/``.bin`` checkpoint safely; return the object and how it was read."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_WEIGHTS_ONLY_ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:
        # weights_only refused a type outside the allow-list: fall back to the inert reader.
        obj, _ = restricted_load(path)
        return obj, "restricted"
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


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
        try:
            return _load_safetensors(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: not a valid safetensors file ({err})") from err
    obj, _ = read_checkpoint_object(path)
    return extract_state_dict(obj, str(path))


def read_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a forgeloc checkpoint folder (or next to a safetensors file), if any."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg = folder / CONFIG_FILE
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text())


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model``.

    A model may define ``remap_state_dict(state_dict) -> state_dict`` to translate the authors' key
    names into its own. With ``strict=True`` a key mismatch is an error listing the differences.
    """
    sd = load_state_dict_file(path)
    remap = getattr(model, "remap_state_dict", None)
    if callable(remap):
        sd = remap(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if wrong_shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with another shape (e.g. {wrong_shape[:3]})")
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{path}: does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=strict)
    return model


# --------------------------------------------------------------------------------------------------
# Whole models from checkpoints
# --------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """A training run folder → its ``best/`` (else newest complete checkpoint); anything else as is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        if (path / "best" / MODEL_FILE).is_file():
            return path / "best"
        from forgeloc.engine.checkpointing import find_latest_checkpoint

        latest = find_latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: no {MODEL_FILE}, best/ or complete checkpoint inside")
        return latest
    return path


def load_model(
    checkpoint: str | Path, model: str | None = None, strict: bool = True, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model from a checkpoint; return it (in eval mode) with the checkpoint's config.

    ``checkpoint`` may be a forgeloc checkpoint folder or run folder (its ``config.json`` names the
    model and options), or a weights file (safetensors / authors' ``.pth``), in which case
    ``model`` must name the architecture. ``kwargs`` override the recorded constructor options.
    """
    from forgeloc.models.registry import create_model

    path = resolve_checkpoint(checkpoint)
    config = read_checkpoint_config(path) or {}
    name = model or config.get("model")
    if not name:
        raise CheckpointError(
            f"{path}: no config.json names the model; pass the model name (e.g. model='sparsevit')"
        )
    recorded = (config.get("model_kwargs") or {}) if name == config.get("model") else {}
    # Pretrained-backbone paths only matter for initialisation: the checkpoint overwrites them, and
    # the file need not exist on the machine that predicts.
    recorded = {k: v for k, v in recorded.items() if "pretrain" not in k}
    options = {**recorded, **kwargs}
    net = create_model(name, checkpoint=path, strict=strict, **options)
    net.eval()
    return net, {**config, "model": name, "model_kwargs": options, "checkpoint": str(path)}
