"""Helpers shared by the sub-commands.

Text that comes from the user or the file system (paths, file names, error messages quoting them) is
printed with rich markup off: ``[image, mask_or_"Negative"]`` or a file named ``[draft] a.png`` would
otherwise be read as markup tags and vanish. :func:`say` and :func:`fail` do that; styled labels are
added around the literal text, never inside it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console(stderr=True)


def say(text: str, label: str = "", style: str = "", out: Console | None = None) -> None:
    """Print ``label`` (styled) then ``text`` verbatim: no markup, no highlighting, no wrapping.
    Without a label, ``style`` applies to the text."""
    line = Text.assemble((label, style), " ", text) if label else Text(text, style=style)
    (out or console).print(line, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit with ``code``."""
    say(message, "error:", "bold red")
    raise typer.Exit(code)


def parse_named(items: list[str]) -> dict[str, str]:
    """``["CASIAv1=/d/casia1", "/d/coverage"]`` → ``{"CASIAv1": "/d/casia1", "coverage": "/d/coverage"}``."""
    named: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem or Path(item).name, item
        if not path.strip():  # `-d name=` must not become "." and scan the working folder
            fail(f"{item!r}: no path after '='; give NAME=PATH")
        if name in named:
            fail(f"two datasets are named {name!r}; name them explicitly as NAME=PATH")
        named[name] = path
    return named


def set_threads(threads: int | None) -> None:
    """``--threads``: how many CPU threads PyTorch uses (None keeps its default: all cores)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def check_threshold_and_device(threshold: float | None, device: str | None) -> None:
    """The option checks every predicting command shares: a threshold in [0, 1] (the heatmap is a
    probability) and a device that exists here; a one-line error otherwise."""
    from forgeloc.io import check_device, check_threshold

    try:
        if threshold is not None:
            check_threshold(threshold, "--threshold")
    except ValueError as err:
        fail(str(err))
    try:
        check_device(device)
    except ValueError as err:
        fail(f"--device: {err}")


# --------------------------------------------------------------------------------------------------
# Output paths: checked before any work, so an unusable one is a message, not a traceback at the end
# --------------------------------------------------------------------------------------------------
def _ancestor_file(path: Path) -> Path | None:
    """The first existing non-folder among ``path``'s parents (what makes ``mkdir -p`` impossible)."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _probe_writable(folder: Path, option: str, shown: Path) -> None:
    """Write and remove a probe file in ``folder`` (permissions alone lie for root and read-only mounts)."""
    probe = folder / f".forgeloc-write-test-{os.getpid()}"
    try:
        with open(probe, "wb"):
            pass
    except OSError as err:
        fail(f"{option} {shown} is not writable ({err.strerror or err})")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_output_folder(out: Path, option: str = "--out", create: bool = True) -> None:
    """Make sure ``out`` is (or can become) a writable folder; otherwise a one-line error.

    With ``create=False`` only what can be seen without writing is checked (a file in the way);
    with ``create=True`` the folder is created and a probe file written and removed.
    """
    if out.exists() and not out.is_dir():
        fail(f"{option} {out} is a file, not a folder")
    if out.is_symlink() and not out.exists():
        from forgeloc.data.files import broken_link

        fail(f"{option} {out}: {broken_link(out)}")
    blocker = _ancestor_file(out)
    if blocker is not None:
        fail(f"{option} {out}: {blocker} is a file, so no folder can be made under it")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option} {out}: cannot create the folder ({err.strerror or err})")
    _probe_writable(out, option, out)


def check_output_file(path: Path, option: str, create: bool = True) -> None:
    """Make sure the file ``path`` can be written; else a one-line error.

    With ``create=False`` only what can be seen without writing is checked; with ``create=True`` its
    folder is created if missing and a probe file written there and removed.
    """
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"{option} {path} is not writable (read-only file)")
    blocker = _ancestor_file(path)
    if blocker is not None:
        fail(f"{option} {path}: {blocker} is a file, so no folder can be made under it")
    if not create:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option} {path}: cannot create the folder {path.parent} ({err.strerror or err})")
    _probe_writable(path.parent, option, path)
