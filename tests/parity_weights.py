# Copied verbatim from shared/parity/weights.py (the fixture makers' seeding rule), as its README asks.
"""Deterministic, name-seeded weights for parity fixtures.

A parity fixture does not ship the full weights of a large model. Instead both the
reference implementation and ours fill every tensor of the state dict with values that
depend only on the tensor's *name* and *shape*, so either side can rebuild them exactly:

    from weights import parity_state_dict
    sd = parity_state_dict({name: (shape, dtype) for name, t in model.state_dict().items()})
    model.load_state_dict(sd, strict=True)

Rules (per tensor, seeded by crc32 of its name):
  * floating tensors with >= 2 dims: randn(shape) / sqrt(fan_in), fan_in = prod(shape[1:])
  * names ending in 'running_var': 1 + 0.1 * |randn|
  * other 1-d floating tensors (norm weights named '*.weight' get 1 + 0.1 * randn,
    everything else 0.1 * randn)
  * integer tensors (e.g. num_batches_tracked, index buffers) are left as the model has them
    and are skipped here: callers keep their own value.
"""
from __future__ import annotations

import math
import zlib

import torch


def parity_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    shape = tuple(int(s) for s in shape)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if name.endswith("running_var"):
        x = 1.0 + 0.1 * x.abs()
    elif len(shape) >= 2:
        fan_in = max(1, math.prod(shape[1:]))
        x = x / math.sqrt(fan_in)
    elif name.endswith(".weight") or name.endswith("gamma") or name.endswith("scale"):
        x = 1.0 + 0.1 * x
    else:
        x = 0.1 * x
    return x.to(dtype)


def parity_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a state dict with the same keys as `reference`, floating tensors replaced."""
    out = {}
    for name, t in reference.items():
        if torch.is_floating_point(t):
            out[name] = parity_tensor(name, tuple(t.shape), t.dtype)
        else:
            out[name] = t.clone()
    return out
