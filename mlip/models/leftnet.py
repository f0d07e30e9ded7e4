"""LEFTNet: local substructure and frame-transition encoding (Du et al., NeurIPS 2023,
arXiv 2304.04757) as an energy model, for molecules only.

Atoms carry scalars ``s`` (N, C) and vectors ``v`` (N, 3, C) (PaiNN-like, degree 1 only). Every
edge (i, j) gets a local frame from the edge vector and the positions ``x`` relative to the
molecule's centroid::

    e1 = r_ij / |r_ij|,   e2 = (x_i x r_ij) / sqrt(|x_i x r_ij|^2 + eps^2),   e3 = e1 x e2

``e1`` and ``e3`` are vectors, ``e2`` a pseudovector, so for any two vector features a, b the
projections ``a.e1, a.e3, b.e1, b.e3`` and the product ``(a.e2)(b.e2)`` are O(3)-invariant
(:func:`frame_scalars`). Per layer::

    S_i    = sum_j W h_j (.) R(|r_ij|) r_ij/|r_ij| f_cut                   LSE: local substructure
    lse_ij = phi_lse(frame_scalars(S_i, S_j))                             (first layer only)
    fte_ij = phi_fte(frame_scalars(v_i, v_j))                             FTE: frame transition
    [a, b, c]_ij = phi_s(s_j) (.) (W_r g(|r_ij|) + W_l lse_ij + W_f fte_ij) f_cut
    s_i   += sum_j a_ij / avg;     v_i += sum_j (b_ij v_j + c_ij e1_ij) / avg
    s_i   += phi_u(s_i, |v_i|^2)                                          node update

(first layer: ``s_i, v_i`` are the aggregated messages alone, so an isolated atom has
``e_i = 0``), and ``e_i = readout(s_i)``. Forces are gradients of the energy (the paper's
direct force head is not used).

Periodic input is refused: the frames need positions relative to the molecule's centroid,
which periodic images do not define. The centroid also makes the model non-local (moving a far
atom moves every frame slightly), and the frame axis e2 degenerates (smoothly, through eps) for
atoms on a line through the centroid.
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

__all__ = [
    "PERIODIC_ERROR",
    "LEFTNet",
    "LEFTNetConfig",
    "PRESETS",
    "build_leftnet",
    "frame_scalars",
]

PERIODIC_ERROR = (
    "LEFTNet is for molecules only: its local frames use atom positions relative to each "
    "molecule's centroid, which periodic images do not define; got a structure with periodic "
    "boundary conditions (pbc True); use another model (e.g. gmep) for periodic systems"
)


@dataclass
class LEFTNetConfig:
    """Hyperparameters of :class:`LEFTNet` (all JSON-serialisable).

    Attributes:
        species: atomic numbers, in model order.
        cutoff: Å.
        num_layers: message-passing layers.
        channels: C, scalar and vector channels.
        num_radial: Gaussians encoding the edge length.
        readout_hidden: hidden width of the energy readout.
        frame_eps: Å², regularises the normalisation of the pseudovector axis e2.
        avg_num_neighbors: initial value of the normalisation buffer.
    """

    species: list[int]
    cutoff: float
    num_layers: int = 3
    channels: int = 64
    num_radial: int = 16
    readout_hidden: int = 32
    frame_eps: float = 0.01
    avg_num_neighbors: float = 30.0


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(num_layers=3, channels=64, num_radial=16),
    "medium": dict(num_layers=4, channels=128, num_radial=20),
}


def frame_scalars(first: Tensor, second: Tensor, frame: Tensor) -> Tensor:
    """O(3)-invariant projections of two vector features on an edge frame.

    Args:
        first, second: (E, 3, C) vector features (e.g. of the receiver and the sender).
        frame: (E, 3, 3), rows e1 (vector), e2 (pseudovector), e3 (vector).

    Returns:
        (E, 5 C): ``a.e1, a.e3, b.e1, b.e3, (a.e2)(b.e2)``.
    """
    a = torch.bmm(frame, first)  # (E, 3, C): projections on e1, e2, e3
    b = torch.bmm(frame, second)
    return torch.cat([a[:, 0], a[:, 2], b[:, 0], b[:, 2], a[:, 1] * b[:, 1]], dim=-1)


class _LEFTLayer(nn.Module):
    """One LEFTNet layer: frame-aware PaiNN-style message and node update."""

    def __init__(self, cfg: LEFTNetConfig, first: bool) -> None:
        super().__init__()
        channels = cfg.channels
        self.channels = channels
        self.first = first
        self.scalar_mlp = mlp([channels, channels, 3 * channels])
        self.radial_linear = nn.Linear(cfg.num_radial, 3 * channels)
        self.lse_linear = nn.Linear(channels, 3 * channels, bias=False)
        self.fte_mlp = None if first else mlp([5 * channels, channels, 3 * channels], bias=False)
        self.update_mlp = mlp([2 * channels, channels, 2 * channels], bias=False)

    def forward(
        self,
        scalars: Tensor,
        vectors: Tensor,
        radial: Tensor,
        lse: Tensor,
        frame: Tensor,
        envelope: Tensor,
        sender: Tensor,
        receiver: Tensor,
        inv_avg: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """scalars (N, C), vectors (N, 3, C), radial (E, R), lse (E, C), frame (E, 3, 3),
        envelope (E,) -> updated scalars and vectors."""
        channels = self.channels
        weights = self.radial_linear(radial) + self.lse_linear(lse)
        vectors_j = vectors.index_select(0, sender)
        fte_mlp = self.fte_mlp
        if fte_mlp is not None:
            weights = weights + fte_mlp(
                frame_scalars(vectors.index_select(0, receiver), vectors_j, frame)
            )
        messages = self.scalar_mlp(scalars).index_select(0, sender) * weights
        messages = messages * envelope.unsqueeze(-1)
        a, b, c = torch.split(messages, channels, dim=-1)
        scalar_change = torch.zeros_like(scalars).index_add(0, receiver, a) * inv_avg
        vector_messages = b.unsqueeze(1) * vectors_j + c.unsqueeze(1) * frame[:, 0].unsqueeze(-1)
        vector_change = torch.zeros_like(vectors).index_add(0, receiver, vector_messages) * inv_avg
        if self.first:
            scalars, vectors = scalar_change, vector_change
        else:
            scalars, vectors = scalars + scalar_change, vectors + vector_change
        update = self.update_mlp(torch.cat([scalars, (vectors * vectors).sum(1)], dim=-1))
        scalar_update, gate = torch.split(update, channels, dim=-1)
        return scalars + scalar_update, vectors * (1.0 + gate.unsqueeze(1))


class LEFTNet(AtomicEnergyModel):
    """LEFTNet energy model for molecules: graph dict -> per-atom and total energy (float64).

    Args:
        config: :class:`LEFTNetConfig`.
        dtype: compute dtype (float32 or float64).
        preset: name recorded in :attr:`config`.

    Raises (in ``forward``):
        ValueError: a structure with periodic boundary conditions.
    """

    local = False  # the molecular frame (centroid) depends on every atom

    def __init__(
        self, config: LEFTNetConfig, dtype: torch.dtype = torch.float32, preset: str | None = None
    ) -> None:
        cfg = config
        if not cfg.frame_eps > 0:
            raise ValueError(f"frame_eps must be > 0 Å², got {cfg.frame_eps}")
        super().__init__(
            cfg.species,
            cfg.cutoff,
            dtype,
            {"name": "leftnet", "preset": preset, **asdict(cfg)},
            cfg.avg_num_neighbors,
        )
        channels = cfg.channels
        self.num_radial = cfg.num_radial
        self.frame_eps = float(cfg.frame_eps)
        self.periodic_error: str = PERIODIC_ERROR
        self.embedding = nn.Embedding(len(self.species), channels)
        self.substructure_species = nn.Linear(channels, channels, bias=False)
        self.substructure_radial = nn.Linear(cfg.num_radial, channels)
        self.lse_mlp = mlp([5 * channels, channels, channels])
        self.layers = nn.ModuleList([_LEFTLayer(cfg, first=t == 0) for t in range(cfg.num_layers)])
        self.readout = mlp([channels, cfg.readout_hidden, 1], bias=False)
        self.finish_init()

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Energies of a batch of molecules (``AtomicGraph.as_dict()``): ``energy`` (B,),
        ``energies`` (N,) eV, float64."""
        if bool(data[keys.PBC].any()):
            raise ValueError(self.periodic_error)
        species = self._species(data[keys.ATOMIC_NUMBERS])
        edge_index = data[keys.EDGE_INDEX]
        receiver = edge_index[0]
        sender = edge_index[1]
        batch = data[keys.BATCH]
        num_atoms = data[keys.NUM_ATOMS]
        positions = data[keys.POSITIONS]
        centroids = torch.zeros(
            (num_atoms.shape[0], 3), dtype=positions.dtype, device=positions.device
        ).index_add(0, batch, positions) / num_atoms.unsqueeze(-1).to(positions.dtype)
        centred = (positions - centroids.index_select(0, batch)).to(self.model_dtype)
        vectors = self.edge_vectors(data)
        lengths = torch.linalg.norm(vectors, dim=-1)
        envelope = polynomial_envelope(lengths, self.cutoff)
        radial = gaussian_basis(lengths, self.cutoff, self.num_radial)
        axis1 = vectors / lengths.unsqueeze(-1)
        cross = torch.linalg.cross(centred.index_select(0, receiver), vectors, dim=-1)
        axis2 = cross / torch.sqrt((cross * cross).sum(-1, keepdim=True) + self.frame_eps**2)
        axis3 = torch.linalg.cross(axis1, axis2, dim=-1)
        frame = torch.stack([axis1, axis2, axis3], dim=1)  # (E, 3, 3)
        inv_avg = 1.0 / self.avg_num_neighbors

        features = self.embedding(species)
        substructure_weights = (
            self.substructure_species(features).index_select(0, sender)
            * self.substructure_radial(radial)
            * envelope.unsqueeze(-1)
        )
        substructure = (
            torch.zeros(
                (species.shape[0], 3, features.shape[1]),
                dtype=features.dtype,
                device=features.device,
            ).index_add(0, receiver, axis1.unsqueeze(-1) * substructure_weights.unsqueeze(1))
            * inv_avg
        )
        lse = self.lse_mlp(
            frame_scalars(
                substructure.index_select(0, receiver), substructure.index_select(0, sender), frame
            )
        )
        scalars = features
        node_vectors = torch.zeros_like(substructure)
        for layer in self.layers:
            scalars, node_vectors = layer(
                scalars,
                node_vectors,
                radial,
                lse,
                frame,
                envelope,
                sender,
                receiver,
                inv_avg,
            )
        atomic = self.readout(scalars).squeeze(-1)
        return self.total_energy(atomic, species, batch, num_atoms.shape[0])


def build_leftnet(
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> LEFTNet:
    """Build a :class:`LEFTNet` from a preset (``"small"`` | ``"medium"`` | None) plus
    overrides (any :class:`LEFTNetConfig` field). The model refuses periodic structures."""
    return build_from_preset(
        LEFTNet, LEFTNetConfig, PRESETS, "LEFTNet", species, cutoff, preset, dtype, hyper
    )
