"""Pieces shared by the ``mlip-relax`` and ``mlip-md`` command lines.

Everything a user can get wrong (a missing file, an unknown element, an existing
output) is turned into a :class:`CLIError`, which :func:`run_cli` prints as one
line ``PROG: error: MESSAGE`` on stderr before returning :data:`EXIT_ERROR`.

The calculator is built by :func:`make_calculator`; tests replace that function
(``monkeypatch.setattr(cli_common, "make_calculator", ...)``) to run the command
lines with a reference calculator such as ASE's EMT.
"""

from __future__ import annotations

import argparse
import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ArgumentParser,
    CLIError,
    StateFlags,
    add_memory_argument,
    add_state_arguments,
    check_device,
    check_head,
    check_not_inputs,
    check_outputs,
    memory_budget_bytes,
    model_error_message,
    one_line,
    run_cli,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "ArgumentParser",
    "CLIError",
    "InputStructure",
    "add_common_arguments",
    "apply_state_flags",
    "check_not_inputs",
    "check_outputs",
    "evaluate_energy",
    "is_bulk",
    "labelled_copy",
    "make_calculator",
    "one_line",
    "read_structures",
    "run_cli",
    "structure_format",
    "structure_problem",
    "write_structures",
]

_STRUCTURE_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".cif": "cif"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--device``, ``--memory-budget``, ``--overwrite``, ``--charge``,
    ``--spin``, ``--head``.

    ``--charge``/``--spin`` replace the file's values of every structure
    (:func:`apply_state_flags`); ``--head`` goes to :func:`make_calculator`.
    """
    parser.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="exported model file (mlip-export); default: the built-in demo model "
        "calculators/data/model.pt (EMT Cu-Au, for demonstrations only)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for the model: cpu, cuda or cuda:N (default: cpu)",
    )
    add_memory_argument(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist"
    )
    add_state_arguments(parser, override=True)


# --------------------------------------------------------------------------- inputs


@dataclass
class InputStructure:
    """One structure read from the command line.

    Attributes:
        path: The input file as given (after glob expansion).
        frame: Index of the frame within that file (0-based).
        atoms: The structure; positions in Å.
    """

    path: str
    frame: int
    atoms: Atoms


def _split_index(pattern: str) -> tuple[str, str | None]:
    """Split ASE's ``FILE@INDEX`` syntax (e.g. ``md.extxyz@-1``) when FILE exists."""
    if "@" in pattern and not Path(pattern).exists():
        name, index = pattern.rsplit("@", 1)
        if Path(name).is_file():
            return name, index
    return pattern, None


def _expand(pattern: str) -> list[str]:
    if glob.has_magic(pattern):
        matches = sorted(p for p in glob.glob(pattern) if Path(p).is_file())
        if not matches:
            raise CLIError(f"no input file matches {pattern!r}")
        return matches
    path = Path(pattern)
    if path.is_dir():
        raise CLIError(f"input {pattern!r} is a directory, not a structure file")
    if not path.exists():
        raise CLIError(f"input file not found: {pattern}")
    return [pattern]


def _read_all_frames(name: str) -> list[Atoms]:
    """Every frame of ``name``; a file ASE fails on is re-read frame by frame to name the frame."""
    from ase.io import iread, read

    if Path(name).stat().st_size == 0:
        raise CLIError(f"cannot read {name}: the file is empty")
    try:
        frames = read(name, index=":")
    except Exception as exc:  # ASE raises many types for bad files
        good = 0
        try:
            for _ in iread(name, index=":"):
                good += 1
        except Exception:
            pass
        where = f"frame {good} (after {good} readable frames)" if good else "frame 0"
        detail = str(exc).strip() or "ASE cannot parse it (wrong format or corrupt file)"
        raise CLIError(f"cannot read {name}, {where}: {type(exc).__name__}: {detail}") from None
    return [frames] if isinstance(frames, Atoms) else list(frames)


def _select(name: str, frames: list[Atoms], index: str) -> list[tuple[int, Atoms]]:
    """Apply ASE's ``FILE@INDEX`` syntax (``@3``, ``@-1``, ``@0:10:2``) with clear errors."""
    from ase.io.formats import string2index

    try:
        selector = string2index(index)
    except ValueError:
        raise CLIError(f"{name}@{index}: INDEX must be an integer or a slice like 0:10") from None
    numbered = list(enumerate(frames))
    if isinstance(selector, int):
        if not -len(frames) <= selector < len(frames):
            raise CLIError(
                f"{name}@{index}: index out of range, the file holds {len(frames)} frame(s)"
            )
        return [numbered[selector]]
    chosen = numbered[selector]
    if not chosen:
        raise CLIError(f"{name}@{index} selects no frame (the file holds {len(frames)})")
    return chosen


def read_structures(patterns: Sequence[str]) -> list[InputStructure]:
    """Expand globs and read every frame of every file with ``ase.io.read``.

    Args:
        patterns: File names or glob patterns (any format ASE can read, CIF included);
            ``FILE@INDEX`` selects frames with ASE's index syntax (``@-1``, ``@0:10``).

    Returns:
        The structures in command-line order, frames in file order, each with its frame
        number in the file; a file given twice (directly and through a glob) is read once.
        Frames without atoms are kept (see :func:`structure_problem`).

    Raises:
        CLIError: A pattern matches nothing, a file is missing, empty or unreadable (the
            message names the first bad frame), or ``@INDEX`` is out of range.
    """
    files: list[tuple[str, str | None]] = []
    for pattern in patterns:
        name, index = _split_index(pattern)
        for match in [name] if index is not None else _expand(name):
            if (match, index) not in files:
                files.append((match, index))
    structures: list[InputStructure] = []
    for name, index in files:
        frames = _read_all_frames(name)
        if not frames:
            raise CLIError(f"cannot read {name}: no structure found")
        chosen = list(enumerate(frames)) if index is None else _select(name, frames, index)
        structures.extend(InputStructure(name, k, atoms) for k, atoms in chosen)
    return structures


def structure_problem(atoms: Atoms) -> str | None:
    """What makes ``atoms`` unusable before any model sees it (no atoms, NaN), or None."""
    if len(atoms) == 0:
        return "the structure has no atoms"
    bad = np.unique(np.nonzero(~np.isfinite(atoms.positions))[0])
    if bad.size:
        return f"positions contain NaN or inf (atoms {bad[:10].tolist()})"
    if not np.all(np.isfinite(atoms.cell.array)):
        return "the cell contains NaN or inf"
    return None


def is_bulk(atoms: Atoms) -> bool:
    """True when ``atoms`` is periodic in all three directions with a non-degenerate cell."""
    return bool(np.all(atoms.pbc)) and atoms.cell.rank == 3


# -------------------------------------------------------------------------- outputs


def structure_format(path: str | Path, allowed: Sequence[str] = (".extxyz", ".xyz", ".cif")) -> str:
    """ASE format name for an output structure file, chosen by its extension.

    Raises:
        CLIError: The extension is not one of ``allowed``.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise CLIError(
            f"cannot tell the format of output {str(path)!r}: use one of {', '.join(allowed)}"
        )
    return _STRUCTURE_FORMATS[suffix]


def labelled_copy(atoms: Atoms) -> Atoms:
    """Copy ``atoms`` with its current energy, forces and (if available) stress attached.

    The copy carries a :class:`SinglePointCalculator` and no constraints, so it can be
    written to extxyz with its labels (eV, eV/Å, eV/Å³) and stays valid after ``atoms``
    moves on.
    """
    copy = atoms.copy()
    copy.set_constraint()
    results: dict[str, object] = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
    }
    if is_bulk(atoms):
        try:
            results["stress"] = atoms.get_stress()
        except PropertyNotImplementedError:
            pass
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def write_structures(path: str | Path, frames: Sequence[Atoms], fmt: str) -> None:
    """Write ``frames`` to ``path`` (parent directories are created)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(path, list(frames), format=fmt)
    except Exception as exc:
        raise CLIError(f"cannot write {path}: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------- model


def make_calculator(
    model: str | None,
    device: str,
    head: str | None = None,
    memory_budget: float | None = None,
) -> Calculator:
    """Build the ASE calculator for ``--model``/``--device``/``--head``/``--memory-budget``.

    Args:
        model: Path to an exported model file, or ``None`` for the built-in default
            model (:func:`calculators.defaults.default_model_path`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        head: Level-of-theory head of a model with heads (None: its first head).
        memory_budget: ``--memory-budget`` in GB (None: 60 % of the device's free memory).

    Returns:
        A ``calculators.MLIPCalculator``.

    Raises:
        CLIError: The model file is missing or cannot be loaded, the device is not
            available, or ``head`` is not one of the model's heads (the message lists them).
    """
    from calculators.defaults import default_model_path

    if model is None:
        try:
            path = default_model_path()
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from exc
    else:
        path = Path(model)
        if not path.is_file():
            raise CLIError(f"model file not found: {model}")
    check_device(device)
    try:
        from calculators import MLIPCalculator  # type: ignore[attr-defined]
    except ImportError as exc:
        raise CLIError("calculators.MLIPCalculator is not available in this installation") from exc
    from mlip.export import read_metadata

    try:
        heads = read_metadata(path)["heads"]
    except ValueError as exc:  # ModelFileError names the file
        raise CLIError(f"cannot load model {path}: {exc}") from exc
    check_head(head, heads, path)
    budget = memory_budget_bytes(memory_budget)
    try:
        return MLIPCalculator(str(path), device=device, head=head, memory_budget=budget)
    except Exception as exc:  # torch raises RuntimeError, metadata checks ValueError
        raise CLIError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from exc


def apply_state_flags(
    args: argparse.Namespace,
    structures: Sequence[InputStructure],
    calc: Calculator,
    warn: Callable[[str], None],
) -> None:
    """Set ``atoms.info["charge"]``/``["spin"]`` of every structure to what the model gets.

    For a model that takes the total charge and spin (``calc.inputs``), ``--charge``/``--spin``
    replace the file's values (a different value in the file is reported through ``warn``),
    structures with neither get 0 and 1 (also reported); the result is written to ``info``,
    so output files record the state used. Structures without atoms are left to the
    command's own checks.

    Args:
        args: Parsed arguments with ``charge``, ``spin`` and ``model``.
        structures: The inputs; their ``atoms.info`` is updated in place.
        calc: The calculator from :func:`make_calculator` (``inputs``: the model's inputs).
        warn: Prints one warning line.

    Raises:
        CLIError: A flag for a model that takes no charge or spin, or a multiplicity that is
            impossible for a structure's electron count (naming the structure, the charge
            and the multiplicity).
    """
    flags = StateFlags(
        args.charge,
        args.spin,
        inputs=getattr(calc, "inputs", []),
        model=args.model or "(built-in demo model)",
        override=True,
    )
    for item in structures:
        if len(item.atoms) == 0:
            continue
        label = f"{item.path} (frame {item.frame})"
        try:
            periodic = bool(item.atoms.pbc.all())
            state = flags.resolve(item.atoms.numbers, item.atoms.info, label, periodic)
        except ValueError as exc:
            raise CLIError(f"{label}: {exc}") from None
        if state is not None:
            item.atoms.info["charge"], item.atoms.info["spin"] = state
    for line in flags.pop_warnings():
        warn(line)


def evaluate_energy(atoms: Atoms, label: str) -> float:
    """Potential energy of ``atoms`` (eV), turning "model cannot handle this" into a CLIError.

    The calculator contract is that an element the model does not know raises a
    ``ValueError`` naming the model's species; that message is passed on, as is that of a
    ``ValueError`` raised inside the TorchScript model (a charge outside its range).

    Args:
        atoms: Structure with a calculator attached.
        label: Where the structure came from, e.g. ``"in.cif (frame 0)"``.
    """
    try:
        energy = float(atoms.get_potential_energy())
    except (ValueError, NotImplementedError) as exc:
        raise CLIError(f"{label}: {exc}") from exc
    except Exception as exc:  # a ValueError raised inside the TorchScript model
        message = model_error_message(exc)
        if message is None:
            raise
        raise CLIError(f"{label}: {message}") from None
    if not np.isfinite(energy):
        raise CLIError(f"{label}: the model returned a non-finite energy")
    return energy
