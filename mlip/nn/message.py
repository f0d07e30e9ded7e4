"""Channelwise ("uvu") equivariant edge message, natural-parity paths only.

For an edge i <- j with unit direction r_hat and per-path, per-channel radial weights
``R_p,c(r)``::

    m_ij[l3 m3, c] = sum_{p = (l1, l2, l3)} R_p,c(r) sum_{m1, m2} G_p[m1, m2, m3]
                     h_j[l1 m1, c] Y_{l2 m2}(r_hat)

with ``l1 <= lmax_src``, ``l2, l3 <= lmax`` and ``l1 + l2 + l3`` even. ``G_p`` are real Gaunt
coefficients (integrals of three real spherical harmonics, computed by exact quadrature); for
even ``l1 + l2 + l3`` they are Clebsch-Gordan coefficients times a per-path constant, which the
learnable weights absorb. Each path block is scaled to Frobenius norm ``sqrt(2 l3 + 1)``.

Implementation: ``T[e] = Y[e] @ G`` gives a per-edge (D_out, Q) coupling matrix, where ``Q`` runs
over (path, m1); the message is one ``torch.bmm`` of T with the radially weighted source
features (E, Q, C). The same coefficients, one dense (D, D_src, D_out) block per path, are kept
as ``path_coupling`` for forms that sum over a receiver's neighbours before coupling
(:class:`mlip.models.gmep.GMEP`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mlip.nn.harmonics import e3nn_spherical_harmonics, num_sh
from mlip.nn.sphere_grid import gauss_legendre_grid

__all__ = ["EdgeMessage", "message_paths", "real_gaunt"]


def message_paths(lmax_src: int, lmax: int) -> list[tuple[int, int, int]]:
    """Paths (l1, l2, l3) with l1 <= lmax_src, l2, l3 <= lmax, triangle, even sum."""
    paths = []
    for l1 in range(lmax_src + 1):
        for l3 in range(lmax + 1):
            for l2 in range(abs(l1 - l3), min(l1 + l3, lmax) + 1):
                if (l1 + l2 + l3) % 2 == 0:
                    paths.append((l1, l2, l3))
    return paths


def real_gaunt(lmax: int) -> np.ndarray:
    """G[a, b, c] = integral of Y_a Y_b Y_c over the sphere (orthonormal real SH), degrees<=lmax."""
    points, weights = gauss_legendre_grid(3 * lmax)
    values = e3nn_spherical_harmonics(lmax, points, "integral")
    return np.einsum("ga,gb,gc,g->abc", values, values, values, weights)


class EdgeMessage(nn.Module):
    """Channelwise tensor product of sender features with edge spherical harmonics.

    Args:
        lmax_src: maximum degree of the sender features.
        lmax: maximum degree of the edge harmonics and of the message.

    Attributes:
        paths: list of (l1, l2, l3); the radial module must produce ``len(paths) * C`` weights.
        path_coupling: buffer (P, D D_src D_out): entry ``[p, (b, s, d)]`` is the coefficient of
            ``Y_b h[s] R_p`` in ``m[d]``, i.e. ``m[d, c] = sum_{p,b,s} path_coupling[p, (b, s, d)]
            Y_b R_p,c h[s, c]`` (the forward's contraction with the sums reordered).

    Shapes:
        forward(sender_features (E, D_src, C), edge_sh (E, D), radial (E, P, C))
            -> (E, D, C), with D_src = (lmax_src + 1)^2 and D = (lmax + 1)^2.
    """

    def __init__(self, lmax_src: int, lmax: int) -> None:
        super().__init__()
        self.paths = message_paths(lmax_src, lmax)
        gaunt = real_gaunt(max(lmax_src, lmax))
        d_out = num_sh(lmax)
        source_index: list[int] = []
        path_index: list[int] = []
        blocks = []
        for p, (l1, l2, l3) in enumerate(self.paths):
            block = gaunt[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2]
            block = block * np.sqrt(2 * l3 + 1) / np.linalg.norm(block)
            for m1 in range(2 * l1 + 1):
                # coupling[b, c, q] for this (path, m1) column q
                column = np.zeros((d_out, d_out))
                column[l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = block[m1]
                blocks.append(column)
                source_index.append(l1 * l1 + m1)
                path_index.append(p)
        coupling = np.stack(blocks, axis=-1)  # (D, D_out, Q)
        self.num_q = len(blocks)
        self.d_out = d_out
        self.register_buffer(
            "coupling",
            torch.tensor(coupling.reshape(d_out, d_out * self.num_q)),
            persistent=False,
        )
        self.register_buffer("source_index", torch.tensor(source_index), persistent=False)
        self.register_buffer("path_index", torch.tensor(path_index), persistent=False)
        d_src = num_sh(lmax_src)
        path_coupling = np.zeros((len(self.paths), d_out, d_src, d_out))
        for q in range(self.num_q):
            path_coupling[path_index[q], :, source_index[q], :] += coupling[:, :, q]
        self.register_buffer(
            "path_coupling",
            torch.tensor(path_coupling.reshape(len(self.paths), -1)),
            persistent=False,
        )

    def forward(self, sender_features: Tensor, edge_sh: Tensor, radial: Tensor) -> Tensor:
        n_edges = edge_sh.shape[0]
        coupling = (edge_sh @ self.coupling).reshape(n_edges, self.d_out, self.num_q)
        # index_select (backward: index_add_) is much faster on CPU than advanced indexing
        # (backward: index_put_ with accumulate)
        weighted = radial.index_select(1, self.path_index) * sender_features.index_select(
            1, self.source_index
        )
        return torch.bmm(coupling, weighted)
