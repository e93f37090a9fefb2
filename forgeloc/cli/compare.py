"""``forgeloc compare``: your ``forgeloc test`` numbers next to the papers' tables."""

from __future__ import annotations

from pathlib import Path

import typer

from forgeloc.cli.common import fail


def compare(
    results: Path | None = typer.Argument(None, help="metrics.json written by forgeloc test."),
    paper: str | None = typer.Option(
        None, "--paper", "-p", help="sparsevit | mesorch | mesorch_p | ncl: the paper's own tables (and, for ncl, "
                                    "IMDL-BenCo's re-implementation)."),
    table: str | None = typer.Option(None, "--table", "-t", help="One published table instead (see --list)."),
    model: str | None = typer.Option(None, "--model", "-m", help="The table row to compare with (default: the "
                                                                 "paper's model)."),
    protocol: str | None = typer.Option(
        None, "--protocol", help="cat | mvss (ncl also: paper). Default: the paper's own protocol (ncl: mvss)."),
    tolerance: float = typer.Option(0.02, "--tolerance", help="Flag absolute differences larger than this."),
    set_map: list[str] = typer.Option(
        [], "--set", help="TABLE_SET=YOUR_SET when your set's name is not recognised (repeat)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for compare.md / .csv / .json "
                                                              "(default: the results file's folder)."),
    list_tables: bool = typer.Option(False, "--list", help="List the transcribed tables and exit."),
) -> None:
    """Put your numbers, the paper's and the difference side by side, under the paper's metric definition.

    Test-set names are matched to the tables' columns (CASIAv1, Columbia, NIST16, COVERAGE, IMD2020, DEF-12k; aliases
    such as CASIA1, NIST16_1024, coverage, IMD20_1024 are recognised). Differences beyond --tolerance are flagged with
    the known causes (resizing, authentic images counted, mask conversion, ...).

    Example: forgeloc compare results/metrics.json --paper mesorch
    """
    from rich.console import Console
    from rich.markup import escape

    from forgeloc.engine.compare import CompareError, compare_paper, load_results, write_comparison
    from forgeloc.engine.compare import compare as compare_table

    console = Console()
    if list_tables:
        _print_tables(console)
        return
    if results is None:
        fail("give the metrics.json that forgeloc test wrote (or --list)")
    if (paper is None) == (table is None):
        fail("give exactly one of --paper and --table")
    if tolerance < 0:
        fail(f"--tolerance must be >= 0, got {tolerance}")
    mapping = _parse_set_map(set_map)
    try:
        rows, meta = load_results(results)
        if paper is not None:
            if model is not None:
                fail("--model selects a row of a --table; with --paper the paper's model is compared")
            comparisons = compare_paper(rows, meta, paper, protocol, tolerance=tolerance, mapping=mapping)
        else:
            comparisons = [compare_table(rows, meta, table, model, tolerance=tolerance, mapping=mapping)]
    except CompareError as err:
        fail(str(err))

    for comp in comparisons:
        _print_comparison(console, comp)
    paths = write_comparison(comparisons, out or results.parent, meta, str(results))
    console.print(f"written: {escape(str(paths['md']))}, .csv, .json (causes of flagged differences in the .md)",
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def _parse_set_map(items: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items:
        canon, sep, name = item.partition("=")
        if not sep or not canon or not name:
            fail(f"--set {item!r}: write TABLE_SET=YOUR_SET, e.g. NIST16=NIST16_1024")
        mapping[canon] = name
    return mapping


def _print_tables(console) -> None:
    """``--list``: the transcribed tables and the papers they belong to."""
    from rich.markup import escape
    from rich.table import Column, Table

    from forgeloc.engine.compare import PAPERS, TABLES

    listing = Table("source", "protocol", "metric", "rows")
    listing.columns.insert(0, Column("table", no_wrap=True))
    for key, t in TABLES.items():
        listing.add_row(key, escape(t.source), escape(t.protocol.split(":")[0].split(" (")[0]), t.metric,
                        escape(", ".join(t.rows)))
    console.print(listing)
    console.print("papers: " + ", ".join(f"{p} ({'/'.join(v)})" for p, v in PAPERS.items()))


def _print_comparison(console, comp) -> None:
    """One comparison as a table on the terminal, then the notes about your run."""
    from rich.markup import escape
    from rich.table import Table

    t = comp.table
    view = Table(title=f"{escape(t.source)} — {escape(comp.row)} ({escape(t.metric_name)})", title_justify="left")
    for col in ("set", "your set", "yours", "paper", "diff", "status"):
        view.add_column(col, justify="right" if col in ("yours", "paper", "diff") else "left")
    for r in comp.rows:
        diff = "–" if r.diff is None else f"{r.diff:+.4f}"
        status = f"[red]{escape(r.status)}[/red]" if r.flagged else escape(r.status)
        view.add_row(r.set, escape(r.your_set or "–"), "–" if r.yours is None else f"{r.yours:.4f}",
                     "–" if r.paper is None else f"{r.paper:.4f}", diff, status)
    console.print(view)
    for note in comp.run_notes:
        console.print(f"your run: {escape(note)}", soft_wrap=True)
