"""Small device helpers shared by training, evaluation, inference and benchmarks."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch


def autocast_context(device: torch.device, amp: str):
    """bf16 autocast on CPU or GPU, fp16 on GPU only, or nothing."""
    if amp == "none":
        return nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and key == "image":
                value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out
