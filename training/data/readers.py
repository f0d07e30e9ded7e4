"""Readers that turn dataset files into :class:`~training.data.frames.Frame` objects, lazily.

Formats (``format=`` names):

- ``"ase"``: anything :func:`ase.io.iread` reads (extxyz, xyz, traj, VASP OUTCAR/vasprun ...).
  Labels come from ``atoms.calc`` or from ``atoms.info`` / ``atoms.arrays`` under configurable
  keys; a virial (eV) becomes stress ``-virial / volume``. Stress units and sign/Voigt-order
  conventions are converted by :mod:`training.units` (``ReaderOptions.stress_units`` /
  ``stress_convention``), and a stress no material has is refused as a likely unit mix-up.
- ``"asedb"``: an ASE database (SQLite ``.db``, ``.json`` db) through :func:`ase.db.connect`.
- ``"aselmdb"``: an ASE-LMDB file (``.aselmdb``) or a folder of them (OMol25/OMat24); needs the
  ``omol`` extra (``lmdb`` + ``ase-db-backends``). Charge and spin are kept.
- ``"mptrj"``: the MPTrj JSON layout ``{mp_id: {frame_id: {...}}}``, streamed one frame at a
  time (the 12 GB file is never parsed whole).

Every reader yields frames in file order. :func:`iter_frames` validates them (raising
:class:`~training.data.frames.InvalidFrameError`, a ``ValueError`` naming file, frame and field) or,
with ``skip_invalid=True``, skips bad frames and counts them in a
:class:`~training.data.frames.SkipReport`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers as _SYMBOL_TO_Z

from training.data.frames import DEFAULT_REQUIRED, Frame, InvalidFrameError, SkipReport
from training.errors import DataError
from training.units import MAX_STRESS, check_stress_magnitude, stress_to_ase, virial_to_stress

__all__ = [
    "FORMATS",
    "ReaderOptions",
    "detect_format",
    "iter_frames",
    "read_frames",
    "iter_raw",
    "record_infos",
]

FORMATS = ("ase", "asedb", "aselmdb", "mptrj")

_OMOL_HINT = 'reading .aselmdb files needs the omol extra: pip install "mlip[omol]"'


@dataclass(frozen=True)
class ReaderOptions:
    """Where labels live, for all readers.

    Attributes:
        energy_key: ASE: ``atoms.info`` key of the energy (None: ``atoms.calc``, then
            ``info["energy"]``). MPTrj: the frame field used as the energy target
            (``"uncorrected_total_energy"`` by default, or ``"corrected_total_energy"``).
        forces_key: ASE: ``atoms.arrays`` key of the forces (None: calc, then
            ``arrays["forces"]``).
        stress_key: ASE: ``atoms.info`` key of the stress, Voigt-6, 9 or 3x3 values in
            ``stress_units`` and ``stress_convention`` (None: calc, then ``info["stress"]``).
        virial_key: ASE: ``atoms.info`` key of a virial in eV (3x3, 9 or Voigt-6); used only when
            no stress is found: stress = -virial / volume.
        stress_units: unit of the stress label: ``eV/A^3``, ``GPa`` or ``kbar``.
        stress_convention: ``ase`` (tensile positive, Voigt xx yy zz yz xz xy) or ``vasp``
            (compressive positive, Voigt xx yy zz xy yz zx); for a virial only the Voigt order.
        max_stress: largest accepted |stress component| after conversion, eV/Å³.
        charge_key: key of the total charge in ``info`` / db ``data``.
        spin_key: key of the spin multiplicity in ``info`` / db ``data``.
        group_key: ``info`` / db key of the group id (e.g. ``"mp_id"``); "" when absent.
        frame_id_key: ``info`` / db key of the frame id; None: the index in the file (for db
            files, the row id).
        head_key: ``info`` / db key (MPTrj: frame field) of the frame's level-of-theory head
            name (``Frame.head_name``); "" when absent. None: not read.
    """

    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    virial_key: str | None = None
    stress_units: str = "eV/A^3"
    stress_convention: str = "ase"
    max_stress: float = MAX_STRESS
    charge_key: str = "charge"
    spin_key: str = "spin"
    group_key: str | None = "mp_id"
    frame_id_key: str | None = None
    head_key: str | None = "head"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for storing with a converted dataset."""
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- dispatch
def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path`` from its name: one of :data:`FORMATS`.

    A folder is ``aselmdb`` (a folder of ``.aselmdb`` files); ``.aselmdb``/``.lmdb`` is
    ``aselmdb``; ``.db`` is ``asedb``; ``.json`` is ``mptrj``; anything else ``ase``.
    """
    path = Path(path)
    if path.is_dir():
        return "aselmdb"
    suffix = path.suffix.lower()
    if suffix in (".aselmdb", ".lmdb"):
        return "aselmdb"
    if suffix == ".db":
        return "asedb"
    if suffix == ".json":
        return "mptrj"
    return "ase"


def iter_raw(
    path: str | os.PathLike,
    format: str | None = None,
    options: ReaderOptions | None = None,
    start: int = 0,
) -> Iterator[Frame | InvalidFrameError]:
    """Unvalidated frames of one input, in file order, from record ``start`` on.

    Records that cannot even be parsed are yielded as :class:`InvalidFrameError` (not raised), so
    that a caller can count them and go on. Every record counts once toward ``start``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: ``path`` is an empty file.
        ImportError: an ``.aselmdb`` input without the ``omol`` extra.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset input not found: {path}")
    format = format or detect_format(path)
    options = options or ReaderOptions()
    if format == "ase" and path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, no structures")
    if format == "ase":
        return _iter_ase_file(path, options, start)
    if format == "asedb":
        return _iter_ase_db(path, options, start)
    if format == "aselmdb":
        return _iter_aselmdb(path, options, start)
    if format == "mptrj":
        return _iter_mptrj(path, options, start)
    raise ValueError(f"unknown dataset format {format!r}; known: {FORMATS}")


def iter_frames(
    path: str | os.PathLike,
    format: str | None = None,
    options: ReaderOptions | None = None,
    *,
    required: Sequence[str] = DEFAULT_REQUIRED,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
    start: int = 0,
) -> Iterator[Frame]:
    """Validated frames of one input file (see the module docstring for formats).

    Args:
        path: the file (or, for ``aselmdb``, a folder of files).
        format: one of :data:`FORMATS`; None guesses from the name (:func:`detect_format`).
        options: label keys; defaults to :class:`ReaderOptions()`.
        required: labels every frame must have.
        skip_invalid: skip bad frames (counted in ``report``) instead of raising.
        report: receives the skip counts; pass one in to read them afterwards.
        start: skip this many records first (for resuming).

    Raises:
        InvalidFrameError: (a ``ValueError``) a bad frame and ``skip_invalid`` is False.
    """
    report = report if report is not None else SkipReport()
    for index, item in enumerate(iter_raw(path, format, options, start), start=start):
        try:
            if isinstance(item, InvalidFrameError):
                raise item
            yield item.validated(required, index=index)
        except InvalidFrameError as error:
            if not skip_invalid:
                raise
            report.add(error)


def read_frames(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    format: str | None = None,
    options: ReaderOptions | None = None,
    *,
    required: Sequence[str] = DEFAULT_REQUIRED,
    skip_invalid: bool = False,
    report: SkipReport | None = None,
) -> list[Frame]:
    """All validated frames of one or more inputs, in memory (small datasets only)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames: list[Frame] = []
    for path in paths:
        frames.extend(
            iter_frames(
                path,
                format,
                options,
                required=required,
                skip_invalid=skip_invalid,
                report=report,
            )
        )
    return frames


# ----------------------------------------------------------------------------- ASE files
class _BadLabel(ValueError):
    """A label that was read but cannot be right (e.g. a stress in the wrong unit)."""

    def __init__(self, field: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail

    def at(self, source: str, index: int | None, frame_id: str) -> InvalidFrameError:
        return InvalidFrameError(source, index, frame_id, self.field, self.reason, self.detail)


def _checked_stress(stress: np.ndarray, options: ReaderOptions, origin: str) -> np.ndarray:
    problem = check_stress_magnitude(
        stress, options.stress_units, options.stress_convention, origin, options.max_stress
    )
    if problem:
        raise _BadLabel("stress", "implausible stress", problem)
    return stress


def _labels_from_atoms(atoms: Any, info: dict[str, Any], options: ReaderOptions) -> dict:
    """energy/forces/stress/charge/spin of one Atoms (``info`` may merge db data)."""
    results = dict(getattr(atoms.calc, "results", None) or {}) if atoms.calc else {}
    labels: dict[str, Any] = {}
    if options.energy_key is not None:
        labels["energy"] = info.get(options.energy_key, results.get(options.energy_key))
    else:
        labels["energy"] = results.get("energy", results.get("free_energy", info.get("energy")))
    if options.forces_key is not None:
        labels["forces"] = atoms.arrays.get(options.forces_key, results.get(options.forces_key))
        if labels["forces"] is None:
            labels["forces"] = info.get(options.forces_key)
    else:
        labels["forces"] = results.get("forces", atoms.arrays.get("forces", info.get("forces")))
    if options.stress_key is not None:
        stress = info.get(options.stress_key, results.get(options.stress_key))
    else:
        stress = results.get("stress", info.get("stress"))
    if stress is not None:
        stress = stress_to_ase(stress, options.stress_units, options.stress_convention)
        stress = _checked_stress(stress, options, "stress")
    else:
        virial = info.get(options.virial_key or "virial", results.get("virial"))
        if virial is not None:
            cell = atoms.cell.array if atoms.cell.rank == 3 else None
            stress = virial_to_stress(virial, cell, options.stress_convention)
            stress = _checked_stress(stress, options, "virial")
    labels["stress"] = stress
    for name, key in (("charge", options.charge_key), ("spin", options.spin_key)):
        value = info.get(key)
        if value is None and name in results and key == name:
            value = results.get(name)
        labels[name] = value
    return labels


def _frame_from_atoms(
    atoms: Any,
    info: dict[str, Any],
    options: ReaderOptions,
    source: str,
    default_id: str,
) -> Frame:
    labels = _labels_from_atoms(atoms, info, options)
    frame_id = default_id
    if options.frame_id_key is not None and info.get(options.frame_id_key) is not None:
        frame_id = str(info[options.frame_id_key])
    group_id = ""
    if options.group_key is not None and info.get(options.group_key) is not None:
        group_id = str(info[options.group_key])
    cell = atoms.cell.array.copy() if atoms.cell.rank > 0 else None
    return Frame(
        positions=np.array(atoms.positions, dtype=np.float64),
        atomic_numbers=np.array(atoms.numbers, dtype=np.int64),
        cell=cell,
        pbc=np.array(atoms.pbc, dtype=bool),
        source=source,
        frame_id=frame_id,
        group_id=group_id,
        head_name=_head_name(info, options),
        **labels,
    )


def _head_name(record: dict[str, Any], options: ReaderOptions) -> str:
    """The head name under ``options.head_key`` in ``record`` (info, db data, MPTrj frame)."""
    if options.head_key is None or record.get(options.head_key) is None:
        return ""
    return str(record[options.head_key])


def _iter_ase_file(
    path: Path, options: ReaderOptions, start: int
) -> Iterator[Frame | InvalidFrameError]:
    import ase.io

    source = str(path)
    records = ase.io.iread(source, index=f"{start}:")
    index = start
    while True:
        try:
            atoms = next(records)
        except StopIteration:
            return
        except Exception as exc:  # ASE's parsers raise many types on a truncated/corrupt file
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise InvalidFrameError(
                source, index, "", "record", "truncated or unreadable", detail
            ) from None
        try:
            yield _frame_from_atoms(atoms, dict(atoms.info), options, source, str(index))
        except _BadLabel as exc:
            yield exc.at(source, index, str(index))
        except (ValueError, TypeError, KeyError) as exc:
            yield InvalidFrameError(source, index, str(index), "record", "unreadable", str(exc))
        index += 1


# ----------------------------------------------------------------------------- ASE databases
def _row_info(row: Any, atoms: Any) -> dict[str, Any]:
    info = dict(atoms.info)
    info.update(row.key_value_pairs)
    data = row.get("data") or {}
    if isinstance(data, dict):
        info.update(data)
    return info


def _iter_db_rows(db: Any, source: str, options: ReaderOptions, start: int) -> Iterator:
    for index, row in enumerate(_db_rows(db, start), start=start):
        try:
            atoms = row.toatoms()
            info = _row_info(row, atoms)
            yield _frame_from_atoms(atoms, info, options, source, str(row.id))
        except _BadLabel as exc:
            yield exc.at(source, index, str(row.id))
        except (ValueError, TypeError, KeyError) as exc:
            yield InvalidFrameError(source, index, "", "record", "unreadable", str(exc))


def _db_rows(db: Any, start: int = 0) -> Iterator[Any]:
    """The rows of an ASE database from row ``start`` on, in order."""
    ids = getattr(db, "ids", None)
    if ids is not None:  # LMDB backend: direct row access by id
        return (db.get(id=row_id) for row_id in list(ids)[start:])
    return db.select(offset=start)


def record_infos(path: str | os.PathLike, format: str | None = None) -> list[dict[str, Any]]:
    """The ``atoms.info`` of every record, in file order: for ASE files the frame's info, for
    ASE databases and ``.aselmdb`` files (or folders) the row's key-value pairs and ``data``
    (where OMol25 keeps charge and spin).

    Raises:
        ValueError: an MPTrj JSON file (its records are not ASE structures).
    """
    format = format or detect_format(path)
    if format == "ase":
        import ase.io

        return [dict(atoms.info) for atoms in ase.io.iread(path, index=":")]
    if format == "mptrj":
        raise ValueError(f"{path}: MPTrj JSON records have no atoms.info")
    if format == "asedb":
        import ase.db

        dbs = [ase.db.connect(str(path))]
    else:
        dbs = [_open_aselmdb(file) for file in aselmdb_files(path)]
    infos = []
    for db in dbs:
        try:
            infos.extend(_row_info(row, row.toatoms()) for row in _db_rows(db))
        finally:
            if hasattr(db, "close"):
                db.close()
    return infos


def _iter_ase_db(
    path: Path, options: ReaderOptions, start: int
) -> Iterator[Frame | InvalidFrameError]:
    import ase.db

    db = ase.db.connect(str(path))
    yield from _iter_db_rows(db, str(path), options, start)


def require_omol() -> None:
    """Raise ``ImportError`` with the install hint when ``lmdb``/``ase-db-backends`` are missing."""
    try:
        import ase_db_backends  # noqa: F401
        import lmdb  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_OMOL_HINT} (missing: {exc.name or exc})") from exc


def aselmdb_files(path: str | os.PathLike) -> list[Path]:
    """The ``.aselmdb`` file ``path``, or the sorted ``.aselmdb`` files in folder ``path``."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".aselmdb", ".lmdb"))
        if not files:
            raise FileNotFoundError(f"no .aselmdb files in folder {path}")
        return files
    return [path]


def _open_aselmdb(path: Path) -> Any:
    require_omol()
    from ase_db_backends.aselmdb import LMDBDatabase

    return LMDBDatabase(path, readonly=True, use_lock_file=False)


def _iter_aselmdb(
    path: Path, options: ReaderOptions, start: int
) -> Iterator[Frame | InvalidFrameError]:
    require_omol()
    remaining = start
    for file in aselmdb_files(path):
        db = _open_aselmdb(file)
        try:
            n_rows = len(db.ids)
            if remaining >= n_rows:
                remaining -= n_rows
                continue
            yield from _iter_db_rows(db, str(file), options, remaining)
            remaining = 0
        finally:
            if hasattr(db, "close"):
                db.close()


# ----------------------------------------------------------------------------- MPTrj JSON
class _JsonStream:
    """Incremental tokenizer over a text file: one JSON value at a time, bounded buffer."""

    def __init__(self, handle: Any, chunk_chars: int = 1 << 20) -> None:
        self._handle = handle
        self._chunk = chunk_chars
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self._decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._handle.read(self._chunk)
        if not data:
            self._eof = True
            return False
        if self._pos > 0:
            self._buffer = self._buffer[self._pos :]
            self._pos = 0
        self._buffer += data
        return True

    def peek(self) -> str:
        """Next non-whitespace character ("" at end of file)."""
        while True:
            buffer, pos, size = self._buffer, self._pos, len(self._buffer)
            while pos < size and buffer[pos] in " \t\r\n":
                pos += 1
            self._pos = pos
            if pos < size:
                return buffer[pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        """Consume one of ``chars`` (after whitespace) and return it."""
        char = self.peek()
        if not char or char not in chars:
            found = repr(char) if char else "end of file"
            raise ValueError(f"expected one of {chars!r}, found {found}")
        self._pos += 1
        return char

    def value(self) -> Any:
        """Decode the next JSON value."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError:
                if self._fill():
                    continue
                raise
            # A number at the very end of the buffer might continue in the next chunk.
            if end == len(self._buffer) and not self._eof and self._fill():
                continue
            self._pos = end
            return value


def _mptrj_frame(
    record: dict[str, Any], options: ReaderOptions, source: str, group: str, frame_id: str
) -> Frame:
    structure = record["structure"]
    lattice = structure["lattice"]
    matrix = np.asarray(lattice["matrix"], dtype=np.float64)
    pbc = np.asarray(lattice.get("pbc", (True, True, True)), dtype=bool)
    sites = structure["sites"]
    numbers = np.empty(len(sites), dtype=np.int64)
    positions = np.empty((len(sites), 3), dtype=np.float64)
    for i, site in enumerate(sites):
        species = site["species"]
        if len(species) != 1 or float(species[0].get("occu", 1)) != 1.0:
            raise ValueError(f"site {i} is disordered (partial occupancy); not supported")
        numbers[i] = _SYMBOL_TO_Z[species[0]["element"]]
        if "xyz" in site:
            positions[i] = site["xyz"]
        else:
            positions[i] = np.asarray(site["abc"], dtype=np.float64) @ matrix
    energy_key = options.energy_key or "uncorrected_total_energy"
    stress_kbar = record.get("stress")  # MPTrj: 3x3 kBar, VASP sign, whatever the options say
    stress = None
    if stress_kbar is not None:
        stress = stress_to_ase(stress_kbar, "kbar", "vasp")
        stress = _checked_stress(stress, options, "stress")
    return Frame(
        positions=positions,
        atomic_numbers=numbers,
        cell=matrix,
        pbc=pbc,
        energy=record.get(energy_key),
        forces=record.get(options.forces_key or "force"),
        stress=stress,
        charge=record.get(options.charge_key),
        spin=record.get(options.spin_key),
        source=source,
        frame_id=str(frame_id),
        group_id=str(record.get("mp_id") or group),
        head_name=_head_name(record, options),
    )


def _iter_mptrj(
    path: Path, options: ReaderOptions, start: int
) -> Iterator[Frame | InvalidFrameError]:
    source = str(path)
    index = 0
    with open(path, encoding="utf-8") as handle:
        stream = _JsonStream(handle)
        try:
            stream.expect("{")
            if stream.peek() == "}":
                return
            while True:
                group = stream.value()
                stream.expect(":")
                stream.expect("{")
                if stream.peek() != "}":
                    while True:
                        frame_id = stream.value()
                        stream.expect(":")
                        record = stream.value()
                        if index >= start:
                            try:
                                yield _mptrj_frame(record, options, source, group, frame_id)
                            except _BadLabel as exc:
                                yield exc.at(source, index, str(frame_id))
                            except (KeyError, ValueError, TypeError, IndexError) as exc:
                                detail = f"{type(exc).__name__}: {exc}"
                                yield InvalidFrameError(
                                    source, index, str(frame_id), "record", "unreadable", detail
                                )
                        index += 1
                        if stream.expect(",}") == "}":
                            break
                else:
                    stream.expect("}")
                if stream.expect(",}") == "}":
                    break
        except (json.JSONDecodeError, ValueError) as exc:
            if isinstance(exc, InvalidFrameError):
                raise
            raise ValueError(
                f"{source}: not in the MPTrj JSON layout {{mp_id: {{frame_id: {{...}}}}}} "
                f"near frame {index}: {exc}"
            ) from exc
