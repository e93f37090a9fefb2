"""``forgeloc bench``: parameters, FLOPs, latency, throughput and peak memory of registered models.

Every model is measured in a fresh subprocess, so that memory figures are not polluted by
another model and the "first call" latency is what a person waiting for one prediction sees.

Memory:
* CPU: resident set size. ``weights_rss`` is the RSS after the model is built and loaded (and
  freed heap pages are handed back to the OS);
  ``peak_rss`` is the high-water mark while running (reset with ``/proc/self/clear_refs`` after
  loading); ``activation_rss = peak_rss − weights_rss`` is what inference itself costs.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  held by the weights.

FLOPs are fvcore's count (one fused multiply-add = one FLOP, as the papers' ``test_flops.py``).

With a photo (``forgeloc bench --photo PATH``), :func:`measure_photo` times what a practitioner
waits for instead: the whole photo through :class:`~forgeloc.inference.predictor.Predictor` (read,
detect, heatmap), in the mode forgeloc chooses or the one asked for, with the window count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Figures measured on the authors' reference implementations (shared spec §8 / §11 / §7); the
# papers' own tables had not been transcribed when these were recorded.
REFERENCE = {
    "sparsevit": {"params": 50_345_921, "gflops": 46.17, "source": "IMDLBenCo SparseViT, fvcore at 512"},
    "mesorch": {"params": 85_753_944, "gflops": 121.5, "source": "official Mesorch, fvcore at 512"},
    "mesorch_p": {"params": 62_235_365, "gflops": 64.8, "source": "official Mesorch-P, fvcore at 512"},
    "ncl": {"params": 59_339_426, "gflops": 88.8, "source": "jfzhang95 DeepLabV3+ R101 (NCL base), fvcore at 512"},
}


class ImageToMask(nn.Module):
    """Tensor-in, tensor-out view of a forgeloc model (what tracers and compilers want)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model({"image": image})["pred_mask"]


def _sdpa_flops(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for fused attention: q·kᵀ and attn·v, one multiply-add each = one FLOP."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    n, d_qk = q[-2], q[-1]
    m, d_v = k[-2], v[-1]
    return batch * n * m * (d_qk + d_v)


#: The instruction-set flags that decide which CPU kernels run (recorded with every measurement).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


# Environment variables that make PyTorch's kernels (ATen), oneDNN and MKL use no instruction set
# above a limit, as on an older CPU: how an AVX2-only machine is emulated on an AVX-512 one.
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_limit_environment(isa: str) -> dict[str, str]:
    """The environment that caps a fresh process's CPU kernels at ``isa`` (``"avx2"``): PyTorch's
    own kernels, oneDNN's and MKL's. Read by each library when it starts, so it must be set before
    the process imports torch (``forgeloc bench --isa`` and the benchmark scripts re-run themselves)."""
    if isa != "avx2":
        raise ValueError(f"only 'avx2' can be emulated, got {isa!r}")
    return dict(zip(ISA_LIMIT_VARIABLES, ("avx2", "AVX2", "AVX2"), strict=True))  # ATen's, oneDNN's, MKL's spelling


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the :data:`CPU_FLAGS` it has (Linux ``/proc/cpuinfo``; elsewhere
    only the machine type), and the instruction-set limits set in the environment, if any."""
    import platform
    from pathlib import Path

    info: dict[str, Any] = {"machine": platform.machine()}
    limits = {name: os.environ[name] for name in ISA_LIMIT_VARIABLES if os.environ.get(name)}
    if limits:  # the kernels run as on a CPU without the instructions above these limits
        info["isa_limits"] = limits
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        if key.strip() == "flags":
            flags = set(value.split())
            info["flags"] = " ".join(f for f in CPU_FLAGS if f in flags)
            break
    return info


def count_flops(model: nn.Module, size: int, batch: int = 1) -> float:
    """fvcore FLOPs of one forward at ``batch × 3 × size × size`` (fused multiply-add = 1)."""
    from fvcore.nn import FlopCountAnalysis

    wrapped = ImageToMask(model).eval()
    x = torch.randn(batch, 3, size, size)
    analysis = FlopCountAnalysis(wrapped, (x,)).set_op_handle(
        "aten::scaled_dot_product_attention", _sdpa_flops
    )
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        return float(analysis.total())


def _rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that memory freed after loading the
    weights (a temporary state dict, say) is not silently reused by the activations."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def time_and_memory(
    step: Callable[[], None], device: torch.device, *, batch: int, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Time ``step`` (first call, then ``repeats`` calls after ``warmup``) and its peak memory.

    Call it right after the model is built and loaded: the memory already held then counts as
    the weights, and only what ``step`` adds above it counts as activations.
    """
    result: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        weights_mem = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        _release_free_heap()
        weights_mem = _rss_bytes()
        _reset_peak_rss()
    t0 = time.perf_counter()
    step()
    result["first_call_s"] = round(time.perf_counter() - t0, 4)
    for _ in range(max(warmup - 1, 0)):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(), "cuda max_allocated"
    else:
        peak, kind = max(_rss_bytes("VmHWM"), weights_mem), "process RSS"
    result.update(weights_mem_mb=round(weights_mem / 2**20, 1), peak_mem_mb=round(peak / 2**20, 1),
                  activation_mem_mb=round((peak - weights_mem) / 2**20, 1), memory_kind=kind)
    result.update(
        median_s=round(statistics.median(times), 4), min_s=round(min(times), 4),
        images_per_s=round(batch / statistics.median(times), 3), repeats=repeats, warmup=warmup,
    )
    return result


def measure(
    name: str,
    *,
    device: str = "cpu",
    batch: int = 1,
    size: int | None = None,
    train: bool = False,
    repeats: int = 10,
    warmup: int = 3,
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    flops: bool = True,
    threads: int | None = None,
    kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure one model in this process (see :func:`run_benchmarks` for the subprocess driver)."""
    from forgeloc.engine.runtime import autocast_context
    from forgeloc.models.factory import create_model

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    model = create_model(name, **(kwargs or {}))
    size = size or getattr(model, "input_size", None) or 512
    n_params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {
        "model": name, "device": str(dev), "batch": batch, "size": size, "mode": "train" if train else "inference",
        "amp": amp, "channels_last": channels_last, "compile": compile, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "params": n_params, "cpu": cpu_info(),
    }
    if dev.type == "cpu":  # where the float32 Linear GEMMs ran (forgeloc.models.fast_cpu.linear)
        from forgeloc.models.fast_cpu import cpu_linear_backend

        result["cpu_linear"] = cpu_linear_backend()
    if flops and not train:
        result["gflops"] = round(count_flops(model, size) / 1e9, 3)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    image = torch.randn(batch, 3, size, size, device=dev)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, device=dev) > 0.8).float()
    batch_dict: dict[str, Any] = {"image": image, "mask": mask} if train else {"image": image}
    runner = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None
    model.train(train)
    if not train and dev.type == "cpu" and amp == "none":  # what Predictor runs (after the FLOP count)
        from forgeloc.models.fusion import fuse_for_inference

        fuse_for_inference(model)

    def step() -> None:
        if train:
            with autocast_context(dev, amp):
                out = runner(batch_dict)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast_context(dev, amp):
                runner(batch_dict)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    result.update(time_and_memory(step, dev, batch=batch, warmup=warmup, repeats=repeats))
    if name in REFERENCE:
        result["reference"] = REFERENCE[name]
    return result


def _photo_predictor(name: str, device: str) -> Any:
    """A registered model (random weights: the time does not depend on them) or anything
    :func:`forgeloc.load` takes (``"default"``: the default detector, a checkpoint, a detector name)."""
    from forgeloc.inference.predictor import Predictor, load
    from forgeloc.models.factory import create_model
    from forgeloc.models.registry import list_models

    if name in list_models():
        return Predictor(create_model(name), device=device)
    return load(None if name == "default" else name, device=device)


def measure_photo(
    name: str, *, photo: str, mode: str = "auto", device: str = "cpu", repeats: int = 3,
    threads: int | None = None, **ignored: Any,
) -> dict[str, Any]:
    """End-to-end latency of one photo (read, detect, heatmap; the detector's cues included):
    the first prediction, then the median of ``repeats``; with the mode used and its window count."""
    from forgeloc.inference.predictor import image_size

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    predictor = _photo_predictor(name, device)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    result = predictor.predict(photo, mode=mode)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = predictor.predict(photo, mode=mode)
        times.append(time.perf_counter() - start)
    height, width = image_size(photo)
    return {
        "model": name, "photo": os.path.basename(photo), "size": f"{width}x{height}",
        "megapixels": round(width * height / 1e6, 1), "mode": result.mode, "windows": result.windows,
        "streams": list(result.streams), "load_s": round(load_s, 3), "first_s": round(first_s, 3),
        "median_s": round(statistics.median(times), 3), "repeats": repeats, "device": device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_info(),
    }


def photo_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | photo | megapixels | mode | windows | first s | median s | load s |", "|" + "---|" * 8]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |" + " |" * 6)
            continue
        lines.append(f"| {r['model']} | {r['photo']} | {r['megapixels']} | {r['mode']} | {r['windows']} | "
                     f"{r['first_s']} | {r['median_s']} | {r['load_s']} |")
    return "\n".join(lines) + "\n"


def run_benchmarks(models: list[str], isa: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """Measure each model in its own fresh Python process; return the result dicts. With ``isa``
    (``"avx2"``) the processes run as on a CPU without AVX-512 (:func:`isa_limit_environment`)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(isa_limit_environment(isa) if isa else {})}
    results = []
    for name in models:
        payload = json.dumps({"name": name, **options})
        cmd = [sys.executable, "-m", "forgeloc.engine.bench", payload]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            results.append({"model": name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def results_markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| model | mode | device | batch×size | params | GFLOPs (ref) | first call s | median s | img/s "
        "| activation MB |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |" + " |" * 8)
            continue
        ref = r.get("reference", {})
        gflops = f"{r['gflops']:.2f}" if "gflops" in r else "-"
        if ref:
            gflops += f" ({ref['gflops']})"
        lines.append(
            f"| {r['model']} | {r['mode']}{' ' + r['amp'] if r['amp'] != 'none' else ''} | {r['device']} | "
            f"{r['batch']}×{r['size']} | {r['params']:,} | {gflops} | {r['first_call_s']} | {r['median_s']} | "
            f"{r['images_per_s']} | {r['activation_mem_mb']} |"
        )
    return "\n".join(lines) + "\n"


def _worker(payload: str) -> None:
    options = json.loads(payload)
    name = options.pop("name")
    out = measure_photo(name, **options) if options.get("photo") else measure(name, **options)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    _worker(sys.argv[1])
