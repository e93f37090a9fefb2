"""``forgeloc serve``: a local web page to analyse photos with one checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import console, fail


def serve(
    checkpoint: Path = typer.Argument(..., help="Run folder, checkpoint folder, or weights file (then --model)."),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the page to the network)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, in megabytes."),
    max_pixels: int = typer.Option(50_000_000, min=1, help="Largest accepted image, in pixels (before decoding)."),
    threshold: float | None = typer.Option(None, help="Mask threshold (default: the checkpoint's, else 0.5)."),
    device: str | None = typer.Option(None, help="cpu, cuda ... (default: CUDA if available)."),
    amp: str | None = typer.Option(None, help="Mixed precision: bf16 (CPU/GPU) or fp16 (GPU)."),
) -> None:
    """Serve a web page (and a JSON API) where people drop a photo and see where it may be tampered.

    Uploads are analysed in memory and never stored. Example: forgeloc serve runs/quickstart --port 8000
    """
    from forgeloc.checkpoint import CheckpointError
    from forgeloc.inference.predictor import Predictor
    from forgeloc.inference.server import serve as run_server

    if max_upload_mb <= 0:
        fail("--max-upload-mb must be positive")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        fail(f"--threshold must be in [0, 1], got {threshold}")
    try:
        predictor = Predictor.from_checkpoint(
            checkpoint, model=model, threshold=threshold, device=device, amp=amp, max_pixels=max_pixels
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]warning:[/yellow] listening on {host}: anyone who can reach this address can use the page "
            "(there is no login); put it behind an authenticating proxy for shared use.",
            highlight=False,
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"{predictor!r}\nopen http://{shown}:{port}/ in a browser (Ctrl+C to stop)", highlight=False)
    run_server(predictor, host=host, port=port, max_upload_mb=max_upload_mb, max_pixels=max_pixels)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
