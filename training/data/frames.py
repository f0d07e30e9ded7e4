"""`Frame`: one labelled structure as read from a dataset file, plus its validation.

A frame is plain numpy (no neighbour list); :meth:`Frame.to_graph` turns it into an
:class:`mlip.AtomicGraph` at a given cutoff. Units are Å and eV throughout; stress is eV/Å³ with
ASE's sign (positive = tensile).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mlip import AtomicGraph, keys
from training.errors import InputError

__all__ = [
    "DEFAULT_REQUIRED",
    "FRAME_FIELDS",
    "Frame",
    "InvalidFrameError",
    "SkipReport",
]

DEFAULT_REQUIRED: tuple[str, ...] = ("energy", "forces")
"""Labels every frame must carry unless the caller says otherwise."""

_STRUCTURE = (
    keys.POSITIONS,
    keys.ATOMIC_NUMBERS,
    keys.CELL,
    keys.PBC,
    keys.EDGE_INDEX,
    keys.CELL_SHIFTS,
    keys.BATCH,
    keys.NUM_ATOMS,
)
FRAME_FIELDS: tuple[str, ...] = tuple(name for name in keys.FIELDS if name not in _STRUCTURE)
"""The per-frame data fields (labels such as energy/forces/stress, charge, spin, and any field
added to :data:`mlip.keys.FIELDS`): everything a frame carries besides its structure. Stores,
datasets and batches read this tuple, so a new field needs no change here."""
_NAMED = ("energy", "forces", "stress", "charge", "spin")  # Frame attributes; others: extra


class InvalidFrameError(InputError):
    """A frame that cannot be used: missing label, NaN/inf, wrong shape, unparsable record.

    Attributes:
        source: the file the frame came from.
        index: position of the frame in that file (0-based), or None.
        frame_id: the frame's id, or "".
        field: the offending field (``"energy"``, ``"forces"``, ...).
        reason: short machine-friendly reason, e.g. ``"missing energy"``; used as the key of
            :class:`SkipReport` counters.
    """

    def __init__(
        self,
        source: str,
        index: int | None,
        frame_id: str,
        field: str,
        reason: str,
        detail: str = "",
    ) -> None:
        self.source = source
        self.index = index
        self.frame_id = frame_id
        self.field = field
        self.reason = reason
        where = f"{source}: frame {index}" if index is not None else f"{source}"
        if frame_id:
            where += f" (id {frame_id!r})"
        message = f"{where}: field {field!r}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


@dataclass
class SkipReport:
    """How many frames were skipped, by reason (``"missing forces"``, ``"nan energy"`` ...).

    Attributes:
        counts: reason -> number of frames skipped for it.
        examples: reason -> the message of the first frame skipped for it.
    """

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of frames skipped."""
        return int(sum(self.counts.values()))

    def add(self, error: InvalidFrameError) -> None:
        """Count one skipped frame."""
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))

    def merge(self, other: SkipReport) -> None:
        """Add another report's counts into this one."""
        self.counts.update(other.counts)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)

    def as_dict(self) -> dict[str, int]:
        """``{reason: count}``, sorted by reason."""
        return {reason: int(self.counts[reason]) for reason in sorted(self.counts)}

    def __str__(self) -> str:
        if not self.counts:
            return "no frames skipped"
        parts = ", ".join(f"{count} {reason}" for reason, count in self.as_dict().items())
        return f"skipped {self.total} frame(s): {parts}"


@dataclass
class Frame:
    """One labelled structure.

    Attributes:
        positions: (n_atoms, 3) float64, Å.
        atomic_numbers: (n_atoms,) int64.
        cell: (3, 3) float64 Å with lattice vectors as rows, or None for a molecule.
        pbc: (3,) bool.
        energy: total energy in eV, or None.
        forces: (n_atoms, 3) float64 eV/Å, or None.
        stress: (3, 3) float64 eV/Å³, ASE sign (positive = tensile), or None.
        charge: total charge in e, or None.
        spin: spin multiplicity, or None.
        source: the file the frame was read from.
        frame_id: the frame's id within its source (MPTrj ``task-calc-step``; else the index).
        group_id: the group the frame belongs to (MPTrj ``mp_id``), or "".
        head_name: the level-of-theory head the file names for the frame (``atoms.info`` key
            ``ReaderOptions.head_key``, e.g. ``omol``), or "". Training maps it to the
            graph-level ``head`` index (``data.head_key``).
        extra: values of any other :data:`FRAME_FIELDS` (e.g. a graph-level ``head``), by name;
            shapes and dtypes as :data:`mlip.keys.FIELDS` describes them.
    """

    positions: np.ndarray
    atomic_numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: float | None = None
    spin: float | None = None
    source: str = ""
    frame_id: str = ""
    group_id: str = ""
    head_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        """The value of the data field ``name`` (one of :data:`FRAME_FIELDS`), or None."""
        return getattr(self, name) if name in _NAMED else self.extra.get(name)

    def with_values(self, **values: Any) -> Frame:
        """A copy with the given :data:`FRAME_FIELDS` replaced (None removes one)."""
        named = {k: v for k, v in values.items() if k in _NAMED}
        extra = {**self.extra, **{k: v for k, v in values.items() if k not in _NAMED}}
        return dataclasses.replace(
            self, **named, extra={k: v for k, v in extra.items() if v is not None}
        )

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(np.shape(self.positions)[0])

    def validated(
        self, required: Sequence[str] = DEFAULT_REQUIRED, index: int | None = None
    ) -> Frame:
        """This frame with every array cast to its dtype, or raise :class:`InvalidFrameError`.

        Args:
            required: labels that must be present (a subset of :data:`FRAME_FIELDS`).
            index: the frame's position in its source, for the error message.

        Raises:
            InvalidFrameError: a required label is missing, a value is NaN/inf, or a shape does
                not match the number of atoms.
        """
        unknown = set(required) - set(FRAME_FIELDS)
        if unknown:
            raise ValueError(f"unknown required label(s) {sorted(unknown)}")

        def fail(name: str, reason: str, detail: str = "") -> InvalidFrameError:
            return InvalidFrameError(self.source, index, self.frame_id, name, reason, detail)

        positions = _as_array(self.positions, np.float64, "positions", fail)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise fail("positions", "bad shape positions", f"shape {positions.shape}")
        n_atoms = positions.shape[0]
        if n_atoms == 0:
            raise fail("positions", "no atoms")
        numbers = _as_array(self.atomic_numbers, np.float64, "atomic_numbers", fail)
        if numbers.shape != (n_atoms,):
            raise fail(
                "atomic_numbers",
                "bad shape atomic_numbers",
                f"shape {numbers.shape}, expected ({n_atoms},)",
            )
        if not np.all(np.isfinite(numbers)) or np.any(numbers != np.round(numbers)):
            raise fail("atomic_numbers", "bad atomic_numbers", "not integers")
        if numbers.min() < 1 or numbers.max() > 118:
            raise fail("atomic_numbers", "bad atomic_numbers", "outside 1..118")
        if not np.all(np.isfinite(positions)):
            raise fail("positions", "nan positions")

        pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        cell = None
        if self.cell is not None:
            cell = _as_array(self.cell, np.float64, "cell", fail)
            if cell.shape != (3, 3):
                raise fail("cell", "bad shape cell", f"shape {cell.shape}")
            if not np.all(np.isfinite(cell)):
                raise fail("cell", "nan cell")
        elif pbc.any():
            raise fail("cell", "missing cell", "periodic frame without a cell")

        labels: dict[str, Any] = {}
        for name in FRAME_FIELDS:
            value = self.value(name)
            if value is None:
                if name in required:
                    raise fail(name, f"missing {name}")
                labels[name] = None
                continue
            spec = keys.FIELDS[name]
            integer = not spec.dtype.is_floating_point
            array = _as_array(value, np.float64, name, fail)
            expected = spec.trailing_shape
            if spec.scope == "node":
                expected = (n_atoms, *expected)
            elif name == keys.STRESS and array.shape == (6,):
                from ase.stress import voigt_6_to_full_3x3_stress

                array = voigt_6_to_full_3x3_stress(array)
            elif expected == () and array.size == 1:
                array = array.reshape(())
            if array.shape != expected:
                raise fail(name, f"bad shape {name}", f"shape {array.shape}, expected {expected}")
            if not np.all(np.isfinite(array)):
                raise fail(name, f"nan {name}", "NaN or inf")
            if integer and np.any(array != np.round(array)):
                raise fail(name, f"bad {name}", "not integers")
            if expected == ():
                labels[name] = int(array) if integer else float(array)
            else:
                labels[name] = np.ascontiguousarray(array, dtype=np.int64 if integer else None)
        if cell is not None and labels["stress"] is not None and abs(np.linalg.det(cell)) < 1e-12:
            raise fail("stress", "stress without volume", "cell has zero volume")

        return Frame(
            positions=np.ascontiguousarray(positions),
            atomic_numbers=numbers.astype(np.int64),
            cell=None if cell is None else np.ascontiguousarray(cell),
            pbc=pbc,
            source=str(self.source),
            frame_id=str(self.frame_id),
            group_id=str(self.group_id),
            head_name=str(self.head_name),
            **{k: v for k, v in labels.items() if k in _NAMED},
            extra={k: v for k, v in labels.items() if k not in _NAMED and v is not None},
        )

    def to_graph(self, cutoff: float) -> AtomicGraph:
        """The frame as an :class:`mlip.AtomicGraph` with its neighbour list at ``cutoff`` Å;
        every present :data:`FRAME_FIELDS` value is carried over."""
        values = {name: self.value(name) for name in FRAME_FIELDS}
        # from_arrays takes float labels; anything else is set with its registry dtype
        direct = {
            name
            for name in values
            if name in keys.LABEL_FIELDS and keys.FIELDS[name].dtype.is_floating_point
        }
        graph = AtomicGraph.from_arrays(
            self.positions,
            self.atomic_numbers,
            cutoff,
            cell=self.cell,
            pbc=self.pbc,
            **{name: values[name] for name in direct},
        )
        others = {}
        for name, value in values.items():
            if name in direct or value is None:
                continue
            spec = keys.FIELDS[name]
            leading = -1 if spec.scope == "node" else 1
            tensor = torch.as_tensor(np.asarray(value)).to(spec.dtype)
            others[name] = tensor.reshape(leading, *spec.trailing_shape)
        return dataclasses.replace(graph, **others) if others else graph


def _as_array(value: Any, dtype: type, name: str, fail: Any) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise fail(name, f"bad shape {name}", str(exc)) from None
