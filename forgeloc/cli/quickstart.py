"""``forgeloc quickstart``: synthesise data, train the baseline on the CPU, evaluate, report."""

from __future__ import annotations

from pathlib import Path

import typer


def quickstart(
    out: Path = typer.Option(Path("forgeloc-quickstart"), "--out", "-o", help="Folder for data, run and report."),
    epochs: int = typer.Option(10, help="Training epochs (about 20 s each on 2 idle CPU cores)."),
    n_train: int = typer.Option(480, help="Synthetic training images."),
    n_test: int = typer.Option(96, help="Synthetic held-out images (from photos never seen in training)."),
    size: int = typer.Option(128, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and order."),
) -> None:
    """Build a small tampered dataset from scikit-image's bundled photos, train the U-Net baseline on
    the CPU for a few minutes, evaluate it on held-out photos against the trivial all-tampered
    predictor, and write a report (metrics table + sample heatmaps)."""
    from forgeloc.engine.quickstart import run_quickstart

    run_quickstart(out, n_train=n_train, n_test=n_test, size=size, epochs=epochs, seed=seed)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
