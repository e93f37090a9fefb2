"""``forgeloc robustness``: metrics under JPEG / blur / noise / resampling, tables and curves."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from forgeloc.cli.common import check_output_folder, fail, parse_named


# Long only by its option declarations (typer reads them from the signature).
def robustness(
    checkpoint: list[str] = typer.Option(
        ..., "--checkpoint", "-k",
        help="Run folder, checkpoint folder or weights file, as PATH or NAME=PATH; repeat to compare several.",
    ),
    data: list[str] = typer.Option(..., "--data", "-d", help="Test set as PATH or NAME=PATH; repeat for several."),
    out: Path = typer.Option(Path("robustness_results"), "--out", "-o", help="Folder for tables and plots."),
    perturb: str = typer.Option(
        "jpeg,blur,noise,resize", "--perturb", "-p",
        help="Comma-separated perturbations: jpeg, blur, noise, resize (forgeloc-only). The clean run is always added.",
    ),
    levels: list[str] = typer.Option(
        [], "--levels", "-l",
        help="Custom levels as KIND=L1,L2,... (e.g. jpeg=50,70,90); repeat per kind. Default: protocol levels "
        "(jpeg 50..100, blur kernel 3..23, noise variance 3..23) and resize 0.25,0.5,0.75. 0 = clean.",
    ),
    jpeg_exact: bool = typer.Option(
        False, "--jpeg-exact", help="Compress at exactly q (default: q-1 or q per image, as the protocol)."
    ),
    noise_rounding: str = typer.Option(
        "truncate", help="Noise back to uint8: truncate (albumentations 1.x, the protocol) or round (unbiased)."
    ),
    seed: int = typer.Option(42, help="Seed of the per-image random draws (noise, JPEG quality)."),
    model: str | None = typer.Option(None, help="Model name, when a checkpoint has no config.json."),
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
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Draw robustness_<dataset>.png."),
) -> None:
    """Evaluate checkpoints under the IML robustness protocol's perturbations (JPEG quality, Gaussian
    blur, Gaussian noise) plus forgeloc's resampling attack; write one table (Markdown, CSV, JSON) and
    a plot of pixel F1 / AUC against level per test set.

    Example: forgeloc robustness -k runs/quickstart -d held_out=data/test/dataset.json -o robustness/
    """
    from forgeloc.data.datasets import DatasetError
    from forgeloc.data.perturb import parse_levels, parse_perturbation_names
    from forgeloc.engine.robustness import checkpoint_names, run_robustness
    from forgeloc.io import CheckpointError

    if definition not in ("forgeloc", "imdlbenco"):
        fail(f"--definition must be forgeloc or imdlbenco, not {definition!r}")
    if noise_rounding not in ("truncate", "round"):
        fail(f"--noise-rounding must be truncate or round, not {noise_rounding!r}")
    try:
        kinds = parse_perturbation_names(perturb)
        custom = parse_levels(levels)
        names = checkpoint_names(checkpoint)
    except ValueError as err:
        fail(str(err))
    datasets = parse_named(data)
    check_output_folder(out)  # before minutes of evaluation, not when the tables are written
    command = "forgeloc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    try:
        run_robustness(
            names, datasets, out, perturbations=kinds, levels=custom, jpeg_exact=jpeg_exact,
            noise_rounding=noise_rounding, seed=seed, model_name=model, plot=plot, command=command,
            definition=definition, threshold=threshold, image_score=image_score, input_size=input_size,
            input_mode=input_mode, batch_size=batch_size, num_workers=num_workers, device=device,
        )
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as err:
        fail(str(err))


def register(app: typer.Typer) -> None:
    app.command("robustness")(robustness)
