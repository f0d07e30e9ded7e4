"""Weighted loss on energy per atom, forces and stress, shardable over ranks.

Each term is a *sum* over this rank's part of the batch divided by the *global* count of the
whole batch (all ranks), so summing the gradients of all ranks gives exactly the gradient of
the loss of the global batch on one process:

* energy: ``mean_over_structures(rho((E_pred - E_ref) / n_atoms))`` in (eV/atom)²;
* forces: ``mean_over_atoms_and_xyz(rho(F_pred - F_ref))`` in (eV/Å)²;
* stress: ``mean_over_labelled_structures_and_3x3(rho(S_pred - S_ref))`` in (eV/Å³)²;

with ``rho(x) = x²`` (``mse``) or the Huber function (``huber``, ``0.5 x²`` inside ``delta``).

The energy target is learned relative to per-element reference energies, with the shift and
scale of the data (:mod:`training.data.statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mlip import AtomicGraph

if TYPE_CHECKING:
    from training.config import LossConfig

__all__ = [
    "LossCounts",
    "LossWeights",
    "batch_counts",
    "weighted_loss",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0

    @classmethod
    def select(cls, loss: LossConfig, switched: bool) -> LossWeights:
        """The ``switch_*`` weights once the run has switched (``loss.switch_epoch`` /
        ``switch_fraction``, decided by the trainer), else the first ones."""
        if switched:
            return cls(
                loss.switch_energy_weight, loss.switch_forces_weight, loss.switch_stress_weight
            )
        return cls(loss.energy_weight, loss.forces_weight, loss.stress_weight)


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
    structure_weights: Tensor | None = None,
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
        structure_weights: (B,) multipliers of each structure's energy, force and stress
            terms (e.g. ``loss.head_weights`` by level of theory); None: all 1.

    Returns:
        The scalar loss (float64) and its unweighted terms (detached).
    """
    device = predictions["energy"].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    terms: dict[str, Tensor] = {}
    if weights.energy and graph.energy is not None:
        n_atoms = graph.num_atoms.to(torch.float64)
        error = (predictions["energy"] - graph.energy) / n_atoms
        rho = _rho(error, loss_type, huber_delta)
        if structure_weights is not None:
            rho = rho * structure_weights
        term = rho.sum() / max(counts.structures, 1.0)
        terms["energy"] = term.detach()
        total = total + weights.energy * term
    if weights.forces and graph.forces is not None and "forces" in predictions:
        error = predictions["forces"] - graph.forces
        rho = _rho(error, loss_type, huber_delta)
        if structure_weights is not None:
            rho = rho * structure_weights.index_select(0, graph.batch).unsqueeze(1)
        term = rho.sum() / max(3.0 * counts.atoms, 1.0)
        terms["forces"] = term.detach()
        total = total + weights.forces * term
    if (
        weights.stress
        and graph.stress is not None
        and "stress" in predictions
        and counts.stress_structures > 0
    ):
        error = predictions["stress"] - graph.stress
        rho = _rho(error, loss_type, huber_delta)
        if structure_weights is not None:
            rho = rho * structure_weights.view(-1, 1, 1)
        term = rho.sum() / (9.0 * counts.stress_structures)
        terms["stress"] = term.detach()
        total = total + weights.stress * term
    return total, terms
