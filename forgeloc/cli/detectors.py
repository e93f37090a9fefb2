"""``forgeloc detectors``: every detector forgeloc has, learned or training-free, one line each."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()

#: What each registered learned model finds and needs (the paper models need their authors' weights).
_MODEL_LINES = {
    "gridnet": ("splices and retouched areas whose JPEG history differs from the rest of the photo "
                "(the default detector's network)", "any image; reads the file's DCT coefficients when it is a JPEG"),
    "sparsevit": ("splicing, copy-move and removal (SparseViT, AAAI 2025)", "weights: the authors' checkpoint"),
    "mesorch": ("splicing, copy-move and removal (Mesorch, AAAI 2025)", "weights: the authors' checkpoint"),
    "mesorch_p": ("the same, lighter (Mesorch-P, AAAI 2025)", "weights: the authors' checkpoint"),
    "ncl": ("splicing, copy-move and removal (NCL, ICCV 2023)", "weights: the authors' checkpoint"),
    "unet_baseline": ("a small demo network (quickstart): not for real cases", "weights: a forgeloc training run"),
}


def detectors() -> None:
    """List the default detector, the learned models and the training-free detectors.

    Any name in the training-free list works wherever a checkpoint is expected, e.g.
    `forgeloc predict photo.jpg --detector copymove` or `forgeloc.load("copymove")`.
    """
    from forgeloc.detectors import CUES
    from forgeloc.models.registry import list_models

    table = Table(title="forgeloc detectors", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("finds")
    table.add_column("needs")
    table.add_row("default", "learned + training-free",
                  "the default detector: GridNet fused with copy-move matching (docs/models/default.md)",
                  "nothing: ships inside forgeloc")
    for name in list_models():
        if name.endswith("_tiny"):
            continue
        finds, needs = _MODEL_LINES.get(name, ("(no description)", "weights"))
        table.add_row(name, "learned", finds, needs)
    for name, info in sorted(CUES.items()):
        kind = {"detector": "training-free", "visual_aid": "visual aid (not scored)", "facts": "facts"}[info.kind]
        table.add_row(name, kind, info.finds, info.needs + (" (slow: on request)" if info.slow else ""))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("detectors")(detectors)
