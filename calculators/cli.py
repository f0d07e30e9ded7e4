"""Console-script entry points of the ``calculators`` package (see ``pyproject.toml``)."""

from __future__ import annotations

from collections.abc import Sequence


def relax_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-relax INPUT... [--model PATH] ...``."""
    from calculators.relax_cli import main

    return main(argv)


def md_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-md INPUT --ensemble nve|nvt|npt ...``."""
    from calculators.md_cli import main

    return main(argv)
