"""ForceStress wrapper: sign conventions, errors, training mode, TorchScript toggles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mlip import keys
from mlip.derivatives import ForceStress
from mlip.graph import AtomicGraph
from mlip.models import build_model
from mlip.testing import rattled_crystal


class _Harmonic(nn.Module):
    """E = 0.5 k sum over edges (|r_ij| - r0)^2 / 2 (each pair appears twice)."""

    def __init__(self, cutoff: float = 4.0) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.species = [29, 79]

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        edge_index, batch, cell = data[keys.EDGE_INDEX], data[keys.BATCH], data[keys.CELL]
        shifts = torch.einsum(
            "ek,ekl->el", data[keys.CELL_SHIFTS].to(cell.dtype), cell[batch[edge_index[0]]]
        )
        pos = data[keys.POSITIONS]
        lengths = torch.linalg.norm(pos[edge_index[1]] - pos[edge_index[0]] + shifts, dim=-1)
        pair = 0.25 * (lengths - 2.5) ** 2
        energies = torch.zeros_like(pos[:, 0]).index_add(0, edge_index[0], pair)
        energy = torch.zeros(data[keys.NUM_ATOMS].shape[0], dtype=pos.dtype).index_add(
            0, batch, energies
        )
        return {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: energies}


def test_forces_and_stress_of_pair_potential_match_ase_sign() -> None:
    from ase.calculators.fd import calculate_numerical_stress

    atoms = rattled_crystal()
    model = _Harmonic()
    out = ForceStress(model, True, True)(AtomicGraph.from_atoms(atoms, 4.0).as_dict())

    from ase.calculators.calculator import Calculator

    class _Wrapped(Calculator):
        implemented_properties = ["energy"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            graph = AtomicGraph.from_atoms(self.atoms, 4.0, read_labels=False)
            self.results["energy"] = float(model(graph.as_dict())[keys.ENERGY].sum())

    atoms.calc = _Wrapped()
    voigt = calculate_numerical_stress(atoms, 1e-5, force_consistent=False)
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(
        full_3x3_to_voigt_6_stress(out[keys.STRESS][0].detach().numpy()), voigt, atol=1e-8
    )
    assert out[keys.FORCES].dtype == torch.float64
    np.testing.assert_allclose(out[keys.FORCES].sum(0).detach().numpy(), 0.0, atol=1e-10)


def test_stress_needs_full_periodicity() -> None:
    atoms = rattled_crystal()
    atoms.pbc = (True, True, False)
    graph = AtomicGraph.from_atoms(atoms, 4.0)
    with pytest.raises(ValueError, match="periodic in all three directions"):
        ForceStress(_Harmonic(), True, True)(graph.as_dict())
    out = ForceStress(_Harmonic(), True, False)(graph.as_dict())
    assert keys.STRESS not in out and keys.FORCES in out


def test_training_mode_builds_double_backward_graph() -> None:
    model = build_model(species=[29, 79], cutoff=4.0, dtype=torch.float64)
    wrapper = ForceStress(model, True, True).train()
    graph = AtomicGraph.from_atoms(rattled_crystal(), 4.0)
    out = wrapper(graph.as_dict())
    assert out[keys.FORCES].requires_grad and out[keys.STRESS].requires_grad
    loss = out[keys.FORCES].pow(2).sum() + out[keys.STRESS].pow(2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().max()) > 0 for g in grads)
    wrapper.eval()
    assert not wrapper(graph.as_dict())[keys.FORCES].requires_grad


def test_flags_are_plain_bools_and_toggle_when_scripted() -> None:
    model = build_model(species=[29, 79], cutoff=4.0)
    scripted = torch.jit.script(ForceStress(model, False, False))
    graph = AtomicGraph.from_atoms(rattled_crystal(), 4.0)
    assert set(scripted(graph.as_dict())) == {keys.ENERGY, keys.ATOMIC_ENERGIES}
    scripted.compute_forces = True
    scripted.compute_stress = True
    assert {keys.FORCES, keys.STRESS} <= set(scripted(graph.as_dict()))


def test_does_not_mutate_input_and_outputs_float64() -> None:
    model = build_model(species=[29, 79], cutoff=4.0)
    data = AtomicGraph.from_atoms(rattled_crystal(), 4.0).as_dict()
    snapshot = {k: v.clone() for k, v in data.items()}
    out = ForceStress(model, True, True)(data)
    assert set(data) == set(snapshot)
    for key, value in data.items():
        assert torch.equal(value, snapshot[key]) and not value.requires_grad
    assert all(v.dtype == torch.float64 for v in out.values())
