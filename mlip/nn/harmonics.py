"""Real spherical harmonics as one GEMM on monomials (TorchScript-friendly, no trig).

Every real spherical harmonic of degree l is, on the unit sphere, a homogeneous polynomial of
degree l in (x, y, z). At construction we fit the coefficients of e3nn's real spherical harmonics
(``e3nn.o3.spherical_harmonics``, natural parity, same ordering and sign convention) in the
basis of degree-l monomials; the fit is exact to round-off and is checked. At run time the
harmonics are ``monomials(r_hat) @ coefficients``.
"""

from __future__ import annotations

import numpy as np
import torch
from e3nn import o3
from torch import Tensor, nn

__all__ = ["SphericalHarmonics", "e3nn_spherical_harmonics", "num_sh"]


def num_sh(lmax: int) -> int:
    """Number of real spherical-harmonic components of degrees 0..lmax, (lmax + 1)^2."""
    return (lmax + 1) ** 2


def e3nn_spherical_harmonics(
    lmax: int, vectors: np.ndarray, normalization: str = "component"
) -> np.ndarray:
    """Reference values from e3nn, float64.

    Args:
        lmax: maximum degree.
        vectors: (n, 3), need not be normalised.
        normalization: ``"component"`` (sum_m Y_lm^2 = 2l + 1) or ``"integral"``
            (orthonormal on the sphere).

    Returns:
        (n, (lmax + 1)^2) array.
    """
    values = o3.spherical_harmonics(
        list(range(lmax + 1)),
        torch.as_tensor(np.asarray(vectors, dtype=np.float64)),
        normalize=True,
        normalization=normalization,
    )
    return values.numpy()


def _monomials(lmax: int) -> list[tuple[int, int, int]]:
    """Exponents (a, b, c) of x^a y^b z^c, grouped by total degree 0..lmax."""
    exps = []
    for degree in range(lmax + 1):
        for a in range(degree, -1, -1):
            for b in range(degree - a, -1, -1):
                exps.append((a, b, degree - a - b))
    return exps


class SphericalHarmonics(nn.Module):
    """Real spherical harmonics of the direction of each vector, degrees 0..lmax.

    Args:
        lmax: maximum degree.
        normalization: ``"component"`` or ``"integral"`` (as in e3nn).

    Shapes:
        forward(vectors (E, 3)) -> (E, (lmax + 1)^2), same dtype as ``vectors``.
    """

    def __init__(self, lmax: int, normalization: str = "component") -> None:
        super().__init__()
        self.lmax = lmax
        exps = _monomials(lmax)
        rng = np.random.default_rng(0)
        points = rng.normal(size=(400, 3))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        target = e3nn_spherical_harmonics(lmax, points, normalization)
        coefficients = np.zeros((len(exps), num_sh(lmax)))
        start_m = 0
        for degree in range(lmax + 1):
            cols = slice(degree * degree, (degree + 1) ** 2)
            rows = [k for k, e in enumerate(exps) if sum(e) == degree]
            basis = np.stack([np.prod(points ** np.array(exps[k]), axis=1) for k in rows], 1)
            fit, *_ = np.linalg.lstsq(basis, target[:, cols], rcond=None)
            residual = np.abs(basis @ fit - target[:, cols]).max()
            if residual > 1e-10:
                raise RuntimeError(f"spherical-harmonic fit failed at l={degree}: {residual}")
            coefficients[rows, cols] = fit
            start_m += len(rows)
        exps_t = torch.tensor(exps, dtype=torch.int64)
        self.register_buffer("exp_x", exps_t[:, 0].clone(), persistent=False)
        self.register_buffer("exp_y", exps_t[:, 1].clone(), persistent=False)
        self.register_buffer("exp_z", exps_t[:, 2].clone(), persistent=False)
        self.register_buffer(
            "coefficients", torch.tensor(coefficients, dtype=torch.float64), persistent=False
        )

    def forward(self, vectors: Tensor) -> Tensor:
        unit = vectors / torch.linalg.norm(vectors, dim=-1, keepdim=True)
        ones = torch.ones_like(unit)
        powers = [ones]
        for _ in range(self.lmax):
            powers.append(powers[-1] * unit)
        stacked = torch.stack(powers, dim=-1)  # (E, 3, lmax + 1)
        monomials = (
            stacked[:, 0, self.exp_x] * stacked[:, 1, self.exp_y] * stacked[:, 2, self.exp_z]
        )
        return monomials @ self.coefficients.to(vectors.dtype)
