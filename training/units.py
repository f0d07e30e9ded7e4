"""Stress and virial labels in the units and sign conventions datasets use, to eV/Å³ ASE sign.

Every reader path converts stress/virial labels here, so that a frame always holds stress in
eV/Å³ with ASE's sign (positive = tensile) and Voigt order xx yy zz yz xz xy when 6 values.

Conventions (``data.stress_convention``):

- ``ase``: ASE's sign (tensile positive); a 6-vector is in ASE Voigt order xx yy zz yz xz xy.
- ``vasp``: VASP's sign (compressive positive, i.e. ``-1 x`` ASE's); a 6-vector is in VASP
  order xx yy zz xy yz zx (OUTCAR ``in kB`` line, mlearn's ``virial_stress``, MPTrj ``stress``).

Units (``data.stress_units``): ``eV/A^3`` (1), ``GPa`` (1/160.2), ``kbar`` (1/1602).

A virial is an energy (eV): ``stress = -virial / volume`` (the extxyz/MACE/NequIP sign; positive
virial = compressive). ``data.stress_convention`` sets only the Voigt order of a 6-value virial;
its sign is fixed by that definition.

:func:`check_stress_magnitude` refuses a converted stress larger than any material sustains
(default limit 1 eV/Å³ = 160 GPa): such a value almost always means the wrong unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import units as ase_units

__all__ = [
    "CONVENTIONS",
    "MAX_STRESS",
    "STRESS_UNITS",
    "check_stress_magnitude",
    "stress_to_ase",
    "virial_to_stress",
]

STRESS_UNITS: dict[str, float] = {
    "eV/A^3": 1.0,
    "GPa": ase_units.GPa,
    "kbar": 0.1 * ase_units.GPa,
}
"""Unit name -> factor to eV/Å³."""

CONVENTIONS = ("ase", "vasp")

MAX_STRESS = 1.0
"""Default largest |stress component| accepted, in eV/Å³ (≈ 160 GPa)."""

# index into a 6-vector given in the convention's order, giving the (i, j) tensor component
_VOIGT_PAIRS = {
    "ase": ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)),
    "vasp": ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)),
}


def _full_tensor(value: Any, convention: str, what: str) -> np.ndarray:
    """A (3, 3) tensor from 3x3, 9 or 6 (Voigt, in ``convention``'s order) values."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown stress convention {convention!r}; known: {CONVENTIONS}")
    array = np.asarray(value, dtype=np.float64)
    if array.shape == (9,):
        return array.reshape(3, 3)
    if array.shape == (6,):
        full = np.empty((3, 3))
        for k, (i, j) in enumerate(_VOIGT_PAIRS[convention]):
            full[i, j] = full[j, i] = array[k]
        return full
    if array.shape != (3, 3):
        raise ValueError(f"{what} must be 3x3, 9 or 6 values, got shape {array.shape}")
    return array


def stress_to_ase(value: Any, units: str = "eV/A^3", convention: str = "ase") -> np.ndarray:
    """Stress given in ``units`` and ``convention`` as a (3, 3) eV/Å³ tensor with ASE's sign.

    Args:
        value: 3x3, 9 values, or 6 Voigt values in the convention's order.
        units: one of :data:`STRESS_UNITS`.
        convention: ``ase`` or ``vasp`` (see the module docstring).
    """
    if units not in STRESS_UNITS:
        raise ValueError(f"unknown stress unit {units!r}; known: {', '.join(STRESS_UNITS)}")
    sign = -1.0 if convention == "vasp" else 1.0
    return sign * STRESS_UNITS[units] * _full_tensor(value, convention, "stress")


def virial_to_stress(value: Any, cell: np.ndarray | None, convention: str = "ase") -> np.ndarray:
    """Virial in eV (3x3, 9, or 6 in ``convention``'s Voigt order) to ASE stress, eV/Å³.

    ``stress = -virial / |det(cell)|``.
    """
    virial = _full_tensor(value, convention, "virial")
    if cell is None:
        raise ValueError("virial given but the frame has no cell")
    volume = abs(float(np.linalg.det(cell)))
    if volume == 0.0:
        raise ValueError("virial given but the cell has zero volume")
    return -virial / volume


def check_stress_magnitude(
    stress: np.ndarray, units: str, convention: str, source: str, limit: float = MAX_STRESS
) -> str | None:
    """None if ``max |stress| <= limit`` (eV/Å³), else a message saying what was assumed.

    Args:
        stress: converted (3, 3) stress, eV/Å³.
        units, convention: how the raw label was read (for the message).
        source: ``"stress"`` or ``"virial"``: which label it came from.
    """
    if not np.all(np.isfinite(stress)):
        return None  # NaN/inf: Frame.validated reports it as such
    largest = float(np.max(np.abs(stress)))
    if largest <= limit:
        return None
    gpa = largest / ase_units.GPa
    if source == "virial":
        assumed = "read as a virial in eV"
    else:
        assumed = f"read as {units} with the {convention} convention"
    return (
        f"|stress| = {largest:.3g} eV/Å³ ({gpa:.3g} GPa) after conversion is larger than any "
        f"material sustains (limit {limit:g} eV/Å³); the label was {assumed}. Set "
        "data.stress_units (eV/A^3, GPa, kbar) and data.stress_convention (ase, vasp) to "
        "match the file, or raise data.max_stress"
    )
