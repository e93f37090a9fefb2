"""Robustness of a whole-photo detector (the default detector, a training-free one) to what photos
go through after they are tampered with: JPEG recompression and downscaling.

``forgeloc robustness`` perturbs decoded images and feeds models at their input size; detectors that
read a photo's own JPEG stream at its own resolution must instead get the *file* a person would
get. Each level re-encodes every photo (JPEG at quality q; or downscale by s with area
interpolation, saved losslessly, the mask resized with nearest neighbour), then runs the detector
on the new file::

    python benchmarks/photo_robustness.py --data ../shared/data/casia2_samples -k default --out results/robust

Writes ``robustness.json`` and ``robustness.md`` (pixel F1 at 0.5, best-threshold F1, pixel AUC per
level, next to the trivial all-tampered F1).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from forgeloc.data.io import read_image, read_mask
from forgeloc.metrics.functional import best_threshold_f1, roc_auc

LEVELS = [("clean", None)] + [(f"jpeg q{q}", ("jpeg", q)) for q in (95, 90, 80, 70, 60, 50)] \
    + [(f"resize x{s}", ("resize", s)) for s in (0.9, 0.75, 0.5)]


def perturb(path: Path, mask: np.ndarray, how: tuple[str, float] | None) -> tuple[bytes, np.ndarray]:
    data = path.read_bytes()
    if how is None:
        return data, mask
    kind, value = how
    rgb = read_image(data, name=path.name)
    buf = io.BytesIO()
    if kind == "jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=int(value))
        return buf.getvalue(), mask
    h, w = rgb.shape[:2]
    size = (max(8, round(w * value)), max(8, round(h * value)))
    Image.fromarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)).save(buf, "PNG")
    return buf.getvalue(), cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


def evaluate_level(predictor, pairs: list[tuple[Path, Path]], how) -> dict[str, float]:
    f1, best, auc, trivial = [], [], [], []
    for image, mask_path in pairs:
        data, mask = perturb(image, read_mask(mask_path), how)
        heat = predictor.predict(data, name=image.name).heatmap
        truth = torch.from_numpy(mask.ravel().astype(bool))
        score = torch.from_numpy(heat.ravel())
        pred = heat.ravel() > predictor.threshold
        tp = np.count_nonzero(pred & mask.ravel().astype(bool))
        f1.append(2 * tp / max(1, np.count_nonzero(pred) + np.count_nonzero(mask)))
        best.append(best_threshold_f1(score, truth))
        auc.append(roc_auc(score, truth))
        p = mask.mean()
        trivial.append(2 * p / (1 + p))
    return {"pixel_f1": float(np.mean(f1)), "pixel_f1_best_thr": float(np.mean(best)),
            "pixel_auc": float(np.nanmean(auc)), "trivial_f1": float(np.mean(trivial))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a folder with images/ and masks/")
    parser.add_argument("-k", "--detector", default="default")
    parser.add_argument("--out", type=Path, default=Path("results/photo_robustness"))
    args = parser.parse_args()

    import forgeloc

    predictor = forgeloc.load(None if args.detector == "default" else args.detector, cues=[])
    pairs = [(img, args.data / "masks" / f"{img.stem}.png") for img in sorted((args.data / "images").iterdir())]
    rows = {name: evaluate_level(predictor, pairs, how) for name, how in LEVELS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(rows, indent=1))
    lines = ["| level | pixel F1 | best-threshold F1 | pixel AUC | trivial F1 |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['pixel_f1']:.3f} | {v['pixel_f1_best_thr']:.3f} | {v['pixel_auc']:.3f} | "
              f"{v['trivial_f1']:.3f} |" for k, v in rows.items()]
    (args.out / "robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
