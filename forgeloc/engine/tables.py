"""Metric tables as Markdown, CSV and JSON (one row per dataset / perturbation level)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from forgeloc.engine.logger import METRIC_ORDER, format_value, ordered_metric_keys
from forgeloc.io import atomic_write


def markdown_table(
    rows: dict[str, dict[str, Any]], first_column: str = "dataset", *, all_columns: bool = False
) -> str:
    """Markdown for people: the headline metrics and counts (CSV and JSON carry every value)."""
    keys = ordered_metric_keys(rows)
    if not all_columns:
        secondary = ("pixel_", "image_", "n_")
        keys = [k for k in keys if k in METRIC_ORDER or not k.startswith(secondary)]
    lines = [
        "| " + " | ".join([first_column, *keys]) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(format_value(row.get(k, ""), k) for k in keys)]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: dict[str, dict[str, Any]], first_column: str = "dataset") -> str:
    keys = ordered_metric_keys(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([first_column, *keys])
    for name, row in rows.items():
        writer.writerow([name, *(row.get(k, "") for k in keys)])
    return buf.getvalue()


def write_tables(
    rows: dict[str, dict[str, Any]],
    out_dir: str | Path,
    stem: str = "metrics",
    meta: dict[str, Any] | None = None,
    first_column: str = "dataset",
) -> dict[str, Path]:
    """Write ``stem.md``, ``stem.csv`` and ``stem.json`` (the JSON also carries ``meta``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ""
    if meta:
        header = "".join(f"- **{k}**: {v}\n" for k, v in meta.items() if not isinstance(v, (dict, list))) + "\n"
    paths = {
        "md": atomic_write(out / f"{stem}.md", lambda p: p.write_text(header + markdown_table(rows, first_column))),
        "csv": atomic_write(out / f"{stem}.csv", lambda p: p.write_text(csv_table(rows, first_column))),
        "json": atomic_write(
            out / f"{stem}.json",
            lambda p: p.write_text(json.dumps({"meta": meta or {}, "results": rows}, indent=2, default=str)),
        ),
    }
    return paths
