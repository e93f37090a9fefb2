"""Writing files atomically, and safetensors: the format forgeloc writes weights in.

Writes are atomic (temporary file in the same folder, ``fsync``, ``os.replace``), so a killed
process never leaves a truncated checkpoint behind; the new file gets the usual ``0o666 & ~umask``
permissions.

A forgeloc checkpoint folder holds :data:`MODEL_FILE` (the weights) and :data:`CONFIG_FILE` (what
the model is and how to feed it, see :mod:`forgeloc.io.checkpoint_config`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors
from torch import nn

from forgeloc.io.errors import CheckpointError, short_text

__all__ = ["CONFIG_FILE", "MODEL_FILE", "atomic_write", "read_safetensors", "save_state_dict"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    The temporary file lives in the destination folder (``os.replace`` is atomic only within one
    file system) and is fsynced before the rename, so ``path`` is either the old file or the
    complete new one, never a partial write. ``mkstemp`` creates it private (0600); before the
    rename it gets the mode any new file would get, ``0o666 & ~umask``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_current_umask())
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



def read_safetensors(path: Path, by_content: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a file that is not one is a CheckpointError naming it
    (``by_content``: the file was recognised by its first bytes, not by its name)."""
    try:
        return _load_safetensors(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        what = "starts like a safetensors file but is not a valid one" if by_content else "not a valid safetensors file"
        raise CheckpointError(f"{path}: {what} ({short_text(err)})") from err
