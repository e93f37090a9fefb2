"""``forgeloc export``: a detector as an ONNX graph plus the config that says how to feed it."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import console, fail

FORMATS = ("onnx",)


def export(
    detector: str = typer.Argument(
        ..., help="'default' (the shipped detector), a run or checkpoint folder, or a weights file (then --model).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: model.onnx + config.json."),
    format: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
) -> None:
    """Export a detector's network for runtimes without PyTorch (needs forgeloc[onnx]).

    The graph is checked against PyTorch on seeded inputs at two batch sizes before anything is
    written (at most 1e-4 apart). config.json records the input, its normalisation, the threshold,
    the image score and how predict fits a photo to the graph. Run it with
    `forgeloc predict PHOTOS --detector OUT` (onnxruntime backend) or any ONNX runtime.
    """
    from forgeloc.deploy.onnx import OPSET, ExportError, export_onnx
    from forgeloc.inference.predictor import load
    from forgeloc.io import CheckpointError

    if format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    try:
        predictor = load(detector if model is None else model, None if model is None else detector, device="cpu")
        result = export_onnx(predictor, out, source=detector)
    except (CheckpointError, ExportError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"--out {out}: cannot write ({err.strerror or err})")
    worst = max(result.check["max_abs_diff"].values())
    console.print(f"wrote {result.onnx_file} and {result.config_file.name} (opset {OPSET}; onnxruntime "
                  f"agrees with PyTorch within {worst:.1e})", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
