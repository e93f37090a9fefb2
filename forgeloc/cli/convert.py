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
    from forgeloc.cli.common import fail, say
    from forgeloc.io import CheckpointError
    from forgeloc.models.factory import create_model
    from forgeloc.models.registry import list_models

    if model not in list_models():
        fail(f"--model {model!r}: no such model; registered models: {', '.join(list_models())}")
    to_file = output.suffix == ".safetensors"
    _check_output(output, to_file, create=False)  # before the (possibly long) load
    try:
        net = create_model(model, checkpoint=source, strict=strict)
    except CheckpointError as err:
        fail(str(err))
    _check_output(output, to_file, create=True)
    try:
        target = _write(net, model, source, output, to_file)
    except OSError as err:
        fail(f"cannot write {output} ({err.strerror or err})", code=1)
    n = sum(t.numel() for t in net.state_dict().values())
    say(f"wrote {target} ({len(net.state_dict())} tensors, {n:,} values)", out=console)


def _check_output(output: Path, to_file: bool, create: bool) -> None:
    from forgeloc.cli.common import check_output_file, check_output_folder

    if to_file:
        check_output_file(output, "OUTPUT", create=create)
    else:
        check_output_folder(output, "OUTPUT", create=create)


def _write(net, model: str, source: Path, output: Path, to_file: bool) -> Path:
    """``output`` itself (a .safetensors file) or ``output/model.safetensors`` + ``config.json``."""
    from forgeloc.io import CONFIG_FILE, MODEL_FILE, save_state_dict

    meta = {"format": "forgeloc", "model": model, "source": source.name}
    if to_file:
        return save_state_dict(net, output, meta)
    target = save_state_dict(net, output / MODEL_FILE, meta)
    (output / CONFIG_FILE).write_text(json.dumps({"model": model, "model_kwargs": net.model_kwargs}, indent=2))
    return target


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
