"""Node-side mixers: ``A (D, N, C)`` atomic basis -> ``B (D_out, N, C)`` updated features.

* :class:`GridProductMixer` (default, exactly O(3)-equivariant): iterated binary products on an
  exact sphere grid (DESIGN_NOTES §8.4). ``U_k = W_k A`` per degree; ``Q_2 = P(Y U_1 * Y U_2)``;
  for correlation 3, ``Q_3 = P(Y (V Q_2) * Y U_3)``; output ``W_0 A + sum_nu W_nu Q_nu``.
  Every product has operands of degree <= L and output of degree <= L, so the grid only needs to
  be exact for degree 3L.
* :class:`GridMLPMixer` (Facet-style ablation, approximately equivariant): a pointwise SiLU MLP
  on a (finer) Gauss-Legendre grid; the aliasing error must be measured, not assumed zero.
* :class:`LinearMixer` (``mixer="none"``): per-degree linear only.

All mixers end with a per-(species, degree, channel) scale, a cheap analogue of MACE's
species-dependent product weights. No mixer has a bias, so ``mixer(0) = 0``: an atom without
neighbours gets exactly its reference energy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlip.nn.harmonics import num_sh
from mlip.nn.linear import DegreeLinear, degree_index
from mlip.nn.sphere_grid import SphereGrid

__all__ = ["GridMLPMixer", "GridProductMixer", "LinearMixer", "build_mixer"]


class _SpeciesScale(nn.Module):
    """Multiply (D, N, C) features by a per-(species, degree, channel) factor (init 1)."""

    def __init__(self, num_species: int, lmax: int, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_species, lmax + 1, channels))
        self.register_buffer("degrees", degree_index(lmax), persistent=False)

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        factors = self.scale.index_select(0, species).index_select(1, self.degrees)  # (N, D, C)
        return features * factors.transpose(0, 1)


class LinearMixer(nn.Module):
    """``B = W A`` per degree, truncated to ``lmax_out`` (no products)."""

    def __init__(self, lmax: int, lmax_out: int, channels: int, num_species: int) -> None:
        super().__init__()
        self.d_out = num_sh(lmax_out)
        self.linear = DegreeLinear(lmax_out, channels, channels)
        self.species_scale = _SpeciesScale(num_species, lmax_out, channels)

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        return self.species_scale(self.linear(features[: self.d_out]), species)


class GridProductMixer(nn.Module):
    """Iterated Gaunt products on an exact sphere grid (exactly equivariant).

    Args:
        lmax: L, degree of the input A.
        lmax_out: degree of the output (<= L).
        channels: C.
        hidden: H, channels of each product operand.
        correlation: nu in {1, 2, 3, ...}; products of nu copies of A (body order nu + 1).
        num_species: for the species scale.
        grid: ``"gl"`` or ``"lebedev"``; exact to degree 3L.

    Shapes:
        forward(A (D, N, C), species (N,)) -> (D_out, N, C).
    """

    def __init__(
        self,
        lmax: int,
        lmax_out: int,
        channels: int,
        hidden: int,
        correlation: int,
        num_species: int,
        grid: str = "gl",
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.correlation = correlation
        self.d_out = num_sh(lmax_out)
        self.grid = SphereGrid(lmax, 3 * lmax, grid)
        n_products = max(correlation - 1, 0)
        self.n_products = n_products
        self.lift = DegreeLinear(lmax, channels, hidden * correlation) if n_products else None
        self.reweight = nn.ModuleList(
            [DegreeLinear(lmax, hidden, hidden) for _ in range(max(n_products - 1, 0))]
        )
        self.out = DegreeLinear(lmax_out, channels + n_products * hidden, channels)
        self.species_scale = _SpeciesScale(num_species, lmax_out, channels)

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        outputs = [features[: self.d_out]]
        lift = self.lift
        if lift is not None:
            hidden = self.hidden
            n_nodes = features.shape[1]
            lifted = lift(features)  # (D, N, nu H)
            # split, not slices: the backward of split is one cat, that of each slice a
            # zero-filled (G, N, nu H) tensor
            operands = self.grid(lifted).split(hidden, dim=-1)  # nu x (G, N, H)
            product = operands[0] * operands[1]
            products = [product]
            k = 2
            for reweight in self.reweight:
                coefficients = (
                    self.grid.from_grid @ product.reshape(product.shape[0], -1)
                ).reshape(-1, n_nodes, hidden)
                product = self.grid(reweight(coefficients)) * operands[k]
                products.append(product)
                k += 1
            stacked = torch.cat(products, dim=-1)  # (G, N, (nu - 1) H)
            projected = self.grid.from_grid[: self.d_out] @ stacked.reshape(stacked.shape[0], -1)
            outputs.append(projected.reshape(self.d_out, n_nodes, -1))
        mixed = self.out(torch.cat(outputs, dim=-1))
        return self.species_scale(mixed, species)


class GridMLPMixer(nn.Module):
    """Facet-style pointwise MLP on a sphere grid (only approximately equivariant).

    ``B = W_0 A + W_1 P(silu(silu(Y U W_a) W_b))`` with ``U = W_u A`` per degree. The grid is
    Gauss-Legendre with ``(2L + 5) x (4L + 9)`` points unless ``resolution`` is given.

    Shapes:
        forward(A (D, N, C), species (N,)) -> (D_out, N, C).
    """

    def __init__(
        self,
        lmax: int,
        lmax_out: int,
        channels: int,
        hidden: int,
        mlp_hidden: int,
        num_species: int,
        resolution: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.d_out = num_sh(lmax_out)
        if resolution is None:
            resolution = (2 * lmax + 5, 4 * lmax + 9)
        self.grid = SphereGrid(lmax, 2 * lmax, resolution=resolution)
        self.lift = DegreeLinear(lmax, channels, hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden, bias=False),
            nn.SiLU(),
            nn.Linear(mlp_hidden, hidden, bias=False),
            nn.SiLU(),
        )
        self.out = DegreeLinear(lmax_out, channels + hidden, channels)
        self.species_scale = _SpeciesScale(num_species, lmax_out, channels)

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        n_nodes = features.shape[1]
        on_grid = self.mlp(self.grid(self.lift(features)))  # (G, N, H)
        projected = self.grid.from_grid[: self.d_out] @ on_grid.reshape(on_grid.shape[0], -1)
        projected = projected.reshape(self.d_out, n_nodes, -1)
        mixed = self.out(torch.cat([features[: self.d_out], projected], dim=-1))
        return self.species_scale(mixed, species)


def build_mixer(
    kind: str,
    *,
    lmax: int,
    lmax_out: int,
    channels: int,
    hidden: int,
    correlation: int,
    num_species: int,
    grid: str,
    mlp_hidden: int,
) -> nn.Module:
    """Mixer by name: ``"grid"`` | ``"grid_mlp"`` | ``"none"``."""
    if kind == "grid":
        return GridProductMixer(
            lmax, lmax_out, channels, hidden, correlation, num_species, grid=grid
        )
    if kind == "grid_mlp":
        return GridMLPMixer(lmax, lmax_out, channels, hidden, mlp_hidden, num_species)
    if kind == "none":
        return LinearMixer(lmax, lmax_out, channels, num_species)
    raise ValueError(f"unknown mixer {kind!r}; expected 'grid', 'grid_mlp' or 'none'")
