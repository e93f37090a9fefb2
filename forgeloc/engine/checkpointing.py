"""Training checkpoints: complete-or-absent folders, resumable exactly.

Layout of a run's output folder::

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
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgeloc.checkpoint import CONFIG_FILE, MODEL_FILE, atomic_write, save_state_dict

STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
CHECKPOINT_DIR = "checkpoints"


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
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(model_state, folder / MODEL_FILE, {"format": "forgeloc", "model": str(config.get("model"))})
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=2, default=str)))


def save_checkpoint(
    output_dir: Path,
    epoch: int,
    model_state: dict[str, torch.Tensor],
    inference_config: dict[str, Any],
    train_state: dict[str, Any],
    keep_last: int = 2,
    protect: tuple[str, ...] = (),
) -> Path:
    """Write ``checkpoints/epoch_XXXX`` completely, then point ``latest`` at it, then prune."""
    root = output_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}"
    final = root / name
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_model_folder(tmp, model_state, inference_config)
    torch.save(train_state, tmp / STATE_FILE)
    _fsync_file(tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
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


def is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (MODEL_FILE, CONFIG_FILE, STATE_FILE))


def find_latest_checkpoint(path: Path) -> Path | None:
    """Newest complete checkpoint under a run folder (or ``path`` itself if it is one)."""
    path = Path(path)
    if is_complete(path):
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    latest = root / LATEST_FILE
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if is_complete(candidate):
            return candidate
    complete = sorted(p for p in root.glob("epoch_*") if is_complete(p))
    return complete[-1] if complete else None


def load_train_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def copy_as_best(checkpoint: Path, output_dir: Path) -> Path:
    """Replace ``output_dir/best`` with the inference files of ``checkpoint`` (atomically)."""
    best = output_dir / "best"
    tmp = output_dir / f".best.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in (MODEL_FILE, CONFIG_FILE):
        shutil.copy2(checkpoint / f, tmp / f)
    old = output_dir / f".best.old{os.getpid()}"
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    if old.exists():
        shutil.rmtree(old)
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
