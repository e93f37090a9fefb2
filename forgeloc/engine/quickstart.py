"""``forgeloc quickstart``: from nothing to a trained, evaluated model and a report, on a CPU.

1. Synthesise a training set and a held-out test set from scikit-image's bundled photos. The two
   use **disjoint photos** (and different seeds), so the test measures generalisation to unseen
   scenes, not memorisation.
2. Train the small U-Net baseline for a few minutes.
3. Evaluate it on the held-out set, next to the trivial "everything is tampered" predictor
   (the floor any localiser must beat), and write a report folder: metrics tables, sample
   heatmaps and the run's checkpoint.

Nothing from outside the installed packages is read; nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from forgeloc.engine.config import Config
from forgeloc.models.base import ForgeryModel

log = logging.getLogger(__name__)

TRAIN_PHOTOS = (
    "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "motorcycle_left", "motorcycle_right", "camera", "brick", "grass",
)
TEST_PHOTOS = ("chelsea", "retina", "moon", "gravel")
# Copy-move is left out: a copied region carries the same camera traces as its surroundings, so
# finding it takes matching the copy to its source (what copy-move detectors do), not the local
# trace detection a small U-Net learns in minutes. `forgeloc synth` makes all three kinds.
MANIPULATION_TYPES = ("splicing", "removal")


class AllTamperedPredictor(ForgeryModel):
    """The trivial reference: every pixel tampered with probability 1."""

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = self.require_image(batch)
        return {"pred_mask": image.new_ones(image.shape[0], 1, *image.shape[-2:])}


def quickstart_config(out: Path, train_json: Path, test_json: Path, *, epochs: int, size: int, seed: int) -> Config:
    """The quickstart's training run (the same as ``configs/quickstart.yaml`` with these paths)."""
    return Config.model_validate(
        {
            "model": {"name": "unet_baseline", "kwargs": {}},
            "data": {
                "train": [{"path": str(train_json), "name": "synth_train"}],
                "test": {"synth_heldout": str(test_json)},
                "input_mode": "resize",
                "input_size": size,
                "augment": "light",
                "num_workers": 0,
            },
            "optim": {"name": "adamw", "lr": 2e-3, "min_lr": 1e-5, "weight_decay": 1e-4, "warmup_epochs": 1},
            "train": {
                # The held-out set is evaluated once, after the last epoch: selecting a checkpoint on
                # it and then reporting it would flatter the number.
                "epochs": epochs, "batch_size": 8, "seed": seed, "eval_every": epochs,
                "save_every": epochs, "best_metric": "pixel_f1", "output_dir": str(out / "run"), "log_every": 5,
            },
            "eval": {"definition": "forgeloc", "threshold": 0.5, "image_score": "max"},
        }
    )


#: What the quickstart's model is, in every output that shows the model (forgeloc.inference.predictor.model_label).
DEMO_LABEL = "demo model: trained for minutes on synthetic images, not for real cases"


def demo_card(f1: float, f1_trivial: float, n_test: int, epochs: int, metrics_file: Path) -> dict[str, Any]:
    """The model card of the quickstart's checkpoint: the demo-model label first, then the held-out
    number the quickstart measured, next to the trivial predictor's, and what kind of number it is."""
    shown = f"{f1:.2f}" if math.isfinite(f1) else "undefined"
    return {
        "title": "unet_baseline (forgeloc quickstart)",
        "headline": f"{DEMO_LABEL}; {epochs} epoch(s); pixel F1 {shown} on {n_test} held-out synthetic images "
                    f"(all-tampered predictor {f1_trivial:.2f}; synthetic: not a real-photo number)",
        "doc": str(metrics_file),
        "synthetic_validation": True,
    }


def write_card(checkpoints: list[Path | None], card: dict[str, Any]) -> None:
    """Put ``card`` into each checkpoint folder's ``config.json`` (the last and the best checkpoint)."""
    import json

    from forgeloc.io import CONFIG_FILE, atomic_write

    for folder in checkpoints:
        if folder is None or not (Path(folder) / CONFIG_FILE).is_file():
            continue
        path = Path(folder) / CONFIG_FILE
        config = {**json.loads(path.read_text()), "card": card}
        text = json.dumps(config, indent=2, default=str)  # as the trainer writes it
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text))


def _sample_figure(checkpoint: Path, test_json: Path, size: int, path: Path, n: int = 6) -> None:
    """A grid: photo, ground truth, heatmap for the first ``n`` tampered held-out images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forgeloc.data.datasets import ForgeryDataset, load_records
    from forgeloc.data.transforms import SampleTransform, denormalize
    from forgeloc.models.factory import load_model

    model, _ = load_model(checkpoint)
    records = [r for r in load_records(test_json) if r.mask is not None][:n]
    dataset = ForgeryDataset(records, SampleTransform(mode="resize", size=size))
    fig, axes = plt.subplots(len(records), 3, figsize=(7.5, 2.5 * len(records)), squeeze=False)
    for row, sample in enumerate(dataset[i] for i in range(len(records))):
        with torch.inference_mode():
            heat = model({"image": sample["image"][None]})["pred_mask"][0, 0].numpy()
        for col, (img, title) in enumerate(
            [(denormalize(sample["image"]), "photo"), (sample["mask"][0].numpy(), "ground truth"), (heat, "heatmap")]
        ):
            ax = axes[row, col]
            ax.imshow(img, cmap=None if col == 0 else ("gray" if col == 1 else "magma"), vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_quickstart(
    out: str | Path = "forgeloc-quickstart",
    *,
    n_train: int = 480,
    n_test: int = 96,
    size: int = 128,
    epochs: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the whole quickstart; return the held-out metrics of the model and the trivial predictor."""
    from forgeloc.data.synth import synthesize
    from forgeloc.engine.data import build_eval_loader
    from forgeloc.engine.distributed import DistInfo
    from forgeloc.engine.evaluate import evaluate
    from forgeloc.engine.logger import console, metrics_table, setup_logging
    from forgeloc.engine.tables import write_tables
    from forgeloc.engine.trainer import train

    setup_logging()
    out = Path(out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log.info("1/3 synthesising %d training and %d held-out images (%d px)", n_train, n_test, size)
    train_json = synthesize(out / "data" / "train", n_train, seed, photo_names=TRAIN_PHOTOS, size=size,
                            types=MANIPULATION_TYPES, overwrite=True, workers=2)
    test_json = synthesize(out / "data" / "test", n_test, seed + 1, photo_names=TEST_PHOTOS, size=size,
                           types=MANIPULATION_TYPES, overwrite=True, workers=2)
    log.info("   done in %.0f s", time.time() - t0)

    t1 = time.time()
    log.info("2/3 training the U-Net baseline for %d epochs on the CPU", epochs)
    cfg = quickstart_config(out, train_json, test_json, epochs=epochs, size=size, seed=seed)
    result = train(cfg, device="cpu")
    train_seconds = time.time() - t1

    log.info("3/3 evaluating on held-out photos and writing the report")
    checkpoint = result.last_checkpoint
    rows = {"unet_baseline": result.final_metrics["synth_heldout"]}
    info = DistInfo(device=torch.device("cpu"))
    trivial = evaluate(AllTamperedPredictor(), build_eval_loader(str(test_json), cfg, info, size=size),
                       info.device, definition="forgeloc")
    rows["all-tampered (trivial)"] = trivial
    meta = {
        "definition": "forgeloc (authentic images excluded from pixel F1/IoU/AUC)",
        "test set": f"{n_test} synthetic images from held-out photos {', '.join(TEST_PHOTOS)}",
        "manipulations": f"{', '.join(MANIPULATION_TYPES)} (+ authentic images)",
        "train set": f"{n_train} synthetic images from {', '.join(TRAIN_PHOTOS)}",
        "epochs": epochs,
        "input": f"resize {size}",
        "training time (s)": round(train_seconds, 1),
        "checkpoint": str(checkpoint),
        "command": f"forgeloc quickstart --out {out}",
    }
    write_tables(rows, report, "metrics", meta, first_column="model")
    f1, f1_trivial = rows["unet_baseline"]["pixel_f1"], trivial["pixel_f1"]
    # The trainer's card says "trained N epochs"; the quickstart's says first that it is a demo model.
    write_card([checkpoint, result.best_checkpoint], demo_card(f1, f1_trivial, n_test, epochs, report / "metrics.md"))
    _sample_figure(checkpoint, test_json, size, report / "samples.png")
    console.print(metrics_table(rows, title="quickstart: held-out synthetic images"))
    verdict = "above" if (math.isfinite(f1) and f1 > f1_trivial) else "NOT above"
    console.print(
        f"pixel F1 {f1:.3f} vs trivial {f1_trivial:.3f} ({verdict} the all-tampered predictor). "
        f"Report: {report}/metrics.md, {report}/samples.png; checkpoint: {checkpoint}. "
        f"Total {time.time() - t0:.0f} s."
    )
    return {"model": rows["unet_baseline"], "trivial": trivial, "checkpoint": str(checkpoint), "report": str(report),
            "train_seconds": train_seconds, "seed": seed}
