"""Training / evaluation configuration: YAML (or TOML) into validated pydantic models.

A config file has five sections — ``model``, ``data``, ``optim``, ``train``, ``eval`` — whose
fields are documented below; unknown keys are errors (a typo must not silently fall back to a
default). Command-line overrides use dotted paths: ``train.epochs=3 optim.lr=1e-4``.

Relative dataset paths are resolved against the config file's folder (paths given as command-line
overrides: against the working directory). A run's own ``config.yaml`` records every path as an
absolute path (:meth:`Config.with_absolute_paths`), so ``--resume RUN`` finds the data from anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Which registered model to build and with which constructor options."""

    name: str = Field(description="registered model name (forgeloc.list_models())")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor options of the model")
    pretrained: dict[str, Any] = Field(
        default_factory=dict,
        description="ImageNet backbone weights for training (the options of the family's load_pretrained)",
    )
    aux_loss: dict[str, Any] | None = Field(
        default=None, description="auxiliary loss wrapped around the model, e.g. {name: ncl, weight: 1.0}"
    )
    init_checkpoint: str | None = Field(default=None, description="weights to start from (fine-tuning)")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from forgeloc.models.registry import list_models  # torch only when a config is checked

        if v not in list_models():
            raise ValueError(f"unknown model {v!r}; registered models: {', '.join(list_models())}")
        return v


class DatasetEntry(_Strict):
    """One dataset: any format that forgeloc.data reads (JSON list, Tp/Gt folder, images/masks folder)."""

    path: str
    name: str | None = None


class DataConfig(_Strict):
    train: list[DatasetEntry] = Field(default_factory=list)
    samples_per_dataset: int | None = Field(
        default=None,
        description="balanced sampler: samples drawn from each training set per epoch (Protocol-CAT: 1840); "
        "null = every sample of every set once per epoch",
    )
    test: dict[str, str] = Field(default_factory=dict, description="display name -> dataset path")
    input_mode: Literal["resize", "pad"] = "resize"
    input_size: int = 512
    augment: str = Field(default="imdlbenco", description="augmentation preset: imdlbenco | light | none")
    edge_width: int | None = None
    num_workers: int = 2
    max_pixels: int | None = Field(default=None, description="decompression-bomb limit (None = library default)")

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be a positive number of pixels, got {v}")
        return v

    @field_validator("max_pixels")
    @classmethod
    def _positive_pixels(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be a positive number of pixels (or null for the default), got {v}")
        return v

    @field_validator("train", mode="before")
    @classmethod
    def _paths_as_entries(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)):
            value = [value]
        return [{"path": str(v)} if isinstance(v, (str, Path)) else v for v in value]


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule.

    Defaults follow IMDLBenCo's trainer (protocol (e)): AdamW (0.9, 0.999), weight decay 0.05 on
    weights of ≥ 2 dimensions only, linear warm-up then half-cycle cosine, updated every optimiser
    step on fractional epochs.
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    warmup_epochs: float = 0.0
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    poly_power: float = 0.9
    grad_clip: float | None = Field(default=None, description="max global grad norm; null = no clipping")

    # Checked here so that a bad value is refused before anything is built or written, not by the
    # optimiser's constructor (or as NaN losses) once the run has started.
    @field_validator("lr", "eps")
    @classmethod
    def _strictly_positive(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"must be a positive number, got {v}")
        return v

    @field_validator("min_lr", "weight_decay", "warmup_epochs", "momentum", "poly_power")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"must be a number >= 0, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"both betas must be in [0, 1), got {v}")
        return v

    @field_validator("grad_clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise ValueError(f"must be a positive norm (or null for no clipping), got {v}")
        return v


class TrainConfig(_Strict):
    epochs: int = 1
    batch_size: int = 8
    accum_steps: int = 1
    amp: Literal["none", "bf16", "fp16"] = Field(
        default="none", description="bf16 autocast (CPU/GPU) or fp16 autocast + GradScaler (GPU only)"
    )
    seed: int = 42
    deterministic: bool = False
    eval_every: int = 1
    save_every: int = 1
    keep_last: int = 2
    best_metric: str = "pixel_f1"
    output_dir: str = "runs/default"
    log_every: int = 10
    max_steps_per_epoch: int | None = Field(default=None, description="cap on optimiser steps per epoch")
    tensorboard: bool = True
    channels_last: bool = False
    compile: bool = False

    @field_validator("epochs", "batch_size", "accum_steps", "eval_every", "save_every")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class EvalConfig(_Strict):
    definition: Literal["forgeloc", "imdlbenco"] = "forgeloc"
    threshold: float = 0.5
    image_score: str = "max"
    batch_size: int | None = None

    @field_validator("threshold")
    @classmethod
    def _probability(cls, v: float) -> float:
        from forgeloc.io.checkpoint_config import check_threshold  # torch only when a config is checked

        return check_threshold(v)  # also refuses NaN


class Config(_Strict):
    """The whole run configuration."""

    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.optim.warmup_epochs > self.train.epochs:
            raise ValueError("optim.warmup_epochs is larger than train.epochs")
        if self.optim.min_lr > self.optim.lr:
            raise ValueError(f"optim.min_lr ({self.optim.min_lr}) is larger than optim.lr ({self.optim.lr})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_absolute_paths(self, base: str | Path | None = None) -> Config:
        """A copy whose dataset, checkpoint and ``*_path`` option paths and ``train.output_dir`` are
        absolute, relative ones taken against ``base`` (default: the working directory, which is
        what a relative path in a :class:`Config` built in Python means when the run opens it).

        The trainer records this form in ``RUN/config.yaml``: the file then means the same thing
        wherever it is read from (``forgeloc train --resume RUN`` from any directory).
        """
        root = Path(base) if base is not None else Path.cwd()
        raw = self.to_dict()
        _resolve_paths(raw, root)
        out = Path(raw["train"]["output_dir"]).expanduser()
        raw["train"]["output_dir"] = str(out if out.is_absolute() else (root / out).resolve())
        return Config.model_validate(raw)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "data.train=[a.json,b.json]"]`` → dotted keys with YAML-parsed values."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def _resolve_paths(raw: dict[str, Any], base: Path, fallback: Path | None = None) -> None:
    """Make the data / checkpoint paths of a raw config absolute, relative ones against ``base``.

    ``fallback``: a second base, used for a relative path that does not exist under ``base`` but
    does under ``fallback`` (run folders written before paths were recorded absolute held paths
    relative to the directory the run was started from).
    """
    data = raw.get("data") or {}

    def fix(p: Any) -> Any:
        if isinstance(p, str) and p and not Path(p).expanduser().is_absolute():
            primary = (base / p).resolve()
            if fallback is not None and not primary.exists() and (fallback / p).exists():
                return str((fallback / p).resolve())
            return str(primary)
        return str(Path(p).expanduser()) if isinstance(p, str) else p

    train = data.get("train")
    if isinstance(train, (str, list)):
        items = [train] if isinstance(train, str) else train
        data["train"] = [
            {**item, "path": fix(item["path"])} if isinstance(item, dict) and "path" in item else fix(item)
            for item in items
        ]
    if isinstance(data.get("test"), dict):
        data["test"] = {k: fix(v) for k, v in data["test"].items()}
    model = raw.get("model") or {}
    if isinstance(model.get("init_checkpoint"), str):
        model["init_checkpoint"] = fix(model["init_checkpoint"])
    for options in (model.get("kwargs") or {}, model.get("pretrained") or {}):
        for key, value in list(options.items()):
            if key.endswith("_path") and isinstance(value, str):
                options[key] = fix(value)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict | None = None,
    *,
    fallback_root: str | Path | None = None,
) -> Config:
    """Read a YAML/TOML config, apply dotted overrides, resolve relative paths, validate.

    ``fallback_root``: where to look for a relative path of the file that does not exist next to
    the file (see :func:`_resolve_paths`); used for the ``config.yaml`` of older run folders.
    """
    raw: dict[str, Any] = dict(base or {})
    root = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = _read_config_file(path)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config must be a mapping with sections model/data/optim/train/eval")
        root = path.resolve().parent
    _resolve_paths(raw, root, Path(fallback_root) if fallback_root is not None else None)
    for key, value in parse_overrides(overrides or []):
        # Paths given on the command line are relative to the working directory, not the config.
        # The override replaces the value at its path (a whole section given as a mapping
        # replaces that section; ``data.test.NAME=PATH`` adds one test set).
        single: dict[str, Any] = {}
        _set_dotted(single, key, value)
        _resolve_paths(single, Path.cwd())
        node: Any = single
        for part in key.split("."):
            node = node[part]
        _set_dotted(raw, key, node)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names every bad field, one per line."""


def _describe(err: ValidationError) -> str:
    """``data.input_size: must be a positive number of pixels, got 0`` per problem (pydantic's own
    text carries a class name, a documentation link and a "Value error," prefix)."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid config: " + ("; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines))


def _read_config_file(path: Path) -> Any:
    """The YAML/TOML mapping in ``path``; ``ConfigError`` with the parser's reason if it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a valid {'TOML' if path.suffix == '.toml' else 'YAML'} file ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a run config") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None


def validate_device(device: str | None) -> None:
    """Raise ``ValueError`` with a one-line reason when ``device`` cannot be used on this machine
    (:func:`forgeloc.io.check_device`; ``None`` / ``"auto"`` always pass)."""
    from forgeloc.io.checkpoint_config import check_device

    check_device(device)
