"""Shared fixtures: seeding, locating ../shared/data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

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
