"""HEGNN: high-degree EGNN (Cen et al., NeurIPS 2024, arXiv 2410.11443) as an energy model.

Each atom carries invariant features ``h`` (N, C) and steerable features ``v^(l)`` of degrees
l = 1..L with K channels each, stored as (N, (L + 1)^2 - 1, K). No Clebsch-Gordan products: the
steerable features enter the messages only through per-degree inner products ("scalarisation"),
so the cost per edge is one MLP plus O((L + 1)^2 K)::

    v_i^(l)  = sum_j tanh(w_l(h_j, |r_ij|)) Y_l(r_ij) f_cut / avg        initialisation
    s_ij^(l) = <v_i^(l), v_j^(l)>   (per channel, summed over m)         scalarisation
    m_ij     = phi_e(h_i, h_j, g(|r_ij|), s_ij) * f_cut(|r_ij|)
    d_ij     = v_i^(l) - v_j^(l)
    v_i^(l) += sum_j tanh(phi_v(m_ij))_l d_ij / sqrt(1 + |d_ij|^2) / avg  (not in the last layer)
    h_i      = phi_h(m_i)  (t = 0),   h_i += phi_h(h_i, m_i)  (t > 0),   m_i = sum_j m_ij / avg
    e_i      = readout(h_i)

Y are e3nn's real spherical harmonics (component normalisation, natural parity), so inner
products of equal degrees are O(3)-invariant, and the energy is exactly O(3)-invariant. Unlike
the reference code, the initial harmonics are not detached (forces need their gradient), and
there are K channels per degree instead of one. The coordinate update of the paper is left out:
only the energy is needed, and the steerable features already carry the geometry. Bounded steerable
features: the initial weights and the update gates pass through tanh and each edge's update is
normalised per degree and channel (as EGNN's ``tanh`` and ``norm_diff`` options bound its
coordinate update), so ``|v^(l)|`` stays O(1) and the inner products cannot grow with the
weights. Trained for 10 minutes at the shared AcAc recipe (lr 0.01), the unbounded model ended
dead (forces 0, test force RMSE 1041 meV/Å); with tanh gates alone the training loss jumped from
0.7 to 1e6 within one epoch (epoch 84) and the network died the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlip import keys
from mlip.models.base import AtomicEnergyModel, build_from_preset
from mlip.nn.harmonics import SphericalHarmonics
from mlip.nn.linear import degree_index
from mlip.nn.mlp import mlp
from mlip.nn.radial import gaussian_basis, polynomial_envelope

__all__ = ["HEGNN", "HEGNNConfig", "PRESETS", "build_hegnn"]


@dataclass
class HEGNNConfig:
    """Hyperparameters of :class:`HEGNN` (all JSON-serialisable).

    Attributes:
        species: atomic numbers, in model order.
        cutoff: Å.
        num_layers: message-passing layers.
        channels: C, width of invariant features and messages.
        lmax: L, highest degree of the steerable features (the paper uses up to 3).
        vector_channels: K, channels per degree of the steerable features.
        num_radial: Gaussians encoding the edge length.
        readout_hidden: hidden width of the energy readout.
        avg_num_neighbors: initial value of the normalisation buffer.
    """

    species: list[int]
    cutoff: float
    num_layers: int = 3
    channels: int = 64
    lmax: int = 3
    vector_channels: int = 8
    num_radial: int = 16
    readout_hidden: int = 32
    avg_num_neighbors: float = 30.0


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(num_layers=3, channels=64, lmax=3, vector_channels=8),
    "medium": dict(num_layers=4, channels=128, lmax=3, vector_channels=16),
}


class _HEGNNLayer(nn.Module):
    """One HEGNN layer: scalarised messages, steerable update, node update."""

    def __init__(self, cfg: HEGNNConfig, first: bool, update_steerable: bool) -> None:
        super().__init__()
        channels = cfg.channels
        self.lmax = cfg.lmax
        self.vector_channels = cfg.vector_channels
        self.receiver_linear = nn.Linear(channels, channels, bias=False)
        self.sender_linear = nn.Linear(channels, channels, bias=False)
        self.edge_linear = nn.Linear(cfg.num_radial + cfg.lmax * cfg.vector_channels, channels)
        self.edge_mlp = mlp([channels, channels], final_activation=True)
        self.steerable_mlp = (
            mlp([channels, channels, cfg.lmax * cfg.vector_channels], bias=False)
            if update_steerable
            else None
        )
        self.node_mlp = mlp([channels if first else 2 * channels, channels, channels], bias=False)
        self.first = first
        # (D - 1,) degree - 1 of each steerable component, and its one-hot (D - 1, L)
        degrees = degree_index(cfg.lmax)[1:] - 1
        self.register_buffer("degrees", degrees, persistent=False)
        self.register_buffer(
            "degree_sum",
            torch.nn.functional.one_hot(degrees, cfg.lmax).to(torch.get_default_dtype()),
            persistent=False,
        )

    def forward(
        self,
        features: Tensor,
        steerable: Tensor,
        radial: Tensor,
        envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
        inv_avg: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """features (N, C), steerable (N, D - 1, K), radial (E, R), envelope (E,) -> updated."""
        n_edges = sender.shape[0]
        steerable_i = steerable.index_select(0, receiver)
        steerable_j = steerable.index_select(0, sender)
        degree_sum = self.degree_sum.to(steerable.dtype)
        inner = torch.einsum("edk,dl->elk", steerable_i * steerable_j, degree_sum).reshape(
            n_edges, self.lmax * self.vector_channels
        )
        hidden = (
            self.receiver_linear(features).index_select(0, receiver)
            + self.sender_linear(features).index_select(0, sender)
            + self.edge_linear(torch.cat([radial, inner], dim=-1))
        )
        messages = self.edge_mlp(torch.nn.functional.silu(hidden)) * envelope.unsqueeze(-1)
        aggregated = torch.zeros_like(features).index_add(0, receiver, messages) * inv_avg
        steerable_mlp = self.steerable_mlp
        if steerable_mlp is not None:
            gates = torch.tanh(steerable_mlp(messages)).reshape(
                n_edges, self.lmax, self.vector_channels
            )
            difference = steerable_i - steerable_j
            squared = torch.einsum("edk,dl->elk", difference * difference, degree_sum)
            scale = gates * torch.rsqrt(1.0 + squared)  # (E, L, K), |change| < 1 per degree
            change = scale.index_select(1, self.degrees) * difference
            steerable = steerable + torch.zeros_like(steerable).index_add(0, receiver, change) * (
                inv_avg
            )
        if self.first:
            return self.node_mlp(aggregated), steerable
        return features + self.node_mlp(torch.cat([features, aggregated], dim=-1)), steerable


class HEGNN(AtomicEnergyModel):
    """HEGNN energy model: graph dict -> per-atom and total energy (float64).

    Args:
        config: :class:`HEGNNConfig`.
        dtype: compute dtype (float32 or float64).
        preset: name recorded in :attr:`config`.
    """

    def __init__(
        self, config: HEGNNConfig, dtype: torch.dtype = torch.float32, preset: str | None = None
    ) -> None:
        cfg = config
        if not 1 <= cfg.lmax <= 6:
            raise ValueError(f"HEGNN lmax must be between 1 and 6, got {cfg.lmax}")
        super().__init__(
            cfg.species,
            cfg.cutoff,
            dtype,
            {"name": "hegnn", "preset": preset, **asdict(cfg)},
            cfg.avg_num_neighbors,
        )
        self.lmax = cfg.lmax
        self.vector_channels = cfg.vector_channels
        self.num_radial = cfg.num_radial
        self.embedding = nn.Embedding(len(self.species), cfg.channels)
        self.edge_sh = SphericalHarmonics(cfg.lmax)
        self.init_sender = nn.Linear(cfg.channels, cfg.channels, bias=False)
        self.init_radial = nn.Linear(cfg.num_radial, cfg.channels)
        self.init_mlp = mlp([cfg.channels, cfg.lmax * cfg.vector_channels])
        self.register_buffer("degrees", degree_index(cfg.lmax)[1:] - 1, persistent=False)
        self.layers = nn.ModuleList(
            [
                _HEGNNLayer(cfg, first=t == 0, update_steerable=t < cfg.num_layers - 1)
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
        n_nodes = species.shape[0]
        n_edges = sender.shape[0]
        vectors = self.edge_vectors(data)
        lengths = torch.linalg.norm(vectors, dim=-1)
        envelope = polynomial_envelope(lengths, self.cutoff)
        radial = gaussian_basis(lengths, self.cutoff, self.num_radial)
        harmonics = self.edge_sh(vectors)[:, 1:]  # (E, D - 1), degrees 1..L
        inv_avg = 1.0 / self.avg_num_neighbors
        features = self.embedding(species)
        weights = torch.tanh(
            self.init_mlp(
                torch.nn.functional.silu(
                    self.init_sender(features).index_select(0, sender) + self.init_radial(radial)
                )
            )
        ) * envelope.unsqueeze(-1)
        weights = weights.reshape(n_edges, self.lmax, self.vector_channels)
        initial = harmonics.unsqueeze(-1) * weights.index_select(1, self.degrees)
        steerable = (
            torch.zeros(
                (n_nodes, harmonics.shape[1], self.vector_channels),
                dtype=initial.dtype,
                device=initial.device,
            ).index_add(0, receiver, initial)
            * inv_avg
        )
        for layer in self.layers:
            features, steerable = layer(
                features, steerable, radial, envelope, sender, receiver, inv_avg
            )
        atomic = self.readout(features).squeeze(-1)
        return self.total_energy(atomic, species, data[keys.BATCH], data[keys.NUM_ATOMS].shape[0])


def build_hegnn(
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> HEGNN:
    """Build an :class:`HEGNN` from a preset (``"small"`` | ``"medium"`` | None) plus overrides
    (any :class:`HEGNNConfig` field)."""
    return build_from_preset(
        HEGNN, HEGNNConfig, PRESETS, "HEGNN", species, cutoff, preset, dtype, hyper
    )
