"""Shared fixtures: seeding, locating ../shared/data."""

from __future__ import annotations

import os

# Tiny 3x3 linear algebra (ASE cell filters) slows down 20-200x with multithreaded OpenBLAS on a
# loaded 2-core machine; torch keeps its own thread pool. Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when it is absent (e.g. outside CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DFT data not found at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA
