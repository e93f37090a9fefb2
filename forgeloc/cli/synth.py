"""``forgeloc synth``: a small tampered dataset with exact masks, made from photos in seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _pair(text: str, name: str, cast: type) -> tuple:
    parts = _split(text) or []
    try:
        values = tuple(cast(p) for p in parts)
    except ValueError as err:
        raise typer.BadParameter(f"{name} must be two numbers like LO,HI; got {text!r}") from err
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise typer.BadParameter(f"{name} must be two numbers like LO,HI; got {text!r}")
    return values


# Long only by its option declarations (typer reads them from the signature).
def synth(
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (images/, masks/, dataset.json, manifest.json)."
    ),
    n: int = typer.Option(200, "--n", "-n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same bytes."),
    photos: Path | None = typer.Option(
        None, "--photos", help="Folder of your own photos (default: scikit-image's bundled photos)."
    ),
    photo_names: str | None = typer.Option(
        None, "--photo-names", help="Comma-separated subset of photo names (bundled names, or file stems in --photos)."
    ),
    size: int = typer.Option(256, "--size", help="Side of the square output images."),
    authentic_fraction: float = typer.Option(0.25, "--authentic-fraction", help="Share of untouched images."),
    types: str = typer.Option("splicing,copy-move,removal", "--types", help="Comma-separated manipulations."),
    jpeg_prob: float = typer.Option(0.5, "--jpeg-prob", help="Probability of a JPEG round trip (all images alike)."),
    jpeg_quality: str = typer.Option("70,95", "--jpeg-quality", help="JPEG quality range LO,HI."),
    resize_prob: float = typer.Option(0.5, "--resize-prob", help="Probability of a down-and-up resize."),
    resize_range: str = typer.Option("0.8,1.0", "--resize-range", help="Resize factor range LO,HI."),
    area_range: str = typer.Option("0.015,0.2", "--area-range", help="Region area / image area, range LO,HI."),
    min_coverage: float = typer.Option(0.95, "--min-coverage", help="Share of a region that must change."),
    workers: int = typer.Option(1, "--workers", "-j", help="Processes (the output does not depend on it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset previously written by synth."),
    list_photos: bool = typer.Option(False, "--list-photos", help="List the bundled photo names and exit."),
    realistic: bool = typer.Option(
        False, "--realistic",
        help="Forgeries with real traces for training the default detector: JPEG histories (host, donor, final), "
             "resampling, feathered colour-matched pastes, inpainting, noise mismatch, authentic images through "
             "the same global chains (forgeloc.data.realsynth). Uses --out, --n, --seed, --photos, --size, --workers.",
    ),
) -> None:
    """Make a tampered dataset (splicing, copy-move, removal, authentic) with exact masks.

    Example: [bold]forgeloc synth --out data/synth --n 200 --seed 0[/bold]
    """
    from forgeloc.cli.common import check_output_folder, fail, say
    from forgeloc.data.synth import SynthError, bundled_photo_names, synthesize

    if list_photos:
        console.print("\n".join(bundled_photo_names()))
        return
    if out is None:
        raise typer.BadParameter("--out is required", param_hint="--out")
    check_output_folder(out, create=False)  # a file in the way; the writes themselves are checked below
    if realistic:
        _realistic(out, n, seed, photos, size, workers)
        return
    start = time.perf_counter()
    try:
        dataset = synthesize(
            out, n, seed, photos=photos, photo_names=_split(photo_names), size=size,
            authentic_fraction=authentic_fraction, types=tuple(_split(types) or ()), jpeg_prob=jpeg_prob,
            jpeg_quality=_pair(jpeg_quality, "--jpeg-quality", int), resize_prob=resize_prob,
            resize_range=_pair(resize_range, "--resize-range", float),
            area_range=_pair(area_range, "--area-range", float), min_coverage=min_coverage,
            workers=workers, overwrite=overwrite,
        )
    except SynthError as err:
        fail(str(err))
    except OSError as err:
        fail(f"--out {out}: cannot write the dataset ({err.strerror or err}: {err.filename or out})", code=1)
    seconds = time.perf_counter() - start

    console.print(_summary_table(dataset, seconds))
    say(f"wrote {dataset} (JSON list, paths relative to {dataset.parent}) and manifest.json", out=console)


def _summary_table(dataset: Path, seconds: float) -> Table:
    """Images per type with their mean tampered share, JPEG and resized counts, from manifest.json."""
    from forgeloc.data.synth import AUTHENTIC

    manifest = json.loads((dataset.parent / "manifest.json").read_text())
    samples = manifest["samples"]
    table = Table(title=f"{len(samples)} images in {seconds:.1f} s ({manifest['photo_source']})")
    for col in ("type", "images", "mean region %", "JPEG", "resized"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for kind in (*manifest["types"], AUTHENTIC):
        rows = [s for s in samples if s["type"] == kind]
        frac = [s["region_fraction"] for s in rows if "region_fraction" in s]
        table.add_row(
            kind, str(len(rows)), f"{100 * sum(frac) / len(frac):.1f}" if frac else "-",
            str(sum(s["jpeg_quality"] is not None for s in rows)),
            str(sum(s["resize_factor"] is not None for s in rows)),
        )
    return table


def _realistic(out: Path, n: int, seed: int, photos: Path | None, size: int, workers: int) -> None:
    """``--realistic``: :func:`forgeloc.data.realsynth.synthesize_real` over a folder of photos."""
    from collections import Counter

    from forgeloc.cli.common import fail, say
    from forgeloc.data.files import list_folder
    from forgeloc.data.io import IMAGE_EXTENSIONS
    from forgeloc.data.realsynth import RealSynthConfig, synthesize_real

    if photos is None or not photos.is_dir():
        fail("--realistic needs --photos FOLDER of real photographs (e.g. `forgeloc corpus build --out DIR`, "
             "then --photos DIR/photos)")
    listing = list_folder(photos, skip=None)
    paths = listing.images
    skipped = [p.name for p in listing.others]
    if skipped:  # e.g. a corpus's .pgm camera frames: said, not silently dropped
        say(f"skipped {len(skipped)} file(s) whose type --realistic does not read "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}): {', '.join(skipped[:8])}"
            + (" ..." if len(skipped) > 8 else ""), out=console)
    if len(paths) < 2:
        fail(f"{photos}: --realistic needs at least two photos (a splice takes a donor), found {len(paths)}")
    if size % 8:
        fail(f"--size must be a multiple of 8 (samples keep their JPEG block grid), got {size}")
    start = time.perf_counter()
    try:
        dataset = synthesize_real(paths, out, n, seed=seed, cfg=RealSynthConfig(size=size), workers=max(1, workers))
    except OSError as err:
        fail(f"--out {out}: cannot write the dataset ({err.strerror or err}: {err.filename or out})", code=1)
    kinds = Counter(json.loads(line)["kind"] for line in (out / "history.jsonl").read_text().splitlines())
    console.print(f"{n} images from {len(paths)} photos in {time.perf_counter() - start:.1f} s: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    say(f"wrote {dataset} and history.jsonl (each sample's processing chain)", out=console)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
