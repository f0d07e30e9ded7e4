"""Console-script entry points of the ``training`` package (see ``pyproject.toml``).

Each entry imports its command module lazily so that ``mlip-data --help`` does not pay for
importing the trainer, and the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence


def data_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-data``: convert datasets into the HDF5 store, print statistics, make splits."""
    from training.data_cli import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-train CONFIG.yaml [key=value ...]``."""
    from training.train_cli import main

    return main(argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-export CHECKPOINT -o model.pt``."""
    from training.export_cli import main

    return main(argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-eval DATA... --model PATH``."""
    from training.eval_cli import main

    return main(argv)
