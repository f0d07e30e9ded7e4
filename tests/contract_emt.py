"""A stand-in model for CLI tests: ASE's EMT limited to Cu/Au, failing like MLIPCalculator."""

from __future__ import annotations

from ase.calculators.emt import EMT


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
