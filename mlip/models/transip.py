"""TransIP: a plain (non-equivariant) transformer potential (Elhag et al., arXiv 2510.00027).

Each atom i reads its neighbourhood as a token sequence: one centre token (its species) and
one token per neighbour j within the cutoff, built from the raw Cartesian edge vector
``r_ij`` (so the network is *not* rotation invariant by construction), a Gaussian encoding of
``|r_ij|`` and the neighbour's species. Pre-norm transformer blocks run over that sequence;
attention weights of neighbour tokens are multiplied by the C^2 cutoff envelope, so a token
entering at the cutoff has no effect yet::

    a_im  = f_cut(r_im) exp(q_i . k_m / sqrt(d)) / sum_n f_cut(r_in) exp(q_i . k_n / sqrt(d))
    z_i   = sum_m f_cut(r_im) x_im / avg_num_neighbors     latent (N, C), neighbour tokens only
    e_i   = readout(z_i)                                   bias-free: an isolated atom has 0

Symmetry is learned, in one of two arms recorded in ``config["arm"]``:

* ``"embedding"`` (TransIP): the training loss adds ``equivariance_weight *``
  :func:`equivariance_loss` (model, batch, random rotation): a learned transformation network
  ``T(z, R)`` must map the latents of a structure to those of its rotated copy, so the
  transformer learns to encode rotations predictably in its embedding space. This module's
  version of the paper's objective is a relative mean-squared alignment (not contrastive).
* ``"augmentation"``: in training mode every structure's edge vectors are turned by a random
  O(3) matrix inside :meth:`TransIP.forward` (``rotation_augmentation``); forces and stress are
  gradients of the turned energy, so the labels need no rotation.

Equivariance is therefore approximate: the conformance suite measures and reports it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlip import keys
from mlip.models.base import AtomicEnergyModel, build_from_preset
from mlip.nn.mlp import mlp
from mlip.nn.neighbor_table import padded_slots
from mlip.nn.radial import gaussian_basis, polynomial_envelope

__all__ = [
    "ARMS",
    "PRESETS",
    "TransIP",
    "TransIPConfig",
    "build_transip",
    "equivariance_loss",
    "random_rotations",
    "rotate_structures",
]

ARMS = ("embedding", "augmentation")


@dataclass
class TransIPConfig:
    """Hyperparameters of :class:`TransIP` (all JSON-serialisable).

    Attributes:
        species: atomic numbers, in model order.
        cutoff: Å.
        num_layers: transformer blocks.
        channels: C, token width.
        num_heads: attention heads (must divide C).
        ffn_hidden: hidden width of each block's feed-forward network.
        num_radial: Gaussians encoding the edge length.
        readout_hidden: hidden width of the energy readout.
        arm: ``"embedding"`` (equivariance objective) or ``"augmentation"``.
        rotation_augmentation: randomly rotate each structure in training mode; None means
            "True for the augmentation arm, False for the embedding arm".
        equivariance_weight: weight of :func:`equivariance_loss` in the training loss
            (read by the trainer for the embedding arm).
        transform_hidden: hidden width of the latent transformation network ``T(z, R)``
            (embedding arm only).
        avg_num_neighbors: initial value of the normalisation buffer.
    """

    species: list[int]
    cutoff: float
    num_layers: int = 2
    channels: int = 64
    num_heads: int = 4
    ffn_hidden: int = 128
    num_radial: int = 16
    readout_hidden: int = 32
    arm: str = "embedding"
    rotation_augmentation: bool | None = None
    equivariance_weight: float = 1.0
    transform_hidden: int = 64
    avg_num_neighbors: float = 30.0


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(num_layers=2, channels=64, num_heads=4, ffn_hidden=128),
    "medium": dict(num_layers=4, channels=128, num_heads=8, ffn_hidden=256),
}


def random_rotations(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n, 3, 3) Haar-random orthogonal matrices (rotations and reflections)."""
    gaussian = torch.randn((n, 3, 3), dtype=dtype, device=device)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class _Block(nn.Module):
    """Pre-norm transformer block with envelope-weighted attention."""

    def __init__(self, channels: int, num_heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.norm_attention = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = mlp([channels, ffn_hidden, channels])

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens (N, T, C), weights (N, T) in [0, 1] (0 on padding) -> (N, T, C)."""
        n_nodes, length, channels = tokens.shape
        qkv = self.qkv(self.norm_attention(tokens))
        qkv = qkv.reshape(n_nodes, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]  # (N, H, T, d)
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (N, H, T, T)
        scores = scores - scores.amax(dim=-1, keepdim=True).detach()
        attention = torch.exp(scores) * weights.unsqueeze(1).unsqueeze(1)
        attention = attention / attention.sum(dim=-1, keepdim=True)
        mixed = (attention @ value).transpose(1, 2).reshape(n_nodes, length, channels)
        tokens = tokens + self.out(mixed)
        return tokens + self.ffn(self.norm_ffn(tokens))


class TransIP(AtomicEnergyModel):
    """Transformer interatomic potential: graph dict -> per-atom and total energy (float64).

    Args:
        config: :class:`TransIPConfig`.
        dtype: compute dtype (float32 or float64).
        preset: name recorded in :attr:`config`.
    """

    def __init__(
        self, config: TransIPConfig, dtype: torch.dtype = torch.float32, preset: str | None = None
    ) -> None:
        cfg = config
        if cfg.arm not in ARMS:
            raise ValueError(f"unknown TransIP arm {cfg.arm!r}; expected one of {list(ARMS)}")
        if cfg.channels % cfg.num_heads:
            raise ValueError(
                f"channels ({cfg.channels}) must be divisible by num_heads ({cfg.num_heads})"
            )
        augment = cfg.rotation_augmentation
        if augment is None:
            augment = cfg.arm == "augmentation"
        values = asdict(cfg)
        values["rotation_augmentation"] = bool(augment)
        super().__init__(
            cfg.species,
            cfg.cutoff,
            dtype,
            {"name": "transip", "preset": preset, **values},
            cfg.avg_num_neighbors,
        )
        self.arm = cfg.arm
        self.rotation_augmentation = bool(augment)
        self.equivariance_weight = float(cfg.equivariance_weight)
        self.num_radial = cfg.num_radial
        channels = cfg.channels
        self.centre_embedding = nn.Embedding(len(self.species), channels)
        self.neighbor_embedding = nn.Embedding(len(self.species), channels)
        self.vector_linear = nn.Linear(3, channels, bias=False)
        self.radial_linear = nn.Linear(cfg.num_radial, channels)
        self.blocks = nn.ModuleList(
            [_Block(channels, cfg.num_heads, cfg.ffn_hidden) for _ in range(cfg.num_layers)]
        )
        self.norm_latent = nn.LayerNorm(channels)
        self.readout = mlp([channels, cfg.readout_hidden, 1], bias=False)
        # T(z, R) of the equivariance objective; only the embedding arm has (and trains) it
        self.latent_transform = (
            mlp([channels + 9, cfg.transform_hidden, channels]) if cfg.arm == "embedding" else None
        )
        self.finish_init()

    def embed(self, data: dict[str, Tensor], augment: bool = True) -> tuple[Tensor, Tensor]:
        """Per-atom latents ``z`` (N, C) (model dtype) and species indices (N,).

        ``augment``: apply the random rotation of the augmentation arm (training mode only).
        """
        species = self._species(data[keys.ATOMIC_NUMBERS])
        edge_index = data[keys.EDGE_INDEX]
        receiver = edge_index[0]
        sender = edge_index[1]
        n_nodes = species.shape[0]
        vectors = self.edge_vectors(data)
        lengths = torch.linalg.norm(vectors, dim=-1)
        envelope = polynomial_envelope(lengths, self.cutoff)
        if augment and self.training and self.rotation_augmentation:
            n_graphs = data[keys.NUM_ATOMS].shape[0]
            rotations = random_rotations(n_graphs, vectors.dtype, vectors.device)
            edge_graph = data[keys.BATCH].index_select(0, receiver)
            vectors = torch.bmm(
                rotations.index_select(0, edge_graph), vectors.unsqueeze(-1)
            ).squeeze(-1)
        edge_tokens = (
            self.vector_linear(vectors)
            + self.radial_linear(gaussian_basis(lengths, self.cutoff, self.num_radial))
            + self.neighbor_embedding(species.index_select(0, sender))
        )
        slot, max_neighbors = padded_slots(receiver, n_nodes)
        rows = n_nodes * max_neighbors
        channels = edge_tokens.shape[1]
        padded = torch.zeros(
            (rows, channels), dtype=edge_tokens.dtype, device=edge_tokens.device
        ).index_copy(0, slot, edge_tokens)
        weights = torch.zeros((rows,), dtype=envelope.dtype, device=envelope.device).index_copy(
            0, slot, envelope
        )
        tokens = torch.cat(
            [
                self.centre_embedding(species).unsqueeze(1),
                padded.reshape(n_nodes, max_neighbors, channels),
            ],
            dim=1,
        )
        weights = weights.reshape(n_nodes, max_neighbors)
        weights = torch.cat([torch.ones_like(weights[:, :1]), weights], dim=1)
        for block in self.blocks:
            tokens = block(tokens, weights)
        # envelope-weighted sum over neighbour tokens (the centre token only attends); the
        # LayerNorm is per token, so padding and far tokens still contribute exactly 0
        neighbors = self.norm_latent(tokens[:, 1:]) * weights[:, 1:].unsqueeze(-1)
        latent = neighbors.sum(dim=1) / self.avg_num_neighbors
        return latent, species

    @torch.jit.unused
    def auxiliary_loss(self, data: dict[str, Tensor]) -> Tensor | None:
        """The training-only term the trainer adds to the loss (None for the augmentation arm):
        ``equivariance_weight * equivariance_loss`` under one Haar-random O(3) matrix per
        structure (drawn from torch's global generator, so a resumed run repeats it)."""
        if self.latent_transform is None:
            return None
        n_graphs = data[keys.NUM_ATOMS].shape[0]
        rotation = random_rotations(n_graphs, torch.float64, data[keys.POSITIONS].device)
        return self.equivariance_weight * equivariance_loss(self, data, rotation)

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Energies of a batch (``AtomicGraph.as_dict()``): ``energy`` (B,), ``energies`` (N,)
        eV, float64."""
        latent, species = self.embed(data, True)
        atomic = self.readout(latent).squeeze(-1)
        return self.total_energy(atomic, species, data[keys.BATCH], data[keys.NUM_ATOMS].shape[0])


def rotate_structures(data: dict[str, Tensor], rotation: Tensor) -> dict[str, Tensor]:
    """A copy of a batch with structure b turned by ``rotation[b]`` (positions and cell).

    Args:
        data: ``AtomicGraph.as_dict()``.
        rotation: (3, 3) for every structure or (B, 3, 3), orthogonal.
    """
    positions = data[keys.POSITIONS]
    cell = data[keys.CELL]
    n_graphs = cell.shape[0]
    rotation = rotation.to(dtype=positions.dtype, device=positions.device)
    if rotation.dim() == 2:
        rotation = rotation.unsqueeze(0).expand(n_graphs, 3, 3)
    if rotation.shape != (n_graphs, 3, 3):
        raise ValueError(f"rotation must be (3, 3) or ({n_graphs}, 3, 3), got {rotation.shape}")
    turned = dict(data)
    per_atom = rotation.index_select(0, data[keys.BATCH])
    turned[keys.POSITIONS] = torch.bmm(per_atom, positions.unsqueeze(-1)).squeeze(-1)
    turned[keys.CELL] = torch.bmm(cell, rotation.transpose(1, 2))
    return turned


def equivariance_loss(model: TransIP, data: dict[str, Tensor], rotation: Tensor) -> Tensor:
    """TransIP's embedding-space equivariance objective (scalar, differentiable).

    ``|| T(z(x), R) - z(R x) ||^2 / ||z(R x)||^2`` averaged over atoms, where ``z`` are the
    per-atom latents of :meth:`TransIP.embed` and ``T`` is the model's learned transformation
    network (an MLP on ``[z, vec(R)]``). Relative, so shrinking the latents does not lower it.
    The augmentation rotation is not applied inside.

    Args:
        model: a :class:`TransIP` (not wrapped in ``ForceStress`` or DDP).
        data: ``AtomicGraph.as_dict()`` of a batch.
        rotation: (3, 3) or (B, 3, 3) orthogonal matrices, e.g. :func:`random_rotations`.
    """
    transform = model.latent_transform
    if transform is None:
        raise ValueError(
            f"equivariance_loss needs a TransIP of the 'embedding' arm, got arm {model.arm!r}"
        )
    latent, _ = model.embed(data, augment=False)
    turned = rotate_structures(data, rotation)
    latent_turned, _ = model.embed(turned, augment=False)
    rotation = rotation.to(dtype=latent.dtype, device=latent.device)
    if rotation.dim() == 2:
        rotation = rotation.unsqueeze(0).expand(data[keys.CELL].shape[0], 3, 3)
    per_atom = rotation.index_select(0, data[keys.BATCH]).reshape(-1, 9)
    predicted = transform(torch.cat([latent, per_atom], dim=-1))
    error = (predicted - latent_turned).pow(2).sum(-1).mean()
    return error / (latent_turned.pow(2).sum(-1).mean() + 1e-12)


def build_transip(
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> TransIP:
    """Build a :class:`TransIP` from a preset (``"small"`` | ``"medium"`` | None) plus overrides
    (any :class:`TransIPConfig` field, e.g. ``arm="augmentation"``)."""
    return build_from_preset(
        TransIP, TransIPConfig, PRESETS, "TransIP", species, cutoff, preset, dtype, hyper
    )
