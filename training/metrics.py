"""Error metrics (MAE and RMSE) of energy per atom, forces and stress, reducible over ranks,
and :func:`evaluate`, the one evaluation loop of the trainer and ``mlip-eval``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from mlip import AtomicGraph
from training.loss import LossWeights

__all__ = ["ErrorMetrics", "evaluate", "force_predictor", "selection_loss", "wants_stress"]

_QUANTITIES = ("energy", "forces", "stress")


class ErrorMetrics:
    """Running sums of absolute and squared errors.

    Units: energy per atom in eV/atom, forces in eV/Å (per Cartesian component), stress in
    eV/Å³ (per tensor component). :meth:`compute` reports them in those units.
    """

    def __init__(self) -> None:
        # rows: energy, forces, stress; columns: sum |e|, sum e², count
        self.sums = torch.zeros(3, 3, dtype=torch.float64)
        self.loss_sum = 0.0
        self.loss_count = 0.0

    def update(self, predictions: dict[str, Tensor], graph: AtomicGraph) -> None:
        """Add one batch (predictions as returned by ``ForceStress``)."""
        pairs = []
        if graph.energy is not None:
            n_atoms = graph.num_atoms.to(torch.float64)
            pairs.append((0, (predictions["energy"].detach() - graph.energy) / n_atoms))
        if graph.forces is not None and "forces" in predictions:
            pairs.append((1, predictions["forces"].detach() - graph.forces))
        if graph.stress is not None and "stress" in predictions:
            pairs.append((2, predictions["stress"].detach() - graph.stress))
        for row, error in pairs:
            error = error.to("cpu", torch.float64)
            self.sums[row, 0] += error.abs().sum()
            self.sums[row, 1] += error.square().sum()
            self.sums[row, 2] += error.numel()

    def add_loss(self, loss_sum: float, count: float) -> None:
        self.loss_sum += loss_sum
        self.loss_count += count

    def all_reduce(self) -> None:
        """Sum over all ranks (no-op when not distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            packed = torch.cat(
                [self.sums.flatten(), torch.tensor([self.loss_sum, self.loss_count])]
            )
            if dist.get_backend() == "nccl":
                packed = packed.cuda()
            dist.all_reduce(packed)
            packed = packed.cpu()
            self.sums = packed[:9].reshape(3, 3).clone()
            self.loss_sum, self.loss_count = float(packed[9]), float(packed[10])

    def compute(self) -> dict[str, float]:
        """``{energy_mae, energy_rmse, forces_mae, ...}``; quantities without labels omitted."""
        out: dict[str, float] = {}
        for row, name in enumerate(_QUANTITIES):
            abs_sum, sq_sum, count = (float(v) for v in self.sums[row])
            if count > 0:
                out[f"{name}_mae"] = abs_sum / count
                out[f"{name}_rmse"] = math.sqrt(sq_sum / count)
        if self.loss_count > 0:
            out["loss"] = self.loss_sum / self.loss_count
        return out


def selection_loss(metrics: dict[str, float], weights: LossWeights) -> float:
    """The validation criterion for best-model tracking and early stopping: the weighted sum of
    squared RMSEs (energy per atom, forces, stress) with the current loss weights."""
    total = 0.0
    for name, weight in (
        ("energy", weights.energy),
        ("forces", weights.forces),
        ("stress", weights.stress),
    ):
        if weight and f"{name}_rmse" in metrics:
            total += weight * metrics[f"{name}_rmse"] ** 2
    return total if total > 0 else math.inf


def wants_stress(graph: AtomicGraph) -> bool:
    """Stress is predicted for a batch of 3D-periodic structures that all have a stress label."""
    return graph.stress is not None and bool(graph.pbc.all())


def force_predictor(model: torch.nn.Module) -> Callable[[AtomicGraph, bool], dict[str, Tensor]]:
    """``predict(graph, stress)`` for :func:`evaluate` from an energy model (eval mode)."""
    from mlip.derivatives import ForceStress

    wrappers = {
        flag: ForceStress(model, compute_forces=True, compute_stress=flag).eval()
        for flag in (False, True)
    }
    return lambda graph, stress: wrappers[stress](graph.as_dict())


def evaluate(
    predict: Callable[[AtomicGraph, bool], dict[str, Tensor]],
    batches: Iterable[AtomicGraph | None],
    device: torch.device | str,
    *,
    reduce: bool = False,
    collect: bool = False,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """MAE/RMSE of ``predict(graph, stress)`` (a force model, eval mode) over ``batches``.

    Args:
        predict: returns ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å and, when asked,
            ``stress`` (B, 3, 3) eV/Å³ for a batch on ``device``.
        batches: host batches (None: an empty share of a distributed batch).
        device: where to run.
        reduce: sum the metrics over ranks.
        collect: also return parity arrays ``energy_ref``/``energy_pred`` (eV/atom) and
            ``forces_ref``/``forces_pred`` (eV/Å, flattened), ``stress_ref``/``stress_pred``
            (eV/Å³, flattened; empty when no batch has stress).
    """
    metrics = ErrorMetrics()
    parity: dict[str, list[np.ndarray]] = {
        f"{q}_{kind}": [] for q in ("energy", "forces", "stress") for kind in ("ref", "pred")
    }
    for graph in batches:
        if graph is None:
            continue
        graph = graph.to(device, non_blocking=True)
        use_stress = wants_stress(graph)
        predictions = {k: v.detach() for k, v in predict(graph, use_stress).items()}
        if not use_stress:
            predictions.pop("stress", None)
        metrics.update(predictions, graph)
        if collect and graph.energy is not None:
            n_atoms = graph.num_atoms.to(torch.float64)
            parity["energy_ref"].append((graph.energy / n_atoms).cpu().numpy())
            parity["energy_pred"].append((predictions["energy"] / n_atoms).cpu().numpy())
            if graph.forces is not None and "forces" in predictions:
                parity["forces_ref"].append(graph.forces.cpu().numpy().ravel())
                parity["forces_pred"].append(predictions["forces"].cpu().numpy().ravel())
            if graph.stress is not None and "stress" in predictions:
                parity["stress_ref"].append(graph.stress.cpu().numpy().ravel())
                parity["stress_pred"].append(predictions["stress"].cpu().numpy().ravel())
    if reduce:
        metrics.all_reduce()
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parity.items()}
    return metrics.compute(), arrays
