"""onnxruntime against PyTorch on the CPU, for the full-size models, side by side in one run.

For each model: export it (``forgeloc.deploy.onnx.export_onnx``, which refuses a graph that
disagrees with PyTorch by more than 1e-4), then time the same seeded input through PyTorch
(``torch.inference_mode``, forgeloc's default CPU paths) and through onnxruntime, alternating,
at batch 1 and 8, with the same thread count. Agreement is measured again on the timed input.

::

    python benchmarks/onnx_vs_torch.py --threads 2 [--models sparsevit mesorch mesorch_p ncl default]
        [--repeats 5] [--json out.json]

The paper models run with the parity fixtures' deterministic fan-in-scaled weights
(``tests/parity_weights.py``): PyTorch's default random init makes a 101-layer ResNet's logits reach
1e5, where no two fp32 implementations agree to 1e-4, while trained and parity weights keep them in
range. ``default`` is the shipped detector's network on the coefficients of a 12 MP photo
in 2048-pixel windows (its graph takes DCT blocks, see forgeloc/deploy/onnx.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from forgeloc.engine.bench import cpu_info


def _predictor(name: str):
    import forgeloc
    from forgeloc.inference.predictor import Predictor

    if name == "default":
        return forgeloc.load()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from parity_weights import parity_state_dict

    model = forgeloc.create_model(name)
    model.load_state_dict(parity_state_dict(model.state_dict()))
    return Predictor(model)


def _sample(predictor, batch: int) -> tuple[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    if getattr(predictor.model, "native_resolution", False):
        return "coef", torch.round(torch.randn(batch, 64, 256, 256, generator=gen) * 4) * 3  # a 2048² window
    size = predictor.input_size
    return "image", torch.randn(batch, 3, size, size, generator=gen)


def _alternate(run_torch, run_ort, repeats: int) -> tuple[float, float]:
    run_torch(), run_ort()  # warm-up
    t_times, o_times = [], []
    for _ in range(repeats):
        for fn, times in ((run_torch, t_times), (run_ort, o_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_times), statistics.median(o_times)


def bench_model(name: str, threads: int, batches: list[int], repeats: int) -> dict:
    from forgeloc.deploy import onnx as fonnx

    predictor = _predictor(name)
    model = predictor.model
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fonnx.export_onnx(predictor, tmp)
        export_s = time.perf_counter() - start
        sess = fonnx.session(Path(tmp) / fonnx.ONNX_FILE, threads)
    row = {"model": name, "export_s": round(export_s, 1), "export_check": result.check["max_abs_diff"], "runs": []}
    for batch in batches:
        key, x = _sample(predictor, batch)
        feed = {key: x.numpy()}

        def run_torch(x=x, key=key):
            with torch.inference_mode():
                return model.block_logits(x) if key == "coef" else model({"image": x})["pred_mask"]

        def run_ort(feed=feed):
            return sess.run(None, feed)[0]

        diff = float(np.abs(run_ort() - run_torch().numpy()).max())
        torch_s, ort_s = _alternate(run_torch, run_ort, repeats)
        row["runs"].append({"batch": batch, "input": list(x.shape), "torch_s": round(torch_s, 3),
                            "onnxruntime_s": round(ort_s, 3), "speedup": round(torch_s / ort_s, 2),
                            "max_abs_diff": diff})
        print(json.dumps({"model": name, **row["runs"][-1]}), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sparsevit", "mesorch", "mesorch_p", "ncl", "default"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    header = {"cpu": cpu_info(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "threads": args.threads, "python": sys.version.split()[0]}
    print(json.dumps(header), flush=True)
    rows = [bench_model(name, args.threads, args.batches, args.repeats) for name in args.models]
    if args.json:
        args.json.write_text(json.dumps({**header, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
