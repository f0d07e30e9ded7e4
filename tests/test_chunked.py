"""Chunked evaluation (mlip.chunked) equals the whole-structure evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from calculators import MLIPCalculator
from mlip import AtomicGraph, keys
from mlip.chunked import ChunkedEvaluator, morton_order, num_hops
from mlip.export import build_metadata, load, save, script
from mlip.models import build_model
from mlip.testing import perturb_parameters

CUTOFF = 3.0  # first fcc shell only: one atom's 2-hop closure is 55 of 256 atoms
TOLERANCE = 1e-10
METHODS = ("layerwise", "halo")


def _model(species: list[int], preset: str = "small", cutoff: float = CUTOFF, **hyper):
    """A float64 GMEP with perturbed parameters and statistics away from the identity (scale,
    shift and E0 differ per head), so that each atom's energy scale is exercised."""
    model = build_model(
        species=species,
        cutoff=cutoff,
        preset=preset,
        dtype="float64",
        channels=8,
        mixer_channels=8,
        **hyper,
    )
    model = perturb_parameters(model, seed=1)
    for head in range(max(model.num_heads, 1)):
        model.set_statistics(
            avg_num_neighbors=12.0 + 7.0 * head,
            scale=1.7 - 0.5 * head,
            shift=-0.3 + 0.2 * head,
            reference_energies={z: -1.0 - 0.1 * i - head for i, z in enumerate(species)},
            head=head if model.multi_head else None,
        )
    return model


def _copper(repeat: int = 4) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(0.1, seed=2)
    return atoms


def _compare(reference: dict, chunked: dict, stress: bool) -> None:
    names = [keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES] + ([keys.STRESS] if stress else [])
    for name in names:
        error = float((chunked[name] - reference[name].detach()).abs().max())
        assert error < TOLERANCE, f"{name}: max difference {error:.2e}"


def _check_chunks(
    model: torch.nn.Module,
    atoms: Atoms,
    sizes: list[int],
    stress: bool,
    methods: tuple[str, ...] = METHODS,
    cutoff: float = CUTOFF,
    **inputs: torch.Tensor,
) -> None:
    """Chunked == whole on the scripted export (as the calculator runs it), for each chunk
    size and method; ``inputs`` are graph-level inputs (charge, spin, head)."""
    module = script(model)
    module.compute_stress = stress
    graph = AtomicGraph.from_atoms(atoms, cutoff).with_labels(**inputs)
    reference = module(graph.as_dict())
    for method in methods:
        for size in sizes:
            evaluator = ChunkedEvaluator(module, num_hops(build_metadata(model)), chunk_atoms=size)
            assert evaluator.layerwise  # the scripted GMEP exports the per-layer methods
            evaluator.layerwise = method == "layerwise"
            result = evaluator(graph, "cpu", stress=stress)
            chunks = -(-len(atoms) // size)
            assert evaluator.last_chunks == chunks
            _compare(reference, result, stress)
            if method == "layerwise":  # every graph kept (ample budget): nothing recomputed
                assert evaluator.last_recomputed == 0
                assert evaluator.last_kept == (evaluator.hops - 1) * chunks
                # no budget for kept graphs: each layer below the last is rebuilt for its backward
                evaluator.memory_budget = 1.0
                result = evaluator(graph, "cpu", stress=stress)
                assert evaluator.last_kept == 0
                assert evaluator.last_recomputed == (evaluator.hops - 1) * chunks
                _compare(reference, result, stress)


def test_periodic_cell_cut_by_chunks() -> None:
    # chunk sizes 1, 2 and 20 are smaller than one atom's halo (54 atoms); 255 leaves one over
    _check_chunks(_model([29]), _copper(), [1, 2, 20, 100, 255], stress=True)


def test_triclinic_two_species_three_layers_vector_features() -> None:
    atoms = bulk("Cu", "fcc", a=3.61).repeat((5, 5, 5))
    atoms.rattle(0.1, seed=3)
    numbers = atoms.numbers.copy()
    numbers[np.random.default_rng(0).random(len(atoms)) < 0.4] = 47
    atoms.numbers = numbers
    model = _model([29, 47], num_layers=3, lmax_hidden=1)
    _check_chunks(model, atoms, [3, 40], stress=True)


@pytest.mark.parametrize("preset", ["small", "medium", "large"])
def test_presets_layer_by_layer(preset: str) -> None:
    """Three fcc shells (42 neighbours): ``large``'s l > 0 layers take the per-receiver GEMM
    form (from 30 neighbours), its first layer the species-factorised one."""
    atoms = _copper()
    numbers = atoms.numbers.copy()
    numbers[::3] = 47
    atoms.numbers = numbers
    model = _model([29, 47], preset=preset, cutoff=4.5)
    _check_chunks(model, atoms, [1, 2, 37, 200], True, ("layerwise",), cutoff=4.5)


def test_charge_spin() -> None:
    """Layer 0's input carries the graph state (not a species table)."""
    model = _model([29], charge_spin=True)
    charge = torch.tensor([1.0], dtype=torch.float64)
    spin = torch.tensor([2.0], dtype=torch.float64)
    _check_chunks(model, _copper(), [2, 37], True, charge=charge, spin=spin)


@pytest.mark.parametrize("head_readout", [False, True])
def test_two_heads_second_head(head_readout: bool) -> None:
    model = _model([29], heads=["pbe", "r2scan"], head_readout=head_readout)
    _check_chunks(model, _copper(), [2, 37], True, head=torch.tensor([1]))


def test_molecule() -> None:
    atoms = _copper(3)
    atoms.pbc = False
    atoms.cell = None
    _check_chunks(_model([29]), atoms, [1, 2, 10, 50], stress=False)


def test_morton_order_is_a_permutation() -> None:
    positions = np.random.default_rng(0).random((500, 3)) * [10.0, 1.0, 0.0]
    assert sorted(morton_order(positions).tolist()) == list(range(500))


@pytest.mark.parametrize("state", [False, True], ids=["plain", "charge_spin_heads"])
def test_calculator_chunks_when_over_budget(tmp_path, state: bool) -> None:
    hyper = {"charge_spin": True, "heads": ["pbe", "r2scan"]} if state else {}
    model = _model([29], **hyper)
    path = save(model, tmp_path / "model.pt")
    atoms = _copper()
    atoms.info.update({"charge": 1, "spin": 2} if state else {})
    head = "r2scan" if state else None
    whole = MLIPCalculator(path, chunk_atoms=10**9, head=head)
    atoms.calc = whole
    reference = {name: atoms.get_properties([name])[name] for name in ("energy", "stress")}
    reference["forces"] = atoms.get_forces()
    reference["energies"] = atoms.get_potential_energies()
    assert whole.chunked.last_chunks == 0  # evaluated as one structure

    # a budget below the structure's estimated need (2 x 256 atom-layers), above one
    # chunk's: layer by layer, 100 receivers per chunk
    budgeted = MLIPCalculator(path, head=head)
    assert budgeted.chunked.layerwise  # the loaded TorchScript file exports the layer methods
    budgeted.chunked.needs_chunks(AtomicGraph.from_atoms(atoms, CUTOFF), torch.device("cpu"))
    per_atom_layer = budgeted.chunked.bytes_per_atom_layer
    budgeted.chunked.memory_budget = 100 * per_atom_layer
    for calculator in (MLIPCalculator(path, chunk_atoms=37, head=head), budgeted):
        atoms.calc = calculator
        assert abs(atoms.get_potential_energy() - reference["energy"]) < TOLERANCE
        assert np.abs(atoms.get_forces() - reference["forces"]).max() < TOLERANCE
        assert np.abs(atoms.get_stress() - reference["stress"]).max() < TOLERANCE
        assert np.abs(atoms.get_potential_energies() - reference["energies"]).max() < TOLERANCE
        assert calculator.chunked.last_chunks > 1


def test_receptive_field_in_metadata_and_fallback(tmp_path) -> None:
    model = _model([29], num_layers=3)
    _, metadata = load(save(model, tmp_path / "model.pt"))
    assert metadata["receptive_field"] == pytest.approx(3 * CUTOFF)
    assert num_hops(metadata) == 3
    del metadata["receptive_field"]  # files written before it was recorded
    assert num_hops(metadata) == 3


def test_budget_too_small_is_a_clear_error() -> None:
    module = script(_model([29]))
    evaluator = ChunkedEvaluator(module, 2, memory_budget=1000.0)
    with pytest.raises(MemoryError, match="memory budget .* too small"):
        evaluator(AtomicGraph.from_atoms(_copper(), CUTOFF), "cpu", stress=False)


def test_non_local_model_is_never_chunked() -> None:
    """LEFTNet's frame depends on the whole molecule: its metadata says so (receptive field
    null) and the calculator evaluates it whole even under a one-atom chunk size."""
    from ase.build import molecule

    model = build_model(
        "leftnet", species=[1, 6, 8], cutoff=4.0, dtype=torch.float64, channels=4, num_radial=4
    )
    metadata = build_metadata(model)
    assert metadata["receptive_field"] is None and metadata["num_interactions"] is None
    mol = molecule("CH3CH2OH")
    whole = MLIPCalculator(model)
    tiny = MLIPCalculator(model, chunk_atoms=1)
    assert tiny.chunked is None
    mol.calc = whole
    reference = mol.get_forces().copy()
    mol.calc = tiny
    np.testing.assert_allclose(mol.get_forces(), reference, rtol=1e-10, atol=1e-12)
