"""Console-script entry points of the ``calculators`` package (see ``pyproject.toml``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

# As in training/cli.py: OpenMP threads that spin while waiting make torch many times slower on
# shared cores. Must be set before torch loads; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def relax_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-relax INPUT... [--model PATH] ...``."""
    from calculators.relax_cli import main

    return main(argv)


def md_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-md INPUT --ensemble nve|nvt|npt ...``."""
    from calculators.md_cli import main

    return main(argv)
