"""The HDF5 dataset store: convert once, then stream with bounded memory.

Layout (one HDF5 file, every array chunked, compressed and resizable)::

    /positions       (n_atoms_total, 3) f8  Å             per atom, frames concatenated
    /atomic_numbers  (n_atoms_total,)   u1
    /forces          (n_atoms_total, 3) f8  eV/Å          NaN where a frame has no forces
    /offsets         (n_frames,) i8  first atom of each frame in the per-atom arrays
    /n_atoms         (n_frames,) i4
    /cell            (n_frames, 3, 3) f8  Å, rows are lattice vectors; NaN: no cell
    /pbc             (n_frames, 3) bool
    /energy          (n_frames,) f8  eV                   NaN: missing
    /stress          (n_frames, 3, 3) f8  eV/Å³, ASE sign NaN: missing
    /charge, /spin   (n_frames,) f8                       NaN: missing
    /source_index    (n_frames,) i4  row of /sources
    /frame_id, /group_id  (n_frames,) variable-length UTF-8 strings
    /sources         (n_sources,) variable-length UTF-8 strings (input file paths)
    /splits/NAME/PART    int64 frame indices (see :func:`make_split`)
    /n_edges/CUTOFF      (n_frames,) i8 cached edge counts (see :func:`edge_counts`)
    attrs: format, format_version, complete, n_frames, n_atoms, progress (JSON), ...

Conversion commits in batches: the arrays are grown, written and flushed, then ``n_frames`` /
``n_atoms`` / ``progress`` (input cursor) are updated and flushed. An interrupted conversion is
resumed by truncating every array to the committed sizes and skipping the inputs' records that
were already consumed. The ``complete`` attribute is set only at the very end, and
:class:`Store` refuses a store without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from training.data.frames import DEFAULT_REQUIRED, Frame, InvalidFrameError, SkipReport
from training.data.readers import ReaderOptions, detect_format, iter_raw

__all__ = [
    "ConvertReport",
    "IncompleteStoreError",
    "Statistics",
    "Store",
    "compute_statistics",
    "convert",
    "edge_counts",
    "load_split",
    "make_split",
    "split_by_groups",
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
# name -> (dtype, trailing shape)
_PER_ATOM: dict[str, tuple[Any, tuple[int, ...]]] = {
    "positions": (np.float64, (3,)),
    "atomic_numbers": (np.uint8, ()),
    "forces": (np.float64, (3,)),
}
_PER_FRAME: dict[str, tuple[Any, tuple[int, ...]]] = {
    "offsets": (np.int64, ()),
    "n_atoms": (np.int32, ()),
    "cell": (np.float64, (3, 3)),
    "pbc": (np.bool_, (3,)),
    "energy": (np.float64, ()),
    "stress": (np.float64, (3, 3)),
    "charge": (np.float64, ()),
    "spin": (np.float64, ()),
    "source_index": (np.int32, ()),
    "frame_id": (_STR, ()),
    "group_id": (_STR, ()),
}


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
        "forces": np.concatenate(
            [f.forces if f.forces is not None else np.full((f.n_atoms, 3), np.nan) for f in frames]
        ),
        "n_atoms": np.array([f.n_atoms for f in frames], dtype=np.int32),
        "cell": np.full((n_frames, 3, 3), np.nan),
        "pbc": np.array([f.pbc for f in frames], dtype=bool).reshape(n_frames, 3),
        "energy": np.full(n_frames, np.nan),
        "stress": np.full((n_frames, 3, 3), np.nan),
        "charge": np.full(n_frames, np.nan),
        "spin": np.full(n_frames, np.nan),
        "source_index": np.asarray(source_index, dtype=np.int32),
        "frame_id": np.array([f.frame_id for f in frames], dtype=object),
        "group_id": np.array([f.group_id for f in frames], dtype=object),
    }
    for i, frame in enumerate(frames):
        if frame.cell is not None:
            arrays["cell"][i] = frame.cell
        if frame.stress is not None:
            arrays["stress"][i] = frame.stress
        for name in ("energy", "charge", "spin"):
            value = getattr(frame, name)
            if value is not None:
                arrays[name][i] = value
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
        forces = read("forces")[start:stop]
        cell = read("cell")[index]
        stress = read("stress")[index]
        scalars = {name: float(read(name)[index]) for name in ("energy", "charge", "spin")}
        return Frame(
            positions=read("positions")[start:stop],
            atomic_numbers=read("atomic_numbers")[start:stop].astype(np.int64),
            cell=None if np.isnan(cell).all() else cell,
            pbc=read("pbc")[index],
            forces=None if np.isnan(forces).all() else forces,
            stress=None if np.isnan(stress).all() else stress,
            source=self.sources[int(read("source_index")[index])],
            frame_id=str(read("frame_id")[index]),
            group_id=str(read("group_id")[index]),
            **{k: (None if np.isnan(v) else v) for k, v in scalars.items()},
        )

    def strings(self, name: str) -> np.ndarray:
        """All values of a per-frame string column (``"frame_id"`` or ``"group_id"``)."""
        if name not in ("frame_id", "group_id"):
            raise ValueError(f"not a string column: {name!r}")
        dataset = self.file[name].asstr()
        parts = [
            np.asarray(dataset[i : i + 65536], dtype=object) for i in range(0, len(self), 65536)
        ]
        return np.concatenate(parts) if parts else np.array([], dtype=object)


# ============================================================================ statistics
@dataclass
class Statistics:
    """Dataset statistics from one streaming pass (all energies eV, forces eV/Å).

    Attributes:
        n_frames: frames counted.
        n_atoms: atoms counted.
        element_counts: atomic number -> number of atoms.
        mean_energy_per_atom: mean over frames of energy / n_atoms (frames with an energy).
        reference_energies: atomic number -> least-squares per-element energy (eV), the
            solution of min ||counts @ e - energy||² (minimum norm when under-determined).
        energy_residual_rms: RMS per atom (eV/atom) of energy minus the reference-energy sum.
        force_rms: RMS of force components over atoms with forces (eV/Å).
        cutoff: the cutoff of ``mean_neighbors`` (Å), or None.
        mean_neighbors: mean number of neighbours per atom within ``cutoff``, or None.
    """

    n_frames: int
    n_atoms: int
    element_counts: dict[int, int]
    mean_energy_per_atom: float
    reference_energies: dict[int, float]
    energy_residual_rms: float
    force_rms: float
    cutoff: float | None = None
    mean_neighbors: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Statistics:
        data = json.loads(text)
        data["element_counts"] = {int(k): int(v) for k, v in data["element_counts"].items()}
        data["reference_energies"] = {
            int(k): float(v) for k, v in data["reference_energies"].items()
        }
        return cls(**data)


def _selection_key(indices: np.ndarray | None) -> str:
    if indices is None:
        return "all"
    digest = hashlib.sha1(np.ascontiguousarray(np.sort(indices), dtype=np.int64).tobytes())
    return f"subset-{len(indices)}-{digest.hexdigest()[:16]}"


def _try_write_attr(store: Store, group: str, key: str, value: str) -> None:
    path = store.path
    store.close()
    try:
        with h5py.File(path, "r+") as file:
            file.require_group(group).attrs[key] = value
    except OSError as exc:  # read-only file, or open elsewhere
        warnings.warn(f"could not cache {group}/{key} in {path}: {exc}", stacklevel=3)


def _frame_mask(n_frames: int, indices: np.ndarray | None) -> np.ndarray:
    if indices is None:
        return np.ones(n_frames, dtype=bool)
    mask = np.zeros(n_frames, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return mask


def compute_statistics(
    store: Store | str | os.PathLike,
    *,
    cutoff: float | None = None,
    indices: np.ndarray | Sequence[int] | None = None,
    chunk_frames: int = 16384,
    cache: bool = True,
) -> Statistics:
    """Statistics of a store (or of the frames ``indices``), cached in the store.

    One streaming pass over the store in chunks of ``chunk_frames`` frames. The energy/force
    part is cached under ``/statistics`` keyed by the frame selection; the neighbour count under
    the selection and ``cutoff`` (it needs :func:`edge_counts`, itself cached per cutoff).

    Args:
        store: a :class:`Store` or its path.
        cutoff: also compute the mean neighbour count at this cutoff (Å).
        indices: restrict to these frames (e.g. a training split).
        chunk_frames: frames read per step (bounds memory).
        cache: read/write the cache in the store file.
    """
    store = store if isinstance(store, Store) else Store(store)
    selected = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
    key = _selection_key(selected)
    neighbor_key = None if cutoff is None else f"{key}@{float(cutoff)!r}"
    cached = _read_cached(store, key, neighbor_key) if cache else None
    if cached is not None:
        return cached

    mask = _frame_mask(len(store), selected)
    n_elements = 119
    gram = np.zeros((n_elements, n_elements))
    rhs = np.zeros(n_elements)
    energy_sq = 0.0
    element_counts = np.zeros(n_elements, dtype=np.int64)
    sum_e_per_atom, n_energy_frames = 0.0, 0
    force_sq, n_force_atoms = 0.0, 0
    n_frames, n_atoms = 0, 0
    file = store.file
    for c0 in range(0, len(store), chunk_frames):
        c1 = min(c0 + chunk_frames, len(store))
        frame_mask = mask[c0:c1]
        if not frame_mask.any():
            continue
        n_atoms_chunk = store.n_atoms[c0:c1]
        a0 = int(store.offsets[c0])
        a1 = int(store.offsets[c1 - 1] + n_atoms_chunk[-1])
        atom_mask = np.repeat(frame_mask, n_atoms_chunk)
        numbers = file["atomic_numbers"][a0:a1].astype(np.int64)
        forces = file["forces"][a0:a1][atom_mask]
        energy = file["energy"][c0:c1]
        frame_of_atom = np.repeat(np.arange(c1 - c0), n_atoms_chunk)
        counts = np.zeros((c1 - c0, n_elements))
        np.add.at(counts, (frame_of_atom, numbers), 1.0)
        counts = counts[frame_mask]
        energy = energy[frame_mask]
        n_frames += int(frame_mask.sum())
        n_atoms += int(atom_mask.sum())
        element_counts += counts.sum(axis=0).astype(np.int64)
        has_energy = np.isfinite(energy)
        counts_e, energy_e = counts[has_energy], energy[has_energy]
        gram += counts_e.T @ counts_e
        rhs += counts_e.T @ energy_e
        energy_sq += float(energy_e @ energy_e)
        sum_e_per_atom += float((energy_e / counts_e.sum(axis=1)).sum())
        n_energy_frames += int(has_energy.sum())
        has_forces = np.isfinite(forces).all(axis=1)
        force_sq += float((forces[has_forces] ** 2).sum())
        n_force_atoms += int(has_forces.sum())

    present = np.nonzero(element_counts)[0]
    reference = np.zeros(n_elements)
    if n_energy_frames:
        solution = np.linalg.lstsq(gram[np.ix_(present, present)], rhs[present], rcond=None)[0]
        reference[present] = solution
    # ||E - A e||² = E·E - 2 e·(AᵀE) + e·(AᵀA)e, per atom via the mean atom count.
    residual_sq = max(energy_sq - 2 * reference @ rhs + reference @ gram @ reference, 0.0)
    n_energy_atoms = float(np.diag(gram).sum()) if n_energy_frames else 0.0
    stats = Statistics(
        n_frames=n_frames,
        n_atoms=n_atoms,
        element_counts={int(z): int(element_counts[z]) for z in present},
        mean_energy_per_atom=sum_e_per_atom / max(n_energy_frames, 1),
        reference_energies={int(z): float(reference[z]) for z in present},
        energy_residual_rms=float(
            np.sqrt(residual_sq / max(n_energy_frames, 1))
            / max(n_energy_atoms / max(n_energy_frames, 1), 1.0)
        ),
        force_rms=float(np.sqrt(force_sq / max(3 * n_force_atoms, 1))),
    )
    if cache:
        _try_write_attr(store, "statistics", key, stats.to_json())
    if cutoff is not None:
        edges = edge_counts(store, cutoff, cache=cache)
        stats.cutoff = float(cutoff)
        stats.mean_neighbors = float(edges[mask].sum() / max(store.n_atoms[mask].sum(), 1))
        if cache:
            _try_write_attr(store, "statistics/neighbors", neighbor_key, str(stats.mean_neighbors))
    return stats


def _read_cached(store: Store, key: str, neighbor_key: str | None) -> Statistics | None:
    group = store.file.get("statistics")
    if group is None or key not in group.attrs:
        return None
    stats = Statistics.from_json(group.attrs[key])
    if neighbor_key is None:
        stats.cutoff, stats.mean_neighbors = None, None
        return stats
    neighbors = group.get("neighbors")
    if neighbors is None or neighbor_key not in neighbors.attrs:
        return None
    stats.cutoff = float(neighbor_key.rsplit("@", 1)[1])
    stats.mean_neighbors = float(neighbors.attrs[neighbor_key])
    return stats


def edge_counts(store: Store | str | os.PathLike, cutoff: float, cache: bool = True) -> np.ndarray:
    """(n_frames,) int64 number of directed edges of every frame at ``cutoff`` Å (cached).

    Builds every neighbour list once (the slow part of statistics); the result is stored as
    ``/n_edges/<cutoff>`` so edge-budget batching and later runs reuse it.
    """
    from mlip.neighbors import neighbor_list

    store = store if isinstance(store, Store) else Store(store)
    name = f"n_edges/{float(cutoff)!r}"
    if name in store.file:
        return store.file[name][:]
    counts = np.zeros(len(store), dtype=np.int64)
    for index in range(len(store)):
        frame = store[index]
        edge_index, _ = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff)
        counts[index] = edge_index.shape[1]
    if cache:
        try:
            store.close()
            with h5py.File(store.path, "r+") as file:
                file.create_dataset(name, data=counts, chunks=True, compression="lzf")
        except OSError as exc:
            warnings.warn(f"could not cache {name} in {store.path}: {exc}", stacklevel=2)
    return counts


# ============================================================================ splits
def make_split(
    store: Store | str | os.PathLike,
    fractions: dict[str, float] | None = None,
    *,
    group_by: str | None = None,
    seed: int = 0,
    name: str = "default",
    save: bool = True,
) -> dict[str, np.ndarray]:
    """Split a store's frames at random (or by group) and save the split in the store.

    Args:
        store: a :class:`Store` or its path.
        fractions: part name -> fraction, e.g. ``{"train": 0.9, "valid": 0.1}`` (normalised).
        group_by: None for frame-level random; ``"group_id"`` (e.g. mp_id) or ``"source"`` keeps
            every group in one part. Frames with an empty group id are their own groups.
        seed: the split is a function of the seed and the store only.
        name: saved as ``/splits/<name>/<part>``.
        save: write into the store (overwriting a split of the same name).

    Returns:
        part name -> sorted int64 frame indices.
    """
    store = store if isinstance(store, Store) else Store(store)
    fractions = fractions or {"train": 0.9, "valid": 0.1}
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {fractions}")
    n_frames = len(store)
    if group_by is None:
        group_of = np.arange(n_frames)
    elif group_by == "group_id":
        labels = store.strings("group_id")
        empty = labels == ""
        labels[empty] = np.array([f"\0{i}" for i in np.nonzero(empty)[0]], dtype=object)
        _, group_of = np.unique(labels.astype(str), return_inverse=True)
    elif group_by == "source":
        group_of = store.file["source_index"][:].astype(np.int64)
    else:
        raise ValueError(f"group_by must be None, 'group_id' or 'source', got {group_by!r}")
    split = split_by_groups(group_of, fractions, seed)
    if save:
        store.close()
        with h5py.File(store.path, "r+") as file:
            group_name = f"splits/{name}"
            if group_name in file:
                del file[group_name]
            group = file.create_group(group_name)
            group.attrs["seed"] = seed
            group.attrs["group_by"] = group_by or ""
            group.attrs["fractions"] = json.dumps(fractions)
            for part, indices in split.items():
                group.create_dataset(part, data=indices)
    return split


def split_by_groups(
    group_of: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Assign whole groups to parts at random, sized by ``fractions`` (the rule of
    :func:`make_split`).

    Args:
        group_of: (n_frames,) int group index of each frame (0..n_groups-1).
        fractions: part name -> fraction (normalised).
        seed: permutation seed.

    Returns:
        part name -> sorted int64 frame indices.
    """
    group_of = np.asarray(group_of, dtype=np.int64)
    n_frames = len(group_of)
    total = float(sum(fractions.values()))
    n_groups = int(group_of.max()) + 1 if n_frames else 0
    group_sizes = np.bincount(group_of, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    bounds = np.cumsum([f / total for f in fractions.values()]) * n_frames
    # Each group goes to the part whose frame range holds the midpoint of the group.
    midpoints = np.cumsum(group_sizes[order]) - group_sizes[order] / 2.0
    part_of_group = np.empty(n_groups, dtype=np.int64)
    part_of_group[order] = np.minimum(
        np.searchsorted(bounds, midpoints, side="right"), len(fractions) - 1
    )
    part_of_frame = part_of_group[group_of]
    return {
        part: np.nonzero(part_of_frame == i)[0].astype(np.int64) for i, part in enumerate(fractions)
    }


def load_split(store: Store | str | os.PathLike, name: str = "default") -> dict[str, np.ndarray]:
    """A split saved by :func:`make_split`: part name -> int64 frame indices."""
    store = store if isinstance(store, Store) else Store(store)
    group = store.file.get(f"splits/{name}")
    if group is None:
        available = list(store.file.get("splits", {}).keys())
        raise KeyError(f"{store.path} has no split {name!r}; available: {available}")
    fractions = json.loads(group.attrs["fractions"])
    parts = [p for p in fractions if p in group] + [p for p in group if p not in fractions]
    return {part: group[part][:] for part in parts}
