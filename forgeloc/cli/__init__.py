"""The ``forgeloc`` command line (typer). Each sub-command lives in its own module here."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="forgeloc",
    help="Image manipulation localization: make data, train, evaluate, and find tampered regions.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the forgeloc version and exit.", is_eager=True),
) -> None:
    """Image manipulation localization: make data, train, evaluate, and find tampered regions."""
    if version:
        from forgeloc import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# Each module defines ``register(app)``; the order is the order of ``forgeloc --help``.
_COMMAND_MODULES = (
    "demo",
    "quickstart",
    "synth",
    "corpus",
    "data",
    "train",
    "test",
    "robustness",
    "convert",
    "bench",
    "predict",
    "serve",
    "detectors",
    "compare",
)


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"forgeloc.cli.{name}").register(app)


def main() -> None:
    """Console-script entry point."""
    _register_commands()
    app()
