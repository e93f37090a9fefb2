"""Evaluate detectors on the small real datasets (COVERAGE, NoSo, CASIA v2 samples, single samples).

The datasets are not part of forgeloc (research licences); point ``--data`` at a folder laid out
like the project's shared data: one folder per set with ``images/``, ``masks/`` (255 = tampered),
optionally ``authentic/`` and the copy-move sets' source masks (``masks_source/`` for COVERAGE,
``masks_source_and_target/`` for NoSo). Each detector goes through ``forgeloc test``'s photo path
(every photo at its own resolution, as ``forgeloc predict`` sees it)::

    python benchmarks/real_sets.py --data ../shared/data -k default -k copymove -k forgeloc-quickstart/run \\
        --out results/real_sets

Writes ``<out>/<detector>/metrics.{md,csv,json}`` and ``<out>/summary.md``: pixel F1 at 0.5 and
at the best threshold, IoU, pixel AUC, image AUC, and the mean flagged share on authentic
photos, next to the trivial "everything is tampered" predictor.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from forgeloc.data.io import read_mask

#: Set name → (folder, mask folder). ``*_st`` variants score the copy-move source and target.
SETS = {
    "casia2_samples": ("casia2_samples", "masks"),
    "coverage": ("coverage", "masks"),
    "coverage_st": ("coverage", "masks+masks_source"),
    "noso_copymove": ("noso_copymove", "masks"),
    "noso_copymove_st": ("noso_copymove", "masks_source_and_target"),
    "single_samples": ("single_samples", "masks"),
}
COLUMNS = ("pixel_f1", "pixel_f1_best_thr", "pixel_iou", "pixel_auc", "image_auc", "authentic_flagged")


def _mask_for(folder: Path, mask_spec: str, stem: str, work: Path) -> Path:
    parts = [folder / m / f"{stem}.png" for m in mask_spec.split("+")]
    if len(parts) == 1:
        return parts[0]
    union = np.maximum.reduce([read_mask(p) for p in parts]) * 255
    out = work / folder.name / f"{stem}_union.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    import cv2

    cv2.imwrite(str(out), union.astype(np.uint8))
    return out


def dataset_lists(data: Path, work: Path) -> dict[str, str]:
    """Write one IMDLBenCo-style JSON list per set (absolute paths); return name → list path."""
    lists = {}
    for name, (folder_name, mask_spec) in SETS.items():
        folder = data.absolute() / folder_name  # a list's relative entries are read against its own folder
        if not folder.is_dir():
            continue
        pairs = [[str(img), str(_mask_for(folder, mask_spec, img.stem, work))]
                 for img in sorted((folder / "images").iterdir())]
        if (folder / "authentic").is_dir():
            pairs += [[str(img), "Negative"] for img in sorted((folder / "authentic").iterdir())]
        path = work / f"{name}.json"
        path.write_text(json.dumps(pairs, indent=0))
        lists[name] = str(path)
    return lists


def trivial_row(list_path: str) -> dict[str, float]:
    """The all-tampered predictor: F1 = 2p/(1+p) per tampered image, IoU = p, AUC 0.5, flags 100 %."""
    pairs = json.loads(Path(list_path).read_text())
    fracs = [float(read_mask(m).mean()) for _, m in pairs if m != "Negative"]
    has_authentic = any(m == "Negative" for _, m in pairs)
    return {
        "pixel_f1": float(np.mean([2 * p / (1 + p) for p in fracs])),
        "pixel_f1_best_thr": float(np.mean([2 * p / (1 + p) for p in fracs])),
        "pixel_iou": float(np.mean(fracs)),
        "pixel_auc": 0.5,
        "image_auc": 0.5 if has_authentic else math.nan,
        "authentic_flagged": 1.0 if has_authentic else math.nan,
    }


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summary_markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    sets = list(next(iter(results.values())))
    for name in sets:
        lines += [f"**{name}**", "", "| detector | " + " | ".join(COLUMNS) + " |",
                  "|---|" + "---|" * len(COLUMNS)]
        for det, rows in results.items():
            row = rows[name]
            lines.append(f"| {det} | " + " | ".join(_fmt(row.get(c, math.nan)) for c in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("-k", "--detector", action="append", required=True,
                        help="default, a training-free detector name, or a checkpoint folder")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of " + ", ".join(SETS))
    parser.add_argument("--out", type=Path, default=Path("results/real_sets"))
    parser.add_argument("--mode", default="auto", choices=("auto", "resize", "tile"),
                        help="predict's mode for models with a fixed input size (the paper models)")
    args = parser.parse_args()

    from forgeloc.engine.testing import run_photo_test

    work = args.out / "lists"
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.sets.split(","))
    lists = {k: v for k, v in dataset_lists(args.data, work).items() if k in wanted}
    results = {"trivial (all tampered)": {name: trivial_row(path) for name, path in lists.items()}}
    for det in args.detector:
        label = Path(det).name if Path(det).exists() else det
        results[label] = run_photo_test(det, lists, args.out / label.replace("/", "_"), mode=args.mode)
    text = summary_markdown(results)
    (args.out / "summary.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
