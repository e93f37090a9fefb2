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
        from forgeloc.version import __version__

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
    "export",
    "bench",
    "predict",
    "serve",
    "detectors",
    "compare",
)


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"forgeloc.cli.{name}").register(app)


def _command_name(argv: list[str]) -> str:
    """``forgeloc serve`` for ``[..., "serve", "--port", "1"]``: the sub-command being run, for messages."""
    names = {c.name or "" for c in app.registered_commands} | {g.name or "" for g in app.registered_groups}
    return " ".join(["forgeloc", *[a for a in argv[1:] if a in names][:1]])


def main() -> None:
    """Console-script entry point. A package of a missing extra ends the command with one line
    naming the pip command (``forgeloc serve`` without fastapi), never with a traceback."""
    import sys

    from forgeloc.cli.common import console
    from forgeloc.extras import MissingExtraError, extra_for, install_hint

    _register_commands()
    try:
        app()
        return
    except MissingExtraError as err:
        message = str(err)
    except ModuleNotFoundError as err:
        extra = extra_for(err.name)
        if extra is None:
            raise
        message = install_hint(_command_name(sys.argv), extra, (err.name or "").split(".")[0])
    # Outside typer's own handling now (typer.Exit would print a traceback here): print and leave.
    from rich.markup import escape

    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)
