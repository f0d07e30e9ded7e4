"""Shared command-line pieces: the one top-level error handler, output checks, argparse,
and the ``--charge``/``--spin``/``--head`` flags of the commands that run a model.

A command's body raises :class:`CLIError` for anything a user can get wrong; :func:`run_cli`
prints it as one line ``PROG: error: MESSAGE`` on stderr (no traceback) and returns its exit
status. File-system errors (a missing directory, no permission, a full disk) and ``ValueError``
from the library (a bad model file, overlapping atoms) or raised inside a TorchScript model (a
charge outside the model's range) get the same one-line treatment, so
bodies do not need a ``try``/``except`` around every call. ``MLIP_TRACEBACK=1`` re-raises them
with the traceback, for debugging.

``--charge``/``--spin``/``--head`` (:func:`add_state_arguments`, :func:`check_head`,
:class:`StateFlags`) are shared by ``mlip-relax``, ``mlip-md`` and ``mlip-eval``: flags given for
a model that does not take them are an error, an unknown head is an error listing the model's
heads, and an impossible multiplicity is an error naming the charge and the multiplicity
(:func:`mlip.electronic.check_multiplicity`).

It lives in ``mlip`` because both ``calculators`` and ``training`` use it and neither may import
the other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlip import keys
from mlip.electronic import DEFAULT_CHARGE, DEFAULT_SPIN, charge_and_spin

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "ArgumentParser",
    "CLIError",
    "Interrupted",
    "StateFlags",
    "add_state_arguments",
    "check_device",
    "check_head",
    "check_not_inputs",
    "check_outputs",
    "model_error_message",
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


class Interrupted(CLIError):
    """Ctrl-C caught by a command that can say how to continue (e.g. ``--resume``).

    Args:
        hint: What was kept and how to go on; printed after ``PROG: interrupted.``.
    """

    def __init__(self, hint: str) -> None:
        super().__init__(hint, EXIT_INTERRUPTED)


def one_line(message: object) -> str:
    """Collapse all whitespace (newlines included) of ``message`` into single spaces."""
    return " ".join(str(message).split())


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    if exc.filename is None:
        return f"{reason}: {exc}" if str(exc) != reason else reason
    return f"{exc.filename}: {reason}"


def _yaml_error_types() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return ()
    return (yaml.YAMLError,)


def _describe(exc: BaseException) -> str:
    """One line for a known error; YAML errors name the file, line and column."""
    if isinstance(exc, _yaml_error_types()):
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is None:
            return f"malformed YAML: {problem}"
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"
        return f"malformed YAML ({where}): {problem}"
    if isinstance(exc, OSError):
        return one_line(_describe_os_error(exc))
    return one_line(exc) or type(exc).__name__


def run_cli(prog: str, body: Callable[[Sequence[str]], int], argv: Sequence[str] | None) -> int:
    """Run a command-line body and map errors to one stderr line and an exit status.

    Args:
        prog: Program name used as the prefix of error lines, e.g. ``"mlip-relax"``.
        body: Function that parses ``argv`` and does the work; returns the exit status.
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The body's exit status; a :class:`CLIError`'s ``exit_code``; for an ``OSError``,
        ``ValueError``, ``ImportError`` (a missing optional dependency) or malformed YAML its
        ``exit_code`` attribute if it has one (a configuration error: 2), else
        :data:`EXIT_ERROR`; :data:`EXIT_INTERRUPTED` on Ctrl-C; argparse's own code
        for ``--help``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MLIP_TRACEBACK", "") not in ("", "0")
    try:
        return body(args)
    except Interrupted as exc:
        print(f"{prog}: interrupted. {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except CLIError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError, ImportError, *_yaml_error_types()) as exc:
        if debug:
            raise
        print(f"{prog}: error: {_describe(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_ERROR))
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except Exception as exc:
        message = model_error_message(exc)
        if message is None or debug:
            raise
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
        return EXIT_ERROR


def model_error_message(exc: BaseException) -> str | None:
    """The message of an evaluation error the user can act on, else None.

    That is a ``ValueError`` raised inside a TorchScript model, which TorchScript wraps in
    ``torch.jit.Error`` with both tracebacks in the text (e.g. a total charge outside the range
    of the model's charge table; its last line holds the message), or the ``MemoryError`` of a
    memory budget too small for even one chunk of one atom (:mod:`mlip.chunked`).
    """
    import torch

    if isinstance(exc, MemoryError) and str(exc):
        return str(exc)
    if not isinstance(exc, torch.jit.Error):
        return None
    lines = str(exc).strip().splitlines()
    prefix = "builtins.ValueError: "
    return lines[-1][len(prefix) :] if lines and lines[-1].startswith(prefix) else None


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


def add_memory_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--memory-budget GB`` (see :func:`memory_budget_bytes`)."""
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GB",
        help="memory (GB, 1e9 bytes) one energy + forces evaluation may use; a larger "
        "structure is evaluated exactly in chunks of atoms (layer by layer for GMEP, else "
        "with their receptive-field halo). "
        "Default: 60 %% of the device's free memory at each call",
    )


def memory_budget_bytes(gigabytes: float | None) -> float | None:
    """``--memory-budget`` in bytes (None stays None: the free-memory default).

    Raises:
        CLIError: The value is not a positive, finite number.
    """
    if gigabytes is None:
        return None
    if not (gigabytes > 0 and gigabytes < float("inf")):
        raise CLIError(f"--memory-budget must be a positive number of GB, got {gigabytes}")
    return gigabytes * 1e9


# ------------------------------------------------- electronic state and level of theory


def add_state_arguments(parser: argparse.ArgumentParser, *, override: bool) -> None:
    """Add ``--charge``, ``--spin`` and ``--head`` (see :class:`StateFlags`).

    Args:
        parser: The command's parser.
        override: The command applies ``--charge``/``--spin`` to every structure, replacing
            the file's values (``mlip-relax``, ``mlip-md``), rather than only to structures
            without them (``mlip-eval``, whose frames keep their own states).
    """
    scope = (
        "every input structure (replaces atoms.info['{key}'] of the file, with a warning "
        "when that differs)"
        if override
        else "frames without atoms.info['{key}'] (a frame's own value is used as-is)"
    )
    group = parser.add_argument_group(
        "electronic state and level of theory",
        "for models exported with model.charge_spin (metadata 'inputs') or with heads "
        "(metadata 'heads'); refused for other models",
    )
    group.add_argument(
        "--charge",
        type=int,
        default=None,
        metavar="INT",
        help=f"total charge in e of {scope.format(key='charge')}; default: the file's "
        f"value, else {DEFAULT_CHARGE} with a warning",
    )
    group.add_argument(
        "--spin",
        type=int,
        default=None,
        metavar="MULT",
        help=f"spin multiplicity 2S+1 (1 singlet, 2 doublet, ...) of "
        f"{scope.format(key='spin')}; default: the file's value, else {DEFAULT_SPIN} with a "
        "warning",
    )
    group.add_argument(
        "--head",
        default=None,
        metavar="NAME",
        help="level-of-theory head of a model with heads, e.g. omol or mptrj (default: the "
        "model's first head)",
    )


def check_head(head: str | None, heads: Sequence[str], model: object) -> None:
    """Refuse ``--head`` for a model without heads, or a name that is not one of ``heads``.

    Raises:
        CLIError: Naming the model and listing its heads.
    """
    if head is None:
        return
    if not heads:
        raise CLIError(f"--head {head!r} given, but model {model} has no heads; drop --head")
    if head not in heads:
        raise CLIError(
            f"unknown --head {head!r}: model {model} has the heads {', '.join(map(str, heads))}"
        )


class StateFlags:
    """``--charge``/``--spin`` of one command run, resolved structure by structure for a model.

    For a model that takes the total charge and spin multiplicity (``"charge"``/``"spin"`` in
    its ``metadata["inputs"]``), :meth:`resolve` gives each structure's state: the flag when
    given and ``override`` is set, else the structure's own value, else the flag, else the
    default (0, 1) with a warning. Differences between a flag and a file value are counted and
    reported once by :meth:`pop_warnings`, not per structure.

    Args:
        charge: ``--charge`` in e, or None.
        spin: ``--spin`` (multiplicity 2S+1), or None.
        inputs: The model's required per-structure inputs (``metadata["inputs"]``).
        model: The model's name in messages (its path).
        override: Flags replace a structure's own values (True) or only fill missing ones.

    Raises:
        CLIError: A flag is given for a model that takes no charge or spin, or ``spin < 1``.
    """

    def __init__(
        self,
        charge: int | None,
        spin: int | None,
        *,
        inputs: Sequence[str],
        model: object,
        override: bool,
    ) -> None:
        self.flags = {keys.CHARGE: charge, keys.SPIN: spin}
        self.override = override
        self.used = keys.CHARGE in inputs or keys.SPIN in inputs
        given = [f"--{key} {value}" for key, value in self.flags.items() if value is not None]
        if given and not self.used:
            raise CLIError(
                f"{' and '.join(given)} given, but model {model} takes no total charge or spin "
                "(it was not trained with model.charge_spin); drop the flag"
            )
        if spin is not None and spin < 1:
            raise CLIError(f"--spin is the multiplicity 2S+1 and must be >= 1, got {spin}")
        # (what happened, key) -> [count, first structure, its own value]
        self._events: dict[tuple[str, str], list[Any]] = {}

    def _count(self, event: str, key: str, where: str, own: Any) -> None:
        record = self._events.setdefault((event, key), [0, where, own])
        record[0] += 1

    def resolve(
        self,
        atomic_numbers: Sequence[int],
        info: Mapping[str, Any],
        where: str,
        periodic: bool = False,
    ) -> tuple[int, int] | None:
        """The ``(charge, multiplicity)`` the model gets for one structure.

        Args:
            atomic_numbers: Z of every atom.
            info: The structure's own values under ``"charge"`` and ``"spin"`` (missing or
                None when the file has none).
            where: The structure in warnings, e.g. ``"in.xyz (frame 3)"``.
            periodic: a 3-D periodic cell (no electron-count parity rule, see
                :func:`mlip.electronic.check_multiplicity`).

        Returns:
            ``(charge, multiplicity)`` as ints, or None when the model takes neither.

        Raises:
            ValueError: The multiplicity is impossible for the electron count (the message
                names both) or a value is not an integer.
        """
        if not self.used:
            return None
        state: dict[str, Any] = {}
        for key, default in ((keys.CHARGE, DEFAULT_CHARGE), (keys.SPIN, DEFAULT_SPIN)):
            own, flag = info.get(key), self.flags[key]
            if own is None:
                state[key] = default if flag is None else flag
                if flag is None:
                    self._count("default", key, where, None)
            elif flag is None or _same_number(own, flag):
                state[key] = own
            elif self.override:
                state[key] = flag
                self._count("replaced", key, where, own)
            else:
                state[key] = own
                self._count("kept", key, where, own)
        return charge_and_spin(
            atomic_numbers, state, default_charge=None, default_spin=None, periodic=periodic
        )

    def pop_warnings(self) -> list[str]:
        """One line per kind of event since the last call (defaults taken, values replaced)."""
        names = {keys.CHARGE: "total charge", keys.SPIN: "spin multiplicity"}
        defaults = {keys.CHARGE: DEFAULT_CHARGE, keys.SPIN: DEFAULT_SPIN}
        lines = []
        for (event, key), (count, where, own) in self._events.items():
            flag = f"--{key} {self.flags[key]}"
            if event == "default":
                lines.append(
                    f"{count} structure(s) have no {names[key]} (atoms.info[{key!r}]) and no "
                    f"--{key} was given; assuming {defaults[key]} (first: {where})"
                )
            elif event == "replaced":
                lines.append(
                    f"{flag} replaces a different {names[key]} in {count} structure(s) "
                    f"(first: {where}, which has {_as_text(own)})"
                )
            else:
                lines.append(
                    f"{flag} is not applied to {count} structure(s) with their own {names[key]} "
                    f"(first: {where}, which has {_as_text(own)}); each keeps its own"
                )
        self._events.clear()
        return lines


def _as_text(value: Any) -> str:
    """``1.0`` as ``1`` (readers store integers as floats), anything else as is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return str(int(number)) if number.is_integer() else str(value)


def _same_number(value: Any, number: int) -> bool:
    try:
        return float(value) == number
    except (TypeError, ValueError):
        return False
