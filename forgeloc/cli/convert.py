"""``forgeloc convert``: an authors' checkpoint in, a safetensors checkpoint folder out."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def convert(
    source: Path = typer.Argument(
        ..., help="The authors' checkpoint (.pth/.pt/.bin, pickled dict or whole model) or a safetensors file."
    ),
    output: Path = typer.Argument(
        ..., help="Output folder (model.safetensors + config.json) or a .safetensors file."
    ),
    model: str = typer.Option(
        ..., "--model", "-m", help="Registered model name the weights belong to, e.g. sparsevit."
    ),
    strict: bool = typer.Option(True, help="Require the key sets to match the model exactly."),
) -> None:
    """Convert a checkpoint to safetensors without executing any code from it.

    The file is opened with ``torch.load(weights_only=True)``; pickles it refuses (e.g. a pickled
    whole model) are read by forgeloc's restricted unpickler, which imports nothing. The weights
    are loaded into the named model (so a mismatch is caught now, not later) and written out.
    """
    from forgeloc.io import CONFIG_FILE, MODEL_FILE, CheckpointError, save_state_dict
    from forgeloc.models.factory import create_model

    try:
        net = create_model(model, checkpoint=source, strict=strict)
    except CheckpointError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    meta = {"format": "forgeloc", "model": model, "source": source.name}
    if output.suffix == ".safetensors":
        save_state_dict(net, output, meta)
        target = output
    else:
        target = save_state_dict(net, output / MODEL_FILE, meta)
        (output / CONFIG_FILE).write_text(json.dumps({"model": model, "model_kwargs": net.model_kwargs}, indent=2))
    n = sum(t.numel() for t in net.state_dict().values())
    console.print(f"wrote {target} ({len(net.state_dict())} tensors, {n:,} values)")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
