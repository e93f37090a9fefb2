"""Helpers shared by the sub-commands."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit with ``code``."""
    console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def parse_named(items: list[str]) -> dict[str, str]:
    """``["CASIAv1=/d/casia1", "/d/coverage"]`` → ``{"CASIAv1": "/d/casia1", "coverage": "/d/coverage"}``."""
    from pathlib import Path

    named: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem or Path(item).name, item
        if name in named:
            fail(f"two datasets are named {name!r}; name them explicitly as NAME=PATH")
        named[name] = path
    return named


def set_threads(threads: int | None) -> None:
    """``--threads``: how many CPU threads PyTorch uses (None keeps its default: all cores)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def check_threshold_and_device(threshold: float | None, device: str | None) -> None:
    """The option checks every predicting command shares: a threshold in [0, 1] (the heatmap is a
    probability) and a device that exists here; a one-line error otherwise."""
    from forgeloc.io import check_device, check_threshold

    try:
        if threshold is not None:
            check_threshold(threshold, "--threshold")
    except ValueError as err:
        fail(str(err))
    try:
        check_device(device)
    except ValueError as err:
        fail(f"--device: {err}")
