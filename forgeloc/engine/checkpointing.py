"""Training checkpoints: complete-or-absent folders, resumable exactly.

Layout of a run's output folder (its names are owned by :mod:`forgeloc.models.factory`, which
finds the checkpoint to load in it)::

    runs/NAME/
      config.yaml                 the validated run config
      log.jsonl                   one JSON line per epoch / evaluation
      tb/                         TensorBoard event files
      checkpoints/
        epoch_0003/               a complete checkpoint (written as a temp folder, then renamed)
          model.safetensors       the model's weights (inference-ready)
          config.json             model name + options, input size/mode, metrics: enough to predict
          train_state.pt          optimizer, scheduler position, GradScaler, RNG states, epoch, best
        latest                    text file naming the newest complete checkpoint
      best/                       copy of the checkpoint with the best selection metric

``train_state.pt`` holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``.

A write that fails (disk full, Ctrl+C) removes its temporary folder; temporary folders left by a
killed process are ignored when looking for checkpoints and removed by :func:`remove_stale_temporaries`
when a run (re)starts. A checkpoint whose files exist but cannot be read (truncated by a copy, a bad
disk) is skipped by :func:`load_resume_checkpoint` with a warning naming the file: the previous
complete checkpoint is used instead.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgeloc.io.checkpoint_config import CheckpointConfig
from forgeloc.io.errors import CheckpointError
from forgeloc.io.files import CONFIG_FILE, MODEL_FILE, atomic_write, save_state_dict
from forgeloc.io.state_dict import load_state_dict_file
from forgeloc.models.factory import (
    BEST_DIR,
    CHECKPOINT_DIR,
    LATEST_FILE,
    STATE_FILE,
    complete_checkpoints,
    find_latest_checkpoint,
    is_complete,
)

__all__ = [
    "BEST_DIR",
    "CHECKPOINT_DIR",
    "LATEST_FILE",
    "STATE_FILE",
    "complete_checkpoints",
    "copy_as_best",
    "find_latest_checkpoint",
    "is_complete",
    "load_resume_checkpoint",
    "load_train_state",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "unwrap",
    "write_model_folder",
]

log = logging.getLogger(__name__)
# Temporary names: ``.epoch_0003.tmp<pid>`` (checkpoints/), ``.best.tmp<pid>`` / ``.best.old<pid>`` (run folder).
_TMP_PATTERN = re.compile(r"^\.(?:epoch_\d+|best)\.(tmp|old)(\d+)$")
# What reading a damaged train_state.pt / model.safetensors raises (a truncated zip, an empty file...).
_UNREADABLE = (CheckpointError, RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError,
               zipfile.BadZipFile)


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors / plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_model_folder(folder: Path, model_state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` (which must be private to us)."""
    text = json.dumps(config, indent=2, default=str)
    CheckpointConfig.from_json(json.loads(text))  # what forgeloc.load reads back must pass its checks
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model_state, folder / MODEL_FILE, {"format": "forgeloc", "model": str(config.get("model"))})
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def save_checkpoint(
    output_dir: Path,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    inference_config: dict[str, Any],
    train_state: dict[str, Any],
    keep_last: int = 2,
    protect: tuple[str, ...] = (),
) -> Path:
    """Write ``checkpoints/epoch_XXXX`` completely, then point ``latest`` at it, then prune.

    If anything fails on the way (disk full, Ctrl+C), the temporary folder is removed before the
    error propagates: a failed write leaves the run as it was.
    """
    root = output_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}"
    final = root / name
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_model_folder(tmp, model_state, inference_config)
        torch.save(train_state, tmp / STATE_FILE)
        _fsync_file(tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(root / LATEST_FILE, lambda p: p.write_text(name + "\n"))
    _prune(root, keep_last, protect=(name, *protect))
    return final


def _prune(root: Path, keep_last: int, protect: tuple[str, ...]) -> None:
    complete = sorted(p for p in root.glob("epoch_*") if is_complete(p))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".epoch_*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from an earlier failed write in this process: stale too
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as err:  # EPERM: someone else's live process
        return err.errno == errno.EPERM
    return True


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Remove what interrupted writes left in a run folder; returns what was removed.

    ``.epoch_*.tmp<pid>`` and ``.best.tmp<pid>`` folders of processes that no longer run are
    deleted (they hold partial copies and only take space); a ``best/`` that was being replaced
    when the process died (moved aside to ``.best.old<pid>``, new one not yet in place) is put back.
    """
    output_dir = Path(output_dir)
    removed: list[Path] = []
    for folder in (output_dir / CHECKPOINT_DIR, output_dir):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            match = _TMP_PATTERN.match(entry.name)
            if match is None or _pid_alive(int(match.group(2))):
                continue
            if match.group(1) == "old" and entry.name.startswith(".best") and not (output_dir / BEST_DIR).exists():
                os.replace(entry, output_dir / BEST_DIR)
                log.warning("restored %s from %s (an interrupted update of the best checkpoint)",
                            output_dir / BEST_DIR, entry.name)
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted write: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def load_train_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def load_resume_checkpoint(path: Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """``(checkpoint folder, training state, model weights)`` of the newest *readable* checkpoint.

    A checkpoint whose ``train_state.pt`` or ``model.safetensors`` cannot be read (truncated,
    damaged) is skipped with a warning that names the file, and the previous complete one is
    tried, as a checkpoint with a missing file is. Raises ``FileNotFoundError`` when there is no
    complete checkpoint and :class:`~forgeloc.io.CheckpointError` when none is readable.
    """
    candidates = complete_checkpoints(path)
    if not candidates:
        raise FileNotFoundError(f"--resume {path}: no complete checkpoint found there")
    damaged: list[str] = []
    for n, ckpt in enumerate(candidates):
        for_file = ckpt / STATE_FILE
        try:
            state = load_train_state(ckpt)
            if not isinstance(state, dict) or "epoch" not in state:
                raise ValueError("not a forgeloc training state (no epoch)")
            for_file = ckpt / MODEL_FILE
            weights = load_state_dict_file(ckpt)
        except _UNREADABLE as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            reason = reason.split(". ")[0]  # torch appends several sentences of advice
            damaged.append(f"{for_file}: {reason}")
            later = candidates[n + 1] if n + 1 < len(candidates) else None
            log.warning("cannot read %s (%s); %s", for_file, reason,
                        f"falling back to the previous checkpoint {later}" if later else "no earlier checkpoint")
            continue
        return ckpt, state, weights
    raise CheckpointError(f"--resume {path}: no readable checkpoint ({'; '.join(damaged)})")


def copy_as_best(checkpoint: Path, output_dir: Path) -> Path:
    """Replace ``output_dir/best`` with the inference files of ``checkpoint`` (atomically).

    On failure (disk full...) the temporary copy is removed and the previous ``best/`` kept.
    """
    best = output_dir / BEST_DIR
    tmp = output_dir / f".best.tmp{os.getpid()}"
    old = output_dir / f".best.old{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        for f in (MODEL_FILE, CONFIG_FILE):
            shutil.copy2(checkpoint / f, tmp / f)
            _fsync_file(tmp / f)
        if best.exists():
            os.replace(best, old)
        try:
            os.replace(tmp, best)
        except BaseException:
            if old.exists() and not best.exists():
                os.replace(old, best)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return best


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
