"""Radius neighbour lists (full, both directions) on top of vesin.

The convention matches :class:`mlip.AtomicGraph`: for every returned pair ``(i, j, S)``,
``r_ij = positions[j] - positions[i] + S @ cell`` and ``0 < |r_ij| <= cutoff``. Atoms may lie
outside the cell; shifts are relative to the positions as given (nothing is wrapped).
"""

from __future__ import annotations

import numpy as np
import torch
import vesin

__all__ = ["MIN_DISTANCE", "check_min_distance", "neighbor_list", "validate_structure"]

ArrayLike = np.ndarray | torch.Tensor

MIN_DISTANCE = 0.1
"""Å. Two atoms closer than this are refused: no bond is shorter than ~0.7 Å (H2 0.74 Å) and
even high-temperature collisions stay well above 0.3 Å, so a distance below 0.1 Å can only be
a duplicated atom or a unit mistake. A model would return garbage there, and NaN at zero."""


def _as_numpy(value: ArrayLike | None, dtype: type, name: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} cannot be converted to a {dtype.__name__} array: {exc}") from None
    # ascontiguousarray would turn a 0-d array (pbc=True) into shape (1,)
    return np.ascontiguousarray(array) if array.ndim else array


def validate_structure(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float | None = None
) -> None:
    """Raise ``ValueError`` naming what is wrong with one structure.

    Args:
        positions: (n_atoms, 3) Å.
        cell: (3, 3) Å, rows are lattice vectors.
        pbc: (3,) bool.
        cutoff: Å, must be finite and > 0 when given.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(positions.shape)}")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {tuple(cell.shape)}")
    if pbc.shape != (3,):
        raise ValueError(f"pbc must have shape (3,), got {tuple(pbc.shape)}")
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"positions contain NaN or inf (atoms {bad[:10].tolist()})")
    if not np.all(np.isfinite(cell)):
        raise ValueError("cell contains NaN or inf")
    if cutoff is not None and not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a finite number > 0 Å, got {cutoff}")
    if pbc.any():
        periodic_vectors = cell[pbc]
        # Singular along the periodic directions: the periodic lattice vectors are (nearly)
        # linearly dependent or one of them is zero.
        gram = periodic_vectors @ periodic_vectors.T
        lengths = np.sqrt(np.diag(gram))
        if np.any(lengths < 1e-8):
            axes = np.nonzero(pbc)[0][lengths < 1e-8].tolist()
            raise ValueError(f"cell vector(s) {axes} are zero but periodic")
        normalised = gram / np.outer(lengths, lengths)
        if np.linalg.det(normalised) < 1e-10:
            raise ValueError("cell is singular along its periodic directions")


def check_min_distance(
    edge_index: ArrayLike,
    squared_distances: ArrayLike,
    cell_shifts: ArrayLike | None = None,
    min_distance: float = MIN_DISTANCE,
) -> None:
    """Raise ``ValueError`` naming the closest pair when atoms overlap.

    Args:
        edge_index: (2, n_edges) atom indices ``i, j`` of each pair.
        squared_distances: (n_edges,) squared pair distances, Å².
        cell_shifts: (n_edges, 3) image shifts, to tell an atom and its own periodic image.
        min_distance: Å; pairs closer than this are an error.
    """
    if len(squared_distances) == 0:
        return
    k = int(squared_distances.argmin())
    if float(squared_distances[k]) >= min_distance**2:
        return
    n_close = int((squared_distances < min_distance**2).sum()) // 2  # full list: both directions
    i, j = int(edge_index[0][k]), int(edge_index[1][k])
    distance = float(squared_distances[k]) ** 0.5
    pair = f"atoms {i} and {j}" if i != j else f"atom {i} and its periodic image"
    if i != j and cell_shifts is not None and any(int(s) != 0 for s in cell_shifts[k]):
        pair += " (periodic image)"
    more = f" ({n_close} such pairs)" if n_close > 1 else ""
    raise ValueError(
        f"{pair} are {distance:.3g} Å apart, closer than {min_distance} Å{more}: "
        "overlapping or duplicated atoms, or positions in the wrong unit"
    )


def neighbor_list(
    positions: ArrayLike,
    cell: ArrayLike | None,
    pbc: ArrayLike | bool,
    cutoff: float,
    min_distance: float = MIN_DISTANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs within ``cutoff`` of one structure, in both directions.

    Args:
        positions: (n_atoms, 3) Å.
        cell: (3, 3) Å with lattice vectors as rows, or None for a molecule (no periodicity).
        pbc: (3,) bool, or one bool for all three directions.
        cutoff: radius in Å, > 0.
        min_distance: Å; closer pairs are refused (0 accepts any positions, e.g. random
            points in tests).

    Returns:
        ``edge_index`` (2, n_edges) int64 with row 0 the receiving atom i and row 1 the
        neighbour j, and ``cell_shifts`` (n_edges, 3) int64 image shifts, both on the CPU.
        The order of pairs is vesin's (deterministic, not sorted); consumers use
        ``index_add_``/``scatter`` and do not rely on it.

    Raises:
        ValueError: NaN/inf positions, ``cutoff <= 0``, a singular cell along a periodic
            direction, shapes that do not match, or two atoms closer than
            :data:`MIN_DISTANCE` (:func:`check_min_distance`).
    """
    positions_np = _as_numpy(positions, np.float64, "positions")
    cell_np = _as_numpy(cell, np.float64, "cell")
    if cell_np is None:
        cell_np = np.zeros((3, 3))
    pbc_np = _as_numpy(pbc, bool, "pbc")
    if pbc_np.ndim == 0:
        pbc_np = np.repeat(pbc_np, 3)
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number in Å, got {cutoff!r}") from None
    validate_structure(positions_np, cell_np, pbc_np, cutoff)

    n_atoms = positions_np.shape[0]
    if n_atoms == 0:
        return torch.zeros((2, 0), dtype=torch.int64), torch.zeros((0, 3), dtype=torch.int64)
    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    pairs, shifts, distances = calculator.compute(
        positions_np, cell_np, pbc_np.tolist(), quantities="PSd", copy=False
    )
    if min_distance > 0:
        check_min_distance(pairs.T, distances * distances, shifts, min_distance)
    # (E, 2) uint64 pairs -> (2, E) int64; (E, 3) int32 shifts -> int64. One copy each.
    edge_index = torch.from_numpy(np.ascontiguousarray(pairs.T).astype(np.int64, copy=False))
    cell_shifts = torch.from_numpy(shifts.astype(np.int64))
    return edge_index, cell_shifts
