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
    help="Check, convert and prepare datasets: JSON lists, Tp/Gt(/Au) folders, images/masks(/authentic) folders, "
         "and the field's standard datasets as they ship (prepare).",
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
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
        help="Refuse images with more pixels than this (decompression bombs).",
    ),
    threshold: float = typer.Option(
        127.5, min=0.0, max=255.0, help="Mask rule: a pixel is tampered when its RGB mean is > this."
    ),
    json_report: Path | None = typer.Option(
        None, "--json", help="Also write the full report (counts and every problem) to this JSON file."
    ),
) -> None:
    """Read every image and mask of DATASET and list everything wrong with it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from forgeloc.cli.common import check_output_file
    from forgeloc.data.check import check_dataset

    if json_report is not None:  # before the scan, which can take long
        check_output_file(json_report, "--json")
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
        _write_report(json_report, report.to_dict())
        console.print(f"report written to {escape(str(json_report))}", soft_wrap=True)
    if report.errors:
        console.print(f"[red]{len(report.errors)} error(s)[/red]: fix them before training or evaluating.")
        raise typer.Exit(1)
    console.print("[green]no errors[/green]" + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""))


def _write_report(path: Path, report: dict) -> None:
    from forgeloc.cli.common import fail

    try:
        path.write_text(json.dumps(report, indent=2, default=str))
    except OSError as err:
        fail(f"--json {path}: cannot write the report ({err.strerror or err})", code=1)


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
    from forgeloc.cli.common import check_output_file
    from forgeloc.data.check import convert_to_json
    from forgeloc.data.datasets import DatasetError, load_records

    if output.suffix.lower() == ".json":  # other names are refused by convert_to_json with the reason
        check_output_file(output, "OUTPUT", create=False)
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
    except OSError as err:
        err_console.print(f"[red]error:[/red] cannot write {escape(str(output))} ({escape(err.strerror or str(err))})")
        raise typer.Exit(2) from err
    records = load_records(out)
    n_neg = sum(1 for r in records if r.mask is None)
    console.print(f"wrote {escape(str(out))}: {len(records)} entries ({len(records) - n_neg} tampered, "
                  f"{n_neg} authentic)", soft_wrap=True)


def _prepare_help() -> str:
    from forgeloc.data.prepare import RECIPES

    lines = "\n\n".join(f"[bold]{name}[/bold] ({escape(r.dataset)}): {escape(r.layout)}" for name, r in RECIPES.items())
    return (
        "Turn a standard dataset, in the folder layout it ships in, into a checked forgeloc dataset: "
        "OUT/dataset.json (an IMDLBenCo-style list, paths relative to it), binary masks under OUT/masks/ when the "
        "shipped masks need converting, OUT/prepare_report.json with the counts and every skipped file with its "
        "reason. The source is never written to; a second run gives identical files.\n\n"
        "Nothing is resized unless asked: masks whose size differs from their image are skipped (--resize-masks "
        "resizes them), images only with --long-side. Layouts, mask rules and known defects: docs/reproduce.md."
        "\n\n" + lines
    )


# Long only by its option declarations (typer reads them from the signature).
@data_app.command("prepare", help=_prepare_help())
def prepare(
    name: str = typer.Argument(..., help="Recipe: casia1, casia2, columbia, coverage, nist16, imd2020, def12k, "
                                         "tampcoco, fantasticreality (aliases such as CASIAv1 are accepted)."),
    source: Path = typer.Argument(..., help="The dataset's folder as downloaded and unpacked (only read)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (new, empty, or written by an earlier prepare)."),
    masks: Path | None = typer.Option(
        None, "--masks", help="Ground-truth folder when it ships apart (CASIA v1.0/v2.0: Pham et al.'s "
                              "casia1groundtruth / casia2groundtruth); default: looked for inside SOURCE."),
    corrections: Path | None = typer.Option(
        None, "--corrections", help="Folder of corrected masks; each replaces the source mask with the same name "
                                    "(e.g. the revised masks of SunnyHaze/IML-Dataset-Corrections)."),
    resize_masks: bool = typer.Option(
        False, "--resize-masks", help="Resize a mask whose size differs from its image (nearest neighbour) instead "
                                      "of skipping the image. Counted in the report."),
    long_side: int | None = typer.Option(
        None, "--long-side", help="Resize images whose long side is larger than this (e.g. 1024, as the NIST16 and "
                                  "IMD2020 lists of Mesorch / IMDLBenCo), masks with nearest neighbour."),
    resized_format: str = typer.Option(
        "same", "--resized-format", help="Resized images: 'same' (their own format with Pillow's defaults, JPEG "
                                         "quality 75, as IMDLBenCo's script) or 'png' (lossless)."),
    authentic: bool = typer.Option(True, "--authentic/--no-authentic", help="Include the authentic images."),
    list_file: Path | None = typer.Option(
        None, "--list", help="DEF-12k: MVSS-Net's index (data/DEFACTO12k-test.txt). NIST16: another reference CSV "
                             "than reference/manipulation/NC2016-manipulation-ref.csv."),
    subset: list[str] = typer.Option([], "--subset", help="tampCOCO: sp, cm, bcm, bcmc (repeat; default all)."),
    spliced_colour: str = typer.Option(
        "green", "--spliced-colour", help="Columbia: colour of the spliced region in the edge masks (green|red)."),
    absolute: bool = typer.Option(False, "--absolute", help="Absolute paths in the list (for IMDLBenCo itself)."),
    run_check: bool = typer.Option(True, "--check/--no-check", help="Read the result with forgeloc data check."),
    workers: int = typer.Option(4, "--workers", help="Threads reading and converting masks."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images with more pixels."),
    json_report: Path | None = typer.Option(None, "--json", help="Also write the report to this JSON file."),
) -> None:
    """Prepare a standard dataset from its shipped layout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from forgeloc.data.prepare import PrepareError, PrepareOptions
    from forgeloc.data.prepare import prepare as run_prepare

    options = PrepareOptions(
        masks=masks, corrections=corrections, resize_masks=resize_masks, long_side=long_side,
        resized_format=resized_format, include_authentic=authentic, list_file=list_file,
        subsets=tuple(s.lower() for s in subset) or None, spliced_colour=spliced_colour.lower(), absolute=absolute,
        check=run_check, workers=workers, max_pixels=max_pixels,
    )
    try:
        with Progress(TextColumn("preparing"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      transient=True, disable=not err_console.is_terminal) as bar:
            task = bar.add_task("prepare", total=None)
            report = run_prepare(name, source, out, options,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except PrepareError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from err

    _print_prepare_summary(report, source, out)
    if json_report is not None:
        json_report.write_text(json.dumps({**report.to_dict(), "check": report.check}, indent=2))
    _print_prepare_check(report)
    console.print(f"report: {escape(str(out / 'prepare_report.json'))}", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _print_prepare_summary(report, source: Path, out: Path) -> None:
    """Counts, lists, notes, known defects and skipped files of one ``data prepare`` run."""
    c = report.counts
    table = Table(title=f"{escape(report.dataset)} from {escape(str(source))}", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for group, rel in report.lists.items():
        counts = report.per_list.get(group, {"tampered": c["tampered"], "authentic": c["authentic"]})
        table.add_row(f"list {escape(group)}" if group else "list", f"{escape(str(out / rel))} "
                      f"({counts['tampered']} tampered, {counts['authentic']} authentic)")
    table.add_row("tampered", str(c["tampered"]))
    table.add_row("authentic", str(c["authentic"]))
    table.add_row("skipped", f"[yellow]{c['skipped']}[/yellow]" if c["skipped"] else "0")
    table.add_row("masks used as shipped / written", f"{c['masks_from_source']} / {c['masks_written']}")
    for key, label in (("masks_resized", "masks resized (--resize-masks)"), ("images_resized", "images resized"),
                       ("corrections_applied", "corrections applied"), ("empty_masks", "empty masks")):
        if c[key]:
            table.add_row(label, str(c[key]))
    console.print(table)
    for note in report.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for d in report.known_defects:
        console.print(f"known defect: {escape(d['sample'])}: {escape(d['defect'])} -> {escape(d['outcome'])}",
                      soft_wrap=True)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(s['path'])}: {escape(s['reason'])}", soft_wrap=True)
    if report.removed:
        console.print(f"removed {len(report.removed)} file(s) an earlier run wrote and this one no longer does")


def _print_prepare_check(report) -> None:
    """What ``forgeloc data check`` said about each written list."""
    for group, result in report.check.items():
        colour = "red" if result["errors"] else "green"
        console.print(f"check {escape(group)}: [{colour}]{result['errors']} error(s)[/{colour}], "
                      f"{result['warnings']} warning(s)")
        if result["errors"]:
            for problem in result["problems"]:
                console.print(f"  {escape(problem)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
