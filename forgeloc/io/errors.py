"""The one error type of forgeloc's checkpoint I/O, and the helper that keeps its messages short."""

from __future__ import annotations

from typing import Any

__all__ = ["CheckpointError", "short_text"]


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not fit the model; the message names the file."""


def short_text(value: Any, limit: int = 200) -> str:
    """``str(value)`` for an error message: never raising, never long."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
