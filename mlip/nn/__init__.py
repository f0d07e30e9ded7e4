"""Building blocks of the energy models: harmonics, sphere grids, radial functions, messages,
node mixers, MLPs, padded neighbour tables."""

from mlip.nn.harmonics import SphericalHarmonics, num_sh
from mlip.nn.linear import DegreeLinear, degree_index
from mlip.nn.message import EdgeMessage, message_paths, real_gaunt
from mlip.nn.mixers import GridMLPMixer, GridProductMixer, LinearMixer, build_mixer
from mlip.nn.mlp import mlp
from mlip.nn.neighbor_table import padded_slots
from mlip.nn.radial import (
    BesselMLPRadial,
    SplineRadial,
    cubic_bspline_basis,
    gaussian_basis,
    polynomial_envelope,
)
from mlip.nn.sphere_grid import SphereGrid, gauss_legendre_grid, lebedev_grid, sphere_grid

__all__ = [
    "BesselMLPRadial",
    "DegreeLinear",
    "EdgeMessage",
    "GridMLPMixer",
    "GridProductMixer",
    "LinearMixer",
    "SphereGrid",
    "SphericalHarmonics",
    "SplineRadial",
    "build_mixer",
    "cubic_bspline_basis",
    "degree_index",
    "gauss_legendre_grid",
    "gaussian_basis",
    "lebedev_grid",
    "message_paths",
    "mlp",
    "num_sh",
    "padded_slots",
    "polynomial_envelope",
    "real_gaunt",
    "sphere_grid",
]
