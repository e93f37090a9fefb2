"""End-to-end speed of a detector on whole photos, as a practitioner waits for it.

Two numbers per photo:

* **in process**: ``forgeloc.load(...)`` once, then ``predict(path)`` (read, detect, heatmap),
  median of ``--repeat`` runs after one warm-up;
* **fresh process**: ``forgeloc predict [--detector D] PHOTO --out DIR`` from start to the written
  result, as a person runs it on one photo (median of ``--repeat`` runs).

::

    python benchmarks/photo_speed.py --threads 2 [--photo PATH ...] [--detector default]
    python benchmarks/photo_speed.py --threads 2 --photo PATH --model sparsevit --mode tile --no-fresh

``--model NAME`` times a paper model, which forgeloc ships without weights: it runs with random
weights (as ``forgeloc bench --photo``, whose measurement this script uses); the time does not
depend on them.
``--mode`` is ``predict``'s (``auto``: what forgeloc chooses; ``tile``: 512² windows, 50 % overlap;
``resize``: one 512² pass), and the JSON line gives the window count.

Without ``--photo`` a 12-megapixel JPEG (4000×3000, quality 90) is made from scikit-image's
bundled photo, upscaled (so its content is smooth; the timing does not depend on content much).
Prints one JSON line per photo with the CPU model and flags, torch version and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_12mp_jpeg(folder: Path) -> Path:
    import cv2
    import numpy as np
    from PIL import Image
    from skimage import data

    img = cv2.resize(np.asarray(data.astronaut()), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    path = folder / "photo_12mp.jpg"
    Image.fromarray(img).save(path, "JPEG", quality=90)
    return path


def in_process(photo: Path, detector: str, repeat: int, model: str | None = None, mode: str = "auto") -> dict:
    """``forgeloc bench --photo``'s measurement (:func:`forgeloc.engine.bench.measure_photo`), in
    this script's keys."""
    from forgeloc.engine.bench import measure_photo

    row = measure_photo(model or detector, photo=str(photo), mode=mode, repeats=repeat)
    return {"load_s": row["load_s"], "predict_s": row["median_s"], "mode": row["mode"], "windows": row["windows"],
            "streams": ",".join(row["streams"])}


def fresh_process(photo: Path, detector: str, repeat: int, threads: int) -> float:
    times = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "forgeloc", "predict", str(photo), "--out", out]
            if detector != "default":
                cmd[4:4] = ["--detector", detector]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", action="append", type=Path)
    parser.add_argument("--detector", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process timing")
    parser.add_argument("--model", help="a paper model with deterministic weights, instead of --detector")
    parser.add_argument("--mode", default="auto", choices=("auto", "resize", "tile"))
    args = parser.parse_args()

    import torch

    from forgeloc.engine.bench import cpu_info

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        photos = args.photo or [make_12mp_jpeg(Path(tmp))]
        for photo in photos:
            from PIL import Image

            with Image.open(photo) as im:
                size = im.size
            row = {"photo": photo.name, "size": f"{size[0]}x{size[1]}", "megapixels": round(size[0] * size[1] / 1e6, 1),
                   "detector": args.model or args.detector, "threads": args.threads, "torch": torch.__version__,
                   "cpu": cpu_info(),
                   **in_process(photo, args.detector, args.repeat, args.model, args.mode)}
            if not args.no_fresh and args.model is None:
                row["fresh_process_s"] = fresh_process(photo, args.detector, args.repeat, args.threads)
            print(json.dumps(row))


if __name__ == "__main__":
    main()
