"""Exact quadrature grids on the sphere with real spherical-harmonic buffers.

A grid that integrates polynomials of degree ``D`` exactly makes the pointwise product of two
band-limited functions (degrees ``<= L1`` and ``<= L2``) followed by projection onto degrees
``<= L_out`` exact whenever ``L1 + L2 + L_out <= D`` (DESIGN_NOTES §2.2, §8.4).

Two families:

* ``"gl"``: Gauss-Legendre in cos(beta) with ``D // 2 + 1`` rings times ``D + 1`` uniform alpha
  points;
* ``"lebedev"``: ``scipy.integrate.lebedev_rule`` with the smallest available order ``>= D``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from mlip.nn.harmonics import e3nn_spherical_harmonics, num_sh

__all__ = ["SphereGrid", "gauss_legendre_grid", "lebedev_grid", "sphere_grid"]


def gauss_legendre_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre x uniform grid exact for polynomials of degree ``degree``.

    Returns:
        points (G, 3) on the unit sphere and weights (G,) summing to 4 pi.
    """
    return gauss_legendre_grid_resolution(degree // 2 + 1, degree + 1)


def lebedev_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Lebedev grid with the smallest available order ``>= degree``.

    Returns:
        points (G, 3) on the unit sphere and weights (G,) summing to 4 pi.
    """
    from scipy.integrate import lebedev_rule

    order = max(3, degree)
    while order <= 131:
        try:
            points, weights = lebedev_rule(order)
        except (NotImplementedError, ValueError):
            order += 1
            continue
        weights = np.asarray(weights) * (4.0 * np.pi / np.sum(weights))
        return np.ascontiguousarray(np.asarray(points).T), weights
    raise ValueError(f"no Lebedev rule of degree >= {degree}")


def sphere_grid(kind: str, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (G, 3) and weights (G,) of a grid of family ``kind`` exact to ``degree``."""
    if kind == "gl":
        return gauss_legendre_grid(degree)
    if kind == "lebedev":
        return lebedev_grid(degree)
    raise ValueError(f"unknown sphere grid {kind!r}; expected 'gl' or 'lebedev'")


class SphereGrid(nn.Module):
    """Transforms between real-SH coefficients (degrees <= lmax) and values on a sphere grid.

    The grid buffers use component normalisation, ``sum_m Y_lm(g)^2 = 2l + 1``, so a unit
    coefficient vector gives O(1) grid values. ``from_grid @ to_grid`` is the identity when the
    grid is exact to degree ``2 * lmax``.

    Args:
        lmax: maximum degree of the coefficients.
        degree: polynomial degree the quadrature must integrate exactly (>= 2 * lmax).
        kind: ``"gl"`` or ``"lebedev"``.
        resolution: optional (n_beta, n_alpha) for a Gauss-Legendre grid finer than ``degree``
            needs (used by the approximate SiLU grid mixer).

    Buffers:
        to_grid: (G, (lmax + 1)^2), values of Y at the grid points.
        from_grid: ((lmax + 1)^2, G), quadrature projection.
        weights: (G,), summing to 4 pi.
    """

    def __init__(
        self,
        lmax: int,
        degree: int,
        kind: str = "gl",
        resolution: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if resolution is not None:
            n_beta, n_alpha = resolution
            degree = min(2 * n_beta - 1, n_alpha - 1)
            kind = "gl"
            points, weights = gauss_legendre_grid_resolution(n_beta, n_alpha)
        else:
            points, weights = sphere_grid(kind, degree)
        self.lmax = lmax
        self.degree = degree
        self.kind = kind
        self.num_points = int(points.shape[0])
        values = e3nn_spherical_harmonics(lmax, points, "component")  # (G, D)
        projection = (values * weights[:, None]).T / (4.0 * math.pi)
        self.register_buffer("to_grid", torch.tensor(values), persistent=False)
        self.register_buffer("from_grid", torch.tensor(projection), persistent=False)
        self.register_buffer("weights", torch.tensor(weights), persistent=False)
        self.num_coefficients = num_sh(lmax)

    def forward(self, coefficients: Tensor) -> Tensor:
        """(D, ...) coefficients -> (G, ...) grid values."""
        flat = coefficients.reshape(coefficients.shape[0], -1)
        return (self.to_grid @ flat).reshape((self.num_points,) + coefficients.shape[1:])


def gauss_legendre_grid_resolution(n_beta: int, n_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre x uniform grid with explicit ring and meridian counts."""
    cos_beta, w_beta = np.polynomial.legendre.leggauss(n_beta)
    alpha = 2.0 * np.pi * np.arange(n_alpha) / n_alpha
    sin_beta = np.sqrt(1.0 - cos_beta**2)
    points = np.stack(
        [
            np.outer(sin_beta, np.cos(alpha)).ravel(),
            np.outer(sin_beta, np.sin(alpha)).ravel(),
            np.repeat(cos_beta, n_alpha),
        ],
        axis=1,
    )
    return points, np.repeat(w_beta, n_alpha) * (2.0 * np.pi / n_alpha)
