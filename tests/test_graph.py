"""AtomicGraph: construction from ASE/pymatgen, batching, splitting, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mlip import AtomicGraph, keys


def _labelled_cu() -> AtomicGraph:
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    rng = np.random.default_rng(0)
    stress = rng.normal(size=(3, 3))
    stress = stress + stress.T
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=-3.5,
        forces=rng.normal(size=(len(atoms), 3)),
        stress=full_3x3_to_voigt_6_stress(stress),
    )
    graph = AtomicGraph.from_atoms(atoms, cutoff=4.0)
    assert torch.allclose(graph.stress[0], torch.as_tensor(stress))
    return graph


def test_from_atoms_reads_labels_and_edges() -> None:
    graph = _labelled_cu()
    assert graph.num_graphs == 1 and graph.positions.shape == (8, 3)
    assert graph.energy.tolist() == [-3.5]
    assert graph.forces.shape == (8, 3) and graph.stress.shape == (1, 3, 3)
    distances = graph.edge_vectors().norm(dim=1)
    assert torch.all(distances > 0) and torch.all(distances <= 4.0)


def test_molecule_needs_no_cell() -> None:
    graph = AtomicGraph.from_atoms(molecule("CH4"), cutoff=3.0)
    assert torch.all(graph.cell == 0) and not graph.pbc.any()
    assert graph.num_edges == 20  # every pair of the 5 atoms is within 3 Å
    assert graph.energy is None


def test_from_pymatgen_structure_and_molecule() -> None:
    from pymatgen.core import Lattice, Molecule, Structure

    structure = Structure(
        Lattice.cubic(3.6), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    )
    graph = AtomicGraph.from_pymatgen(structure, cutoff=2.6)
    assert graph.num_edges == 4 * 12 and graph.pbc.all()
    mol = Molecule(["O", "H", "H"], [[0, 0, 0], [0, 0.76, 0.59], [0, -0.76, 0.59]])
    graph = AtomicGraph.from_pymatgen(mol, cutoff=2.0)
    assert graph.atomic_numbers.tolist() == [8, 1, 1] and not graph.pbc.any()


def test_batch_then_split_round_trips_every_field() -> None:
    cu = _labelled_cu()
    water = AtomicGraph.from_atoms(molecule("H2O"), 3.0).with_labels(
        energy=torch.tensor([-14.0], dtype=torch.float64),
        forces=torch.zeros(3, 3, dtype=torch.float64),
        stress=torch.zeros(1, 3, 3, dtype=torch.float64),
    )
    batch = AtomicGraph.batch([cu, water, cu])
    assert batch.num_graphs == 3 and batch.batch.tolist() == [0] * 8 + [1] * 3 + [2] * 8
    assert batch.num_edges == 2 * cu.num_edges + water.num_edges
    # offsets: edges of the third graph point at atoms 11..18
    assert batch.edge_index[:, -cu.num_edges :].min() == 11
    torch.testing.assert_close(
        batch.edge_vectors(),
        torch.cat([cu.edge_vectors(), water.edge_vectors(), cu.edge_vectors()]),
    )
    for original, restored in zip([cu, water, cu], batch.split()):
        for name in keys.FIELDS:
            a, b = getattr(original, name), getattr(restored, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert torch.equal(a, b), name


def test_batch_rejects_partial_labels() -> None:
    cu = _labelled_cu()
    bare = AtomicGraph.from_atoms(molecule("H2O"), 3.0)
    with pytest.raises(ValueError, match="has no 'energy'"):
        AtomicGraph.batch([cu, bare])


def test_head_is_optional_and_batches_as_zero_where_absent() -> None:
    water = AtomicGraph.from_atoms(molecule("H2O"), 3.0)
    methane = AtomicGraph.from_arrays(
        molecule("CH4").positions, molecule("CH4").numbers, 3.0, head=2, charge=1, spin=2
    )
    assert water.head is None and keys.HEAD not in water.as_dict()
    assert methane.head.dtype == torch.int64 and methane.head.tolist() == [2]
    with pytest.raises(ValueError, match="has no 'charge'"):
        AtomicGraph.batch([methane, water])
    water = water.with_labels(
        charge=torch.zeros(1, dtype=torch.float64), spin=torch.ones(1).double()
    )
    batch = AtomicGraph.batch([water, methane, water])
    assert batch.head.tolist() == [0, 2, 0]
    assert [g.head.tolist() for g in batch.split()] == [[0], [2], [0]]
    assert batch.charge.tolist() == [0.0, 1.0, 0.0]


def test_validation_names_the_field() -> None:
    graph = _labelled_cu()
    with pytest.raises(ValueError, match="forces"):
        graph.with_labels(forces=torch.zeros(7, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="energy"):
        graph.with_labels(energy=torch.zeros(1, dtype=torch.float32))
    with pytest.raises(ValueError, match="atomic numbers"):
        AtomicGraph.from_arrays(np.zeros((2, 3)), [1], cutoff=2.0)


def test_as_dict_and_to() -> None:
    graph = AtomicGraph.from_atoms(molecule("H2O"), 3.0)
    data = graph.to("cpu").as_dict()
    assert set(data) == set(keys.REQUIRED_FIELDS)
    assert data[keys.POSITIONS].dtype == torch.float64
