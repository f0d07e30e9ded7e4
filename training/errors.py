"""Errors that bad user input raises in ``training``.

They are ``ValueError`` subclasses, so :func:`mlip.cli.run_cli` (the one handler of every
console script) prints them as one line ``PROG: error: MESSAGE`` and exits 1 (2 for a
:class:`training.config.ConfigError`, which sets ``exit_code``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DataError",
    "InputError",
    "OutputExistsError",
    "check_writable_dir",
]


class InputError(ValueError):
    """Bad user input; the message names the file (and frame and field where there is one).

    Subclasses: :class:`DataError`, :class:`OutputExistsError`,
    :class:`training.config.ConfigError`, :class:`training.data.frames.InvalidFrameError`.
    """


class DataError(InputError):
    """A dataset as a whole cannot be used: empty, no usable frames, a weighted label missing."""


class OutputExistsError(InputError):
    """An output would be replaced without ``--overwrite``."""


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`InputError` unless ``path`` is (or can be created as) a writable folder."""
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{what} {str(path)!r} is not writable (no write permission on {str(existing)!r})"
        )
