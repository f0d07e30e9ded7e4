"""EGNN: E(n)-equivariant graph network (Satorras, Hoogeboom and Welling, ICML 2021) as an
energy model; the speed floor of the model table.

Per layer t, with invariant node features ``h`` (N, C) and an equivariant displacement ``u``
(N, 3) that starts at zero (the coordinate update, kept relative so it works with periodic
images)::

    r'_ij  = r_ij + u_j - u_i                                  updated edge vector
    m_ij   = phi_e(h_i, h_j, g(|r'_ij|)) * f_cut(|r_ij|)       g: Gaussian basis
    m_i    = sum_j m_ij / avg_num_neighbors
    u_i   += sum_j r'_ij phi_x(m_ij) / avg_num_neighbors       (not in the last layer)
    h_i    = phi_h(m_i)              (t = 0)
    h_i   += phi_h(h_i, m_i)         (t > 0)
    e_i    = readout(h_i)            (last layer)

``h`` enters layer 0 as the species embedding. ``phi_h``, ``phi_x`` and the readout have no
biases and the first layer has no skip, so an atom without neighbours has ``e_i = 0`` exactly;
``f_cut`` is the C^2 polynomial envelope of the *original* length, so the energy is smooth when
a neighbour crosses the cutoff. Only distances enter the messages: no angles at one layer,
which limits accuracy (the coordinate updates let later layers see a little geometry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlip import keys
from mlip.models.base import AtomicEnergyModel, build_from_preset
from mlip.nn.mlp import mlp
from mlip.nn.radial import gaussian_basis, polynomial_envelope

__all__ = ["EGNN", "EGNNConfig", "PRESETS", "build_egnn"]


@dataclass
class EGNNConfig:
    """Hyperparameters of :class:`EGNN` (all JSON-serialisable).

    Attributes:
        species: atomic numbers, in model order.
        cutoff: Å.
        num_layers: message-passing layers.
        channels: C, width of node features and messages.
        num_radial: Gaussians encoding the (updated) edge length.
        coordinate_updates: update the displacement ``u`` (EGNN's coordinate update).
        readout_hidden: hidden width of the energy readout.
        avg_num_neighbors: initial value of the normalisation buffer.
    """

    species: list[int]
    cutoff: float
    num_layers: int = 3
    channels: int = 64
    num_radial: int = 16
    coordinate_updates: bool = True
    readout_hidden: int = 32
    avg_num_neighbors: float = 30.0


# "small" is the lean speed-floor setting (~0.7 MFLOP/atom forward at 43 neighbours, about
# half of GMEP small's counted FLOPs); "medium" trades speed for accuracy.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(num_layers=3, channels=32, num_radial=16, readout_hidden=16),
    "medium": dict(num_layers=4, channels=64, num_radial=16),
}


class _EGNNLayer(nn.Module):
    """One EGNN layer: edge messages, optional displacement update, node update."""

    def __init__(self, cfg: EGNNConfig, first: bool, update_coordinates: bool) -> None:
        super().__init__()
        channels = cfg.channels
        # phi_e's first linear map split into receiver, sender and radial parts, so the node
        # parts are computed once per atom and gathered
        self.receiver_linear = nn.Linear(channels, channels, bias=False)
        self.sender_linear = nn.Linear(channels, channels, bias=False)
        self.radial_linear = nn.Linear(cfg.num_radial, channels)
        self.edge_mlp = mlp([channels, channels], final_activation=True)
        self.coordinate_mlp = (
            mlp([channels, channels, 1], bias=False) if update_coordinates else None
        )
        self.node_mlp = mlp([channels if first else 2 * channels, channels, channels], bias=False)
        self.first = first
        self.cutoff = cfg.cutoff
        self.num_radial = cfg.num_radial

    def forward(
        self,
        features: Tensor,
        vectors: Tensor,
        envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
        inv_avg: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        """features (N, C), vectors (E, 3) Å, envelope (E,) -> features, displacement change."""
        n_nodes = features.shape[0]
        lengths = torch.sqrt((vectors * vectors).sum(-1) + 1e-12)
        hidden = (
            self.receiver_linear(features).index_select(0, receiver)
            + self.sender_linear(features).index_select(0, sender)
            + self.radial_linear(gaussian_basis(lengths, self.cutoff, self.num_radial))
        )
        messages = self.edge_mlp(torch.nn.functional.silu(hidden)) * envelope.unsqueeze(-1)
        aggregated = torch.zeros_like(features).index_add(0, receiver, messages) * inv_avg
        change: Tensor | None = None
        coordinate_mlp = self.coordinate_mlp
        if coordinate_mlp is not None:
            weighted = vectors * coordinate_mlp(messages)
            change = (
                torch.zeros((n_nodes, 3), dtype=vectors.dtype, device=vectors.device).index_add(
                    0, receiver, weighted
                )
                * inv_avg
            )
        if self.first:
            return self.node_mlp(aggregated), change
        return features + self.node_mlp(torch.cat([features, aggregated], dim=-1)), change


class EGNN(AtomicEnergyModel):
    """EGNN energy model: graph dict -> per-atom and total energy (float64).

    Args:
        config: :class:`EGNNConfig`.
        dtype: compute dtype (float32 or float64).
        preset: name recorded in :attr:`config`.

    Buffers: ``avg_num_neighbors``, ``reference_energies`` (S,), ``scale``, ``shift``
    (see :class:`mlip.models.base.AtomicEnergyModel`).
    """

    def __init__(
        self, config: EGNNConfig, dtype: torch.dtype = torch.float32, preset: str | None = None
    ) -> None:
        cfg = config
        super().__init__(
            cfg.species,
            cfg.cutoff,
            dtype,
            {"name": "egnn", "preset": preset, **asdict(cfg)},
            cfg.avg_num_neighbors,
        )
        self.embedding = nn.Embedding(len(self.species), cfg.channels)
        self.layers = nn.ModuleList(
            [
                _EGNNLayer(
                    cfg,
                    first=t == 0,
                    update_coordinates=cfg.coordinate_updates and t < cfg.num_layers - 1,
                )
                for t in range(cfg.num_layers)
            ]
        )
        self.readout = mlp([cfg.channels, cfg.readout_hidden, 1], bias=False)
        self.finish_init()

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Energies of a batch (``AtomicGraph.as_dict()``): ``energy`` (B,), ``energies`` (N,)
        eV, float64."""
        species = self._species(data[keys.ATOMIC_NUMBERS])
        edge_index = data[keys.EDGE_INDEX]
        receiver = edge_index[0]
        sender = edge_index[1]
        vectors = self.edge_vectors(data)
        envelope = polynomial_envelope(torch.linalg.norm(vectors, dim=-1), self.cutoff)
        inv_avg = 1.0 / self.avg_num_neighbors
        features = self.embedding(species)
        displacement = torch.zeros(
            (species.shape[0], 3), dtype=vectors.dtype, device=vectors.device
        )
        for layer in self.layers:
            updated = (
                vectors
                + displacement.index_select(0, sender)
                - displacement.index_select(0, receiver)
            )
            features, change = layer(features, updated, envelope, sender, receiver, inv_avg)
            if change is not None:
                displacement = displacement + change
        atomic = self.readout(features).squeeze(-1)
        return self.total_energy(atomic, species, data[keys.BATCH], data[keys.NUM_ATOMS].shape[0])


def build_egnn(
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> EGNN:
    """Build an :class:`EGNN` from a preset (``"small"`` | ``"medium"`` | None) plus overrides
    (any :class:`EGNNConfig` field)."""
    return build_from_preset(
        EGNN, EGNNConfig, PRESETS, "EGNN", species, cutoff, preset, dtype, hyper
    )
