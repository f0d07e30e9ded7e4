"""Padded per-atom neighbour tables: edge list -> rows ``i * M + m`` (M = most neighbours)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["padded_slots"]


def padded_slots(receiver: Tensor, n_nodes: int) -> tuple[Tensor, int]:
    """Row of each edge in a zero-padded (N M) table, and M.

    Edge e of receiver i gets row ``i * M + rank``, its rank among i's edges in input order, so
    ``table.index_copy(0, slot, edge_values)`` lays the edges out per receiver; rows of atoms
    with fewer than M neighbours stay as padding.

    Args:
        receiver: (E,) int64 receiving (centre) atom of each edge.
        n_nodes: N.

    Returns:
        ``slot`` (E,) int64 and M (1 when there are no edges).
    """
    if receiver.numel() == 0:
        return receiver, 1
    counts = torch.bincount(receiver, minlength=n_nodes)
    max_neighbors = int(counts.max())
    order = torch.argsort(receiver, stable=True)
    first = torch.cumsum(counts, 0) - counts
    sorted_receiver = receiver.index_select(0, order)
    rank = torch.arange(receiver.numel(), device=receiver.device) - first.index_select(
        0, sorted_receiver
    )
    slot = torch.empty_like(receiver)
    slot.index_copy_(0, order, sorted_receiver * max_neighbors + rank)
    return slot, max_neighbors
