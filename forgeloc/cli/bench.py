"""``forgeloc bench``: params, FLOPs, latency, throughput and memory per model."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench(
    model: list[str] = typer.Option(["unet_baseline"], "--model", "-m", help="Registered model; repeat for several."),
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
) -> None:
    """Benchmark models, each in a fresh process: params, fvcore FLOPs, first-call and median latency,
    images per second, and peak memory above the loaded weights (RSS on CPU, max allocated on CUDA)."""
    from forgeloc.cli.common import check_output_file, check_threshold_and_device, fail
    from forgeloc.engine.bench import results_markdown, run_benchmarks
    from forgeloc.extras import require
    from forgeloc.models.registry import list_models

    # Checked here: each model is measured in a child process, whose error would be a table cell.
    unknown = [m for m in model if m not in list_models()]
    if unknown:
        fail(f"unknown model(s) {', '.join(unknown)}; registered models: {', '.join(list_models())}")
    check_threshold_and_device(None, device)
    if amp not in ("none", "bf16", "fp16"):
        fail(f"--amp must be none, bf16 or fp16, got {amp!r}")
    if json_out is not None:
        check_output_file(json_out, "--json")
    if isa not in (None, "avx2"):
        fail(f"--isa can only emulate avx2, got {isa!r}")

    if flops:  # checked here: each model is measured in a child process, whose error would be a traceback
        require("bench", "forgeloc bench (its FLOP counts; --no-flops skips them)", "fvcore")
    results = run_benchmarks(
        list(model), device=device, batch=batch, size=size, train=train, repeats=repeats, warmup=warmup,
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


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
