"""Conformance suite (mlip.testing) for the comparison architectures: EGNN, HEGNN, TransIP,
LEFTNet (tiny configurations)."""

from __future__ import annotations

import pytest
import torch

from mlip.testing import EnergyModelTests


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TestEGNN(EnergyModelTests):
    model_name = "egnn"
    model_kwargs = {"channels": 8, "num_radial": 6, "readout_hidden": 4}


class TestHEGNN(EnergyModelTests):
    """Degrees up to 3, two layers so the steerable update is exercised."""

    model_name = "hegnn"
    model_kwargs = {
        "num_layers": 2,
        "channels": 8,
        "lmax": 3,
        "vector_channels": 2,
        "num_radial": 6,
        "readout_hidden": 4,
    }


_TINY_TRANSIP = {
    "num_layers": 2,
    "channels": 8,
    "num_heads": 2,
    "ffn_hidden": 8,
    "num_radial": 6,
    "readout_hidden": 4,
    "transform_hidden": 8,
}


class TestTransIPEmbedding(EnergyModelTests):
    """Not equivariant by construction: errors are printed (``pytest -s``), only finiteness is
    asserted."""

    model_name = "transip"
    model_kwargs = {"arm": "embedding", **_TINY_TRANSIP}
    exact = False


class TestTransIPAugmentation(EnergyModelTests):
    model_name = "transip"
    model_kwargs = {"arm": "augmentation", **_TINY_TRANSIP}
    exact = False
