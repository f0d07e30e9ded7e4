"""A tiny charge/spin model with two heads, and water in a given state, for several tests."""

from __future__ import annotations

import torch
from ase import Atoms
from ase.build import molecule

from mlip.models import build_model

SPECIES = [1, 6, 7, 8]
HEADS = ["omol", "mptrj"]


def charged_model(**extra) -> torch.nn.Module:
    """Untrained float64 model with ``charge_spin=True`` and heads :data:`HEADS`, in eval mode.

    The heads differ (the ``mptrj`` head has an energy shift), so a wrong head is visible.
    """
    torch.manual_seed(3)
    model = build_model(
        species=SPECIES,
        cutoff=4.0,
        preset="small",
        dtype=torch.float64,
        channels=8,
        mixer_channels=8,
        num_radial=6,
        readout_hidden=4,
        charge_spin=True,
        heads=HEADS,
        **extra,
    )
    model.set_statistics(avg_num_neighbors=3.0, reference_energies={1: -13.6, 8: -2040.0})
    model.set_statistics(shift=0.3, head="mptrj")
    return model.eval()


def water(charge: int | None = None, spin: int | None = None) -> Atoms:
    """An H2O molecule with ``info["charge"]``/``["spin"]`` set when given."""
    atoms = molecule("H2O")
    if charge is not None:
        atoms.info["charge"] = charge
    if spin is not None:
        atoms.info["spin"] = spin
    return atoms
