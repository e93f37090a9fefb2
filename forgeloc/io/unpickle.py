"""Reading pickled checkpoints without ever executing code from them.

Checkpoints are untrusted data. forgeloc reads:

* **safetensors** files are recognised by their content, whatever their suffix, and read as such
  (:func:`forgeloc.io.files.read_safetensors`);
* the authors' **PyTorch ``.pth`` files**. These are pickles. They are first opened with
  ``torch.load(weights_only=True)`` and a short allow-list of harmless types (an argparse
  ``Namespace`` holding the training arguments). When that refuses the file — e.g. NCL's checkpoint
  is a pickled *whole model* whose classes live in the authors' code — :func:`restricted_load`
  reads the pickle with an unpickler that imports nothing: every class or function it names
  becomes an inert placeholder that records its arguments and state, tensors are rebuilt from
  their raw storages, and a pickled module tree is walked (``_parameters`` / ``_buffers`` /
  ``_modules``) to recover its state dict. Nothing named by the file is ever imported or called;
  names that could run code (``os.system``, ``builtins.eval``, ...) are reported in a warning.

A pickle can also ask for far more memory than it holds. Before ``torch.load`` or the restricted
reader materialise anything, the file is *scanned*: the pickle is read with the restricted
unpickler over zero-byte ("meta") storages, every tensor's extent (the furthest element its size,
stride and offset reach) is checked against the storage it views, the bytes all tensors would take
are capped at :data:`MATERIALISE_FACTOR` times the file size (plus :data:`MATERIALISE_SLACK`), and
the number of objects the pickle builds from its own memo is capped by its length. Zip archives
with compressed members are refused (``torch.save`` never compresses; a deflated member can expand
without bound), and so are archives whose members claim more bytes than the file holds. Every
failure to parse a file becomes a :class:`CheckpointError` that names it.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import contextlib
import io
import logging
import math
import mmap
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from forgeloc.io.errors import CheckpointError, short_text
from forgeloc.io.files import read_safetensors

__all__ = [
    "MATERIALISE_FACTOR",
    "MATERIALISE_SLACK",
    "InertObject",
    "read_checkpoint_object",
    "restricted_load",
]

log = logging.getLogger(__name__)

# The tensors of a pickled checkpoint may take at most this many times the file's size (plus the
# slack): a genuine file stores every tensor's data, and views of one storage rarely add up to more.
MATERIALISE_FACTOR = 4
MATERIALISE_SLACK = 16 << 20
# A pickle may build at most this many times its length in container elements and call arguments
# (copies of memoised objects are the way a small pickle asks for a lot of memory).
_PICKLE_UNIT_FACTOR = 4
_PICKLE_UNIT_SLACK = 1 << 20
_MAX_TENSOR_DIMS = 64

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


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


def kind_of(value: Any) -> str:
    """How messages name what a value is: for a placeholder, the class the pickle named
    (``"pickled vanishing.Thing"``), never the placeholder's own class name."""
    if isinstance(value, InertObject):
        return f"pickled {value.qualname}"
    return type(value).__name__


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
    "QUInt8Storage": torch.quint8,
    "QInt8Storage": torch.qint8,
    "QInt32Storage": torch.qint32,
    "QUInt4x2Storage": torch.quint4x2,
    "QUInt2x4Storage": torch.quint2x4,
}
# Dry scans only need sizes: meta storages use a plain dtype of the same width.
_SHADOW_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage of {self.dtype}>"


def _storage_type(module: str, name: str) -> _StorageType | None:
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch.storage" and name == "UntypedStorage":  # torch.save's storage for newer dtypes
        return _StorageType(torch.uint8)
    return None


def _rebuild_parameter(data: Any, *_: Any, **__: Any) -> Any:
    return data


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} in checkpoint")
    return text.encode("latin1")


# Names a pickle has no business naming: calling any of them could run code or touch the system.
# They are never called (every name outside the allow-list becomes an inert placeholder); a file that
# names them is reported.
_EXECUTABLE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "runpy", "socket", "pty", "pickle", "_pickle",
    "marshal", "ctypes", "importlib", "code", "codeop", "bdb", "pdb", "asyncio", "webbrowser", "http",
    "httplib", "urllib", "urllib2", "requests", "aiohttp", "venv", "pip", "ensurepip", "multiprocessing",
    "signal", "commands", "popen2", "cProfile", "profile", "timeit", "trace", "pydoc", "shelve", "dill",
    "cloudpickle", "joblib", "setuptools", "distutils",
})
_EXECUTABLE_SUBMODULES = (
    "torch.hub", "torch.jit", "torch.serialization", "torch.package", "torch.utils.cpp_extension",
    "torch._inductor", "torch._dynamo", "numpy.testing", "numpy.f2py",
)
_EXECUTABLE_NAMES = {
    "builtins": frozenset({
        "eval", "exec", "execfile", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "breakpoint", "input", "apply", "exit", "quit", "help",
    }),
    "io": frozenset({"open", "open_code", "FileIO"}),
    "_io": frozenset({"open", "open_code", "FileIO"}),
    "operator": frozenset({"attrgetter", "methodcaller"}),
    "types": frozenset({"FunctionType", "LambdaType", "CodeType", "MethodType", "ModuleType"}),
    "functools": frozenset({"partial", "reduce"}),
    "torch": frozenset({"load", "save", "compile"}),
    "numpy": frozenset({"load", "fromfile", "loadtxt"}),
}


def _can_execute(module: str, name: str) -> bool:
    if module in _EXECUTABLE_NAMES:
        return name in _EXECUTABLE_NAMES[module]
    if module.split(".")[0] in _EXECUTABLE_MODULES:
        return True
    return any(module == m or module.startswith(m + ".") for m in _EXECUTABLE_SUBMODULES)



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _materialise_limit(file_size: int) -> int:
    return MATERIALISE_FACTOR * file_size + MATERIALISE_SLACK


def _sized(value: Any) -> int:
    try:
        return max(len(value), 1)
    except Exception:  # not sized, or a 0-d tensor
        return 1


StorageResolver = Callable[[Any], "tuple[Any, str]"]

# The pure-Python unpickler: its memo is a dict (the C unpickler grows an array to the largest memo
# index a pickle names: 9 bytes can ask for gigabytes), it reads no more than its input holds, and
# its opcodes can be hooked to count what a pickle copies.
_PyUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class _RestrictedUnpickler(_PyUnpickler):
    """Unpickles without importing anything; see the module docstring.

    ``storages(pid) -> (tensor, name)`` resolves a persistent id to the storage a tensor views. With
    ``dry`` the storages are meta tensors, nothing is materialised, and every rebuilt tensor is
    recorded in :attr:`tensors` (with what is wrong with it) for :func:`_check_tensors`.
    """

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(_PyUnpickler.dispatch)

    def __init__(
        self, file: Any, storages: StorageResolver, *, length: int, dry: bool, byte_limit: int
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._resolve_storage = storages
        self._dry = dry
        self._byte_limit = byte_limit
        self._unit_limit = _PICKLE_UNIT_FACTOR * length + _PICKLE_UNIT_SLACK
        self._units = 0
        self._storage_names: dict[int, str] = {}
        self.materialised = 0
        self.tensors: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self.inert_names: set[str] = set()
        self.named: set[tuple[str, str]] = set()

    # ---- bounding what a pickle can copy ---------------------------------------------------------
    def _spend(self, units: int) -> None:
        self._units += units
        if self._units > self._unit_limit:
            raise pickle.UnpicklingError(
                "the pickle builds far more objects than it holds (repeated copies of memoised objects)"
            )

    def _load_reduce(self) -> None:
        if self.stack:
            self._spend(_sized(self.stack[-1]))
        _PyUnpickler.load_reduce(self)

    def _load_newobj(self) -> None:
        if self.stack:
            self._spend(_sized(self.stack[-1]))
        _PyUnpickler.load_newobj(self)

    def _load_newobj_ex(self) -> None:
        if len(self.stack) >= 2:
            self._spend(_sized(self.stack[-1]) + _sized(self.stack[-2]))
        _PyUnpickler.load_newobj_ex(self)

    def _load_build(self) -> None:
        if len(self.stack) < 2:
            raise pickle.UnpicklingError("BUILD without an object")
        state, inst = self.stack[-1], self.stack[-2]
        # Module placeholders and OrderedDicts (a state dict's ``_metadata``) take a state in genuine
        # checkpoints; a tensor's __setstate__ would call set_() and resize its storage.
        if not isinstance(inst, (InertObject, collections.OrderedDict)):
            raise pickle.UnpicklingError(f"the pickle sets the state of a {kind_of(inst)}")
        parts = state if isinstance(state, tuple) else (state,)
        self._spend(sum(_sized(p) for p in parts))
        _PyUnpickler.load_build(self)

    def _load_setitem(self) -> None:
        if len(self.stack) < 3 or not isinstance(self.stack[-3], (dict, InertObject)):
            raise pickle.UnpicklingError("SETITEM on something other than a dict")
        _PyUnpickler.load_setitem(self)

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        if not self.stack or not isinstance(self.stack[-1], (dict, InertObject)):
            raise pickle.UnpicklingError("SETITEMS on something other than a dict")  # e.g. a tensor's __setitem__
        target = self.stack[-1]
        for i in range(0, len(items), 2):  # an odd count: IndexError, as in pickle
            target[items[i]] = items[i + 1]

    def _refuse_buffers(self) -> None:
        raise pickle.UnpicklingError("protocol-5 buffers are not used by checkpoints")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.BYTEARRAY8[0]] = _refuse_buffers
    dispatch[pickle.NEXT_BUFFER[0]] = _refuse_buffers
    dispatch[pickle.READONLY_BUFFER[0]] = _refuse_buffers

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """An allow-listed callable that copies its arguments: charge the copy to the budget."""

        def call(*args: Any, **kwargs: Any) -> Any:
            for value in (*args, *kwargs.values()):
                if isinstance(value, (torch.Tensor, InertObject)):
                    raise pickle.UnpicklingError(
                        f"the pickle applies {getattr(fn, '__name__', 'a builtin')} to a {kind_of(value)}"
                    )
                self._spend(_sized(value))
            return fn(*args, **kwargs)

        return call

    # ---- names -----------------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) use Python 2 names such as ``__builtin__.set``;
        # translate them as pickle's own find_class does, so allow-listed types are recognised.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        safe = self._safe_global(module, name)
        if safe is not None:
            return safe
        self.inert_names.add(f"{module}.{name}")
        self.named.add((module, name))
        return _inert_class(module, name)

    def _safe_global(self, module: str, name: str) -> Any:
        """The allow-list: harmless callables a checkpoint may legitimately name."""
        if module == "torch._utils":
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return self._rebuild_tensor
            if name == "_rebuild_tensor_v3":
                return self._rebuild_tensor_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return _rebuild_parameter
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return self._rebuild_from_type_v2
        if module == "collections" and name == "OrderedDict":
            return self._counted(collections.OrderedDict)
        storage_type = _storage_type(module, name)
        if storage_type is not None:
            return storage_type
        if module == "torch":
            value = vars(torch).get(name)  # never torch's lazy __getattr__ (it imports submodules)
            if isinstance(value, torch.dtype):
                return value
            if name == "Size":
                return self._counted(torch.Size)
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict"):
            return self._counted(getattr(__import__("builtins"), name))
        if module == "builtins" and name in ("slice", "complex"):
            return getattr(__import__("builtins"), name)
        if module == "_codecs" and name == "encode":
            return self._counted(_latin1_encode)
        return None

    # ---- storages and tensors --------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        storage, name = self._resolve_storage(pid)
        self._storage_names[id(storage)] = name
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any, **__: Any) -> Any:
        return self._tensor(storage, offset, size, stride, self._storage_names.get(id(storage), "?"))

    def _rebuild_tensor_v3(
        self, storage: Any, offset: Any, size: Any, stride: Any, _requires_grad: Any = False,
        _hooks: Any = None, dtype: Any = None, *_: Any, **__: Any,
    ) -> Any:
        if not isinstance(dtype, torch.dtype) or not isinstance(storage, torch.Tensor):
            raise pickle.UnpicklingError("_rebuild_tensor_v3 without a storage and a dtype")
        name = self._storage_names.get(id(storage), "?")
        target = _SHADOW_DTYPES.get(dtype.itemsize, dtype) if self._dry else dtype
        if storage.dtype != target:
            if storage.element_size() != 1 or storage.numel() % dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {name!r} does not hold whole {dtype} elements")
            storage = storage.view(target)
        return self._tensor(storage, offset, size, stride, name)

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        # A tensor with Python attributes: rebuild the plain tensor, drop the attributes.
        if getattr(func, "__self__", None) is self and isinstance(args, tuple):
            self._spend(len(args))
            return func(*args)
        self.inert_names.add("torch._tensor._rebuild_from_type_v2")
        return _inert_class("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)

    @staticmethod
    def _dims(value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or len(value) > _MAX_TENSOR_DIMS:
            raise pickle.UnpicklingError(f"a tensor {what} must be a tuple of at most {_MAX_TENSOR_DIMS} numbers")
        if not all(_is_int(v) and 0 <= v < 2**63 for v in value):
            raise pickle.UnpicklingError(f"a tensor {what} holds something other than numbers from 0 to 2**63")
        return tuple(value)

    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, name: str) -> Any:
        if not isinstance(storage, torch.Tensor):
            raise pickle.UnpicklingError(f"a tensor over a {kind_of(storage)}, not a storage")
        size, stride = self._dims(size, "size"), self._dims(stride, "stride")
        if len(size) != len(stride) or not _is_int(offset) or not 0 <= offset < 2**63:
            raise pickle.UnpicklingError(f"a tensor with size {size}, stride {stride} and offset {short_text(offset)}")
        numel = math.prod(size)
        extent = 0 if numel == 0 else offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        nbytes = numel * storage.element_size()
        problem = None
        if extent > storage.numel():
            problem = f"reaches element {extent:,} of storage {name!r}, which holds {storage.numel():,}"
        self.materialised += nbytes
        if self._dry:
            ok = problem is None and numel < 2**62
            tensor = torch.as_strided(storage, size, stride, offset) if ok else storage[:0]
            info = {"size": size, "stride": stride, "offset": offset, "nbytes": nbytes, "storage": name,
                    "problem": problem}
            self.tensors.append((tensor, info))
            return tensor
        if problem is not None:
            raise pickle.UnpicklingError(f"a tensor of size {size} and stride {stride} {problem}")
        if self.materialised > self._byte_limit:
            raise pickle.UnpicklingError(f"the tensors would take more than {self._byte_limit:,} bytes")
        return torch.as_strided(storage, size, stride, offset).clone()


def _no_storage(pid: Any) -> tuple[Any, str]:
    raise pickle.UnpicklingError(f"unexpected persistent id {short_text(pid)}")


def _storage_pid(pid: Any, length: int) -> tuple[torch.dtype, str]:
    if not (isinstance(pid, tuple) and len(pid) >= length and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unsupported persistent id {short_text(pid)}")
    storage_type, key = pid[1], pid[2]
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unsupported storage type {short_text(storage_type)}")
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise pickle.UnpicklingError(f"unsupported storage key {short_text(key)}")
    return storage_type.dtype, str(key)


class _ZipStorages:
    """Storages of a torch.save zip archive: its ``data/<key>`` records (meta tensors when dry)."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, dry: bool) -> None:
        self.zf, self.prefix, self.dry = zf, prefix, dry
        self.cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __call__(self, pid: Any) -> tuple[torch.Tensor, str]:
        dtype, key = _storage_pid(pid, 3)
        record = f"{self.prefix}data/{key}"
        cached = self.cache.get((key, dtype))
        if cached is not None:
            return cached, record
        try:
            info = self.zf.getinfo(record)
        except KeyError:
            raise pickle.UnpicklingError(f"the archive has no record {record!r}") from None
        if info.file_size % dtype.itemsize:
            raise pickle.UnpicklingError(
                f"record {record!r} ({info.file_size} bytes) does not hold whole {dtype} elements"
            )
        if self.dry:
            tensor = torch.empty(info.file_size // dtype.itemsize, dtype=_SHADOW_DTYPES.get(dtype.itemsize, dtype),
                                 device="meta")
        else:
            raw = bytearray(self.zf.read(record))
            tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        self.cache[(key, dtype)] = tensor
        return tensor, record


class _LegacyStorages:
    """Storages of a legacy (pre-1.6) torch.save file, as the pickle declares them (dry scans only)."""

    def __init__(self) -> None:
        self.roots: dict[str, torch.Tensor] = {}
        self.views: dict[str, torch.Tensor] = {}

    def __call__(self, pid: Any) -> tuple[Any, str]:
        if isinstance(pid, tuple) and pid and pid[0] == "module":  # a whole-model pickle's source record
            return _inert_class("torch.serialization", "legacy_module")(), "module"
        dtype, key = _storage_pid(pid, 6)
        numel, view = pid[4], pid[5]
        if not _is_int(numel) or not 0 <= numel < 2**62:
            raise pickle.UnpicklingError(f"storage {key!r} declares {short_text(numel)} elements")
        root = self.roots.get(key)
        if root is None:
            root = torch.empty(numel, dtype=_SHADOW_DTYPES.get(dtype.itemsize, dtype), device="meta")
            self.roots[key] = root
        elif root.numel() != numel or root.element_size() != dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice with different sizes")
        if view is None:
            return root, key
        if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])):
            raise pickle.UnpicklingError(f"unsupported storage view {short_text(view)}")
        view_key, offset, length = str(view[0]), view[1], view[2]
        if offset < 0 or length < 0 or offset + length > numel:
            raise pickle.UnpicklingError(f"storage view {view_key!r} lies outside storage {key!r}")
        if view_key not in self.views:
            self.views[view_key] = root[offset : offset + length]
        return self.views[view_key], f"{key}[{offset}:{offset + length}]"


def _unpickle(
    file: Any, storages: StorageResolver, source: Path, *, length: int, dry: bool, byte_limit: int
) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(file, storages, length=length, dry=dry, byte_limit=byte_limit)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as err:  # a malformed pickle can raise almost anything: KeyError, IndexError, ...
        raise CheckpointError(f"{source}: could not be read ({type(err).__name__}: {short_text(err)})") from err
    return obj, unpickler


# --------------------------------------------------------------------------------------------------
# Naming the tensors of an object graph (for messages about them)
# --------------------------------------------------------------------------------------------------
_TREE_KEYS = frozenset({"_parameters", "_buffers", "_modules"})


def _label(key: Any) -> str:
    return key if isinstance(key, str) else short_text(key, 40)


def _children(node: Any) -> list[tuple[str | None, Any]]:
    """(label, child) pairs of a container or placeholder; ``None``: the child shares the parent's name."""
    if isinstance(node, Mapping):
        return [(None if k in _TREE_KEYS else _label(k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(node)]
    if isinstance(node, InertObject):
        d = node.__dict__
        return [(None, node.state), (None, d.get("args", ())), (None, d.get("kwargs", {})),
                (None, d.get("items", [])), (None, d.get("mapping", {}))]
    return []


def _tensor_names(obj: Any) -> dict[int, str]:
    """``id(tensor) -> "model.fc.weight"``-like paths, first path in file order wins."""
    names: dict[int, str] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, torch.Tensor):
            names.setdefault(id(node), prefix or "<the whole file>")
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        for label, child in reversed(_children(node)):
            if label is None:
                path = prefix
            elif label.startswith("["):
                path = prefix + label
            else:
                path = f"{prefix}.{label}" if prefix else label
            stack.append((path, child))
    return names


def _check_tensors(obj: Any, unpickler: _RestrictedUnpickler, source: Path, file_size: int) -> None:
    """After a dry scan: refuse tensors beyond their storage and more tensor bytes than the file can hold."""
    problems = [(t, info) for t, info in unpickler.tensors if info["problem"]]
    limit = _materialise_limit(file_size)
    total = unpickler.materialised
    if not problems and total <= limit:
        return
    names = _tensor_names(obj)

    def label(tensor: torch.Tensor, info: dict[str, Any]) -> str:
        name = names.get(id(tensor))
        return repr(name) if name else f"over record {info['storage']!r}"

    if problems:
        tensor, info = problems[0]
        raise CheckpointError(
            f"{source}: tensor {label(tensor, info)} (size {info['size']}, stride {info['stride']}, offset "
            f"{info['offset']}) {info['problem']}: refusing a tensor that reaches beyond its data"
        )
    tensor, info = max(unpickler.tensors, key=lambda item: item[1]["nbytes"])
    raise CheckpointError(
        f"{source}: its tensors would take {total:,} bytes, more than {MATERIALISE_FACTOR}x the file's "
        f"{file_size:,} bytes; the largest, {label(tensor, info)} (size {info['size']}, stride "
        f"{info['stride']}), alone takes {info['nbytes']:,} bytes. Zero strides or overlapping views "
        "claim memory the file does not hold: refusing it"
    )


# --------------------------------------------------------------------------------------------------
# Scanning a pickled checkpoint before anything reads it for real
# --------------------------------------------------------------------------------------------------
_COMPRESSION_NAMES = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _file_kind(path: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save's format) or ``"pickle"`` (legacy format or garbage), by content."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err
    if size == 0:
        raise CheckpointError(f"{path}: an empty file, not a checkpoint")
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # an end-of-archive record that zipfile chokes on: a damaged zip, said so later
        is_zip = True
    return "zip" if is_zip else "pickle"


def _read_member(zf: zipfile.ZipFile, name: str, source: Path) -> bytes:
    try:
        return zf.read(name)
    except Exception as err:
        raise CheckpointError(
            f"{source}: archive member {name!r} cannot be read ({type(err).__name__}: {short_text(err)})"
        ) from err


@contextlib.contextmanager
def _open_zip(path: Path) -> Iterator[tuple[zipfile.ZipFile, str, str]]:
    """Open a torch.save archive, refusing compressed or forged members; yield (zip, data.pkl, prefix)."""
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except Exception as err:
        raise CheckpointError(f"{path}: a damaged zip archive ({type(err).__name__}: {short_text(err)})") from err
    with zf:
        total = 0
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
                raise CheckpointError(
                    f"{path}: archive member {info.filename!r} is compressed ({method}). torch.save never "
                    "compresses, and a compressed member can expand without bound: refusing the file (use "
                    "the checkpoint as torch.save wrote it, not re-zipped)"
                )
            if info.flag_bits & 0x1:
                raise CheckpointError(f"{path}: archive member {info.filename!r} is encrypted")
            if info.file_size != info.compress_size:
                raise CheckpointError(f"{path}: archive member {info.filename!r} declares inconsistent sizes")
            total += info.file_size
        if total > size:
            raise CheckpointError(
                f"{path}: its members claim {total:,} bytes in a file of {size:,} bytes (overlapping or forged entries)"
            )
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in zf.namelist() and _read_member(zf, byteorder, path).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        yield zf, pkl[0], prefix


def _scan_zip(path: Path) -> None:
    size = path.stat().st_size
    with _open_zip(path) as (zf, pkl, prefix):
        data = _read_member(zf, pkl, path)
        obj, unpickler = _unpickle(io.BytesIO(data), _ZipStorages(zf, prefix, dry=True), path, length=len(data),
                                   dry=True, byte_limit=_materialise_limit(size))
        _check_tensors(obj, unpickler, path, size)


class _MapReader:
    """A read-only file over an mmap, as the unpickler wants one (mmap has no readinto)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm

    def read(self, n: int = -1) -> bytes:
        return self.mm.read(n)

    def readline(self) -> bytes:
        return self.mm.readline()

    def readinto(self, buf: Any) -> int:
        data = self.mm.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _scan_legacy(path: Path) -> None:
    """A legacy (pre-1.6) torch.save file: magic number, protocol, system info, the object, its storage
    keys, then each storage's element count and data. torch allocates every storage the object
    declares before reading its data, so the declarations are checked against the data present."""
    size = path.stat().st_size
    limit = _materialise_limit(size)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        reader = _MapReader(mm)

        def next_object(storages: StorageResolver) -> tuple[Any, _RestrictedUnpickler]:
            return _unpickle(reader, storages, path, length=size, dry=True, byte_limit=limit)

        try:
            magic, _ = next_object(_no_storage)
        except CheckpointError as err:
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (neither a zip archive, a legacy torch.save file nor "
                f"safetensors; {short_text(err.__cause__ or err)})"
            ) from err
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (neither a zip archive, a legacy torch.save file nor safetensors)"
            )
        protocol, _ = next_object(_no_storage)
        if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy checkpoint protocol {short_text(protocol)}")
        sys_info, _ = next_object(_no_storage)
        if not isinstance(sys_info, dict):
            raise CheckpointError(f"{path}: a legacy checkpoint without its system information")
        if sys_info.get("little_endian") is False:
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages = _LegacyStorages()
        obj, unpickler = next_object(storages)
        keys, _ = next_object(_no_storage)
        if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys):
            raise CheckpointError(f"{path}: a legacy checkpoint without its list of storages")
        _check_tensors(obj, unpickler, path, size)
        pos, listed = mm.tell(), set()
        for key in map(str, keys):
            root = storages.roots.get(key)
            if root is None:
                raise CheckpointError(f"{path}: lists storage {key!r}, which its object never uses")
            if pos + 8 > size:
                raise CheckpointError(f"{path}: truncated before the data of storage {key!r}")
            (numel,) = struct.unpack("<q", mm[pos : pos + 8])
            if numel != root.numel():
                raise CheckpointError(
                    f"{path}: storage {key!r} is declared with {root.numel():,} elements but its data has {numel:,}"
                )
            pos += 8 + numel * root.element_size()
            if pos > size:
                raise CheckpointError(f"{path}: truncated in the data of storage {key!r}")
            listed.add(key)
        unlisted = sorted(set(storages.roots) - listed)
        if unlisted:
            raise CheckpointError(f"{path}: declares storages without data ({unlisted[:5]})")


def _warn_executable(path: Path, unpickler: _RestrictedUnpickler) -> None:
    risky = sorted(f"{m}.{n}" for m, n in unpickler.named if _can_execute(m, n))
    if risky:
        log.warning(
            "%s: the pickle names callables that can run code: %s. Nothing was run (the restricted reader "
            "replaces every name outside its allow-list by an inert placeholder), but a genuine checkpoint "
            "has no reason to name them: the file may have been tampered with.",
            path, ", ".join(risky),
        )


def _legacy_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a PyTorch zip checkpoint (the legacy pre-1.6 format is not supported by the "
        "restricted reader; re-save it with a current PyTorch in a sandbox, then convert)"
    )


def restricted_load(path: str | Path) -> tuple[Any, set[str]]:
    """Read a PyTorch zip checkpoint without importing or calling anything it names.

    Returns the unpickled object graph (placeholders in place of unknown classes) and the set of
    qualified names that were replaced by placeholders. Names that could run code are also logged
    as a warning.
    """
    path = Path(path)
    kind = _file_kind(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path}: a safetensors file, not a pickle (read it with load_state_dict_file)")
    if kind != "zip":
        raise _legacy_refusal(path)
    return _restricted_load(path, scanned=False)


def _restricted_load(path: Path, scanned: bool) -> tuple[Any, set[str]]:
    if not scanned:
        _scan_zip(path)
    size = path.stat().st_size
    with _open_zip(path) as (zf, pkl, prefix):
        data = _read_member(zf, pkl, path)
        obj, unpickler = _unpickle(io.BytesIO(data), _ZipStorages(zf, prefix, dry=False), path, length=len(data),
                                   dry=False, byte_limit=_materialise_limit(size))
    _warn_executable(path, unpickler)
    return obj, unpickler.inert_names



# Types that appear in the training dicts of IMDLBenCo-style checkpoints and are harmless to build.
_WEIGHTS_ONLY_ALLOWED: list[Any] = [argparse.Namespace]


def read_checkpoint_object(path: str | Path) -> tuple[Any, str]:
    """Open a ``.pth``/``.pt``/``.bin`` checkpoint safely; return the object and how it was read.

    ``how`` is ``"weights_only"`` (torch.load accepted it), ``"restricted"`` (the inert reader) or
    ``"safetensors"`` (the file is safetensors, whatever its name; the object is its state dict).
    Pickled files are scanned first (see the module docstring); every failure is a CheckpointError.
    """
    path = Path(path)
    kind = _file_kind(path)
    if kind == "safetensors":
        return read_safetensors(path, by_content=True), "safetensors"
    if kind == "zip":
        _scan_zip(path)
    else:
        _scan_legacy(path)
    try:
        with torch.serialization.safe_globals(_WEIGHTS_ONLY_ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:
        # weights_only refused a type outside the allow-list: fall back to the inert reader.
        if kind != "zip":
            raise _legacy_refusal(path) from None
        obj, _ = _restricted_load(path, scanned=True)
        return obj, "restricted"
    except Exception as err:  # whatever torch raises on a file it cannot parse
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {short_text(err)})"
        ) from err

