"""Building blocks of the GMEP model: harmonics, sphere grids, radial functions, messages,
node mixers."""

from mlip.nn.harmonics import SphericalHarmonics, num_sh
from mlip.nn.linear import DegreeLinear, degree_index
from mlip.nn.message import EdgeMessage, message_paths, real_gaunt
from mlip.nn.mixers import GridMLPMixer, GridProductMixer, LinearMixer, build_mixer
from mlip.nn.radial import BesselMLPRadial, SplineRadial, cubic_bspline_basis
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
    "lebedev_grid",
    "message_paths",
    "num_sh",
    "real_gaunt",
    "sphere_grid",
]
