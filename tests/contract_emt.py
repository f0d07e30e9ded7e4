"""Models for the CLI tests: EMT limited to Cu/Au (fails like MLIPCalculator), a tiny real one."""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.emt import EMT

from mlip.export import save
from mlip.models import build_model


class ContractEMT(EMT):
    """EMT restricted to Cu/Au that fails like MLIPCalculator on an unknown element."""

    species = ("Cu", "Au")

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.species))
        if unknown:
            raise ValueError(
                f"element(s) {unknown} not in the model's species {list(self.species)}"
            )
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)


def export_untrained_cu_au_model(path: Path) -> Path:
    """A tiny, untrained float64 Cu/Au GMEP exported with mlip.export."""
    torch.manual_seed(0)
    model = build_model(species=[29, 79], cutoff=4.5, preset="small", dtype=torch.float64)
    model.set_statistics(avg_num_neighbors=20.0, reference_energies={29: -3.0, 79: -3.5})
    return save(model.eval(), path)
