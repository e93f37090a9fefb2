"""``forgeloc demo``: the default detector on example photos, tampered and untouched, with a report."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from forgeloc.cli.common import console, fail


def demo(
    out: Path = typer.Option(Path("forgeloc-demo"), "--out", "-o", help="Folder for the photos, results and report."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for PyTorch (default: all cores)."),
) -> None:
    """Run the default detector on five example photos and write an HTML report.

    The photos are real photographs bundled with scikit-image (nothing is downloaded): a JPEG
    splice, a copy-move with rotation, and three untouched JPEGs. Their ground-truth masks are
    written next to them, so you can compare. Then try your own: forgeloc predict photo.jpg
    """
    from rich.markup import escape
    from rich.table import Table

    from forgeloc.cli.common import check_output_folder
    from forgeloc.data.examples import make_examples
    from forgeloc.extras import install_hint
    from forgeloc.inference.predictor import load
    from forgeloc.inference.report import report_entry, write_report

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    check_output_folder(out)
    try:
        examples = make_examples(out)
    except ImportError as err:
        fail(escape(install_hint("forgeloc demo (its example photos come from scikit-image)", "demo",
                                 getattr(err, "name", None))))
    predictor = load()
    console.print(predictor.label, highlight=False, markup=False)
    table = Table(title="default detector on the example photos")
    for col in ("photo", "truth", "verdict", "score", "flagged"):
        table.add_column(col, justify="left" if col in ("photo", "truth", "verdict") else "right")
    entries = []
    for photo, mask in examples:
        result = predictor.predict(photo)
        saved = result.save(out / "results", write_json=False)
        entries.append(report_entry(result, overlay=result.overlay(), files=saved, name=photo.name))
        table.add_row(photo.name, "tampered" if mask else "untouched", result.verdict or "-",
                      f"{result.score:.2f}", f"{100 * result.tampered_fraction:.1f} %")
    console.print(table)
    report = write_report(out / "report.html", entries, {"model": predictor.model_name, "photos": str(out / "photos")},
                          describe=predictor.describe(), command=sys.argv)
    console.print(f"report: {report}\nground truth: {out / 'masks'}\nnext: forgeloc predict YOUR_PHOTO.jpg",
                  highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
