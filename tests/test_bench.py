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


def test_cli_times_a_whole_photo_in_each_mode_with_its_window_count(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)).save(photo, quality=90)
    rows = {}
    for mode in ("auto", "tile"):
        out = tmp_path / f"{mode}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "forgeloc", "bench", "--photo", str(photo), "-m", "unet_baseline_tiny",
             "--mode", mode, "--repeats", "2", "--threads", "1", "--isa", "avx2", "--json", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        (rows[mode],) = json.loads(out.read_text())
    assert rows["auto"]["mode"] == "resize" and rows["auto"]["windows"] == 1  # as the model was trained
    assert rows["tile"]["mode"] == "tile" and rows["tile"]["windows"] == 4  # 512² windows over 700×600
    for row in rows.values():
        assert row["size"] == "700x600" and row["median_s"] > 0 and row["first_s"] > 0
        assert row["cpu"]["isa_limits"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # the child ran capped
    bad = subprocess.run([sys.executable, "-m", "forgeloc", "bench", "--photo", str(tmp_path / "none.jpg")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "file not found" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
