"""ASE calculator: agreement with the model, finite differences, NVE, relaxation, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.stress import full_3x3_to_voigt_6_stress

from calculators import MLIPCalculator
from mlip import AtomicGraph, keys
from mlip.derivatives import ForceStress
from mlip.export import ModelFileError, save
from mlip.models import build_model
from mlip.neighbors import neighbor_list

SPECIES = [1, 6, 8, 29, 79]
CUTOFF = 4.5


def _model(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model(species=SPECIES, cutoff=CUTOFF, preset="small", dtype=dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    model.set_statistics(avg_num_neighbors=20.0, reference_energies={29: -3.0, 79: -3.5})
    return model.eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(_model(), tmp_path_factory.mktemp("model") / "model.pt")


def _cu_au(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    atoms.numbers[[1, 6]] = 79
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_results_equal_the_model(model_file: Path) -> None:
    atoms = _cu_au()
    atoms.calc = MLIPCalculator(model_file)
    eager = ForceStress(_model(), compute_forces=True, compute_stress=True)
    expected = eager(AtomicGraph.from_atoms(atoms, CUTOFF).as_dict())
    assert atoms.get_potential_energy() == pytest.approx(float(expected[keys.ENERGY]), rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), expected[keys.FORCES].detach(), atol=1e-10)
    np.testing.assert_allclose(
        atoms.get_stress(),
        full_3x3_to_voigt_6_stress(expected[keys.STRESS][0].detach().numpy()),
        atol=1e-10,
    )
    energies = atoms.get_potential_energies()
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-10)


def test_in_memory_model_is_left_trainable() -> None:
    """The calculator freezes its own copy (inference saves less), never the caller's model."""
    model = _model().train()
    atoms = _cu_au()
    atoms.calc = MLIPCalculator(model)
    atoms.get_forces()
    assert model.training
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert not any(parameter.requires_grad for parameter in atoms.calc.model.parameters())


def test_forces_and_stress_match_finite_differences(model_file: Path) -> None:
    atoms = _cu_au(seed=3)
    atoms.calc = MLIPCalculator(model_file, skin=0.0)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    numerical_forces = calculate_numerical_forces(atoms, eps=1e-4)
    numerical_stress = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(forces - numerical_forces).max() <= 1e-6 * max(1.0, np.abs(forces).max())
    assert np.abs(stress - numerical_stress).max() <= 1e-6 * max(1e-2, np.abs(stress).max())


def test_molecule_has_no_stress_and_unknown_element_is_named(model_file: Path) -> None:
    calc = MLIPCalculator(model_file)
    water = molecule("H2O")
    water.calc = calc
    assert np.isfinite(water.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        water.get_stress()
    iron = bulk("Fe")
    iron.calc = calc
    with pytest.raises(ValueError, match=r"Fe \(Z=26\).*H, C, O, Cu, Au"):
        iron.get_potential_energy()


def test_corrupt_or_foreign_file_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="bad.pt: not an mlip model file"):
        MLIPCalculator(bad)


def test_calculate_batch_equals_single_calls(model_file: Path) -> None:
    calc = MLIPCalculator(model_file)
    structures = [_cu_au(seed) for seed in range(3)] + [molecule("CH4"), _cu_au(7)[:5]]
    structures[-1].pbc = (True, True, False)
    batched = calc.calculate_batch(structures, batch_size=2)
    for atoms, result in zip(structures, batched):
        single = MLIPCalculator(model_file)
        atoms.calc = single
        assert result["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-10)
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), atol=1e-10)
        if all(atoms.pbc):
            np.testing.assert_allclose(result["stress"], atoms.get_stress(), atol=1e-10)
        else:
            assert "stress" not in result


def _edge_set(edge_index: torch.Tensor, shifts: torch.Tensor) -> set:
    return {
        (int(i), int(j), tuple(shift))
        for (i, j), shift in zip(edge_index.T.tolist(), shifts.tolist())
    }


def test_nve_conserves_energy_and_skin_reuse_is_exact(model_file: Path) -> None:
    """1000 VelocityVerlet steps of 0.5 fs, float64, 32 rattled Cu atoms at 300 K.

    At every step the reused (skin) neighbour list must equal a fresh one exactly; every 50
    steps the full results are also compared with a calculator that rebuilds every call.
    """
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=4)
    calc = MLIPCalculator(model_file, skin=0.5)
    fresh = MLIPCalculator(model_file, skin=0.0)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(5))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    totals: list[float] = []
    worst = 0.0
    mismatched_steps: list[int] = []

    def check() -> None:
        nonlocal worst
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        positions, cell = atoms.positions, atoms.cell.array
        reused = calc._neighbors(positions, cell, atoms.pbc, atoms.numbers)
        rebuilt = neighbor_list(positions, cell, atoms.pbc, CUTOFF)
        if _edge_set(*reused) != _edge_set(*rebuilt):
            mismatched_steps.append(len(totals))
        if len(totals) % 50 == 1:
            probe = atoms.copy()
            probe.calc = fresh
            worst = max(
                worst,
                np.abs(probe.get_forces() - atoms.get_forces()).max(),
                abs(probe.get_potential_energy() - atoms.get_potential_energy()),
            )

    dynamics.attach(check, interval=1)
    dynamics.run(1000)
    assert len(totals) == 1001
    drift = (max(totals) - min(totals)) / len(atoms)
    assert drift < 1e-4, f"total energy drift {drift:.2e} eV/atom"
    assert not mismatched_steps, f"reused neighbour list differs at steps {mismatched_steps[:5]}"
    assert worst < 1e-10, f"skin reuse changed results by {worst:.2e}"
    assert calc._neighbors.rebuilds < 100, "the neighbour list was not reused"


def test_overlapping_atoms_are_refused_not_nan(model_file: Path) -> None:
    atoms = _cu_au()
    atoms.calc = MLIPCalculator(model_file)
    atoms.get_forces()
    atoms.positions[3] = atoms.positions[5] + [0.0, 0.0, 0.02]  # within the skin: no rebuild
    with pytest.raises(ValueError, match=r"atoms (3 and 5|5 and 3) are 0\.02 Å apart"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="structure 1: atoms"):
        atoms.calc.calculate_batch([_cu_au(), atoms])


def test_zero_atoms_give_a_clear_error(model_file: Path) -> None:
    empty = bulk("Cu", "fcc", a=3.7)[[]]
    empty.calc = MLIPCalculator(model_file)
    with pytest.raises(ValueError, match="the structure has no atoms"):
        empty.get_potential_energy()
    with pytest.raises(ValueError, match="structure 0: the structure has no atoms"):
        empty.calc.calculate_batch([empty])


def test_no_model_means_the_builtin_model() -> None:
    from calculators.defaults import default_model_path

    calc = MLIPCalculator()
    assert calc.metadata == MLIPCalculator(default_model_path()).metadata
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[0] = "Au"
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
