"""``forgeloc train``: train any registered model from a config (single process or under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import fail


def train(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML/TOML run config (examples: configs/ in the forgeloc repository)."
    ),
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
      forgeloc train -c configs/quickstart.yaml train.epochs=5
      torchrun --nproc_per_node=4 -m forgeloc train -c configs/sparsevit_cat.yaml
      forgeloc train --resume runs/sparsevit_cat
    """
    from forgeloc.data.datasets import DatasetError
    from forgeloc.engine.checkpointing import CHECKPOINT_DIR
    from forgeloc.engine.config import load_config, validate_device
    from forgeloc.engine.trainer import train as run_training
    from forgeloc.io import CheckpointError

    if config is None and resume is None and not overrides:
        fail("give --config FILE, dotted overrides (model.name=... data.train=...), or --resume RUN_FOLDER")
    try:
        validate_device(device)
    except ValueError as err:
        fail(f"--device: {err}")
    fallback_root = None
    if config is None and resume is not None:
        if not resume.exists():
            fail(f"--resume {resume}: no such run folder")
        # A run folder, or one of its checkpoints (RUN/checkpoints/epoch_N): the run's config.yaml.
        run = resume.parent.parent if resume.parent.name == CHECKPOINT_DIR else resume
        saved = run / "config.yaml" if run.is_dir() else None
        if saved is None or not saved.is_file():
            fail(f"{resume}: no config.yaml in that run folder; pass --config too")
        config = saved
        # Runs recorded before paths were stored absolute hold paths relative to where they were started.
        fallback_root = Path.cwd()
    try:
        cfg = load_config(config, list(overrides or []), fallback_root=fallback_root)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    _check_datasets_exist(cfg)
    try:
        run_training(cfg, resume=resume, device=device)
    except (DatasetError, CheckpointError, OSError, ValueError) as err:
        fail(str(err), code=1)


def _check_datasets_exist(cfg) -> None:
    """A missing training or test set is refused before the run folder is made (the trainer would
    find out only after writing config.yaml)."""
    named = [("data.train", entry.path) for entry in cfg.data.train]
    named += [(f"data.test.{name}", path) for name, path in cfg.data.test.items()]
    for key, path in named:
        if not Path(path).exists():
            fail(f"{key}: {path}: dataset not found (no such file or folder)", code=1)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
