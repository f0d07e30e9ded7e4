"""The HDF5 dataset store: convert once, then stream with bounded memory.

Layout (one HDF5 file, every array chunked, compressed and resizable)::

    /positions       (n_atoms_total, 3) f8  Å             per atom, frames concatenated
    /atomic_numbers  (n_atoms_total,)   u1
    /offsets         (n_frames,) i8  first atom of each frame in the per-atom arrays
    /n_atoms         (n_frames,) i4
    /cell            (n_frames, 3, 3) f8  Å, rows are lattice vectors; NaN: no cell
    /pbc             (n_frames, 3) bool
    /source_index    (n_frames,) i4  row of /sources
    /frame_id, /group_id, /head_name  (n_frames,) variable-length UTF-8 strings (the head
                     name is "" when the input had none; a store written before head names
                     were kept has no /head_name and reads as "")
    /sources         (n_sources,) variable-length UTF-8 strings (input file paths)
    one dataset per data field (:data:`training.data.frames.FRAME_FIELDS`, read from
    :data:`mlip.keys.FIELDS`): per atom for node fields, per frame for graph fields, with the
    registry's trailing shape; missing values are NaN (float fields) or the minimum int64
    (integer fields). Today: /energy (eV), /forces (eV/Å), /stress (eV/Å³, ASE sign),
    /charge, /spin.
    /splits/NAME/PART    int64 frame indices (:mod:`training.data.splits`)
    /n_edges/CUTOFF      (n_frames,) i8 cached edge counts (:mod:`training.data.statistics`)
    /statistics/KEY/...  cached sums of :mod:`training.data.statistics`
    attrs: format, format_version, complete, n_frames, n_atoms, progress (JSON), ...

Caches (splits, edge counts, statistics) are written by one process (rank 0 under torchrun)
through :meth:`Store.writable`; readers open the file read-only.

Conversion commits in batches: the arrays are grown, written and flushed, then ``n_frames`` /
``n_atoms`` / ``progress`` (input cursor) are updated and flushed. An interrupted conversion is
resumed by truncating every array to the committed sizes and skipping the inputs' records that
were already consumed. The ``complete`` attribute is set only at the very end, and
:class:`Store` refuses a store without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlip import keys
from training.data.frames import (
    DEFAULT_REQUIRED,
    FRAME_FIELDS,
    Frame,
    InvalidFrameError,
    SkipReport,
)
from training.data.readers import ReaderOptions, detect_format, iter_raw

__all__ = [
    "ConvertReport",
    "IncompleteStoreError",
    "Store",
    "convert",
    "is_store",
    "write_frames",
]

FORMAT = "mlip-store"
FORMAT_VERSION = 1
COMMIT_DELAY_ENV = "MLIP_DATA_COMMIT_DELAY"
"""Seconds to sleep after every commit (for testing interruption); unset in normal use."""

_ATOM_CHUNK = 4096  # 96 kB of positions: small enough for cheap random access
_FRAME_CHUNK = 1024
_READ_CACHE_BYTES = 8 << 20  # HDF5 chunk cache per open dataset, per process
_STR = h5py.string_dtype("utf-8")
_INT_MISSING = np.iinfo(np.int64).min


def _numpy_dtype(name: str) -> Any:
    spec = keys.FIELDS[name]
    return np.float64 if spec.dtype.is_floating_point else np.int64


def _missing(name: str) -> Any:
    return np.nan if _numpy_dtype(name) is np.float64 else _INT_MISSING


# name -> (dtype, trailing shape)
_PER_ATOM: dict[str, tuple[Any, tuple[int, ...]]] = {
    "positions": (np.float64, (3,)),
    "atomic_numbers": (np.uint8, ()),
    **{
        name: (_numpy_dtype(name), keys.FIELDS[name].trailing_shape)
        for name in FRAME_FIELDS
        if keys.FIELDS[name].scope == "node"
    },
}
_PER_FRAME: dict[str, tuple[Any, tuple[int, ...]]] = {
    "offsets": (np.int64, ()),
    "n_atoms": (np.int32, ()),
    "cell": (np.float64, (3, 3)),
    "pbc": (np.bool_, (3,)),
    **{
        name: (_numpy_dtype(name), keys.FIELDS[name].trailing_shape)
        for name in FRAME_FIELDS
        if keys.FIELDS[name].scope == "graph"
    },
    "source_index": (np.int32, ()),
    "frame_id": (_STR, ()),
    "group_id": (_STR, ()),
    "head_name": (_STR, ()),
}
_STRINGS = ("frame_id", "group_id", "head_name")
"""The per-frame string columns (:meth:`Store.strings`)."""


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file (a store; :class:`Store` checks the rest)."""
    return Path(path).is_file() and h5py.is_hdf5(path)


class IncompleteStoreError(RuntimeError):
    """The store's conversion did not finish (run ``mlip-data convert`` again to resume)."""


# ============================================================================ writing
@dataclass
class ConvertReport:
    """What :func:`convert` did.

    Attributes:
        output: the store path.
        n_frames: frames in the finished store.
        n_atoms: atoms in the finished store.
        written: frames written by this call (less than ``n_frames`` after a resume).
        resumed_from: frames already in the store when this call started.
        skipped: reasons -> counts of frames skipped over the whole conversion.
        seconds: wall time of this call.
    """

    output: str
    n_frames: int
    n_atoms: int
    written: int
    resumed_from: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _frame_arrays(frames: Sequence[Frame], source_index: Sequence[int]) -> dict[str, np.ndarray]:
    n_frames = len(frames)
    arrays: dict[str, np.ndarray] = {
        "positions": np.concatenate([f.positions for f in frames]),
        "atomic_numbers": np.concatenate([f.atomic_numbers for f in frames]).astype(np.uint8),
        "n_atoms": np.array([f.n_atoms for f in frames], dtype=np.int32),
        "cell": np.full((n_frames, 3, 3), np.nan),
        "pbc": np.array([f.pbc for f in frames], dtype=bool).reshape(n_frames, 3),
        "source_index": np.asarray(source_index, dtype=np.int32),
        "frame_id": np.array([f.frame_id for f in frames], dtype=object),
        "group_id": np.array([f.group_id for f in frames], dtype=object),
        "head_name": np.array([f.head_name for f in frames], dtype=object),
    }
    for i, frame in enumerate(frames):
        if frame.cell is not None:
            arrays["cell"][i] = frame.cell
    for name in FRAME_FIELDS:
        dtype, trailing = _PER_ATOM.get(name) or _PER_FRAME[name]
        if keys.FIELDS[name].scope == "node":
            arrays[name] = np.concatenate(
                [
                    np.full((f.n_atoms, *trailing), _missing(name), dtype=dtype)
                    if f.value(name) is None
                    else np.asarray(f.value(name), dtype=dtype)
                    for f in frames
                ]
            )
        else:
            column = np.full((n_frames, *trailing), _missing(name), dtype=dtype)
            for i, frame in enumerate(frames):
                if frame.value(name) is not None:
                    column[i] = frame.value(name)
            arrays[name] = column
    return arrays


class _Writer:
    """Appends frames to a store file and commits progress (see the module docstring)."""

    def __init__(
        self,
        output: Path,
        fingerprint: dict[str, Any],
        compression: str | None,
        resume: bool,
        overwrite: bool,
    ) -> None:
        self.output = output
        self.fingerprint = fingerprint
        self.progress: list[dict[str, Any]] = []
        self.resumed_from = 0
        if output.exists():
            state = _peek_state(output)
            if state == "complete" and not overwrite:
                raise FileExistsError(
                    f"{output} is already a complete store; pass overwrite=True "
                    "(--overwrite) to convert again"
                )
            if state == "incomplete" and resume and not overwrite:
                self._open_for_resume()
                return
            if state in ("foreign", "incomplete") and not overwrite:
                what = "an interrupted conversion" if state == "incomplete" else "not a store"
                raise FileExistsError(
                    f"{output} exists and is {what}; pass overwrite=True (--overwrite) to "
                    "replace it" + (" or resume=True to resume" if state == "incomplete" else "")
                )
            output.unlink()
        self._create(compression)

    # ---------------------------------------------------------------- setup
    def _create(self, compression: str | None) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.output, "w")
        kwargs: dict[str, Any] = {}
        if compression == "gzip":
            kwargs = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        elif compression == "lzf":
            kwargs = {"compression": "lzf", "shuffle": True}
        elif compression not in (None, "none"):
            raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
        for table, chunk in ((_PER_ATOM, _ATOM_CHUNK), (_PER_FRAME, _FRAME_CHUNK)):
            for name, (dtype, trailing) in table.items():
                options = dict(kwargs)
                if dtype is _STR:
                    options.pop("shuffle", None)
                self.file.create_dataset(
                    name,
                    shape=(0, *trailing),
                    maxshape=(None, *trailing),
                    dtype=dtype,
                    chunks=(chunk, *trailing),
                    **options,
                )
        self.file.create_dataset("sources", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(64,))
        attrs = self.file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["complete"] = False
        attrs["n_frames"] = 0
        attrs["n_atoms"] = 0
        attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
        attrs["progress"] = json.dumps([])
        attrs["units"] = json.dumps(
            {"positions": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³ (ASE sign)"}
        )
        self.sources: dict[str, int] = {}
        self.n_frames = 0
        self.n_atoms = 0
        self.file.flush()

    def _open_for_resume(self) -> None:
        try:
            self.file = h5py.File(self.output, "r+")
        except OSError as exc:
            raise OSError(
                f"cannot reopen the interrupted store {self.output} to resume ({exc}); "
                "delete it and convert again"
            ) from exc
        attrs = self.file.attrs
        stored = json.loads(attrs.get("fingerprint", "{}"))
        if stored != json.loads(json.dumps(self.fingerprint, sort_keys=True)):
            self.file.close()
            raise ValueError(
                f"{self.output} is an interrupted conversion of different inputs or options; "
                f"stored {stored}, requested {self.fingerprint}; pass overwrite=True to restart"
            )
        self.n_frames = int(attrs["n_frames"])
        self.n_atoms = int(attrs["n_atoms"])
        self.progress = json.loads(attrs["progress"])
        self.resumed_from = self.n_frames
        # Drop anything written after the last commit.
        for name in _PER_ATOM:
            self.file[name].resize(self.n_atoms, axis=0)
        for name in _PER_FRAME:
            self.file[name].resize(self.n_frames, axis=0)
        n_sources = int(attrs.get("n_sources", 0))
        self.file["sources"].resize(n_sources, axis=0)
        names = self.file["sources"].asstr()[:] if n_sources else []
        self.sources = {str(name): i for i, name in enumerate(names)}
        self.file.flush()

    # ---------------------------------------------------------------- writing
    def _source_index(self, source: str) -> int:
        if source not in self.sources:
            dataset = self.file["sources"]
            dataset.resize(len(self.sources) + 1, axis=0)
            dataset[len(self.sources)] = source
            self.sources[source] = len(self.sources)
        return self.sources[source]

    def append(self, frames: Sequence[Frame]) -> None:
        if not frames:
            return
        source_index = [self._source_index(frame.source) for frame in frames]
        arrays = _frame_arrays(frames, source_index)
        n_new_atoms = int(arrays["n_atoms"].sum())
        arrays["offsets"] = self.n_atoms + np.concatenate(
            [[0], np.cumsum(arrays["n_atoms"][:-1], dtype=np.int64)]
        ).astype(np.int64)
        for name in _PER_ATOM:
            dataset = self.file[name]
            dataset.resize(self.n_atoms + n_new_atoms, axis=0)
            dataset[self.n_atoms :] = arrays[name]
        for name in _PER_FRAME:
            dataset = self.file[name]
            dataset.resize(self.n_frames + len(frames), axis=0)
            dataset[self.n_frames :] = arrays[name]
        self.n_frames += len(frames)
        self.n_atoms += n_new_atoms

    def commit(self) -> None:
        """Make everything appended so far durable and record the input cursor."""
        self.file.flush()
        attrs = self.file.attrs
        attrs["n_sources"] = len(self.sources)
        attrs["progress"] = json.dumps(self.progress)
        attrs["n_atoms"] = self.n_atoms
        attrs["n_frames"] = self.n_frames
        self.file.flush()

    def finish(self) -> None:
        self.commit()
        self.file.attrs["complete"] = True
        self.file.flush()
        self.file.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def _peek_state(path: Path) -> str:
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT:
                return "foreign"
            return "complete" if bool(file.attrs.get("complete", False)) else "incomplete"
    except OSError:
        return "foreign"


def convert(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    format: str | None = None,
    options: ReaderOptions | None = None,
    required: Sequence[str] = DEFAULT_REQUIRED,
    skip_invalid: bool = False,
    batch_size: int = 2048,
    compression: str | None = "lzf",
    resume: bool = True,
    overwrite: bool = False,
    on_commit: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Convert dataset files into one HDF5 store (resumable).

    Args:
        inputs: one or more files (or ``.aselmdb`` folders); see :mod:`training.data.readers`.
        output: the ``.h5`` store to write.
        format: reader format for every input (None: guess each from its name).
        options: label keys (:class:`~training.data.readers.ReaderOptions`).
        required: labels every frame must have.
        skip_invalid: skip bad frames and count them (in the report and the store's
            ``skipped`` attribute) instead of raising.
        batch_size: input records per commit.
        compression: ``"lzf"`` (fast), ``"gzip"`` (smaller) or None.
        resume: if ``output`` is an interrupted conversion of the same inputs and options, go on
            from its last commit.
        overwrite: replace an existing store.
        on_commit: called with the number of frames committed after every commit.

    Raises:
        FileNotFoundError: an input is missing.
        InvalidFrameError: a bad frame (``skip_invalid=False``); the store stays incomplete.
        FileExistsError: ``output`` is complete (or foreign) and ``overwrite`` is False.
    """
    started = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"dataset input not found: {path}")
    options = options or ReaderOptions()
    formats = [format or detect_format(p) for p in paths]
    fingerprint = {
        "inputs": [str(p.resolve()) for p in paths],
        "formats": formats,
        "options": options.as_dict(),
        "required": list(required),
        "skip_invalid": skip_invalid,
    }
    output = Path(output)
    writer = _Writer(output, fingerprint, compression, resume, overwrite)
    if not writer.progress:
        writer.progress = [
            {"path": str(p), "consumed": 0, "done": False, "skipped": {}} for p in paths
        ]
    delay = float(os.environ.get(COMMIT_DELAY_ENV, "0") or 0)
    written = 0
    try:
        for path, fmt, cursor in zip(paths, formats, writer.progress):
            if cursor["done"]:
                continue
            report = SkipReport()
            report.counts.update(cursor["skipped"])
            pending: list[Frame] = []
            consumed = int(cursor["consumed"])
            for item in iter_raw(path, fmt, options, start=consumed):
                try:
                    if isinstance(item, InvalidFrameError):
                        raise item
                    pending.append(item.validated(required, index=consumed))
                except InvalidFrameError as error:
                    if not skip_invalid:
                        raise
                    report.add(error)
                consumed += 1
                if consumed % batch_size == 0:
                    writer.append(pending)
                    written += len(pending)
                    pending = []
                    cursor["consumed"] = consumed
                    cursor["skipped"] = report.as_dict()
                    writer.commit()
                    if on_commit is not None:
                        on_commit(writer.n_frames)
                    if delay:
                        time.sleep(delay)
            writer.append(pending)
            written += len(pending)
            cursor["consumed"] = consumed
            cursor["skipped"] = report.as_dict()
            cursor["done"] = True
            writer.commit()
            if on_commit is not None:
                on_commit(writer.n_frames)
        skipped = SkipReport()
        for cursor in writer.progress:
            skipped.counts.update(cursor["skipped"])
        writer.file.attrs["skipped"] = json.dumps(skipped.as_dict())
        n_frames, n_atoms = writer.n_frames, writer.n_atoms
        writer.finish()
    except BaseException:
        writer.close()
        raise
    return ConvertReport(
        output=str(output),
        n_frames=n_frames,
        n_atoms=n_atoms,
        written=written,
        resumed_from=writer.resumed_from,
        skipped=skipped.as_dict(),
        seconds=time.perf_counter() - started,
    )


def write_frames(
    frames: Iterable[Frame],
    output: str | os.PathLike,
    *,
    batch_size: int = 2048,
    compression: str | None = "lzf",
    overwrite: bool = False,
) -> ConvertReport:
    """Write already-read (validated) frames into a new store (not resumable)."""
    started = time.perf_counter()
    writer = _Writer(Path(output), {"inputs": "frames"}, compression, False, overwrite)
    pending: list[Frame] = []
    try:
        for frame in frames:
            pending.append(frame)
            if len(pending) == batch_size:
                writer.append(pending)
                writer.commit()
                pending = []
        writer.append(pending)
        n_frames, n_atoms = writer.n_frames, writer.n_atoms
        writer.file.attrs["skipped"] = json.dumps({})
        writer.finish()
    except BaseException:
        writer.close()
        raise
    return ConvertReport(
        str(output), n_frames, n_atoms, n_frames, 0, {}, time.perf_counter() - started
    )


# ============================================================================ reading
class Store:
    """Random access to a finished store with bounded memory; safe across DataLoader workers.

    The HDF5 file is opened lazily, once per process (the handle is dropped when pickled and
    reopened when the process id changes, i.e. after a fork), so every worker gets its own.
    Only per-frame ``offsets`` and ``n_atoms`` (12 bytes per frame) are held in memory.

    Args:
        path: the ``.h5`` store.

    Raises:
        FileNotFoundError: no such file.
        IncompleteStoreError: the conversion never finished.
        ValueError: not an mlip store, or a newer format version.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"store not found: {self.path}")
        with h5py.File(self.path, "r") as file:
            attrs = file.attrs
            if attrs.get("format") != FORMAT:
                raise ValueError(f"{self.path} is not an mlip dataset store")
            if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(
                    f"{self.path} has store format version {attrs['format_version']}, newer "
                    f"than this mlip reads ({FORMAT_VERSION})"
                )
            if not bool(attrs.get("complete", False)):
                raise IncompleteStoreError(
                    f"{self.path} is incomplete: its conversion was interrupted after "
                    f"{int(attrs.get('n_frames', 0))} frames; run the same `mlip-data convert` "
                    "again to resume it"
                )
            self.n_atoms = file["n_atoms"][:].astype(np.int64)
            self.offsets = file["offsets"][:]
            self.sources = [str(s) for s in file["sources"].asstr()[:]]
            self.skipped = json.loads(attrs.get("skipped", "{}"))
            # data fields this store has (an older store may lack a newer field)
            self.fields = tuple(name for name in FRAME_FIELDS if name in file)
            self.has_head_names = "head_name" in file
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, Any] = {}

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n_frames={len(self)})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        return state

    @property
    def file(self) -> h5py.File:
        """This process's read-only handle (opened on first use)."""
        if self._file is None or self._pid != os.getpid():
            # After a fork the inherited handle belongs to the parent: never touch it.
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_READ_CACHE_BYTES)
            self._pid = os.getpid()
            self._datasets = {}
        return self._file

    def _dataset(self, name: str) -> h5py.Dataset:
        # Keep datasets open: HDF5's chunk cache lives with the open dataset.
        file = self.file
        dataset = self._datasets.get(name)
        if dataset is None:
            dataset = file[name]
            if dataset.dtype.kind == "O":
                dataset = dataset.asstr()
            self._datasets[name] = dataset
        return dataset

    def close(self) -> None:
        """Close this process's handle (it reopens on the next access)."""
        self._datasets = {}
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getitem__(self, index: int) -> Frame:
        """Frame ``index`` (negative indices count from the end), labels NaN -> None."""
        n_frames = len(self)
        if not -n_frames <= index < n_frames:
            raise IndexError(f"frame {index} out of range for a store of {n_frames} frames")
        index = int(index) % n_frames
        read = self._dataset
        start = int(self.offsets[index])
        stop = start + int(self.n_atoms[index])
        cell = read("cell")[index]
        values: dict[str, Any] = {}
        for name in self.fields:
            node = keys.FIELDS[name].scope == "node"
            value = read(name)[start:stop] if node else read(name)[index]
            missing = np.isnan(value) if value.dtype.kind == "f" else value == _INT_MISSING
            if np.all(missing):
                continue
            values[name] = value if np.ndim(value) else value.item()
        return Frame(
            positions=read("positions")[start:stop],
            atomic_numbers=read("atomic_numbers")[start:stop].astype(np.int64),
            cell=None if np.isnan(cell).all() else cell,
            pbc=read("pbc")[index],
            source=self.sources[int(read("source_index")[index])],
            frame_id=str(read("frame_id")[index]),
            group_id=str(read("group_id")[index]),
            head_name=str(read("head_name")[index]) if self.has_head_names else "",
        ).with_values(**values)

    @contextlib.contextmanager
    def writable(self) -> Iterator[h5py.File]:
        """The file opened for writing a cache (split, edge counts, statistics).

        Closes this process's read handle first. Call it from one process only (rank 0): HDF5
        refuses a writer while other processes hold the file open.
        """
        self.close()
        with h5py.File(self.path, "r+") as file:
            yield file

    def strings(self, name: str) -> np.ndarray:
        """All values of a per-frame string column (``"frame_id"``, ``"group_id"`` or
        ``"head_name"``; "" for each frame of a store without head names)."""
        if name not in _STRINGS:
            raise ValueError(f"not a string column: {name!r}")
        if name == "head_name" and not self.has_head_names:
            return np.full(len(self), "", dtype=object)
        dataset = self.file[name].asstr()
        parts = [
            np.asarray(dataset[i : i + 65536], dtype=object) for i in range(0, len(self), 65536)
        ]
        return np.concatenate(parts) if parts else np.array([], dtype=object)
