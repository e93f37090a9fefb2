"""Safe file I/O for untrusted checkpoints: the bottom layer of forgeloc (imports only the standard
library, torch and safetensors; nothing else in forgeloc).

* :mod:`forgeloc.io.files`: atomic writes, safetensors, the names of a checkpoint folder's files;
* :mod:`forgeloc.io.unpickle`: pickled ``.pth`` files read without executing anything they name;
* :mod:`forgeloc.io.state_dict`: a state dict from any supported file, and the key report;
* :mod:`forgeloc.io.checkpoint_config`: ``config.json``, bounded and typed (:class:`CheckpointConfig`).

Building models from checkpoints (run folders, ``create_model``, ``load_model``) is one layer up, in
:mod:`forgeloc.models.factory`.
"""

from forgeloc.io.checkpoint_config import (
    CheckpointConfig,
    InferenceSettings,
    check_device,
    check_input_mode,
    check_threshold,
    read_checkpoint_config,
    resolve_device,
)
from forgeloc.io.errors import CheckpointError
from forgeloc.io.files import CONFIG_FILE, MODEL_FILE, atomic_write, read_safetensors, save_state_dict
from forgeloc.io.state_dict import (
    KeyReport,
    WeightsMismatchError,
    check_finite,
    extract_state_dict,
    load_state_dict_file,
)
from forgeloc.io.unpickle import InertObject, read_checkpoint_object, restricted_load

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "CheckpointConfig",
    "CheckpointError",
    "InertObject",
    "InferenceSettings",
    "KeyReport",
    "WeightsMismatchError",
    "atomic_write",
    "check_device",
    "check_finite",
    "check_input_mode",
    "check_threshold",
    "extract_state_dict",
    "load_state_dict_file",
    "read_checkpoint_config",
    "read_checkpoint_object",
    "read_safetensors",
    "resolve_device",
    "restricted_load",
    "save_state_dict",
]
