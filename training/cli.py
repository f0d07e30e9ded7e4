"""Console-script entry points of the ``training`` package (see ``pyproject.toml``).

Each entry imports its command module lazily so that ``mlip-data --help`` does not pay for
importing the trainer, and the reverse. All of them run through
:func:`mlip.cli.run_cli`, the one place where bad input becomes a one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlip.cli import run_cli


def data_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-data``: convert datasets into the HDF5 store, print statistics, make splits."""
    from training.data_cli import main

    return run_cli("mlip-data", main, argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-train CONFIG.yaml [key=value ...]``."""
    from training.train_cli import main

    return run_cli("mlip-train", main, argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-export CHECKPOINT -o model.pt``."""
    from training.export_cli import main

    return run_cli("mlip-export", main, argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``mlip-eval DATA... --model PATH``."""
    from training.eval_cli import main

    return run_cli("mlip-eval", main, argv)
