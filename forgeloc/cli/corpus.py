"""``forgeloc corpus``: rebuild the real-photo training corpus from package registries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from forgeloc.cli.common import say

console = Console()

corpus_app = typer.Typer(
    name="corpus",
    help="The real-photo corpus the detectors are trained on: rebuilt from Debian packages and Python data.",
    no_args_is_help=True,
)


@corpus_app.command("build")
def build(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: photos/ and manifest.json."),
    debs: Path | None = typer.Option(
        None, "--debs", help="Folder of .deb files (or extracted NAME/ folders) to use before downloading; only read."
    ),
    extra: list[Path] = typer.Option(
        [], "--extra", help="A folder of your own photos (every raster image is kept). Repeatable."
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch missing packages with `apt-get download` (no install)."
    ),
    only: list[str] = typer.Option([], "--only", help="Build only these sources (repeatable); default all."),
    cache: Path | None = typer.Option(None, "--cache", help="Where downloads go (default OUT/.cache/debs)."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check every photo's sha256 against the committed manifest."
    ),
    write_package_manifest: bool = typer.Option(
        False, "--write-package-manifest",
        help="Also write forgeloc/data/corpus_manifest.json (maintainers: documents the shipped weights' data).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Rebuild the photo corpus: Debian packages (apt-get download + dpkg-deb, nothing installed),
    scikit-image's and matplotlib's photos, and your --extra folders.

    Photos are copied byte for byte (their JPEG history matters), chosen by reviewed allow-lists,
    and deduplicated. Running it again changes nothing.

    Example: [bold]forgeloc corpus build --out data/corpus[/bold]
    """
    from forgeloc.cli.common import check_output_folder, fail
    from forgeloc.data.corpus import PACKAGE_MANIFEST, CorpusError, build_corpus

    def progress(message: str) -> None:
        if not quiet:
            say(message, out=console, style="dim")

    check_output_folder(out, create=False)  # a file in the way; the writes themselves are checked below
    try:
        report = build_corpus(
            out, debs=debs, extra=extra, download=download, sources=only or None,
            reference=PACKAGE_MANIFEST if verify else None,
            write_package_manifest=PACKAGE_MANIFEST if write_package_manifest else None,
            cache=cache, progress=progress,
        )
    except CorpusError as err:
        fail(str(err))
    except OSError as err:
        fail(f"--out {out}: {err.strerror or err}: {err.filename or out}", code=1)

    _print_report(report, PACKAGE_MANIFEST if write_package_manifest else None)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: Any, package_manifest: Any) -> None:
    """The build's table, reasons, verification, warnings and errors, then where everything is."""
    table = Table(title=f"{report.kept} photos, {report.megapixels:.1f} megapixels")
    for col in ("source", "version", "status", "photos", "MP", "left out", "duplicates"):
        table.add_column(col, justify="left" if col in ("source", "version", "status") else "right")
    for s in report.sources:
        status = {"examined, no photographs": "no photos"}.get(s.get("status", ""), s.get("status", ""))
        table.add_row(s["name"], s.get("version", ""), status, str(s.get("photos", 0)),
                      f"{s.get('megapixels', 0):.1f}", str(s.get("excluded", 0)), str(s.get("duplicates", 0)))
    if not console.is_terminal:  # logs, CI: rich would assume 80 columns; the table needs about 100
        console.width = max(console.width, 110)
    console.print(table)
    for kind, title in (("excluded", "left out"), ("duplicates", "duplicates")):
        reasons = report.reasons(kind)
        if reasons:
            console.print(f"[bold]{title}[/bold] ({sum(reasons.values())}):")
            for reason, n in reasons.most_common():
                say(f"  {n:5d}  {reason}", out=console)
    verification = report.verification
    if verification.get("status") == "ok":
        console.print(f"sha256 of all {verification['checked']} photos match the committed manifest")
    elif verification:
        console.print(f"verification: {verification.get('status')}")
    for w in report.warnings:
        say(str(w), "warning:", "yellow", out=console)
    for e in report.errors:
        say(str(e), "error:", "bold red", out=console)
    say(f"{report.out / 'photos'}: {report.written} written, {report.unchanged} unchanged, "
        f"{report.removed} removed; manifest: {report.manifest_path}"
        + (f"; package manifest: {package_manifest}" if package_manifest else ""), out=console)


def register(app: typer.Typer) -> None:
    app.add_typer(corpus_app, name="corpus")
