"""Neighbour list against the independent oracle ase.neighborlist.neighbor_list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.neighbors import neighbor_list


def _random_cell(rng: np.random.Generator) -> np.ndarray:
    """Triclinic cell with edges 1.5-8 Å and angles 30-150 degrees (rows are vectors)."""
    while True:
        lengths = rng.uniform(1.5, 8.0, 3)
        alpha, beta, gamma = np.radians(rng.uniform(30.0, 150.0, 3))
        cx = np.cos(beta)
        cy = (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
        cz2 = 1.0 - cx**2 - cy**2
        if cz2 > 0.01:
            break
    a, b, c = lengths
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * np.cos(gamma), b * np.sin(gamma), 0.0],
            [c * cx, c * cy, c * np.sqrt(cz2)],
        ]
    )


def _as_set(first, second, shifts) -> set[tuple[int, int, tuple[int, ...]]]:
    return {
        (int(i), int(j), tuple(int(s) for s in shift)) for i, j, shift in zip(first, second, shifts)
    }


PBC_CHOICES = [tuple(bool(b) for b in np.binary_repr(k, 3)) for k in range(8)]


@pytest.mark.parametrize("case", range(240))
def test_matches_ase_oracle(case: int) -> None:
    rng = np.random.default_rng(1000 + case)
    cell = _random_cell(rng)
    pbc = PBC_CHOICES[case % 8]
    n_atoms = int(rng.integers(1, 201)) if case % 10 == 0 else int(rng.integers(1, 40))
    # fractional coordinates partly outside [0, 1): nothing is wrapped
    positions = rng.uniform(-0.3, 1.3, (n_atoms, 3)) @ cell
    cutoff = float(rng.uniform(0.8, 5.0))
    atoms = Atoms(numbers=np.ones(n_atoms, int), positions=positions, cell=cell, pbc=pbc)
    expected = _as_set(*ase_neighbor_list("ijS", atoms, cutoff))
    edge_index, shifts = neighbor_list(positions, cell, pbc, cutoff, min_distance=0.0)
    assert edge_index.dtype == torch.int64 and shifts.dtype == torch.int64
    got = _as_set(edge_index[0].numpy(), edge_index[1].numpy(), shifts.numpy())
    assert len(got) == edge_index.shape[1], "duplicate edges"
    assert got == expected
    # the convention r_ij = pos[j] - pos[i] + S @ cell, with 0 < |r_ij| <= cutoff
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts.numpy() @ cell
    distances = np.linalg.norm(vectors, axis=1)
    assert np.all(distances > 0) and np.all(distances <= cutoff + 1e-12)


def test_small_cell_sees_own_images() -> None:
    atoms = bulk("Cu", "fcc", a=3.6)  # 1 atom, nearest image 2.55 Å away
    edge_index, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 6.0)
    assert torch.all(edge_index == 0)
    expected = _as_set(*ase_neighbor_list("ijS", atoms, 6.0))
    assert _as_set(edge_index[0], edge_index[1], shifts) == expected
    assert len(expected) > 12  # several shells of images


def test_molecule_without_cell_and_isolated_atom() -> None:
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [10.0, 0.0, 0.0]])
    edge_index, shifts = neighbor_list(positions, None, False, 2.0)
    assert _as_set(edge_index[0], edge_index[1], shifts) == {(0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))}
    edge_index, shifts = neighbor_list(positions[:1], None, False, 2.0)
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)


def test_slab_with_zero_vacuum_vector() -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    cell = atoms.cell.array.copy()
    cell[2] = 0.0  # a slab stored without a third vector
    edge_index, shifts = neighbor_list(atoms.positions, cell, (True, True, False), 3.0)
    assert torch.all(shifts[:, 2] == 0)
    atoms.pbc = (True, True, False)
    expected = _as_set(*ase_neighbor_list("ijS", atoms, 3.0))
    assert _as_set(edge_index[0], edge_index[1], shifts) == expected


@pytest.mark.parametrize(
    ("positions", "cell", "pbc", "cutoff", "message"),
    [
        ([[0.0, 0.0, np.nan]], np.eye(3), True, 3.0, "NaN or inf"),
        ([[0.0, 0.0, np.inf]], None, False, 3.0, "NaN or inf"),
        ([[0.0, 0.0, 0.0]], np.eye(3), True, 0.0, "cutoff"),
        ([[0.0, 0.0, 0.0]], np.eye(3), True, -1.0, "cutoff"),
        ([[0.0, 0.0, 0.0]], np.eye(3), True, float("nan"), "cutoff"),
        ([[0.0, 0.0, 0.0]], np.diag([1.0, 1.0, 0.0]), True, 3.0, "zero but periodic"),
        ([[0.0, 0.0, 0.0]], [[1, 0, 0], [2, 0, 0], [0, 0, 1]], True, 3.0, "singular"),
        ([[0.0, 0.0]], np.eye(3), True, 3.0, "positions must have shape"),
        ([[0.0, 0.0, 0.0]], np.eye(2), True, 3.0, "cell must have shape"),
        ([[0.0, 0.0, 0.0]], np.eye(3), [True, True], 3.0, "pbc must have shape"),
    ],
)
def test_bad_input_raises_clear_value_error(positions, cell, pbc, cutoff, message) -> None:
    with pytest.raises(ValueError, match=message):
        neighbor_list(np.asarray(positions, dtype=float), cell, pbc, cutoff)


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 0, 0)], ids=["same-cell", "image"])
def test_overlapping_atoms_are_named(shift) -> None:
    cell = 4.0 * np.eye(3)
    positions = np.array([[0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [0.55, 0.5, 0.5]])
    positions[2] -= np.asarray(shift) @ cell  # the partner sits one cell away: an image pair
    with pytest.raises(ValueError, match=r"atoms (0 and 2|2 and 0).* 0\.05 Å apart"):
        neighbor_list(positions, cell, True, 3.0)
    positions[2, 0] += 0.2  # 0.25 Å: short, but possible in a hot collision
    assert neighbor_list(positions, cell, True, 3.0)[0].shape[1] > 0


def test_atom_overlapping_its_own_image_is_named() -> None:
    with pytest.raises(ValueError, match="atom 0 and its periodic image"):
        neighbor_list(np.zeros((1, 3)), np.diag([0.05, 3.0, 3.0]), True, 3.0)


def test_singular_cell_along_non_periodic_direction_is_fine() -> None:
    cell = np.diag([3.0, 3.0, 0.0])
    edge_index, _ = neighbor_list(np.zeros((1, 3)), cell, (True, True, False), 3.5)
    assert edge_index.shape[1] == 4  # the four in-plane images at 3 Å
