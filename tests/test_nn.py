"""Building blocks: grid exactness, spherical harmonics, spline C^2 cutoff, message paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.nn import (
    BesselMLPRadial,
    EdgeMessage,
    GridMLPMixer,
    GridProductMixer,
    SphereGrid,
    SphericalHarmonics,
    SplineRadial,
    cubic_bspline_basis,
    message_paths,
    num_sh,
)
from mlip.nn.harmonics import e3nn_spherical_harmonics
from mlip.testing import random_orthogonal


def _wigner(lmax: int, rotation: np.ndarray) -> torch.Tensor:
    """Block-diagonal D(R) in the real-SH basis, from Y(R x) = D(R) Y(x) (least squares)."""
    rng = np.random.default_rng(3)
    points = rng.normal(size=(200, 3))
    before = e3nn_spherical_harmonics(lmax, points)
    after = e3nn_spherical_harmonics(lmax, points @ rotation.T)
    matrix, *_ = np.linalg.lstsq(before, after, rcond=None)
    return torch.tensor(matrix.T)


@pytest.mark.parametrize("lmax", [0, 1, 2, 3, 4])
def test_spherical_harmonics_match_e3nn(lmax: int) -> None:
    vectors = torch.randn(50, 3, dtype=torch.float64) * 3.0
    ours = SphericalHarmonics(lmax)(vectors)
    reference = torch.tensor(e3nn_spherical_harmonics(lmax, vectors.numpy()))
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["gl", "lebedev"])
@pytest.mark.parametrize("lmax", [1, 2, 3, 4])
def test_grid_product_is_exact_to_3l(kind: str, lmax: int) -> None:
    """Product of two degree-L functions projected to degree L is exact on a 3L grid."""
    grid = SphereGrid(lmax, 3 * lmax, kind)
    fine = SphereGrid(2 * lmax, 6 * lmax + 2, "gl")
    d = num_sh(lmax)
    a = torch.randn(d, 5, dtype=torch.float64)
    b = torch.randn(d, 5, dtype=torch.float64)
    coarse = grid.from_grid @ (grid(a) * grid(b))
    pad = torch.zeros(num_sh(2 * lmax) - d, 5, dtype=torch.float64)
    exact = (fine.from_grid @ (fine(torch.cat([a, pad])) * fine(torch.cat([b, pad]))))[:d]
    torch.testing.assert_close(coarse, exact, atol=1e-12, rtol=0)
    # The grid is also exact for the projection identity (degree 2L).
    torch.testing.assert_close(grid.from_grid @ grid.to_grid, torch.eye(d, dtype=torch.float64))


def test_grid_too_small_is_not_exact() -> None:
    """Sanity check of the exactness test: a grid exact only to 3L - 2 fails."""
    lmax = 3
    grid = SphereGrid(lmax, 3 * lmax - 2, "gl")
    fine = SphereGrid(2 * lmax, 6 * lmax + 2, "gl")
    d = num_sh(lmax)
    a = torch.randn(d, 3, dtype=torch.float64)
    pad = torch.zeros(num_sh(2 * lmax) - d, 3, dtype=torch.float64)
    coarse = grid.from_grid @ (grid(a) * grid(a))
    exact = (fine.from_grid @ (fine(torch.cat([a, pad])) ** 2))[:d]
    assert float((coarse - exact).abs().max()) > 1e-3


def test_lebedev_uses_fewer_points() -> None:
    assert SphereGrid(3, 9, "lebedev").num_points == 38
    assert SphereGrid(3, 9, "gl").num_points == 50
    assert SphereGrid(2, 6, "lebedev").num_points == 26


@pytest.mark.parametrize("correlation", [2, 3])
@pytest.mark.parametrize("kind", ["gl", "lebedev"])
def test_grid_product_mixer_equivariant(correlation: int, kind: str) -> None:
    lmax = 3
    torch.manual_seed(0)
    mixer = GridProductMixer(lmax, lmax, 4, 6, correlation, 2, kind).double()
    features = torch.randn(num_sh(lmax), 7, 4, dtype=torch.float64)
    species = torch.randint(0, 2, (7,))
    wigner = _wigner(lmax, random_orthogonal(1))
    rotated_in = torch.einsum("ab,bnc->anc", wigner, features)
    out_rotated = mixer(rotated_in, species)
    rotated_out = torch.einsum("ab,bnc->anc", wigner, mixer(features, species))
    torch.testing.assert_close(out_rotated, rotated_out, atol=1e-11, rtol=0)


def test_grid_mlp_mixer_error_is_small_but_reported() -> None:
    lmax = 2
    torch.manual_seed(0)
    mixer = GridMLPMixer(lmax, lmax, 4, 6, 8, 1).double()
    features = torch.randn(num_sh(lmax), 5, 4, dtype=torch.float64)
    species = torch.zeros(5, dtype=torch.int64)
    wigner = _wigner(lmax, random_orthogonal(2))
    a = mixer(torch.einsum("ab,bnc->anc", wigner, features), species)
    b = torch.einsum("ab,bnc->anc", wigner, mixer(features, species))
    error = float((a - b).abs().max() / b.abs().max())
    print(f"\ngrid_mlp mixer relative equivariance error (L=2, 9x17 GL grid): {error:.2e}")
    assert error < 1e-2


def test_spline_is_c2_at_cutoff_and_zero_beyond() -> None:
    cutoff, k = 5.0, 10
    radial = SplineRadial(cutoff, k, 7).double()
    r = torch.tensor([cutoff - 1e-3, cutoff, cutoff + 0.5], dtype=torch.float64)
    r.requires_grad_(True)
    values = radial(r)
    (first,) = torch.autograd.grad(values.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    assert float(values[1:].abs().max()) == 0.0
    assert float(first[1:].abs().max()) == 0.0
    assert float(second[1:].abs().max()) == 0.0
    # Approaching from inside: R ~ (rc - r)^3, R' ~ (rc - r)^2, R'' ~ (rc - r).
    assert float(values[0].abs().max()) < 1e-6
    assert float(second[0].abs()) < 1e-1


def test_spline_basis_partition_of_unity_and_smooth() -> None:
    cutoff, k = 6.0, 12
    h = cutoff / (k - 3)
    r = torch.linspace(0.0, cutoff - 3 * h, 200, dtype=torch.float64)
    basis = cubic_bspline_basis(r, cutoff, k)
    # Far from the clamped tail all K - 3 free functions plus the first (negative-index) ones
    # sum to one on [h, cutoff - 3h]; check positivity and boundedness everywhere.
    assert float(basis.min()) >= 0.0 and float(basis.max()) <= 2.0 / 3.0 + 1e-12
    inner = (r > h) & (r < cutoff - 3 * h)
    torch.testing.assert_close(basis[inner].sum(-1), torch.ones_like(r[inner]))
    # Continuity of the second derivative across a knot.
    knot = torch.tensor([2 * h - 1e-6, 2 * h + 1e-6], dtype=torch.float64, requires_grad=True)
    b = cubic_bspline_basis(knot, cutoff, k)
    (d1,) = torch.autograd.grad(b.sum(), knot, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), knot)
    assert float((d2[0] - d2[1]).abs()) < 1e-4


def test_bessel_radial_vanishes_at_cutoff() -> None:
    radial = BesselMLPRadial(4.0, 6, 5, (8,)).double()
    out = radial(torch.tensor([4.0, 4.5], dtype=torch.float64))
    assert float(out.abs().max()) == 0.0


def test_message_paths_natural_parity() -> None:
    paths = message_paths(1, 3)
    assert all((a + b + c) % 2 == 0 for a, b, c in paths)
    assert (1, 1, 1) not in paths and (1, 0, 1) in paths and (1, 2, 1) in paths
    assert len(message_paths(0, 2)) == 3


@pytest.mark.parametrize(("lsrc", "lmax"), [(1, 3), (2, 2)])
def test_edge_message_path_coupling_reproduces_forward(lsrc: int, lmax: int) -> None:
    """``path_coupling`` (the per-receiver form's coefficients) gives the forward's messages."""
    message = EdgeMessage(lsrc, lmax).double()
    n_edges, channels, d_out = 5, 3, num_sh(lmax)
    edge_sh = SphericalHarmonics(lmax).double()(torch.randn(n_edges, 3, dtype=torch.float64))
    features = torch.randn(n_edges, num_sh(lsrc), channels, dtype=torch.float64)
    radial = torch.randn(n_edges, len(message.paths), channels, dtype=torch.float64)
    coupling = message.path_coupling.reshape(len(message.paths), d_out, num_sh(lsrc), d_out)
    expected = torch.einsum("pbsd,eb,epc,esc->edc", coupling, edge_sh, radial, features)
    torch.testing.assert_close(message(features, edge_sh, radial), expected, atol=1e-12, rtol=0)


def test_edge_message_equivariant() -> None:
    lsrc, lmax = 1, 3
    message = EdgeMessage(lsrc, lmax).double()
    sh = SphericalHarmonics(lmax).double()
    n_edges, channels = 6, 3
    vectors = torch.randn(n_edges, 3, dtype=torch.float64)
    features = torch.randn(n_edges, num_sh(lsrc), channels, dtype=torch.float64)
    radial = torch.randn(n_edges, len(message.paths), channels, dtype=torch.float64)
    rotation = random_orthogonal(4)
    d_src, d_out = _wigner(lsrc, rotation), _wigner(lmax, rotation)
    rotated = message(
        torch.einsum("ab,ebc->eac", d_src, features),
        sh(vectors @ torch.tensor(rotation).T),
        radial,
    )
    expected = torch.einsum("ab,ebc->eac", d_out, message(features, sh(vectors), radial))
    torch.testing.assert_close(rotated, expected, atol=1e-12, rtol=0)
