"""Total charge and spin multiplicity of a structure: defaults and the parity rule.

A structure with atomic numbers Z_i and total charge q has ``sum(Z) - q`` electrons; a spin
multiplicity ``m = 2S + 1`` is possible only when ``m - 1`` (the number of unpaired electrons)
has the parity of the electron count. Readers, the calculator and the command lines all check
states with :func:`check_multiplicity`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["DEFAULT_CHARGE", "DEFAULT_SPIN", "check_multiplicity"]

DEFAULT_CHARGE: Final[int] = 0
DEFAULT_SPIN: Final[int] = 1


def _as_integer(value: float, what: str) -> int:
    if float(value) != round(float(value)):
        raise ValueError(f"{what} must be an integer, got {value}")
    return int(round(float(value)))


def check_multiplicity(atomic_numbers: Iterable[int], charge: float, spin: float) -> None:
    """Raise ``ValueError`` if multiplicity ``spin`` is impossible for the electron count.

    Args:
        atomic_numbers: Z of every atom.
        charge: total charge in e (an integer).
        spin: spin multiplicity 2S + 1 (an integer >= 1).
    """
    q = _as_integer(charge, "total charge")
    m = _as_integer(spin, "spin multiplicity")
    electrons = sum(int(z) for z in atomic_numbers) - q
    if m < 1:
        raise ValueError(f"spin multiplicity must be >= 1, got {m}")
    if electrons < 0:
        raise ValueError(f"total charge {q} leaves a negative electron count ({electrons})")
    if (electrons - (m - 1)) % 2 != 0 or m - 1 > electrons:
        raise ValueError(
            f"spin multiplicity {m} is impossible with total charge {q}: {electrons} electrons "
            f"need {'an odd' if electrons % 2 == 0 else 'an even'} multiplicity "
            f"{'(1, 3, ...)' if electrons % 2 == 0 else '(2, 4, ...)'} no larger than "
            f"{electrons + 1}"
        )
