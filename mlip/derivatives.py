"""Forces and stress as a transformation of any energy model (STYLE.md §3, DESIGN_NOTES §7).

``ForceStress(model)`` applies a symmetric zero strain ``eps`` to positions and cell,
``x -> x (1 + eps)``, ``cell -> cell (1 + eps)``, runs the energy model, and takes
``forces = -dE/dx`` and ``stress = (1/V) dE/deps`` in one ``torch.autograd.grad`` call with
``create_graph=self.training`` (so a force loss can be trained through it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlip import keys

__all__ = ["ForceStress", "strained"]


def strained(
    positions: Tensor, cell: Tensor, batch: Tensor, strain: Tensor
) -> tuple[Tensor, Tensor]:
    """Positions (N, 3) and cells (B, 3, 3) under the symmetric part of ``strain`` (B, 3, 3).

    ``x -> x (1 + eps)`` and ``cell -> cell (1 + eps)`` with ``eps = (strain + strain^T) / 2``;
    ``batch`` (N,) maps atoms to structures. ``dE/dstrain`` at zero strain is the virial.
    """
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    moved = positions + torch.bmm(positions.unsqueeze(1), symmetric[batch]).squeeze(1)
    return moved, cell + torch.bmm(cell, symmetric)


class ForceStress(nn.Module):
    """Energy, forces and stress from an energy model.

    Args:
        energy_model: ``forward(data) -> {"energy": (B,), "energies": (N,)}`` with edge
            vectors computed inside from ``positions`` and ``cell``.
        compute_forces: add ``forces`` (N, 3) eV/Å, ``-dE/dpositions``.
        compute_stress: add ``stress`` (B, 3, 3) eV/Å³, ``(1/V) dE/dstrain``, ASE sign
            (positive = tensile). Needs structures periodic in all three directions.

    Attributes ``compute_forces`` and ``compute_stress`` are plain bools; they can be toggled on
    an instance, also after ``torch.jit.script``. ``cutoff``, ``species`` and ``model_dtype``
    are copied from the energy model.

    Shapes:
        forward(data: Dict[str, Tensor]) -> Dict[str, Tensor], all outputs float64; the input
        dict is not modified.
    """

    def __init__(
        self, energy_model: nn.Module, compute_forces: bool = True, compute_stress: bool = False
    ) -> None:
        super().__init__()
        self.energy_model = energy_model
        self.compute_forces = bool(compute_forces)
        self.compute_stress = bool(compute_stress)
        self.cutoff = float(getattr(energy_model, "cutoff", 0.0))
        self.species: list[int] = list(getattr(energy_model, "species", []))
        self.model_dtype = getattr(energy_model, "model_dtype", torch.float32)

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        if not (self.compute_forces or self.compute_stress):
            return self.energy_model(data)
        inputs = dict(data)
        positions = data[keys.POSITIONS]
        if not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        wrt: list[Tensor] = [positions]
        cell = data[keys.CELL]
        n_graphs = cell.shape[0]
        if self.compute_stress:
            pbc = data[keys.PBC]
            if not bool(pbc.all()):
                first = int(torch.nonzero(~pbc.all(dim=1))[0, 0])
                raise ValueError(
                    "stress needs structures periodic in all three directions, but structure "
                    + str(first)
                    + " is not (pbc must be all True to compute stress)"
                )
            strain = torch.zeros(
                (n_graphs, 3, 3), dtype=positions.dtype, device=positions.device
            ).requires_grad_(True)
            moved, deformed = strained(positions, cell, data[keys.BATCH], strain)
            inputs[keys.POSITIONS] = moved
            inputs[keys.CELL] = deformed
            wrt.append(strain)
        else:
            inputs[keys.POSITIONS] = positions
        out = self.energy_model(inputs)
        energy = out[keys.ENERGY]
        grad_outputs: list[Tensor | None] | None = [torch.ones_like(energy)]
        grads = torch.autograd.grad(
            [energy],
            wrt,
            grad_outputs=grad_outputs,
            retain_graph=self.training,
            create_graph=self.training,
            allow_unused=True,
        )
        result: dict[str, Tensor] = {
            keys.ENERGY: energy,
            keys.ATOMIC_ENERGIES: out[keys.ATOMIC_ENERGIES],
        }
        if self.compute_forces:
            position_grad = grads[0]
            if position_grad is None:
                position_grad = torch.zeros_like(positions)
            result[keys.FORCES] = -position_grad
        if self.compute_stress:
            strain_grad = grads[1]
            if strain_grad is None:
                strain_grad = torch.zeros((n_graphs, 3, 3), dtype=cell.dtype, device=cell.device)
            volume = torch.abs(torch.linalg.det(cell))
            result[keys.STRESS] = strain_grad / volume.view(-1, 1, 1)
        return result
