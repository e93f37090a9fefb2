"""`forgeloc bench`: every figure it reports is measured, in a fresh process per model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from forgeloc.engine.bench import count_flops, time_and_memory
from forgeloc.models.factory import create_model


def test_cli_writes_measured_figures_for_inference_and_training(tmp_path: Path) -> None:
    for mode in ([], ["--train"]):
        out = tmp_path / f"bench{len(mode)}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "forgeloc", "bench", "-m", "unet_baseline_tiny", "--size", "64", "--repeats", "3",
             "--warmup", "1", "--threads", "1", "--json", str(out), *mode],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        (result,) = json.loads(out.read_text())
        assert result["model"] == "unet_baseline_tiny" and result["size"] == 64
        assert result["mode"] == ("train" if mode else "inference")
        assert result["params"] == sum(p.numel() for p in create_model("unet_baseline_tiny").parameters())
        assert 0 < result["min_s"] <= result["median_s"] and result["first_call_s"] > 0
        assert result["images_per_s"] > 0 and result["peak_mem_mb"] >= result["weights_mem_mb"] > 0
        assert ("gflops" in result) != bool(mode)
        assert result["cpu_linear"] in ("onednn", "blas")


def test_activation_memory_sees_a_large_allocation() -> None:
    held = []

    def step() -> None:
        held.append(torch.ones(64 * 2**20 // 4))  # 64 MiB, touched

    result = time_and_memory(step, torch.device("cpu"), batch=1, warmup=1, repeats=1)
    assert result["activation_mem_mb"] >= 100  # two steps, both kept


def test_flops_scale_with_the_input_area() -> None:
    model = create_model("unet_baseline_tiny")
    assert abs(count_flops(model, 128) / count_flops(model, 64) - 4.0) < 0.05
