"""``forgeloc data check`` and ``forgeloc data convert``: look at a dataset before training on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgeloc.data.io import DEFAULT_MAX_PIXELS

console = Console()
err_console = Console(stderr=True)

data_app = typer.Typer(
    name="data",
    help="Check and convert datasets: JSON lists, Tp/Gt(/Au) folders, images/masks(/authentic) folders.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_FORMATS = {
    "json": "JSON list [[image, mask | \"Negative\"], ...]",
    "tp_gt": "Tp/ + Gt/ (+ Au/) folder",
    "images_masks": "images/ + masks/ (+ authentic/) folder",
    "plain": "plain image folder (ground truth unknown)",
    "unknown": "not recognised",
}


def _size(size: tuple[int, int] | None) -> str:
    return "-" if size is None else f"{size[0]}x{size[1]}"


_CHECK_HELP = (
    "Read every image and mask of DATASET and list everything wrong with it.\n\n"
    "Prints counts (tampered / authentic / unknown), image sizes and the mean tampered fraction, then every "
    "problem with its JSON line number or file path.\n\n"
    "[bold]Errors[/bold] (unreadable, missing, truncated or oversized files; masks whose size differs from "
    "their image; malformed list entries; unmatched Tp/Gt or images/masks files) make the command exit "
    "with status 1. [bold]Warnings[/bold] (non-binary or coloured masks, masks with transparency, empty masks "
    "on tampered images, images listed twice) do not."
)

_CONVERT_HELP = (
    "Write SOURCE as an IMDLBenCo-style JSON list of (image, mask or \"Negative\") pairs.\n\n"
    "Authentic images (Au/ or authentic/ folders) become \"Negative\" entries. Every problem of the source "
    "is listed and nothing is written if there is any. Plain image folders are refused: their ground truth "
    "is unknown and the JSON list format cannot say so."
)


@data_app.command("check", help=_CHECK_HELP)
def check(
    dataset: Path = typer.Argument(
        ..., help="A JSON list, a folder with Tp/ and Gt/ (optional Au/), a folder with images/ and masks/ "
                  "(optional authentic/), or a plain folder of images.",
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images with more pixels than this (decompression bombs)."
    ),
    threshold: float = typer.Option(127.5, help="Mask rule: a pixel is tampered when its RGB mean is > this."),
    json_report: Path | None = typer.Option(
        None, "--json", help="Also write the full report (counts and every problem) to this JSON file."
    ),
) -> None:
    """Read every image and mask of DATASET and list everything wrong with it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from forgeloc.data.check import check_dataset

    with Progress(TextColumn("reading"), BarColumn(), MofNCompleteColumn(), console=err_console,
                  transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("check", total=None)
        report = check_dataset(dataset, max_pixels=max_pixels, threshold=threshold,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))

    table = Table(title=f"Dataset {escape(str(dataset))}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("format", escape(_FORMATS.get(report.format, report.format)))
    table.add_row("records", str(report.n_records))
    table.add_row("tampered", str(report.n_tampered))
    table.add_row("authentic", str(report.n_authentic))
    if report.n_unknown:
        table.add_row("unknown ground truth", str(report.n_unknown))
    table.add_row("images read", f"{report.n_images_read} of {report.n_records}")
    table.add_row("smallest / largest image", f"{_size(report.min_size)} / {_size(report.max_size)} (WxH)")
    if report.min_width is not None:
        table.add_row("width range", f"{report.min_width}..{report.max_width}")
        table.add_row("height range", f"{report.min_height}..{report.max_height}")
    frac = report.mean_tampered_fraction
    table.add_row("mean tampered fraction", "-" if frac is None else f"{frac:.2%} (over tampered images)")
    table.add_row("errors", f"[red]{len(report.errors)}[/red]" if report.errors else "0")
    table.add_row("warnings", f"[yellow]{len(report.warnings)}[/yellow]" if report.warnings else "0")
    console.print(table)

    for p in report.problems:
        colour = "red" if p.severity == "error" else "yellow"
        console.print(f"[{colour}]{p.severity}[/{colour}] {escape(p.where)}: {escape(p.message)}", soft_wrap=True)
    if json_report is not None:
        json_report.write_text(json.dumps(report.to_dict(), indent=2, default=str))
        console.print(f"report written to {escape(str(json_report))}", soft_wrap=True)
    if report.errors:
        console.print(f"[red]{len(report.errors)} error(s)[/red]: fix them before training or evaluating.")
        raise typer.Exit(1)
    console.print("[green]no errors[/green]" + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""))


@data_app.command("convert", help=_CONVERT_HELP)
def convert(
    source: Path = typer.Argument(
        ..., help="Any dataset forgeloc reads (JSON list, Tp/Gt folder, images/masks folder)."
    ),
    output: Path = typer.Argument(..., help="The JSON list to write (OUT.json)."),
    absolute: bool = typer.Option(
        False, "--absolute", help="Write absolute paths (needed by IMDLBenCo, which resolves relative paths "
                                  "against the current directory). Default: relative to OUT.json's folder.",
    ),
) -> None:
    """Write SOURCE as an IMDLBenCo-style JSON list."""
    from forgeloc.data.check import convert_to_json
    from forgeloc.data.datasets import DatasetError, load_records

    try:
        out = convert_to_json(source, output, relative=not absolute)
    except DatasetError as err:
        for p in err.problems:
            err_console.print(f"[red]error[/red] {escape(p.where)}: {escape(p.message)}", soft_wrap=True)
        err_console.print(f"[red]{len(err.problems)} problem(s)[/red]: nothing written.")
        raise typer.Exit(1) from err
    except ValueError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
    records = load_records(out)
    n_neg = sum(1 for r in records if r.mask is None)
    console.print(f"wrote {escape(str(out))}: {len(records)} entries ({len(records) - n_neg} tampered, "
                  f"{n_neg} authentic)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
