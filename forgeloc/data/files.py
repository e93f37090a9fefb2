"""Finding image files: the one folder walker, and the expansion of command-line inputs.

Every part of forgeloc that lists a folder of photos goes through :func:`list_folder`: dataset
folders (:mod:`forgeloc.data.datasets`), dataset recipes (:mod:`forgeloc.data.prepare`), photo
folders for synthesis (:mod:`forgeloc.data.synth`) and ``forgeloc predict``
(:func:`expand_inputs`). They differ only in which names they skip and in what they do with the
files that are not images; the order (sorted paths) and the handling of links are the same.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forgeloc.data.io import IMAGE_EXTENSIONS

__all__ = [
    "SYSTEM_NAMES",
    "FolderListing",
    "broken_link",
    "expand_inputs",
    "is_hidden",
    "is_hidden_or_system",
    "is_image_name",
    "list_folder",
]

#: Names operating systems leave in photo folders (any case); never data.
SYSTEM_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_GLOB_CHARS = frozenset("*?[")


def is_hidden(name: str) -> bool:
    """A dot-file or dot-folder."""
    return name.startswith(".")


def is_hidden_or_system(name: str) -> bool:
    """A dot-file, or a file/folder the operating system made (``Thumbs.db``, ``__MACOSX`` ...)."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def is_image_name(path: Path) -> bool:
    """Whether ``path`` has one of the image extensions forgeloc reads (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def broken_link(path: Path) -> str | None:
    """Why ``path`` is a symbolic link that cannot be followed (dangling, looping), else ``None``."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as err:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if err.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target}): it never reaches a file"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"broken symbolic link: its target {target} does not exist"
        return f"symbolic link to {target} cannot be followed ({err.strerror or err})"
    return None


@dataclass
class FolderListing:
    """What :func:`list_folder` found, each list in sorted path order."""

    folder: Path
    #: regular files (or links to them) with an image extension
    images: list[Path] = field(default_factory=list)
    #: other regular files
    others: list[Path] = field(default_factory=list)
    #: ``(link, why)`` for links that cannot be followed (dangling, looping)
    broken: list[tuple[Path, str]] = field(default_factory=list)
    #: entries that are neither a folder nor a regular file (a FIFO, a socket, a device)
    special: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every regular file (images and others), in sorted path order."""
        return sorted([*self.images, *self.others])


def list_folder(
    folder: str | os.PathLike, *, recursive: bool = False, skip: Callable[[str], bool] | None = is_hidden_or_system
) -> FolderListing:
    """Sort the entries of ``folder`` (and of its sub-folders with ``recursive``) into images, other
    files, links that cannot be followed and special files. Folders themselves are not listed.

    ``skip(name)`` drops an entry when it is true for any part of its path below ``folder`` (so a
    hidden folder hides everything in it); ``None`` keeps everything.
    """
    folder = Path(folder)
    listing = FolderListing(folder)
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if skip is not None and any(skip(part) for part in path.relative_to(folder).parts):
            continue
        if path.is_dir():
            continue
        why = broken_link(path)
        if why is not None:
            listing.broken.append((path, why))
        elif not path.is_file():
            listing.special.append(path)
        elif is_image_name(path):
            listing.images.append(path)
        else:
            listing.others.append(path)
    return listing


def expand_inputs(
    inputs: Sequence[str | os.PathLike], recursive: bool = False
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to predict on, in order and without duplicates, and ``(input, problem)`` pairs.

    A folder contributes its files with an image extension (sorted; sub-folders only with
    ``recursive``; hidden names skipped); a pattern with ``* ? [`` is expanded here (``**`` spans
    folders), for shells that do not expand it; a file named explicitly is always tried, whatever
    its extension. A link with an image name that cannot be followed is a problem, not skipped silently.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    def add_folder(folder: Path) -> int:
        listing = list_folder(folder, recursive=recursive, skip=is_hidden)
        for path in listing.images:
            add(path)
        broken = [(str(p), why) for p, why in listing.broken if is_image_name(p)]
        problems.extend(broken)
        return len(listing.images) + len(broken)

    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_dir():
            if not add_folder(path):
                problems.append((item, "folder holds no image file" + ("" if recursive else " (try --recursive)")))
        elif path.exists():
            add(path)
        elif (why := broken_link(path)) is not None:
            problems.append((item, why))
        elif _GLOB_CHARS & set(item):
            _add_pattern(item, add, add_folder, problems)
        else:
            problems.append((item, "file not found"))
    return files, problems


def _add_pattern(pattern: str, add: Callable[[Path], None], add_folder: Callable[[Path], int],
                 problems: list[tuple[str, str]]) -> None:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not matches:
        problems.append((pattern, "no file matches this pattern"))
    for match in matches:
        path = Path(match)
        if path.is_dir():
            add_folder(path)
        elif (why := broken_link(path)) is not None:
            problems.append((match, why))
        else:
            add(path)
