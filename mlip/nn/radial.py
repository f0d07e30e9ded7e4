"""Radial functions: edge length -> per-path, per-channel weights.

* :class:`SplineRadial` (default): a *linear* map from a uniform cubic B-spline basis on
  ``[0, cutoff]``. The last three control points are fixed to zero, so the weights and their
  first and second derivatives vanish at the cutoff (C^2) and are exactly zero beyond it.
* :class:`BesselMLPRadial` (ablation, the NequIP/MACE way): ``num_basis`` Bessel functions times a
  polynomial envelope, then an MLP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "BesselMLPRadial",
    "SplineRadial",
    "cubic_bspline_basis",
    "gaussian_basis",
    "polynomial_envelope",
]


def cubic_bspline_basis(lengths: Tensor, cutoff: float, num_basis: int) -> Tensor:
    """Uniform cubic B-spline basis functions 0..num_basis-4 on ``[0, cutoff]``.

    Knot spacing ``h = cutoff / (num_basis - 3)``; basis function k is supported on
    ``[(k - 3) h, (k + 1) h]``. Functions ``num_basis - 3 .. num_basis - 1`` (whose control
    points are clamped to zero) are not returned.

    Args:
        lengths: (E,) Å.
        cutoff: Å.
        num_basis: K >= 4 (includes the three clamped functions).

    Returns:
        (E, K - 3), every column is C^2 in r and zero for r >= cutoff.
    """
    spacing = cutoff / (num_basis - 3)
    centres = torch.arange(num_basis - 3, dtype=lengths.dtype, device=lengths.device) - 1.0
    distance = torch.abs(lengths.unsqueeze(-1) / spacing - centres)  # (E, K - 3)
    inner = 2.0 / 3.0 - distance**2 + 0.5 * distance**3
    outer = torch.clamp(2.0 - distance, min=0.0) ** 3 / 6.0
    return torch.where(distance < 1.0, inner, outer)


class SplineRadial(nn.Module):
    """R(r) = sum_k c_k B_k(r): linear in a local cubic B-spline basis (no hidden layer).

    Args:
        cutoff: Å.
        num_basis: K, including the three zero-clamped end functions (K >= 4).
        num_out: number of weights produced per edge (paths x channels).

    Shapes:
        forward(lengths (E,)) -> (E, num_out).
    """

    def __init__(self, cutoff: float, num_basis: int, num_out: int) -> None:
        super().__init__()
        if num_basis < 4:
            raise ValueError(f"spline radial needs num_basis >= 4, got {num_basis}")
        self.cutoff = float(cutoff)
        self.num_basis = num_basis
        # Partition of unity: sum_k B_k = 1, so unit-variance control points give O(1) weights.
        self.control_points = nn.Parameter(torch.randn(num_basis - 3, num_out))

    def basis(self, lengths: Tensor) -> Tensor:
        """(E,) Å -> (E, K - 3) B-spline values; ``forward = basis @ control_points``."""
        return cubic_bspline_basis(lengths, self.cutoff, self.num_basis)

    def linear_weights(self) -> Tensor:
        """(K - 3, num_out) control points: ``forward(r) = basis(r) @ linear_weights()``."""
        return self.control_points

    def forward(self, lengths: Tensor) -> Tensor:
        return self.basis(lengths) @ self.control_points


def polynomial_envelope(lengths: Tensor, cutoff: float, p: int = 6) -> Tensor:
    """NequIP polynomial envelope u(r/r_c): 1 at 0, C^2-smooth zero at the cutoff and beyond."""
    x = torch.clamp(lengths / cutoff, max=1.0)
    value = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - p * (p + 1.0) / 2.0 * x ** (p + 2)
    )
    return value * (lengths < cutoff).to(lengths.dtype)


def gaussian_basis(lengths: Tensor, cutoff: float, num_basis: int) -> Tensor:
    """Gaussians ``exp(-(r - mu_k)^2 / (2 w^2))``, centres ``mu_k`` uniform on [0, cutoff].

    Smooth and bounded for any r >= 0 (also r > cutoff or r = 0), so it suits distances
    between updated coordinates; the width w is the centre spacing. It does not vanish at the
    cutoff: multiply by :func:`polynomial_envelope` of the original edge length for that.

    Args:
        lengths: (E,) Å.
        cutoff: Å.
        num_basis: K >= 2.

    Returns:
        (E, K).
    """
    centres = torch.linspace(0.0, cutoff, num_basis, dtype=lengths.dtype, device=lengths.device)
    width = cutoff / (num_basis - 1)
    return torch.exp(-0.5 * ((lengths.unsqueeze(-1) - centres) / width) ** 2)


class BesselMLPRadial(nn.Module):
    """Bessel basis x polynomial envelope, then a bias-free MLP with SiLU (NequIP/MACE radial).

    Without biases MLP(0) = 0, so the weights vanish smoothly at the cutoff.

    Args:
        cutoff: Å.
        num_basis: number of Bessel functions.
        num_out: weights per edge.
        hidden: hidden widths of the MLP.

    Shapes:
        forward(lengths (E,)) -> (E, num_out).
    """

    def __init__(
        self, cutoff: float, num_basis: int, num_out: int, hidden: tuple[int, ...] = (64, 64)
    ) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer(
            "frequencies", torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / cutoff
        )
        layers: list[nn.Module] = []
        width = num_basis
        for size in hidden:
            layers += [nn.Linear(width, size, bias=False), nn.SiLU()]
            width = size
        layers.append(nn.Linear(width, num_out, bias=False))
        self.mlp = nn.Sequential(*layers)

    def basis(self, lengths: Tensor) -> Tensor:
        """(E,) Å -> (E, num_basis) enveloped Bessel functions (the MLP's input)."""
        r = lengths.unsqueeze(-1)
        bessel = math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequencies * r) / r
        envelope = polynomial_envelope(lengths, self.cutoff).unsqueeze(-1)
        return bessel * envelope

    def linear_weights(self) -> Tensor:
        """Not linear in its basis: callers must check for a spline radial first."""
        raise RuntimeError("the Bessel-MLP radial is not linear in its basis")

    def forward(self, lengths: Tensor) -> Tensor:
        return self.mlp(self.basis(lengths))
