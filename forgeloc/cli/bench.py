"""``forgeloc bench``: params, FLOPs, latency, throughput and memory per model."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench(
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Registered model; repeat for several (default: unet_baseline; with --photo: "
        "also 'default', a checkpoint folder or a detector name; default: the default detector)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    batch: int = typer.Option(1, min=1, help="Batch size."),
    size: int | None = typer.Option(None, min=1, help="Square input side (default: the model's native size)."),
    train: bool = typer.Option(False, "--train", help="Time a training step (forward + backward + AdamW)."),
    repeats: int = typer.Option(10, min=1, help="Timed repeats after warm-up."),
    warmup: int = typer.Option(3, min=0, help="Untimed calls before timing (the first is reported separately)."),
    amp: str = typer.Option("none", help="none | bf16 | fp16 (fp16 on CUDA only)."),
    channels_last: bool = typer.Option(False, help="Use channels-last memory format."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's choice)."),
    flops: bool = typer.Option(True, help="Count fvcore FLOPs (inference only)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    isa: str | None = typer.Option(
        None, help="avx2: run as on a CPU without AVX-512 (caps PyTorch's, oneDNN's and MKL's kernels)."),
    photo: Path | None = typer.Option(
        None, help="Time this whole photo end to end instead (read, detect, heatmap), with the window count."),
    mode: str = typer.Option("auto", help="With --photo: auto | resize | tile (predict's modes)."),
) -> None:
    """Benchmark models, each in a fresh process: params, fvcore FLOPs, first-call and median latency,
    images per second, and peak memory above the loaded weights (RSS on CPU, max allocated on CUDA).
    With --photo: the end-to-end latency of that photo, as `forgeloc predict` runs it."""
    from forgeloc.cli.common import check_output_file, check_threshold_and_device, fail
    from forgeloc.engine.bench import photo_markdown, results_markdown, run_benchmarks
    from forgeloc.extras import require

    models = list(model or (["default"] if photo else ["unet_baseline"]))
    if photo is None:
        _check_registered(models)
    else:
        _check_photo(photo, mode)
    check_threshold_and_device(None, device)
    if amp not in ("none", "bf16", "fp16"):
        fail(f"--amp must be none, bf16 or fp16, got {amp!r}")
    if json_out is not None:
        check_output_file(json_out, "--json")
    if isa not in (None, "avx2"):
        fail(f"--isa can only emulate avx2, got {isa!r}")

    if photo is not None:
        results = run_benchmarks(models, photo=str(photo), mode=mode, device=device, repeats=repeats,
                                 threads=threads, isa=isa)
        typer.echo(photo_markdown(results))
    else:
        if flops:  # checked here: each model is measured in a child process, whose error would be a traceback
            require("bench", "forgeloc bench (its FLOP counts; --no-flops skips them)", "fvcore")
        results = run_benchmarks(
            models, device=device, batch=batch, size=size, train=train, repeats=repeats, warmup=warmup,
            amp=amp, channels_last=channels_last, compile=compile, threads=threads, flops=flops, isa=isa,
        )
        typer.echo(results_markdown(results))
    if json_out:
        try:
            json_out.write_text(json.dumps(results, indent=2))
        except OSError as err:
            fail(f"--json {json_out}: cannot write the results ({err.strerror or err})", code=1)
    if any("error" in r for r in results):
        raise typer.Exit(1)


def _check_registered(models: list[str]) -> None:
    """Checked here: each model is measured in a child process, whose error would be a table cell."""
    from forgeloc.cli.common import fail
    from forgeloc.models.registry import list_models

    unknown = [m for m in models if m not in list_models()]
    if unknown:
        fail(f"unknown model(s) {', '.join(unknown)}; registered models: {', '.join(list_models())}")


def _check_photo(photo: Path, mode: str) -> None:
    """The photo must be readable (from its header) and the mode one of predict's, before any child starts."""
    from forgeloc.cli.common import fail
    from forgeloc.data.io import DecompressionBombError, ImageReadError
    from forgeloc.inference.predictor import MODES, image_size

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        image_size(photo)
    except (ImageReadError, DecompressionBombError, OSError, ValueError) as err:
        fail(f"--photo: {err}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
