"""``forgeloc train``: train any registered model from a config (single process or under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import fail


def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML run config (see configs/)."),
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides, e.g. train.epochs=3 optim.lr=1e-4 data.train=[a.json,b.json]."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="A run folder (or checkpoint) to continue exactly where it stopped."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)."),
) -> None:
    """Train a model. Under [bold]torchrun[/bold] the same command runs DDP on every process.

    Examples:
      forgeloc train -c configs/unet_baseline_synth.yaml train.epochs=5
      torchrun --nproc_per_node=4 -m forgeloc train -c configs/sparsevit_cat.yaml
      forgeloc train --resume runs/sparsevit_cat
    """
    from forgeloc.engine.config import load_config
    from forgeloc.engine.trainer import train as run_training

    if config is None and resume is None and not overrides:
        fail("give --config FILE, dotted overrides (model.name=... data.train=...), or --resume RUN_FOLDER")
    if config is None and resume is not None:
        saved = resume / "config.yaml" if resume.is_dir() else None
        if saved is None or not saved.is_file():
            fail(f"{resume}: no config.yaml in that run folder; pass --config too")
        config = saved
    try:
        cfg = load_config(config, list(overrides or []))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    run_training(cfg, resume=resume, device=device)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
