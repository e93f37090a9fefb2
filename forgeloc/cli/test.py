"""``forgeloc test``: one checkpoint, several test sets, one metrics table."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import check_threshold_and_device, fail, parse_named, set_threads


def test(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-k", help="Run folder, checkpoint folder, or weights file."),
    data: list[str] = typer.Option(..., "--data", "-d", help="Test set as PATH or NAME=PATH; repeat for several."),
    out: Path = typer.Option(Path("test_results"), "--out", "-o", help="Folder for metrics.md / .csv / .json."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    definition: str = typer.Option("forgeloc", help="Metric definition: forgeloc (corrected) or imdlbenco."),
    threshold: float | None = typer.Option(None, help="Binarisation threshold (default: the checkpoint's, else 0.5)."),
    image_score: str | None = typer.Option(
        None, help="Image score when the model has no image head: max | mean | topk_mean."
    ),
    input_size: int | None = typer.Option(None, help="Override the model's input size."),
    input_mode: str | None = typer.Option(None, help="resize | pad (default: as the model was trained)."),
    batch_size: int = typer.Option(4, help="Images per forward pass."),
    num_workers: int = typer.Option(2, help="Data-loading worker processes."),
    device: str | None = typer.Option(None, help="cpu, cuda ... (default: CUDA if available)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for PyTorch (default: all cores)."),
) -> None:
    """Evaluate a checkpoint on one or more test sets and write one table (Markdown, CSV, JSON).

    Example: forgeloc test -k runs/quickstart -d coverage=/data/coverage.json -d CASIAv1=/data/CASIA1
    """
    from forgeloc.cli.common import check_output_folder
    from forgeloc.data.datasets import DatasetError
    from forgeloc.engine.testing import run_test
    from forgeloc.io import CheckpointError

    if definition not in ("forgeloc", "imdlbenco"):
        fail(f"--definition must be forgeloc or imdlbenco, not {definition!r}")
    if input_size is not None and input_size < 1:
        fail(f"--input-size must be a positive number of pixels, got {input_size}")
    check_threshold_and_device(threshold, device)
    set_threads(threads)
    check_output_folder(out)
    try:
        run_test(
            checkpoint, parse_named(data), out, model_name=model, definition=definition, threshold=threshold,
            image_score=image_score, input_size=input_size, input_mode=input_mode, batch_size=batch_size,
            num_workers=num_workers, device=device,
        )
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as err:
        fail(str(err))


def register(app: typer.Typer) -> None:
    app.command("test")(test)
