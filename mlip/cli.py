"""Shared command-line pieces: the one top-level error handler, output checks, argparse.

A command's body raises :class:`CLIError` for anything a user can get wrong; :func:`run_cli`
prints it as one line ``PROG: error: MESSAGE`` on stderr (no traceback) and returns its exit
status. File-system errors (a missing directory, no permission, a full disk) and ``ValueError``
from the library (a bad model file, overlapping atoms) get the same one-line treatment, so
bodies do not need a ``try``/``except`` around every call. ``MLIP_TRACEBACK=1`` re-raises them
with the traceback, for debugging.

It lives in ``mlip`` because both ``calculators`` and ``training`` use it and neither may import
the other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "ArgumentParser",
    "CLIError",
    "check_device",
    "check_not_inputs",
    "check_outputs",
    "one_line",
    "run_cli",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class CLIError(Exception):
    """A user-facing error, reported as one line without a traceback.

    Args:
        message: What went wrong and, where possible, what to do about it.
        exit_code: Exit status of the command (default :data:`EXIT_ERROR`).
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(message: object) -> str:
    """Collapse all whitespace (newlines included) of ``message`` into single spaces."""
    return " ".join(str(message).split())


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    if exc.filename is None:
        return f"{reason}: {exc}" if str(exc) != reason else reason
    return f"{exc.filename}: {reason}"


def run_cli(prog: str, body: Callable[[Sequence[str]], int], argv: Sequence[str] | None) -> int:
    """Run a command-line body and map errors to one stderr line and an exit status.

    Args:
        prog: Program name used as the prefix of error lines, e.g. ``"mlip-relax"``.
        body: Function that parses ``argv`` and does the work; returns the exit status.
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The body's exit status; a :class:`CLIError`'s ``exit_code``; :data:`EXIT_ERROR` for an
        ``OSError`` or ``ValueError``; :data:`EXIT_INTERRUPTED` on Ctrl-C; argparse's own code
        for ``--help``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MLIP_TRACEBACK", "") not in ("", "0")
    try:
        return body(args)
    except CLIError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(_describe_os_error(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser that raises :class:`CLIError` instead of exiting with usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(message)


def check_outputs(paths: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse to run unless every output can be written; create missing parent directories.

    Called before any work is done so that a long run never ends by failing to write. An
    output that already exists is refused unless ``overwrite``.

    Raises:
        CLIError: For the first offending path: used twice, a directory, existing, or in a
            directory that cannot be created or written.
    """
    seen: set[Path] = set()
    for path in map(Path, paths):
        resolved = path.resolve()
        if resolved in seen:
            raise CLIError(f"output {str(path)!r} is used twice")
        seen.add(resolved)
        if path.is_dir():
            raise CLIError(f"output {str(path)!r} is a directory")
        if path.exists() and not overwrite:
            raise CLIError(f"output {str(path)!r} already exists (use --overwrite to replace it)")
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise CLIError(
                f"cannot write output {str(path)!r}: {str(blocking)!r} is a file, not a directory"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CLIError(
                f"cannot create the directory of output {str(path)!r}: {reason}"
            ) from None
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise CLIError(f"cannot write output {str(path)!r}: its directory is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise CLIError(f"cannot write output {str(path)!r}: permission denied")


def check_not_inputs(outputs: Sequence[str | Path], inputs: Sequence[str | Path]) -> None:
    """Refuse an output path that is also an input (it would be destroyed before being read).

    Raises:
        CLIError: Naming the first such path.
    """
    input_paths = {Path(p).resolve() for p in inputs if Path(p).exists()}
    for path in outputs:
        if Path(path).resolve() in input_paths:
            raise CLIError(f"output {str(path)!r} is also an input; choose another output name")


def check_device(device: str) -> None:
    """Refuse a device string other than cpu/cuda/cuda:N, or CUDA when it is not available.

    Raises:
        CLIError: Naming the device.
    """
    if device != "cpu" and not device.startswith("cuda"):
        raise CLIError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"device {device!r} requested but CUDA is not available")
