"""Errors that bad user input raises in ``training``, and the one handler that prints them.

Every console script of the package runs through :func:`run_cli`: a known error (bad config,
bad data file or frame, missing or non-writable path, malformed YAML, a missing optional
dependency) prints one line
``PROG: error: MESSAGE`` on stderr and exits 1 (2 for a configuration error); Ctrl-C exits
130 with :class:`Interrupted`'s hint. Anything else is a bug and keeps its traceback.
``MLIP_TRACEBACK=1`` re-raises known errors too, for debugging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DataError",
    "InputError",
    "Interrupted",
    "OutputExistsError",
    "check_writable_dir",
    "one_line",
    "run_cli",
]


class InputError(ValueError):
    """Bad user input; the message names the file (and frame and field where there is one).

    Subclasses: :class:`DataError`, :class:`OutputExistsError`,
    :class:`training.config.ConfigError`, :class:`training.frames.InvalidFrameError`.
    """


class DataError(InputError):
    """A dataset as a whole cannot be used: empty, no usable frames, a weighted label missing."""


class OutputExistsError(InputError):
    """An output would be replaced without ``--overwrite``."""


class Interrupted(Exception):
    """Ctrl-C, with a hint on how to continue (raised by a command's own handler)."""


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


def _yaml_error_types() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return ()
    return (yaml.YAMLError,)


def one_line(error: BaseException) -> str:
    """The error as one line (YAML errors carry a multi-line context)."""
    if isinstance(error, _yaml_error_types()):
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"malformed YAML ({where}): {problem}" if where else f"malformed YAML: {problem}"
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError) and (
        error.filename is not None
    ):
        reason = error.strerror or type(error).__name__
        return f"{error.filename}: {reason}"
    return " ".join(str(error).split()) or type(error).__name__


def _known_errors() -> tuple[type[BaseException], ...]:
    from training.config import ConfigError

    return (InputError, ConfigError, ValueError, OSError, ImportError, *_yaml_error_types())


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None):
    """Run ``main(argv)``; print known errors as one line and return the exit status."""
    from training.config import ConfigError

    try:
        return main(argv)
    except Interrupted as interrupted:
        print(f"{prog}: interrupted. {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except _known_errors() as error:
        if os.environ.get("MLIP_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
