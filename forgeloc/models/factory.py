"""Models from names and checkpoints, in the manner of timm's ``_factory``: the one owner of what a
checkpoint is.

* the **run-folder layout** (``best/``, ``checkpoints/epoch_NNNN/``, ``latest``) and
  :func:`resolve_checkpoint`, which turns a run folder into the checkpoint to load;
* :func:`create_model`: a registered constructor (:mod:`forgeloc.models.registry`), then the
  family's pretrained backbones or a checkpoint's weights;
* :func:`load_weights`: the one loader of weights into a model. It passes the state dict through
  the family's ``checkpoint_filter_fn`` and writes the missing / unexpected / other-shape report;
* :func:`load_checkpoint` / :func:`load_model`: a model rebuilt from what a checkpoint's
  ``config.json`` records, with that config (:class:`~forgeloc.io.checkpoint_config.CheckpointConfig`).

A model family (one file in ``forgeloc/models``) may define two functions next to its
constructors, found through the module of the model's class:

* ``checkpoint_filter_fn(state_dict, model) -> state_dict``: maps a foreign layout (the authors'
  checkpoint, an older forgeloc one) onto the model's own keys, as timm's families do;
* ``load_pretrained(model, **paths)``: loads ImageNet backbone weights for training. Constructors
  only build; :func:`create_model` calls it with ``pretrained={...}``.

Reading files safely is the layer below (:mod:`forgeloc.io`); nothing here parses bytes.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from forgeloc.io.checkpoint_config import CheckpointConfig, config_file_of
from forgeloc.io.errors import CheckpointError, short_text
from forgeloc.io.files import CONFIG_FILE, MODEL_FILE
from forgeloc.io.state_dict import KeyReport, check_finite, load_state_dict_file
from forgeloc.models.registry import get_model_constructor

__all__ = [
    "BEST_DIR",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LATEST_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "complete_checkpoints",
    "create_model",
    "filter_state_dict",
    "find_latest_checkpoint",
    "is_complete",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# The run-folder layout (written by forgeloc.engine.checkpointing)
# --------------------------------------------------------------------------------------------------
STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a complete training checkpoint (weights, config and training state)."""
    return all((Path(folder) / f).is_file() for f in (MODEL_FILE, CONFIG_FILE, STATE_FILE))


def _checkpoint_root(path: Path) -> Path:
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def complete_checkpoints(path: Path) -> list[Path]:
    """Complete checkpoints of a run folder, newest first: the one ``latest`` names, then the
    others by epoch. ``path`` may also be a checkpoint folder (then only it). Temporary folders
    (``.epoch_*.tmp*``) never count."""
    path = Path(path)
    if is_complete(path):
        return [path]
    root = _checkpoint_root(path)
    found = sorted((p for p in root.glob("epoch_*") if is_complete(p)), reverse=True)
    latest = root / LATEST_FILE
    if latest.is_file():
        try:
            named = root / latest.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is not None and named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def find_latest_checkpoint(path: Path) -> Path | None:
    """Newest complete checkpoint under a run folder (or ``path`` itself if it is one)."""
    found = complete_checkpoints(path)
    return found[0] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A training run folder → its ``best/`` (else newest complete checkpoint); anything else as is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        if (path / BEST_DIR / MODEL_FILE).is_file():
            return path / BEST_DIR
        latest = find_latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: no {MODEL_FILE}, {BEST_DIR}/ or complete checkpoint inside")
        return latest
    return path


# --------------------------------------------------------------------------------------------------
# Family functions
# --------------------------------------------------------------------------------------------------
def _family_function(owner: Any, name: str) -> Callable[..., Any] | None:
    """``name`` defined in the module of ``owner`` (a model, or a registered constructor), if any."""
    module_name = owner.__module__ if callable(owner) and not isinstance(owner, nn.Module) else type(owner).__module__
    fn = getattr(sys.modules.get(module_name), name, None)
    return fn if callable(fn) else None


def filter_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` through the ``checkpoint_filter_fn`` of ``model``'s family (as is without one)."""
    fn = _family_function(model, "checkpoint_filter_fn")
    return dict(state_dict) if fn is None else fn(state_dict, model)


def _deprecated(message: str) -> None:
    """The one way forgeloc says that a spelling is deprecated (hidden by default, as Python does);
    the warning points at the caller of the public function (three frames up)."""
    warnings.warn(message, DeprecationWarning, stacklevel=4)


def _pretrained_options(ctor: Callable[..., Any]) -> tuple[Callable[..., Any] | None, list[str]]:
    """The family's ``load_pretrained`` and the names of the paths/options it takes."""
    fn = _family_function(ctor, "load_pretrained")
    if fn is None:
        return None, []
    return fn, [p for p in list(inspect.signature(fn).parameters)[1:] if p != "kwargs"]


def _split_pretrained(
    name: str, ctor: Callable[..., Any], kwargs: dict[str, Any], pretrained: Mapping[str, Any] | None, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor options and pretrained-backbone options, accepting the old spelling (backbone
    paths among the constructor options) with a deprecation warning."""
    _, names = _pretrained_options(ctor)
    old = {k: kwargs[k] for k in names if k in kwargs}
    if old:
        _deprecated(
            f"{where}: {sorted(old)} of {name!r} are pretrained-backbone options, not constructor options; "
            f"pass them as pretrained={{...}} to create_model (this spelling will stop working)"
        )
    return {k: v for k, v in kwargs.items() if k not in old}, {**old, **(pretrained or {})}


# --------------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------------
def load_weights(
    model: nn.Module, weights: str | Path | Mapping[str, torch.Tensor], strict: bool = True
) -> KeyReport:
    """Load a checkpoint file / folder or a state dict into ``model``; return the key report.

    The state dict goes through the family's ``checkpoint_filter_fn`` (the authors' layout → ours).
    A tensor of another shape is always an error; with ``strict=True`` missing or unexpected keys
    are too (a :class:`~forgeloc.io.state_dict.WeightsMismatchError` listing the differences).
    Weights holding NaN or infinite values (where the model's own are finite) are refused.
    """
    if isinstance(weights, Mapping):
        source: Any = "the given state dict"
        state_dict = dict(weights)
    else:
        source = weights
        state_dict = load_state_dict_file(weights)
    state_dict = filter_state_dict(state_dict, model)
    own = model.state_dict()
    report = KeyReport.compare(state_dict, own)
    report.check(source, str(getattr(model, "model_name", type(model).__name__)), strict=strict)
    check_finite(state_dict, own, source)
    model.load_state_dict(state_dict, strict=strict)
    return report


# --------------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------------
def _build(name: str, ctor: Callable[..., nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    """Call the constructor (unknown options are a TypeError naming them); record name and options."""
    sig = inspect.signature(ctor)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in sig.parameters and not accepts_any]
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {unknown}; options: {list(sig.parameters)}")
    model = ctor(**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    strict: bool = True,
    pretrained: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model and optionally load weights.

    Args:
        name: a registered model name (see :func:`~forgeloc.models.registry.list_models`).
        checkpoint: a ``.safetensors`` file, a forgeloc checkpoint folder (``model.safetensors``
            inside), or an authors' ``.pth`` checkpoint (loaded without executing pickled code).
        strict: load with ``strict=True`` (the default: the key sets must match exactly).
        pretrained: ImageNet backbone weights for training, as the family's ``load_pretrained``
            takes them (``{"pretrained_path": ...}`` for SparseViT and NCL,
            ``{"conv_pretrained_path": ..., "seg_pretrained_path": ...}`` for Mesorch). Passing
            them among ``kwargs`` still works, with a deprecation warning.
        **kwargs: constructor arguments of the model (its configuration, recorded as
            ``model.model_kwargs``).
    """
    ctor = get_model_constructor(name)
    kwargs, pretrained_paths = _split_pretrained(name, ctor, dict(kwargs), pretrained, "create_model")
    model = _build(name, ctor, kwargs)
    load_pretrained, _ = _pretrained_options(ctor)
    if load_pretrained is not None and (checkpoint is None or pretrained_paths):
        load_pretrained(model, **pretrained_paths)
    elif pretrained_paths:
        raise TypeError(f"model {name!r} has no pretrained backbone options; got {sorted(pretrained_paths)}")
    if checkpoint is not None:
        load_weights(model, checkpoint, strict=strict)
    return model


# A model built from a config.json may request at most this multiple of its weights file's size
# (plus the slack) in tensors: a config that asks for more describes another model.
_BUILD_FACTOR = 4
_BUILD_SLACK = 256 << 20
_SIZE_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full})
_NEW_FACTORIES = frozenset({torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones,
                            torch.Tensor.new_full})


def _factory_bytes(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """Bytes a tensor factory call is about to allocate (0 for anything else)."""
    try:
        if func in _SIZE_FACTORIES:
            if "size" in kwargs:
                size = kwargs["size"]
            elif func is torch.full or (len(args) == 1 and not isinstance(args[0], int)):
                size = args[0]
            else:
                size = args
            dtype = kwargs.get("dtype")
        elif func in _NEW_FACTORIES:
            size = kwargs["size"] if "size" in kwargs else args[1]
            dtype = kwargs.get("dtype") or args[0].dtype
        else:
            return 0
        numel = math.prod(int(s) for s in ((size,) if isinstance(size, int) else size))
    except Exception:  # unhashable func, unexpected arguments: not a call we size
        return 0
    if numel <= 0:
        return 0
    return numel * (dtype if isinstance(dtype, torch.dtype) else torch.get_default_dtype()).itemsize


class _BuildBudget(TorchFunctionMode):
    """Refuses tensor allocations beyond ``limit`` bytes in all, before they happen."""

    def __init__(self, limit: int, source: Path) -> None:
        super().__init__()
        self.limit, self.source, self.used = limit, source, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        requested = _factory_bytes(func, args, kwargs)
        if requested:
            self.used += requested
            if self.used > self.limit:
                raise CheckpointError(
                    f"{self.source}: the model it describes would take more than {self.limit:,} bytes of "
                    "tensors, far more than its weights file holds: refusing to build it (are its widths or "
                    "sizes tampered with?)"
                )
        return func(*args, **kwargs)


def _build_limit(path: Path) -> int:
    weights = path / MODEL_FILE if path.is_dir() else path
    try:
        size = weights.stat().st_size
    except OSError:
        size = 0
    return _BUILD_FACTOR * size + _BUILD_SLACK




def _cannot_build(config_file: Path, name: str, options: Mapping[str, Any], err: Exception) -> CheckpointError:
    return CheckpointError(
        f"{config_file}: cannot build the model it records ({name!r} with options {short_text(dict(options))}): "
        f"{type(err).__name__}: {short_text(err)}"
    )


def load_checkpoint(
    checkpoint: str | Path, model: str | None = None, strict: bool = True, **kwargs: Any
) -> tuple[nn.Module, CheckpointConfig]:
    """Build a model from a checkpoint; return it (in eval mode) with the checkpoint's config.

    ``checkpoint`` may be a forgeloc checkpoint folder or run folder (its ``config.json`` names the
    model and options), or a weights file (safetensors / authors' ``.pth``), in which case
    ``model`` must name the architecture. ``kwargs`` override the recorded constructor options.
    The returned config records the model name, the options it was built with and the resolved
    ``checkpoint`` path.

    A model built from what config.json records may not allocate much more than its weights file
    holds, and a config.json whose model or options cannot be built is a CheckpointError naming it.
    """
    path = resolve_checkpoint(checkpoint)
    config = CheckpointConfig.from_json(path)
    config_file = config_file_of(path)
    name = model or config.model
    if not name:
        raise CheckpointError(
            f"{path}: no config.json names the model; pass the model name (e.g. model='sparsevit')"
        )
    recorded = config.model_kwargs if name == config.model else {}
    build_as_asked = model is not None and not recorded  # nothing comes from config.json
    try:
        ctor = get_model_constructor(name)
    except ValueError as err:
        if build_as_asked:
            raise
        raise _cannot_build(config_file, name, {**recorded, **kwargs}, err) from err
    # Pretrained-backbone paths only matter for initialisation: the checkpoint overwrites them, and
    # the file need not exist on the machine that predicts. Older checkpoints record them.
    recorded, _ = _split_pretrained(name, ctor, dict(recorded), None, str(config_file))
    options, _ = _split_pretrained(name, ctor, {**recorded, **kwargs}, None, "load_model")
    if build_as_asked:
        net = _build(name, ctor, options)
    else:
        try:
            with _BuildBudget(_build_limit(path), config_file):
                net = _build(name, ctor, options)
        except CheckpointError:
            raise
        except Exception as err:  # an unknown option, a negative width, ...
            raise _cannot_build(config_file, name, options, err) from err
    load_weights(net, path, strict=strict)
    net.eval()
    return net, config.with_updates(model=name, model_kwargs=options, checkpoint=str(path))


def load_model(
    checkpoint: str | Path, model: str | None = None, strict: bool = True, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_checkpoint` with the config as the ``config.json`` dict (model, model_kwargs and
    checkpoint filled in)."""
    net, config = load_checkpoint(checkpoint, model=model, strict=strict, **kwargs)
    return net, config.to_json()
