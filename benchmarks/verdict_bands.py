"""How real photos fall into a detector's verdict bands: no evidence found / inconclusive / likely manipulated.

Every ``images/`` photo of the sets under ``--data`` counts as tampered, every ``authentic/`` photo as
untouched; each is run through ``forgeloc.load(DETECTOR).predict`` at its own resolution::

    python benchmarks/verdict_bands.py --data ../shared/data -k default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import forgeloc

VERDICTS = ("no evidence found", "inconclusive", "likely manipulated")


def bands_table(predictor: forgeloc.Predictor, files: list[Path]) -> dict[str, object]:
    predictions = [predictor.predict(f) for f in files]
    scores = np.array([p.score for p in predictions])
    verdicts = [p.verdict for p in predictions]
    return {"n": len(files), "mean": round(float(scores.mean()), 3), "median": round(float(np.median(scores)), 3),
            **{v: verdicts.count(v) for v in VERDICTS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("-k", "--detector", default="default")
    args = parser.parse_args()
    predictor = forgeloc.load(None if args.detector == "default" else args.detector)
    if predictor.calibration is None:
        parser.error(f"{args.detector} has no calibration: it gives no verdict in words")
    groups = {"tampered": sorted(args.data.glob("*/images/*")), "untouched": sorted(args.data.glob("*/authentic/*"))}
    print(json.dumps({name: bands_table(predictor, files) for name, files in groups.items() if files}, indent=1))


if __name__ == "__main__":
    main()
