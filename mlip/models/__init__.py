"""Energy models and their registry.

``MODELS`` is a plain dict ``name -> builder``; every builder takes keyword arguments
``species``, ``cutoff``, ``preset``, ``dtype`` and model hyperparameters, and returns an energy
model (``forward(data: Dict[str, Tensor]) -> {"energy": (B,), "energies": (N,)}``, float64)
derived from :class:`mlip.models.base.AtomicEnergyModel`. ``gmep`` is the default; ``egnn``,
``hegnn``, ``transip`` and ``leftnet`` are the comparison architectures (see README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mlip.models.egnn import build_egnn
from mlip.models.gmep import GMEP, PRESETS, GMEPConfig, build_gmep
from mlip.models.hegnn import build_hegnn
from mlip.models.leftnet import build_leftnet
from mlip.models.transip import build_transip

__all__ = ["GMEP", "GMEPConfig", "MODELS", "PRESETS", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "gmep": build_gmep,
    "egnn": build_egnn,
    "hegnn": build_hegnn,
    "transip": build_transip,
    "leftnet": build_leftnet,
}


def build_model(
    name: str | None = None,
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> nn.Module:
    """Build an energy model by registry name (None means ``"gmep"``).

    ``build_model(**model.config)`` rebuilds the same architecture; load weights with
    ``load_state_dict``.
    """
    name = "gmep" if name is None else name
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return MODELS[name](species=species, cutoff=cutoff, preset=preset, dtype=dtype, **hyper)
