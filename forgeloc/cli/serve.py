"""``forgeloc serve``: a local web page to analyse photos with one detector (default: the shipped one)."""

from __future__ import annotations

import typer

from forgeloc.cli.common import check_threshold_and_device, console, fail, say, set_threads


def serve(
    checkpoint: str = typer.Argument(
        "default", help="'default' (shipped with forgeloc), a run/checkpoint folder or weights file (then --model), "
                        "or a training-free detector (`forgeloc detectors`).",
    ),
    model: str | None = typer.Option(None, help="Model name, when the checkpoint has no config.json."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the page to the network)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, in megabytes."),
    max_pixels: int = typer.Option(
        25_000_000, min=1, help="Largest accepted image, in pixels (before decoding); bounds the work per upload."
    ),
    threshold: float | None = typer.Option(None, help="Mask threshold (default: the checkpoint's, else 0.5)."),
    device: str | None = typer.Option(None, help="cpu, cuda ... (default: CUDA if available)."),
    amp: str | None = typer.Option(None, help="Mixed precision: bf16 (CPU/GPU) or fp16 (GPU)."),
    cues: str | None = typer.Option(
        None, "--cues",
        help="Training-free detectors shown as panels, comma-separated ('all'; default: the detector's).",
    ),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for PyTorch (default: all cores)."),
) -> None:
    """Serve a web page (and a JSON API) where people drop a photo and see where it may be tampered.

    Uploads are analysed in memory and never stored.
    Examples: forgeloc serve  |  forgeloc serve runs/quickstart --port 8000
    """
    from forgeloc.extras import require

    require("serve", "forgeloc serve", "fastapi", "uvicorn")  # before the model is loaded: fail fast
    from forgeloc.cli.predict import parse_cues
    from forgeloc.inference.predictor import load
    from forgeloc.inference.server import serve as run_server
    from forgeloc.io import CheckpointError

    set_threads(threads)
    cue_names = parse_cues(cues)
    if max_upload_mb <= 0:
        fail("--max-upload-mb must be positive")
    if amp not in (None, "bf16", "fp16"):
        fail(f"--amp must be bf16 or fp16, not {amp!r}")
    check_threshold_and_device(threshold, device)
    try:
        predictor = load(
            checkpoint if model is None else model, None if model is None else checkpoint, threshold=threshold,
            device=device, amp=amp, max_pixels=max_pixels, **({} if cue_names is None else {"cues": cue_names}),
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"listening on {host}: anyone who can reach this address can use the page "
            "(there is no login); put it behind an authenticating proxy for shared use.", "warning:", "yellow")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"{predictor.label}\nopen http://{shown}:{port}/ in a browser (Ctrl+C to stop)", highlight=False,
                  markup=False)
    run_server(predictor, host=host, port=port, max_upload_mb=max_upload_mb, max_pixels=max_pixels)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
