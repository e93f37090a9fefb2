"""A checkpoint's ``config.json``, typed: :class:`CheckpointConfig`, like timm's ``PretrainedCfg``.

A forgeloc checkpoint folder records next to its weights what the model is (``model``,
``model_kwargs``) and how to feed it (``input``: ``mode`` and ``size``; ``threshold``;
``image_score``; fused ``cues``, ``calibration``, a model ``card``). The trainer writes it, and
``forgeloc test``, :class:`~forgeloc.inference.predictor.Predictor` and the server read it through
this one class:

* :meth:`CheckpointConfig.from_json` reads it as untrusted data: a bounded file size, bounded
  nesting, and the fields forgeloc acts on checked for type and range (each failure is a
  :class:`~forgeloc.io.errors.CheckpointError` naming the file);
* :meth:`CheckpointConfig.resolve` applies the caller's overrides, once, with one precedence rule
  (see :class:`InferenceSettings`); :func:`check_threshold`, :func:`check_input_mode` and
  :func:`resolve_device` are the only validators of those options.

Fields forgeloc does not act on (``metrics``, ``train_config``, ``epoch``, ...) are kept as they
were read and written back unchanged by :meth:`CheckpointConfig.to_json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgeloc.io.errors import CheckpointError, short_text
from forgeloc.io.files import CONFIG_FILE

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "INPUT_MODES",
    "MAX_INPUT_SIZE",
    "CheckpointConfig",
    "InferenceSettings",
    "check_device",
    "check_input_mode",
    "check_threshold",
    "read_checkpoint_config",
    "resolve_device",
]

log = logging.getLogger(__name__)

# config.json: bigger files, input sizes and deeper option values than these are not ours.
_MAX_CONFIG_BYTES = 64 << 20
MAX_INPUT_SIZE = 8192
_MAX_OPTION_DEPTH = 4
_MAX_OPTION_ITEMS = 4096
#: The input side when neither the model, the caller nor the checkpoint names one.
DEFAULT_INPUT_SIZE = 512
#: How a model can be fed a photo of another size (``native``: recorded by models that read whole
#: photos at their own resolution; they are fed as ``resize`` models where a size is needed).
INPUT_MODES = ("resize", "pad")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# The validators of the options a caller may override
# --------------------------------------------------------------------------------------------------
def check_threshold(value: Any, name: str = "threshold") -> float:
    """A mask threshold in [0, 1] (the heatmap is a probability), as a float; else ``ValueError``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan  # refused below, with the value as given
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (the heatmap is a probability), got {value}")
    return number


def check_input_mode(value: Any, name: str = "input_mode") -> str:
    """``"resize"`` or ``"pad"``; else ``ValueError``."""
    if value not in INPUT_MODES:
        raise ValueError(f"{name} must be 'resize' or 'pad', got {value!r}")
    return str(value)


def check_device(device: str | torch.device | None) -> None:
    """Raise ``ValueError`` with a one-line reason when ``device`` cannot be used on this machine.

    ``None`` / ``"auto"`` always pass (CUDA when available, else the CPU).
    """
    if device is None or device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use cpu instead")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
        return
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return
    raise ValueError(f"device {device!r} is not supported here: use cpu, cuda or cuda:N")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` / ``"auto"`` → CUDA if available, else the CPU; any other name is checked by
    :func:`check_device` (a one-line ``ValueError``) and returned as a ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    return torch.device(device)


# --------------------------------------------------------------------------------------------------
# Reading config.json as untrusted data
# --------------------------------------------------------------------------------------------------
def _check_option(value: Any, where: str, source: Path, depth: int = 0) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, str):
        if len(value) > _MAX_OPTION_ITEMS:
            raise CheckpointError(f"{source}: {where} is a string of {len(value):,} characters")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{source}: {where} is {value}, not a finite number")
        return
    if depth >= _MAX_OPTION_DEPTH:
        raise CheckpointError(f"{source}: {where} is nested too deeply to be a model option")
    if isinstance(value, list):
        if len(value) > _MAX_OPTION_ITEMS:
            raise CheckpointError(f"{source}: {where} has {len(value):,} entries")
        for i, item in enumerate(value):
            _check_option(item, f"{where}[{i}]", source, depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > _MAX_OPTION_ITEMS:
            raise CheckpointError(f"{source}: {where} has {len(value):,} entries")
        for key, item in value.items():
            _check_option(item, f"{where}.{key}", source, depth + 1)
        return
    raise CheckpointError(f"{source}: {where} is a {type(value).__name__}")  # not produced by json


def _check_config(config: Any, source: Path) -> None:
    """The fields of a checkpoint's config.json that forgeloc acts on must have the right types and
    sane values (it may have been edited by someone else than the trainer that wrote it)."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: must hold a JSON object, not a {type(config).__name__}")
    name = config.get("model")
    if name is not None and (not isinstance(name, str) or not name):
        raise CheckpointError(f"{source}: 'model' must name a model, not {short_text(name, 60)}")
    kwargs = config.get("model_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise CheckpointError(
                f"{source}: 'model_kwargs' must be an object of constructor options, not a {type(kwargs).__name__}"
            )
        for key, value in kwargs.items():
            _check_option(value, f"model_kwargs.{key}", source)
    recorded_input = config.get("input")
    if recorded_input is not None:
        if not isinstance(recorded_input, dict):
            raise CheckpointError(
                f"{source}: 'input' must be an object (mode, size), not a {type(recorded_input).__name__}"
            )
        size = recorded_input.get("size")
        if size is not None and (not _is_int(size) or not 1 <= size <= MAX_INPUT_SIZE):
            raise CheckpointError(
                f"{source}: input.size must be a whole number of pixels from 1 to {MAX_INPUT_SIZE}, "
                f"not {short_text(size, 60)}"
            )
        mode = recorded_input.get("mode")
        if mode is not None and mode not in (*INPUT_MODES, "native"):  # "zoom" must not quietly run as resize
            raise CheckpointError(f"{source}: input.mode must be 'resize', 'pad' or 'native' (a model that reads "
                                  f"whole photos), not {short_text(mode, 60)}")
    threshold = config.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
    ):
        raise CheckpointError(f"{source}: 'threshold' must be a finite number, not {short_text(threshold, 60)}")
    image_score = config.get("image_score")
    if image_score is not None and not isinstance(image_score, str):
        raise CheckpointError(f"{source}: 'image_score' must be a string, not {short_text(image_score, 60)}")
    for key in ("cues", "fuse"):
        names = config.get(key)
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{source}: {key!r} must be a list of cue names, not {short_text(names, 60)}")
    _check_calibration(config.get("calibration"), source)


def _check_calibration(calibration: Any, source: Path) -> None:
    """The verdict bands: ``low`` and ``high`` image scores with 0 <= low <= high <= 1."""
    if calibration is None:
        return
    bands = [calibration.get(k) for k in ("low", "high")] if isinstance(calibration, dict) else [None]
    numbers = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bands)
    if not numbers or not 0 <= bands[0] <= bands[1] <= 1:
        raise CheckpointError(f"{source}: 'calibration' must hold numbers 0 <= low <= high <= 1 (the verdict "
                              f"bands), not {short_text(calibration, 80)}")


def _read_json(cfg: Path) -> Any:
    try:
        if cfg.stat().st_size > _MAX_CONFIG_BYTES:
            raise CheckpointError(f"{cfg}: {cfg.stat().st_size:,} bytes, too large to be a checkpoint's config")
        return json.loads(cfg.read_text(encoding="utf-8"))
    except RecursionError as err:
        raise CheckpointError(f"{cfg}: its JSON is nested too deeply to be a checkpoint's config") from err
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{cfg}: not a valid JSON file ({type(err).__name__}: {short_text(err)})") from err


def config_file_of(path: str | Path) -> Path:
    """Where the ``config.json`` of a checkpoint folder, or of the weights file ``path``, lives."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / CONFIG_FILE


def read_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a forgeloc checkpoint folder (or next to a safetensors file), if any,
    as the checked dict (see :meth:`CheckpointConfig.from_json` for the typed form).

    A file that is not JSON, or whose fields forgeloc uses have the wrong types or absurd values, is
    a CheckpointError naming it.
    """
    cfg = config_file_of(path)
    if not cfg.is_file():
        return None
    config = _read_json(cfg)
    _check_config(config, cfg)
    return config


# --------------------------------------------------------------------------------------------------
# The typed config
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferenceSettings:
    """How to feed a model, once the caller's overrides and the checkpoint's record are combined.

    Precedence (the rule docs/inference.md promises), applied only in
    :meth:`CheckpointConfig.resolve`:

    * ``input_size``: the model's fixed ``input_size``, else the caller's, else the recorded
      ``input.size``, else :data:`DEFAULT_INPUT_SIZE` (a model that takes one size only cannot be
      fed another: a different request is ignored with a warning);
    * ``input_mode``, ``threshold``, ``image_score``: the caller's, else the recorded one, else
      ``"resize"`` / 0.5 / ``"max"``; a recorded mode other than resize/pad (``native``) feeds as
      ``resize``;
    * ``device``: :func:`resolve_device` of the caller's (``None``/``"auto"``: CUDA if available).
    """

    input_size: int
    input_mode: str
    threshold: float
    image_score: str
    device: torch.device


# The fields read into typed attributes; every other key is kept in ``extra`` as read.
_TYPED_KEYS = ("model", "model_kwargs", "input", "threshold", "image_score", "cues", "fuse", "calibration", "card",
               "checkpoint")


@dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint's ``config.json``, checked and typed (see the module docstring).

    ``checkpoint`` is where the weights were loaded from (set by the loader, not by the trainer).
    """

    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_mode: str | None = None
    input_size: int | None = None
    threshold: float | None = None
    image_score: str | None = None
    cues: tuple[str, ...] | None = None
    fuse: tuple[str, ...] | None = None
    calibration: dict[str, Any] | None = None
    card: dict[str, Any] | None = None
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- reading and writing -----------------------------------------------------------------------
    @classmethod
    def from_json(cls, source: str | Path | Mapping[str, Any]) -> CheckpointConfig:
        """From a ``config.json`` file, a checkpoint folder or weights file next to one (no file:
        an empty config), or an already parsed dict; every bound of the module docstring applies."""
        if isinstance(source, Mapping):
            config: Any = dict(source)
            _check_config(config, Path("config.json"))
        else:
            path = Path(source)
            cfg = path if path.name == CONFIG_FILE and path.is_file() else config_file_of(path)
            if not cfg.is_file():
                return cls()
            config = _read_json(cfg)
            _check_config(config, cfg)
        return cls._from_checked(config)

    @classmethod
    def _from_checked(cls, config: dict[str, Any]) -> CheckpointConfig:
        recorded_input = config.get("input") or {}
        threshold = config.get("threshold")
        return cls(
            model=config.get("model"),
            model_kwargs=dict(config.get("model_kwargs") or {}),
            input_mode=recorded_input.get("mode"),
            input_size=recorded_input.get("size"),
            threshold=None if threshold is None else float(threshold),
            image_score=config.get("image_score"),
            cues=_names(config.get("cues")),
            fuse=_names(config.get("fuse")),
            calibration=config["calibration"] if isinstance(config.get("calibration"), dict) else None,
            card=config["card"] if isinstance(config.get("card"), dict) else None,
            checkpoint=config.get("checkpoint") if isinstance(config.get("checkpoint"), str) else None,
            extra={k: v for k, v in config.items() if k not in _TYPED_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` dict: the typed fields that are set, then everything else as read."""
        out: dict[str, Any] = {}
        if self.model is not None:
            out["model"] = self.model
        out["model_kwargs"] = dict(self.model_kwargs)
        recorded_input = {k: v for k, v in (("mode", self.input_mode), ("size", self.input_size)) if v is not None}
        if recorded_input:
            out["input"] = recorded_input
        for key in ("threshold", "image_score", "calibration", "card", "checkpoint"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("cues", "fuse"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        return {**out, **self.extra}

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` as ``path`` (a file name, or a folder to hold :data:`CONFIG_FILE`), atomically."""
        from forgeloc.io.files import atomic_write

        path = Path(path)
        target = path / CONFIG_FILE if path.is_dir() else path
        text = json.dumps(self.to_json(), indent=2, default=str)
        return atomic_write(target, lambda tmp: tmp.write_text(text))

    # -- what the settings are for one use -------------------------------------------------------
    def resolve(
        self,
        *,
        model_input_size: int | None = None,
        input_size: int | None = None,
        input_mode: str | None = None,
        threshold: float | None = None,
        image_score: str | None = None,
        device: str | torch.device | None = None,
    ) -> InferenceSettings:
        """Combine the caller's overrides with this record (see :class:`InferenceSettings`).

        ``model_input_size`` is the built model's fixed ``input_size`` (``None``: any size). An
        override out of range is a ``ValueError`` naming it.
        """
        if input_size is not None and (not _is_int(input_size) or not 1 <= input_size <= MAX_INPUT_SIZE):
            raise ValueError(f"input_size must be a whole number of pixels from 1 to {MAX_INPUT_SIZE}, "
                             f"got {input_size}")
        if model_input_size and input_size and input_size != model_input_size:
            log.warning("input size %d ignored: the model takes %dx%d inputs only", input_size, model_input_size,
                        model_input_size)
        size = model_input_size or input_size or self.input_size or DEFAULT_INPUT_SIZE
        mode = check_input_mode(input_mode) if input_mode is not None else self.input_mode
        return InferenceSettings(
            input_size=int(size),
            input_mode=mode if mode in INPUT_MODES else "resize",
            threshold=check_threshold(_first(threshold, self.threshold, 0.5)),
            image_score=image_score or self.image_score or "max",
            device=resolve_device(device),
        )

    def with_updates(self, **changes: Any) -> CheckpointConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)



def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (0.0 is a threshold, not a missing one)."""
    return next(v for v in values if v is not None)


def _names(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)
