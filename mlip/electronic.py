"""Total charge and spin multiplicity of a structure: defaults and the parity rule.

A structure with atomic numbers Z_i and total charge q has ``sum(Z) - q`` electrons; a spin
multiplicity ``m = 2S + 1`` is possible only when ``m - 1`` (the number of unpaired electrons)
has the parity of the electron count. Readers, the calculator and the command lines all check
states with :func:`check_multiplicity`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["DEFAULT_CHARGE", "DEFAULT_SPIN", "charge_and_spin", "check_multiplicity"]

DEFAULT_CHARGE: Final[int] = 0
DEFAULT_SPIN: Final[int] = 1


def _as_integer(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if not math.isfinite(number) or number != round(number):
        raise ValueError(f"{what} must be an integer, got {value}")
    return int(round(number))


def check_multiplicity(
    atomic_numbers: Iterable[int], charge: float, spin: float, periodic: bool = False
) -> None:
    """Raise ``ValueError`` if multiplicity ``spin`` is impossible for the electron count.

    Args:
        atomic_numbers: Z of every atom.
        charge: total charge in e (an integer).
        spin: spin multiplicity 2S + 1 (an integer >= 1).
        periodic: a 3-D periodic cell: the values must still be integers (multiplicity >= 1),
            but the electron-count parity rule is not applied (a cell's multiplicity labels
            the level of theory, and an odd electron count per cell is no contradiction).
    """
    q = _as_integer(charge, "total charge")
    m = _as_integer(spin, "spin multiplicity")
    electrons = sum(int(z) for z in atomic_numbers) - q
    if m < 1:
        raise ValueError(f"spin multiplicity must be >= 1, got {m}")
    if periodic:
        return
    if electrons < 0:
        raise ValueError(f"total charge {q} leaves a negative electron count ({electrons})")
    if (electrons - (m - 1)) % 2 != 0 or m - 1 > electrons:
        raise ValueError(
            f"spin multiplicity {m} is impossible with total charge {q}: {electrons} electrons "
            f"need {'an odd' if electrons % 2 == 0 else 'an even'} multiplicity "
            f"{'(1, 3, ...)' if electrons % 2 == 0 else '(2, 4, ...)'} no larger than "
            f"{electrons + 1}"
        )


def charge_and_spin(
    atomic_numbers: Iterable[int],
    info: Mapping[str, Any],
    default_charge: int | None = DEFAULT_CHARGE,
    default_spin: int | None = DEFAULT_SPIN,
    charge_key: str = "charge",
    spin_key: str = "spin",
    periodic: bool = False,
) -> tuple[int, int]:
    """Total charge and multiplicity of a structure from its ``info``, checked for parity.

    A missing value takes its default with a ``UserWarning``; with a default of None it is a
    ``ValueError`` naming the key. ``periodic``: see :func:`check_multiplicity`.

    Returns:
        ``(charge, multiplicity)`` as ints.
    """
    numbers = [int(z) for z in atomic_numbers]
    values: list[int] = []
    for key, default, name in (
        (charge_key, default_charge, "total charge"),
        (spin_key, default_spin, "spin multiplicity"),
    ):
        value = info.get(key)
        if value is None:
            if default is None:
                raise ValueError(f"no {name}: info has no {key!r}")
            warnings.warn(
                f"info has no {key!r}; assuming {name} {default} (the model needs it)",
                UserWarning,
                stacklevel=3,
            )
            value = default
        values.append(_as_integer(value, name))
    check_multiplicity(numbers, values[0], values[1], periodic)
    return values[0], values[1]
