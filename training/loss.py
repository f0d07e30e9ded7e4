"""Weighted loss on energy per atom, forces and stress, shardable over ranks.

Each term is a *sum* over this rank's part of the batch divided by the *global* count of the
whole batch (all ranks), so summing the gradients of all ranks gives exactly the gradient of
the loss of the global batch on one process:

* energy: ``mean_over_structures(rho((E_pred - E_ref) / n_atoms))`` in (eV/atom)²;
* forces: ``mean_over_atoms_and_xyz(rho(F_pred - F_ref))`` in (eV/Å)²;
* stress: ``mean_over_labelled_structures_and_3x3(rho(S_pred - S_ref))`` in (eV/Å³)²;

with ``rho(x) = x²`` (``mse``) or the Huber function (``huber``, ``0.5 x²`` inside ``delta``).

The energy target is learned relative to per-element reference energies (least squares on the
training set, isolated-atom energies, or given), with the mean neighbour count and the
scale/shift of the data passed to ``model.set_statistics``: :func:`compute_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mlip import AtomicGraph

if TYPE_CHECKING:
    from training.config import Config
    from training.trainer import GraphSet

__all__ = [
    "LossCounts",
    "LossWeights",
    "batch_counts",
    "compute_statistics",
    "fit_reference_energies",
    "read_isolated_energies",
    "weighted_loss",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0


@dataclass(frozen=True)
class LossCounts:
    """Normalisers of the global batch: structures, atoms, structures with a stress label."""

    structures: float
    atoms: float
    stress_structures: float

    def as_tensor(self) -> Tensor:
        return torch.tensor(
            [self.structures, self.atoms, self.stress_structures], dtype=torch.float64
        )

    @classmethod
    def from_tensor(cls, values: Tensor) -> LossCounts:
        structures, atoms, stress = (float(v) for v in values.tolist())
        return cls(structures, atoms, stress)


def batch_counts(graph: AtomicGraph, use_stress: bool) -> LossCounts:
    """This rank's counts (all-reduce :meth:`LossCounts.as_tensor` to get the global ones)."""
    n_stress = float(graph.num_graphs) if use_stress and graph.stress is not None else 0.0
    return LossCounts(float(graph.num_graphs), float(graph.positions.shape[0]), n_stress)


def _rho(error: Tensor, loss_type: str, delta: float) -> Tensor:
    if loss_type == "mse":
        return error.square()
    if loss_type == "huber":
        return torch.nn.functional.huber_loss(
            error, torch.zeros_like(error), reduction="none", delta=delta
        )
    raise ValueError(f"unknown loss type {loss_type!r}; expected 'mse' or 'huber'")


def weighted_loss(
    predictions: dict[str, Tensor],
    graph: AtomicGraph,
    weights: LossWeights,
    counts: LossCounts,
    loss_type: str = "mse",
    huber_delta: float = 0.01,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of this rank's share of a batch.

    Args:
        predictions: model outputs ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å, optional
            ``stress`` (B, 3, 3) eV/Å³.
        graph: the batch with its labels.
        weights: term weights; a term with weight 0 or without labels is skipped.
        counts: global normalisers (see module docstring).
        loss_type: ``mse`` or ``huber``.
        huber_delta: Huber transition point.

    Returns:
        The scalar loss (float64) and its unweighted terms (detached).
    """
    device = predictions["energy"].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    terms: dict[str, Tensor] = {}
    if weights.energy and graph.energy is not None:
        n_atoms = graph.num_atoms.to(torch.float64)
        error = (predictions["energy"] - graph.energy) / n_atoms
        term = _rho(error, loss_type, huber_delta).sum() / max(counts.structures, 1.0)
        terms["energy"] = term.detach()
        total = total + weights.energy * term
    if weights.forces and graph.forces is not None and "forces" in predictions:
        error = predictions["forces"] - graph.forces
        term = _rho(error, loss_type, huber_delta).sum() / max(3.0 * counts.atoms, 1.0)
        terms["forces"] = term.detach()
        total = total + weights.forces * term
    if (
        weights.stress
        and graph.stress is not None
        and "stress" in predictions
        and counts.stress_structures > 0
    ):
        error = predictions["stress"] - graph.stress
        term = _rho(error, loss_type, huber_delta).sum() / (9.0 * counts.stress_structures)
        terms["stress"] = term.detach()
        total = total + weights.stress * term
    return total, terms


# ============================================================================ statistics
def read_isolated_energies(path: str) -> dict[int, float]:
    """``{Z: eV}`` from a file of single-atom structures with energies."""
    from training.data.readers import read_frames

    energies: dict[int, float] = {}
    for frame in read_frames(path, required=("energy",)):
        if frame.n_atoms != 1:
            raise ValueError(f"{path}: frame {frame.frame_id} has {frame.n_atoms} atoms, not 1")
        energies[int(frame.atomic_numbers[0])] = float(frame.energy)
    return energies


def fit_reference_energies(dataset: GraphSet, species: Sequence[int]) -> dict[int, float]:
    """Least-squares per-element energies: ``E ≈ sum_Z count_Z * e_Z`` over ``dataset``."""
    column = {z: i for i, z in enumerate(species)}
    counts = np.zeros((len(dataset), len(species)))
    energies = np.zeros(len(dataset))
    for row, graph in enumerate(dataset.graphs):
        for z, count in zip(*np.unique(graph.atomic_numbers.numpy(), return_counts=True)):
            counts[row, column[int(z)]] = count
        energies[row] = float(graph.energy)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {int(z): float(solution[column[z]]) for z in species}


def compute_statistics(dataset: GraphSet, config: Config, species: Sequence[int]) -> dict[str, Any]:
    """Reference energies, mean neighbour count, shift and scale from the training set.

    Returns a dict with ``reference_energies`` ({Z: eV} or None), ``avg_num_neighbors``,
    ``shift`` (mean energy per atom after the references, eV/atom) and ``scale`` (force RMS in
    eV/Å; the RMS of the shifted energy per atom when there are no forces).
    """
    spec = config.data.reference_energies
    if dataset.store_statistics is not None:
        return _statistics_from_store(dataset.store_statistics, config, species)
    if isinstance(spec, dict):
        references: dict[int, float] | None = {int(k): float(v) for k, v in spec.items()}
    elif spec == "least_squares":
        references = fit_reference_energies(dataset, species)
    elif spec == "isolated":
        references = read_isolated_energies(str(config.data.isolated_atoms))
    else:
        references = None
    if references is not None:
        missing = sorted(set(species) - set(references))
        if missing:
            raise ValueError(f"no reference energy for atomic number(s) {missing}")
        references = {z: e for z, e in references.items() if z in set(species)}
    per_atom = []
    force_sq, force_count = 0.0, 0
    for graph in dataset.graphs:
        energy = float(graph.energy)
        if references is not None:
            energy -= sum(references[int(z)] for z in graph.atomic_numbers.tolist())
        per_atom.append(energy / graph.positions.shape[0])
        if graph.forces is not None:
            force_sq += float(graph.forces.square().sum())
            force_count += graph.forces.numel()
    per_atom_np = np.asarray(per_atom)
    shift = float(per_atom_np.mean())
    if force_count:
        scale = math.sqrt(force_sq / force_count)
    else:
        scale = float(np.sqrt(np.mean((per_atom_np - shift) ** 2)))
    return {
        "reference_energies": references,
        "avg_num_neighbors": float(dataset.n_edges.sum() / max(dataset.n_atoms.sum(), 1)),
        "shift": shift,
        "scale": scale if scale > 1e-12 else 1.0,
    }


def _statistics_from_store(stats: Any, config: Config, species: Sequence[int]) -> dict[str, Any]:
    """:func:`compute_statistics` from a store's cached statistics (no pass over the data).

    The shift is the atom-weighted mean residual energy per atom (the in-memory path uses the
    structure-weighted mean).
    """
    spec = config.data.reference_energies
    if isinstance(spec, dict):
        references: dict[int, float] | None = {int(k): float(v) for k, v in spec.items()}
    elif spec == "least_squares":
        references = dict(stats.reference_energies)
    elif spec == "isolated":
        references = read_isolated_energies(str(config.data.isolated_atoms))
    else:
        references = None
    shift = stats.mean_energy_per_atom
    if references is not None:
        missing = sorted(set(species) - set(references))
        if missing:
            raise ValueError(f"no reference energy for atomic number(s) {missing}")
        references = {z: e for z, e in references.items() if z in set(species)}
        n_atoms = sum(stats.element_counts.values())
        shift -= sum(references[z] * n for z, n in stats.element_counts.items()) / n_atoms
    scale = stats.force_rms if stats.force_rms > 0 else stats.energy_residual_rms
    return {
        "reference_energies": references,
        "avg_num_neighbors": float(stats.mean_neighbors or 1.0),
        "shift": float(shift),
        "scale": float(scale) if scale > 1e-12 else 1.0,
    }
