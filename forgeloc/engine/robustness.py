"""``forgeloc robustness``: metrics under JPEG, blur, noise and resampling, as tables and curves.

For each checkpoint and test set, the clean evaluation and one evaluation per (perturbation,
level) run through the engine's single loop (:func:`forgeloc.engine.evaluate.evaluate`); the
perturbation is handed to the data pipeline (``build_eval_loader(perturb=...)``), which applies it
to the image only, at native resolution, before resize/pad and normalisation — where IMDLBenCo's
``test_robust.py`` applies its ``common_transforms`` (protocol section d). Its random draws come
from each sample's seeded generator, so the same seed gives the same numbers.

Outputs in ``out_dir``:

- ``robustness.md`` / ``.csv`` / ``.json``: one row per (checkpoint, test set, condition) with every
  metric and the numeric ``level``; the JSON rows also carry ``run``, ``dataset``,
  ``perturbation`` and ``condition``, and its ``meta`` the checkpoints' hashes, the metric
  definition, the seed and every perturbation's parameters;
- ``compare_<metric>.md`` / ``.csv`` / ``.json`` (several checkpoints only): one column per
  checkpoint for pixel F1 and pixel AUC;
- ``robustness_<dataset>.png``: pixel F1 and pixel AUC against level, one panel per perturbation,
  one line per checkpoint, the clean value dashed.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgeloc.data.perturb import (
    PERTURBATIONS,
    Perturbation,
    get_perturbation_kind,
    make_perturbation,
    parse_perturbation_names,
)
from forgeloc.version import __version__

log = logging.getLogger(__name__)

#: Metrics drawn in the plots (rows of the figure), with their axis labels.
PLOT_METRICS: dict[str, str] = {"pixel_f1": "pixel F1", "pixel_auc": "pixel AUC"}
CLEAN = "none"


@dataclass(frozen=True)
class Condition:
    """One evaluation setting: the clean run (``perturb is None``) or a perturbation at a level."""

    perturbation: str  # "none" or a registered kind
    level: int | float  # integers stay integers (tables print "7", not "7.0000")
    label: str
    perturb: Perturbation | None


def build_conditions(
    perturbations: Sequence[str] | str | None = None,
    levels: Mapping[str, Sequence[float]] | None = None,
    *,
    jpeg_exact: bool = False,
    noise_rounding: str = "truncate",
) -> list[Condition]:
    """The clean condition first, then each perturbation at its levels (defaults: protocol levels).

    A level 0 means "clean" and is not evaluated twice; repeated levels are dropped.
    """
    kinds = parse_perturbation_names(perturbations)
    levels = dict(levels or {})
    unknown = [k for k in levels if get_perturbation_kind(k).name not in kinds]
    if unknown:
        raise ValueError(f"levels given for {', '.join(unknown)}, which is not among the perturbations run "
                         f"({', '.join(kinds) or 'none'}); add it to --perturb")
    conditions = [Condition(CLEAN, 0, CLEAN, None)]
    for kind in kinds:
        spec = PERTURBATIONS[kind]
        seen: set[float] = set()
        for level in levels.get(kind, spec.default_levels):
            perturb = make_perturbation(kind, level, jpeg_exact=jpeg_exact, noise_rounding=noise_rounding)
            if perturb is None or float(perturb.level) in seen:
                continue
            seen.add(float(perturb.level))
            level = float(perturb.level)
            conditions.append(Condition(kind, int(level) if level.is_integer() else level, perturb.label, perturb))
    return conditions


def checkpoint_names(checkpoints: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, str]:
    """Display names for checkpoints: ``NAME=PATH`` as given, else derived from the path.

    A run folder is named after itself; ``best``, ``latest`` and ``epoch_*`` folders after their
    run (``myrun/best``); a weights file after its stem. Two equal names are an error.
    """
    if isinstance(checkpoints, Mapping):
        return {str(k): str(v) for k, v in checkpoints.items()}
    named: dict[str, str] = {}
    for item in checkpoints:
        text = str(item)
        name, sep, path = text.partition("=")
        if not sep or not name or "/" in name or Path(text).exists():
            name, path = _derive_name(Path(text)), text
        if name in named:
            raise ValueError(f"two checkpoints are both named {name!r}; name them as NAME=PATH")
        named[name] = path
    return named


def _derive_name(path: Path) -> str:
    path = Path(str(path).rstrip("/")) if str(path) not in ("", "/") else path
    name = path.stem if path.suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt") else path.name
    if name in ("best", "latest") or name.startswith("epoch_"):
        parent = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        name = f"{parent.name}/{name}" if parent.name else name
    return name or str(path)


def _safe_file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"


def run_robustness(
    checkpoints: Sequence[str | Path] | Mapping[str, str | Path],
    datasets: Mapping[str, str],
    out_dir: str | Path,
    *,
    perturbations: Sequence[str] | str | None = None,
    levels: Mapping[str, Sequence[float]] | None = None,
    jpeg_exact: bool = False,
    noise_rounding: str = "truncate",
    seed: int = 42,
    model_name: str | None = None,
    plot: bool = True,
    command: str | None = None,
    **setup: Any,
) -> dict[str, Any]:
    """Evaluate every checkpoint on every dataset, clean and under each perturbation level.

    ``setup`` goes to :func:`forgeloc.engine.testing.eval_setup` (``definition``, ``threshold``,
    ``image_score``, ``input_size``, ``input_mode``, ``batch_size``, ``num_workers``, ``device``).
    ``seed`` seeds the per-image random draws (noise, JPEG quality); with no augmentation at test
    time nothing else depends on it. Returns ``{"rows": ..., "meta": ..., "paths": ...}``.
    """
    from forgeloc.engine.distributed import cleanup_distributed, init_distributed
    from forgeloc.engine.logger import setup_logging
    from forgeloc.engine.testing import eval_setup

    if not datasets:
        raise ValueError("name at least one test set")
    names = checkpoint_names(checkpoints)
    if not names:
        raise ValueError("name at least one checkpoint")
    conditions = build_conditions(perturbations, levels, jpeg_exact=jpeg_exact, noise_rounding=noise_rounding)
    info = init_distributed(setup.pop("device", None))
    setup_logging(enabled=info.is_main)
    try:
        rows: dict[str, dict[str, Any]] = {}
        runs_meta: dict[str, dict[str, Any]] = {}
        many_runs, many_sets = len(names) > 1, len(datasets) > 1
        for run, checkpoint in names.items():
            model, cfg, info, meta = eval_setup(checkpoint, model_name, info=info, **setup)
            cfg.train.seed = int(seed)
            runs_meta[run] = {
                "checkpoint": meta["checkpoint"], "model": meta["model"], "weights_sha256": meta["weights_sha256"],
                "threshold": cfg.eval.threshold, "image_score": cfg.eval.image_score,
                "input": f"{cfg.data.input_mode} {cfg.data.input_size}",
            }
            for dataset, source in datasets.items():
                for cond in conditions:
                    key = " / ".join([*([run] if many_runs else []), *([dataset] if many_sets else []), cond.label])
                    rows[key] = _evaluate_condition(model, cfg, info, run, dataset, source, cond)
        table_meta = _table_meta(runs_meta, datasets, conditions, definition=setup.get("definition", "forgeloc"),
                                 seed=seed, jpeg_exact=jpeg_exact, noise_rounding=noise_rounding, command=command)
        paths: dict[str, Any] = {}
        if info.is_main:
            paths = _write_outputs(rows, table_meta, Path(out_dir), list(names), datasets, plot=plot,
                                   jpeg_exact=jpeg_exact)
        return {"rows": rows, "meta": table_meta, "paths": paths}
    finally:
        cleanup_distributed()


def _evaluate_condition(model: Any, cfg: Any, info: Any, run: str, dataset: str, source: str,
                        cond: Condition) -> dict[str, Any]:
    """One checkpoint on one test set under one condition: the metrics and where they come from."""
    from forgeloc.engine.data import build_eval_loader
    from forgeloc.engine.evaluate import evaluate

    t0 = time.time()
    loader = build_eval_loader(source, cfg, info, size=cfg.data.input_size, perturb=cond.perturb)
    metrics = evaluate(
        model, loader, info.device, definition=cfg.eval.definition, threshold=cfg.eval.threshold,
        image_score=cfg.eval.image_score,
    )
    log.info("%s / %s / %s: pixel F1 %.4f, AUC %.4f (%.0f s)", run, dataset, cond.label,
             metrics.get("pixel_f1", math.nan), metrics.get("pixel_auc", math.nan), time.time() - t0)
    return {**metrics, "level": cond.level, "run": run, "dataset": dataset, "perturbation": cond.perturbation,
            "condition": cond.label}


def _table_meta(runs_meta: dict[str, dict[str, Any]], datasets: Mapping[str, str], conditions: Sequence[Condition],
                *, definition: str, seed: int, jpeg_exact: bool, noise_rounding: str,
                command: str | None) -> dict[str, Any]:
    """What the tables record beside the numbers: protocol, versions, checkpoints, data, conditions."""
    first = next(iter(runs_meta.values()))
    return {
        "definition": definition,
        "seed": int(seed),
        "jpeg_mode": "exact quality" if jpeg_exact else "protocol: quality drawn from {q-1, q} per image",
        "noise_rounding": noise_rounding,
        "input": first["input"] if len({m["input"] for m in runs_meta.values()}) == 1 else "per checkpoint",
        "applied": "image only, native resolution, before resize/pad and normalisation; mask untouched",
        "metrics_resolution": "model input (masks resized with nearest neighbour, as IMDLBenCo)",
        "opencv_version": _cv2_version(),
        "forgeloc_version": __version__,
        "command": command or "",
        "checkpoints": runs_meta,
        "datasets": dict(datasets),
        "perturbations": _perturbation_meta(conditions),
    }


def _write_outputs(rows: dict[str, dict[str, Any]], table_meta: dict[str, Any], out: Path, runs: list[str],
                   datasets: Mapping[str, str], *, plot: bool, jpeg_exact: bool) -> dict[str, Any]:
    """The tables (one per metric across checkpoints when there are several), the plots, the console table."""
    from forgeloc.engine.logger import console
    from forgeloc.engine.tables import write_tables

    paths: dict[str, Any] = {"table": write_tables(rows, out, "robustness", table_meta, first_column="condition")}
    if len(runs) > 1:
        for metric in PLOT_METRICS:
            wide = comparison_rows(rows, metric)
            paths[f"compare_{metric}"] = write_tables(
                wide, out, f"compare_{metric}", {**table_meta, "metric": metric}, first_column="condition"
            )
    if plot:
        paths["plots"] = {
            dataset: plot_robustness(
                [r for r in rows.values() if r["dataset"] == dataset],
                out / f"robustness_{_safe_file_part(dataset)}.png",
                title=f"robustness on {dataset} ({table_meta['definition']} metrics)",
                jpeg_exact=jpeg_exact,
            )
            for dataset in datasets
        }
    console.print(_console_table(rows, runs))
    log.info("tables: %s", paths["table"]["md"])
    for p in (paths.get("plots") or {}).values():
        log.info("plot: %s", p)
    return paths


def _cv2_version() -> str:
    import cv2

    return cv2.__version__


def _perturbation_meta(conditions: Sequence[Condition]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cond in conditions:
        if cond.perturb is None:
            continue
        spec = PERTURBATIONS[cond.perturbation]
        entry = out.setdefault(cond.perturbation, {
            "description": spec.description,
            "protocol": spec.protocol_levels is not None,
            "protocol_levels": list(spec.protocol_levels) if spec.protocol_levels else None,
            "levels": [],
            "parameters": {},
        })
        entry["levels"].append(cond.level)
        entry["parameters"][cond.label] = cond.perturb.params()
    return out


def comparison_rows(rows: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """One row per (dataset, condition), one column per run, holding ``metric``."""
    several_sets = len({r["dataset"] for r in rows.values()}) > 1
    wide: dict[str, dict[str, Any]] = {}
    for row in rows.values():
        key = f"{row['dataset']} / {row['condition']}" if several_sets else row["condition"]
        wide.setdefault(key, {})[row["run"]] = row.get(metric, math.nan)
    return wide


def _console_table(rows: Mapping[str, Mapping[str, Any]], runs: list[str]):
    from rich.table import Table

    table = Table(title="robustness: pixel F1 / pixel AUC")
    table.add_column("dataset / condition")
    for run in runs:
        table.add_column(run, justify="right")
    cells: dict[str, dict[str, str]] = {}
    for row in rows.values():
        key = f"{row['dataset']} / {row['condition']}"
        cells.setdefault(key, {})[row["run"]] = (
            f"{row.get('pixel_f1', math.nan):.4f} / {row.get('pixel_auc', math.nan):.4f}"
        )
    for key, by_run in cells.items():
        table.add_row(key, *(by_run.get(r, "") for r in runs))
    return table


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
def plot_robustness(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    metrics: Mapping[str, str] = PLOT_METRICS,
    title: str = "",
    jpeg_exact: bool = False,
    dpi: int = 90,
) -> Path:
    """Save :func:`robustness_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = robustness_figure(rows, metrics=metrics, title=title, jpeg_exact=jpeg_exact)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def robustness_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Mapping[str, str] = PLOT_METRICS,
    title: str = "",
    jpeg_exact: bool = False,
):
    """Draw ``metrics`` (figure rows) against level, one panel per perturbation (figure columns).

    ``rows`` are robustness rows (as in ``robustness.json``'s results) of one dataset; each run is
    one colour, its clean value a dashed line of that colour (and a point at the level that means
    "no perturbation" where there is one: blur 0, noise 0, scale 1). JPEG quality and scale-factor
    axes run from high to low so that every panel gets harsher to the right. Returns the
    matplotlib ``Figure`` (Agg backend); the legend labels are the run names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs = list(dict.fromkeys(r["run"] for r in rows))
    kinds = [k for k in PERTURBATIONS if any(r["perturbation"] == k for r in rows)]
    if not kinds:
        raise ValueError("no perturbed rows to plot (only the clean evaluation)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_rows, n_cols = len(metrics), len(kinds)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols + 0.6, 2.7 * n_rows + 1.0),
                             squeeze=False, sharey="row")
    for i, (metric, metric_label) in enumerate(metrics.items()):
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            _draw_panel(ax, rows, runs, colours, metric, kind)
            spec = PERTURBATIONS[kind]
            if i == 0:
                ax.set_title(spec.title, fontsize=10)
            if i == n_rows - 1:
                xlabel = spec.axis_label
                if kind == "jpeg":
                    xlabel += " (exact)" if jpeg_exact else " (q−1 or q per image)"
                ax.set_xlabel(xlabel, fontsize=8)
            if j == 0:
                ax.set_ylabel(metric_label)
    handles = [Line2D([], [], color=colours[n % len(colours)], marker="o", label=run) for n, run in enumerate(runs)]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="clean (no perturbation)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title + " — harsher to the right", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if len(handles) <= 4 else 0.12, 1, 1))
    return fig


def _draw_panel(ax: Any, rows: Sequence[Mapping[str, Any]], runs: list[str], colours: list[str], metric: str,
                kind: str) -> None:
    """One metric under one perturbation: a line per run, its clean value dashed, harsher to the right."""
    spec = PERTURBATIONS[kind]
    all_levels: set[float] = set()
    for n, run in enumerate(runs):
        colour = colours[n % len(colours)]
        clean = [r.get(metric, math.nan) for r in rows if r["run"] == run and r["perturbation"] == CLEAN]
        points = sorted((float(r["level"]), float(r.get(metric, math.nan)))
                        for r in rows if r["run"] == run and r["perturbation"] == kind)
        all_levels.update(x for x, _ in points)
        if clean and spec.clean_level is not None:
            points = sorted([(float(spec.clean_level), float(clean[0])), *points])
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=4, color=colour, linewidth=1.5)
        if clean:
            ax.axhline(float(clean[0]), color=colour, linestyle="--", linewidth=0.9, alpha=0.7)
    ticks = sorted(all_levels | ({float(spec.clean_level)} if spec.clean_level is not None else set()))
    ax.set_xticks(ticks)
    ax.set_xticklabels([spec.tick_label(t) if t != spec.clean_level else "clean" for t in ticks], fontsize=7)
    if spec.stronger_when_lower:
        ax.invert_xaxis()
    ax.grid(True, alpha=0.3)


def plot_from_json(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Re-draw the plots of a finished run from its ``robustness.json``."""
    import json

    data = json.loads(Path(json_path).read_text())
    rows = list(data["results"].values())
    meta = data.get("meta", {})
    out = Path(out_dir) if out_dir is not None else Path(json_path).parent
    exact = str(meta.get("jpeg_mode", "")).startswith("exact")
    paths = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        paths.append(plot_robustness(
            [r for r in rows if r["dataset"] == dataset], out / f"robustness_{_safe_file_part(dataset)}.png",
            title=f"robustness on {dataset} ({meta.get('definition', '')} metrics)", jpeg_exact=exact,
        ))
    return paths
