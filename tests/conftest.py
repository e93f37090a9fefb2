"""Shared test fixtures.

Real data and parity fixtures live in the ``shared`` folder beside the repository (or wherever
``FORGELOC_SHARED`` points). Tests that need it are skipped, with the reason printed in the summary,
when it is absent; the product itself never reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FORGELOC_SHARED", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """Path inside the shared folder; skips the calling test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} not available (set FORGELOC_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_path()


@pytest.fixture(autouse=True)
def _torch_threads():
    # CI has 2 cores; keep every test on the same thread count as the parity fixtures were made with.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
