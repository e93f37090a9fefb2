"""``forgeloc quickstart``: synthesise data, train the baseline on the CPU, evaluate, report."""

from __future__ import annotations

from pathlib import Path

import typer


def quickstart(
    out: Path = typer.Option(Path("forgeloc-quickstart"), "--out", "-o", help="Folder for data, run and report."),
    epochs: int = typer.Option(10, min=1, help="Training epochs (about 20 s each on 2 idle CPU cores)."),
    n_train: int = typer.Option(480, min=1, help="Synthetic training images."),
    n_test: int = typer.Option(96, min=1, help="Synthetic held-out images (from photos never seen in training)."),
    size: int = typer.Option(128, min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Seed for data, initialisation and order."),
) -> None:
    """Build a small tampered dataset from scikit-image's bundled photos, train the U-Net baseline on
    the CPU for a few minutes, evaluate it on held-out photos against the trivial all-tampered
    predictor, and write a report (metrics table + sample heatmaps)."""
    from forgeloc.cli.common import check_output_folder, fail
    from forgeloc.data.synth import SynthError
    from forgeloc.engine.quickstart import run_quickstart

    check_output_folder(out)
    try:
        run_quickstart(out, n_train=n_train, n_test=n_test, size=size, epochs=epochs, seed=seed)
    except (SynthError, ValueError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"--out {out}: {err.strerror or err}: {err.filename or out}", code=1)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
