"""``forgeloc test``: evaluate one checkpoint on several test sets, write one table."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from forgeloc.engine.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig
from forgeloc.engine.data import build_eval_loader
from forgeloc.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from forgeloc.engine.evaluate import evaluate
from forgeloc.engine.logger import console, metrics_table, setup_logging
from forgeloc.engine.tables import write_tables
from forgeloc.io import MODEL_FILE, CheckpointConfig
from forgeloc.models.factory import load_checkpoint
from forgeloc.version import __version__

log = logging.getLogger(__name__)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def eval_setup(
    checkpoint: str | Path,
    model_name: str | None = None,
    *,
    input_mode: str | None = None,
    input_size: int | None = None,
    definition: str = "forgeloc",
    threshold: float | None = None,
    image_score: str | None = None,
    batch_size: int = 4,
    num_workers: int = 2,
    device: str | None = None,
    info: DistInfo | None = None,
) -> tuple[Any, Config, DistInfo, dict[str, Any]]:
    """Load a model for evaluation and the config that describes how to feed it.

    Input size, mode, threshold and device follow :meth:`~forgeloc.io.CheckpointConfig.resolve`
    (the same precedence as :class:`~forgeloc.inference.predictor.Predictor`)."""
    info = info or init_distributed(device)
    model, recorded = load_checkpoint(checkpoint, model=model_name)
    model.to(info.device)
    settings = recorded.resolve(
        model_input_size=getattr(model, "input_size", None), input_size=input_size, input_mode=input_mode,
        threshold=threshold, image_score=image_score, device=info.device,
    )
    cfg = Config(
        model=ModelConfig(name=recorded.model, kwargs=recorded.model_kwargs),
        data=DataConfig(input_mode=settings.input_mode, input_size=settings.input_size, num_workers=num_workers,
                        augment="none"),
        train=TrainConfig(batch_size=batch_size),
        eval=EvalConfig(
            definition=definition, threshold=settings.threshold, image_score=settings.image_score,
            batch_size=batch_size,
        ),
    )
    weights = Path(recorded.checkpoint)
    weights = weights / MODEL_FILE if weights.is_dir() else weights
    meta = {**recorded.to_json(), "weights_sha256": file_sha256(weights), "input_size": settings.input_size,
            "input_mode": settings.input_mode}
    return model, cfg, info, meta


def run_test(
    checkpoint: str | Path,
    datasets: dict[str, str],
    out_dir: str | Path,
    *,
    model_name: str | None = None,
    **setup: Any,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``checkpoint`` on each named dataset; write ``metrics.{md,csv,json}`` to ``out_dir``."""
    if reads_whole_photos(checkpoint):
        return run_photo_test(checkpoint, datasets, out_dir, **setup)
    info = init_distributed(setup.pop("device", None))
    setup_logging(enabled=info.is_main)
    try:
        model, cfg, info, meta = eval_setup(checkpoint, model_name, info=info, **setup)
        rows: dict[str, dict[str, Any]] = {}
        for name, source in datasets.items():
            loader = build_eval_loader(source, cfg, info, size=cfg.data.input_size)
            rows[name] = evaluate(
                model, loader, info.device, definition=cfg.eval.definition, threshold=cfg.eval.threshold,
                image_score=cfg.eval.image_score,
            )
        if info.is_main:
            table_meta = {
                "checkpoint": meta["checkpoint"],
                "model": meta["model"],
                "weights_sha256": meta["weights_sha256"],
                "definition": cfg.eval.definition,
                "threshold": cfg.eval.threshold,
                "image_score": cfg.eval.image_score,
                "input": f"{cfg.data.input_mode} {cfg.data.input_size}",
                "metrics_resolution": "model input (masks resized with nearest neighbour, as IMDLBenCo)",
                "forgeloc_version": __version__,
                "datasets": datasets,
            }
            write_tables(rows, out_dir, "metrics", table_meta)
            console.print(metrics_table(rows, title=f"{meta['model']} ({cfg.eval.definition} definition)"))
        return rows
    finally:
        cleanup_distributed()


def reads_whole_photos(checkpoint: str | Path) -> bool:
    """Whether a detector must be evaluated photo by photo at native resolution: the packaged
    default detector, a training-free cue, or a checkpoint whose model reads block-grid traces
    (recorded input mode ``native``) or fuses cues."""
    from forgeloc.detectors import CUES
    from forgeloc.inference.predictor import DEFAULT_DETECTOR

    if str(checkpoint) in CUES or str(checkpoint) == DEFAULT_DETECTOR:
        return True
    path = Path(checkpoint)
    try:
        recorded = CheckpointConfig.from_json(path)
    except Exception:  # unreadable here: the usual path reports it properly
        return False
    return recorded.input_mode == "native" or bool(recorded.fuse)


def run_photo_test(
    checkpoint: str | Path,
    datasets: dict[str, str],
    out_dir: str | Path,
    *,
    definition: str = "forgeloc",
    threshold: float | None = None,
    device: str | None = None,
    mode: str = "auto",
    **ignored: Any,
) -> dict[str, dict[str, Any]]:
    """``forgeloc test`` for detectors that read whole photos (see :func:`reads_whole_photos`):
    every image at its own resolution through :class:`~forgeloc.inference.predictor.Predictor`
    (in ``predict``'s ``mode``), the metrics at that resolution. Single process (the sets these
    detectors are shown on are small; ``forgeloc predict`` shards large collections)."""
    from forgeloc.engine.evaluate import evaluate_photos
    from forgeloc.inference.predictor import load

    # Display-only cues (report panels) change no number: not run here. Fused cues are.
    predictor = load(checkpoint, device=device, threshold=threshold, cues=[])
    rows = {name: evaluate_photos(predictor, source, definition=definition, threshold=threshold, mode=mode)
            for name, source in datasets.items()}
    desc = predictor.describe()
    table_meta = {
        "checkpoint": str(checkpoint),
        "model": desc["model"],
        "weights_sha256": desc.get("weights_sha256"),
        "definition": definition,
        "threshold": predictor.threshold if threshold is None else threshold,
        "image_score": desc["image_score"],
        "fused": list(predictor.fuse),
        "input": "native resolution (whole photo)" if predictor.native else f"whole photo, mode {mode}",
        "metrics_resolution": "each photo's own resolution",
        "forgeloc_version": __version__,
        "datasets": datasets,
    }
    write_tables(rows, out_dir, "metrics", table_meta)
    console.print(metrics_table(rows, title=f"{desc['model']} ({definition} definition, native resolution)"))
    return rows
