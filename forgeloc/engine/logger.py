"""Run logging: console (rich), TensorBoard scalars and images, and a JSONL log. Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)


def setup_logging(level: int = logging.INFO, enabled: bool = True) -> None:
    """Route ``logging`` through rich once per process; silent on non-main ranks."""
    root = logging.getLogger("forgeloc")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    root.setLevel(level if enabled else logging.WARNING)
    root.propagate = False


class RunLogger:
    """Writes ``log.jsonl`` and TensorBoard events under the run folder (a no-op on other ranks)."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.writer = None
        if enabled:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from forgeloc.extras import require

                require("train", "TensorBoard logging (train.tensorboard: false turns it off)", "tensorboard")
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.output_dir / "tb"))

    def jsonl(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.output_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """``images`` (N, C, H, W) in [0, 1]."""
        if self.writer is not None and images.numel():
            self.writer.add_images(tag, images.clamp(0, 1).cpu(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def train_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


METRIC_ORDER = (
    "pixel_f1", "pixel_f1_pooled", "pixel_f1_best_thr", "pixel_iou", "pixel_auc", "pixel_auc_pooled",
    "pixel_acc", "image_f1", "image_auc", "image_acc", "loss", "n_images", "n_tampered", "n_authentic",
)


def ordered_metric_keys(rows: dict[str, dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows.values():
        for k in row:
            if k not in keys and isinstance(row[k], (int, float)):
                keys.append(k)
    known = [k for k in METRIC_ORDER if k in keys]
    return known + sorted(k for k in keys if k not in known)


def format_value(value: Any, key: str = "") -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (key.startswith("n_") and isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def metrics_table(rows: dict[str, dict[str, Any]], title: str = "") -> Table:
    """One column per dataset (or model), one row per metric: stays readable with many metrics."""
    keys = ordered_metric_keys(rows)
    table = Table(title=title or None)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    for k in keys:
        table.add_row(k, *(format_value(row.get(k, ""), k) for row in rows.values()))
    return table
