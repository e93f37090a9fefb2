"""Deprecated: the names this module held now live in :mod:`forgeloc.io` (safe file I/O of
untrusted checkpoints) and :mod:`forgeloc.models.factory` (building models from checkpoints).

``from forgeloc.checkpoint import X`` keeps working for every public name it had, with a
``DeprecationWarning`` when the module is first imported. Nothing inside forgeloc imports it.

=============================  ==============================================================
old name                       new home
=============================  ==============================================================
CheckpointError                forgeloc.io.CheckpointError
atomic_write, save_state_dict  forgeloc.io.files
MODEL_FILE, CONFIG_FILE        forgeloc.io.files
read_checkpoint_object,        forgeloc.io.unpickle
restricted_load, InertObject
load_state_dict_file,          forgeloc.io.state_dict
extract_state_dict
read_checkpoint_config         forgeloc.io.checkpoint_config (typed: CheckpointConfig.from_json)
load_model_weights             forgeloc.models.factory.load_weights (returns the key report)
resolve_checkpoint,            forgeloc.models.factory
load_model
=============================  ==============================================================
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from forgeloc.io.checkpoint_config import MAX_INPUT_SIZE, read_checkpoint_config
from forgeloc.io.errors import CheckpointError
from forgeloc.io.files import CONFIG_FILE, MODEL_FILE, atomic_write, save_state_dict
from forgeloc.io.state_dict import extract_state_dict, load_state_dict_file
from forgeloc.io.unpickle import (
    MATERIALISE_FACTOR,
    MATERIALISE_SLACK,
    InertObject,
    read_checkpoint_object,
    restricted_load,
)
from forgeloc.models.factory import load_model, load_weights, resolve_checkpoint

__all__ = [
    "CONFIG_FILE",
    "MATERIALISE_FACTOR",
    "MATERIALISE_SLACK",
    "MAX_INPUT_SIZE",
    "MODEL_FILE",
    "CheckpointError",
    "InertObject",
    "atomic_write",
    "extract_state_dict",
    "load_model",
    "load_model_weights",
    "load_state_dict_file",
    "read_checkpoint_config",
    "read_checkpoint_object",
    "resolve_checkpoint",
    "restricted_load",
    "save_state_dict",
]

warnings.warn(
    "forgeloc.checkpoint is deprecated: import from forgeloc.io (file I/O) or forgeloc.models.factory "
    "(models from checkpoints) instead",
    DeprecationWarning,
    stacklevel=2,
)


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Deprecated spelling of :func:`forgeloc.models.factory.load_weights` (which returns the key
    report); returns ``model`` as before."""
    load_weights(model, path, strict=strict)
    return model
