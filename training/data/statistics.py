"""Dataset statistics with one formula for in-memory frames and for stores.

One streaming pass accumulates additive sums (:class:`Sums`) over the selected frames; every
statistic the model needs is a closed-form function of them (:meth:`Statistics.for_model`), so
the same frames as an extxyz file or as an HDF5 store give the same numbers. For a store the
sums are cached under ``/statistics/<selection>`` and the per-frame edge counts under
``/n_edges/<cutoff>``; only the process allowed to write (rank 0 under torchrun) writes them.

With ``c`` the element counts of a frame (a 119-vector), ``n`` its atoms, ``E`` its energy
and ``e`` the reference energies (eV per element):

* reference energies (``least_squares``): the minimum-norm solution of ``(Σ c cᵀ) e = Σ c E``;
* ``shift`` (eV/atom): the mean over frames of ``(E - e·c) / n``;
* ``scale``: the RMS of the force components (eV/Å); without forces, the standard deviation
  of ``(E - e·c) / n`` over frames;
* ``avg_num_neighbors``: edges at the cutoff divided by atoms (over a seeded sample of
  :data:`NEIGHBOR_SAMPLE` frames for larger sets: a first run on MPTrj does not wait for 1.6 M
  neighbour lists; an edge budget ``train.batch.max_edges`` still counts every frame once).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from training.data.frames import Frame
from training.data.store import Store

__all__ = [
    "Statistics",
    "Sums",
    "compute_statistics",
    "edge_counts",
    "read_isolated_energies",
]

N_ELEMENTS = 119
NEIGHBOR_SAMPLE = 10_000
"""``avg_num_neighbors`` of more frames than this comes from a seeded sample of this many."""
_CHUNK_FRAMES = 16384


@dataclass
class Sums:
    """Additive sums over frames (energies eV, forces eV/Å); arrays indexed by atomic number.

    Attributes:
        n_frames, n_atoms: frames and atoms counted.
        element_counts: (119,) atoms per element.
        n_energy_frames: frames with an energy.
        gram: (119, 119) ``Σ c cᵀ`` over frames with an energy.
        rhs: (119,) ``Σ c E``.
        per_atom: ``Σ E/n``; per_atom_sq: ``Σ (E/n)²``.
        composition: (119,) ``Σ c/n``; cross: (119,) ``Σ E c/n²``;
        composition_gram: (119, 119) ``Σ c cᵀ/n²``.
        force_sq: ``Σ F²`` over force components; n_force_components: their number.
    """

    n_frames: int = 0
    n_atoms: int = 0
    element_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_ELEMENTS, np.int64))
    n_energy_frames: int = 0
    gram: np.ndarray = field(default_factory=lambda: np.zeros((N_ELEMENTS, N_ELEMENTS)))
    rhs: np.ndarray = field(default_factory=lambda: np.zeros(N_ELEMENTS))
    per_atom: float = 0.0
    per_atom_sq: float = 0.0
    composition: np.ndarray = field(default_factory=lambda: np.zeros(N_ELEMENTS))
    cross: np.ndarray = field(default_factory=lambda: np.zeros(N_ELEMENTS))
    composition_gram: np.ndarray = field(default_factory=lambda: np.zeros((N_ELEMENTS, N_ELEMENTS)))
    force_sq: float = 0.0
    n_force_components: int = 0

    def add(
        self, numbers: np.ndarray, n_atoms: np.ndarray, energy: np.ndarray, forces: np.ndarray
    ) -> None:
        """Add a chunk of frames: ``numbers`` (A,) and ``forces`` (A, 3) of their atoms
        concatenated (NaN rows: no forces), ``n_atoms`` (F,), ``energy`` (F,) (NaN: none)."""
        n_frames = len(n_atoms)
        frame_of_atom = np.repeat(np.arange(n_frames), n_atoms)
        counts = np.zeros((n_frames, N_ELEMENTS))
        np.add.at(counts, (frame_of_atom, numbers.astype(np.int64)), 1.0)
        self.n_frames += n_frames
        self.n_atoms += int(n_atoms.sum())
        self.element_counts += counts.sum(axis=0).astype(np.int64)
        has_energy = np.isfinite(energy)
        c, e = counts[has_energy], energy[has_energy]
        n = n_atoms[has_energy].astype(np.float64)
        self.n_energy_frames += int(has_energy.sum())
        self.gram += c.T @ c
        self.rhs += c.T @ e
        self.per_atom += float((e / n).sum())
        self.per_atom_sq += float(((e / n) ** 2).sum())
        self.composition += (c / n[:, None]).sum(axis=0)
        self.cross += (c * (e / n**2)[:, None]).sum(axis=0)
        self.composition_gram += (c / n[:, None]).T @ (c / n[:, None])
        has_forces = np.isfinite(forces).all(axis=1)
        self.force_sq += float((forces[has_forces] ** 2).sum())
        self.n_force_components += 3 * int(has_forces.sum())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    def merged(self, other: Sums) -> Sums:
        """The sums over the frames of both (every field is additive)."""
        names = [f.name for f in fields(self)]
        return Sums(**{name: getattr(self, name) + getattr(other, name) for name in names})

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> Sums:
        values = {}
        for f in fields(cls):
            value = np.asarray(arrays[f.name])
            values[f.name] = value if value.ndim else value.item()
        return cls(**values)


@dataclass
class Statistics:
    """The sums of a frame selection plus its mean neighbour count at ``cutoff``.

    Attributes:
        sums: the additive sums.
        cutoff: Å, or None.
        mean_neighbors: edges per atom at ``cutoff``, or None.
    """

    sums: Sums
    cutoff: float | None = None
    mean_neighbors: float | None = None

    @classmethod
    def combined(cls, parts: Sequence[Statistics]) -> Statistics:
        """The statistics of the union of disjoint frame selections (e.g. one per data source):
        merged sums, and the mean neighbour count weighted by atoms (all at one cutoff)."""
        sums = Sums()
        for part in parts:
            sums = sums.merged(part.sums)
        statistics = cls(sums, parts[0].cutoff if parts else None)
        if parts and all(part.mean_neighbors is not None for part in parts):
            atoms = np.array([part.sums.n_atoms for part in parts], dtype=np.float64)
            means = np.array([part.mean_neighbors for part in parts])
            statistics.mean_neighbors = float((atoms * means).sum() / max(atoms.sum(), 1.0))
        return statistics

    @property
    def species(self) -> list[int]:
        """Atomic numbers present."""
        return [int(z) for z in np.nonzero(self.sums.element_counts)[0]]

    def least_squares_references(self) -> dict[int, float]:
        """``{Z: eV}``: minimum-norm solution of ``(Σ c cᵀ) e = Σ c E``."""
        present = np.asarray(self.species, dtype=np.int64)
        if not self.sums.n_energy_frames or not present.size:
            return {int(z): 0.0 for z in present}
        gram = self.sums.gram[np.ix_(present, present)]
        solution = np.linalg.lstsq(gram, self.sums.rhs[present], rcond=None)[0]
        return {int(z): float(v) for z, v in zip(present, solution)}

    def energy_moments(self, references: dict[int, float] | None) -> tuple[float, float]:
        """Mean and standard deviation over frames of ``(E - e·c) / n`` (eV/atom)."""
        sums = self.sums
        e = np.zeros(N_ELEMENTS)
        for z, value in (references or {}).items():
            e[int(z)] = value
        count = max(sums.n_energy_frames, 1)
        mean = (sums.per_atom - e @ sums.composition) / count
        square = (sums.per_atom_sq - 2.0 * e @ sums.cross + e @ sums.composition_gram @ e) / count
        return float(mean), float(np.sqrt(max(square - mean**2, 0.0)))

    @property
    def force_rms(self) -> float:
        """RMS of the force components, eV/Å (0 without forces)."""
        return float(np.sqrt(self.sums.force_sq / max(self.sums.n_force_components, 1)))

    def for_model(
        self,
        reference_energies: str | dict[int, float],
        species: Sequence[int],
        isolated_atoms: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of ``model.set_statistics``.

        Args:
            reference_energies: ``least_squares``, ``isolated`` (read ``isolated_atoms``),
                ``none``, or ``{Z: eV}``.
            species: the model's atomic numbers (every one needs a reference energy).
            isolated_atoms: file of single-atom structures with energies.

        Returns:
            ``reference_energies`` ({Z: eV} or None), ``avg_num_neighbors``, ``shift``
            (eV/atom) and ``scale`` (eV/Å, or eV/atom without forces); see the module docstring.
        """
        if isinstance(reference_energies, dict):
            references: dict[int, float] | None = {
                int(k): float(v) for k, v in reference_energies.items()
            }
        elif reference_energies == "least_squares":  # 0 for an element not in these frames
            references = {int(z): 0.0 for z in species} | self.least_squares_references()
        elif reference_energies == "isolated":
            references = read_isolated_energies(str(isolated_atoms))
        else:
            references = None
        if references is not None:
            missing = sorted(set(species) - set(references))
            if missing:
                raise ValueError(f"no reference energy for atomic number(s) {missing}")
            references = {z: e for z, e in references.items() if z in set(species)}
        shift, energy_std = self.energy_moments(references)
        scale = self.force_rms if self.sums.n_force_components else energy_std
        return {
            "reference_energies": references,
            "avg_num_neighbors": float(self.mean_neighbors or 1.0),
            "shift": shift,
            "scale": scale if scale > 1e-12 else 1.0,
        }

    # ---- the summary ``mlip-data stats`` prints
    @property
    def n_frames(self) -> int:
        return self.sums.n_frames

    @property
    def n_atoms(self) -> int:
        return self.sums.n_atoms

    @property
    def n_energy_frames(self) -> int:
        """Frames with an energy: the rows of the reference-energy fit."""
        return self.sums.n_energy_frames

    @property
    def composition_rank(self) -> int:
        """Linearly independent compositions among the frames with an energy; the reference
        energies are under-determined when this is below the number of elements."""
        present = np.asarray(self.species, dtype=np.int64)
        if not self.sums.n_energy_frames or not present.size:
            return 0
        return int(np.linalg.matrix_rank(self.sums.gram[np.ix_(present, present)]))

    @property
    def element_counts(self) -> dict[int, int]:
        """Atomic number -> atoms."""
        return {z: int(self.sums.element_counts[z]) for z in self.species}

    @property
    def mean_energy_per_atom(self) -> float:
        """Mean over frames of E/n, eV/atom."""
        return self.energy_moments(None)[0]

    @property
    def reference_energies(self) -> dict[int, float]:
        """The least-squares reference energies, eV."""
        return self.least_squares_references()

    @property
    def energy_residual_rms(self) -> float:
        """RMS over frames of ``(E - e·c) / n`` with the least-squares ``e``, eV/atom."""
        mean, std = self.energy_moments(self.reference_energies)
        return float(np.hypot(mean, std))

    def to_json(self) -> str:
        """The summary as JSON (``mlip-data stats``)."""
        names = ("n_frames", "n_atoms", "element_counts", "mean_energy_per_atom")
        names += ("reference_energies", "energy_residual_rms", "force_rms", "cutoff")
        names += ("n_energy_frames", "composition_rank")
        return json.dumps({name: getattr(self, name) for name in names + ("mean_neighbors",)})


def read_isolated_energies(path: str) -> dict[int, float]:
    """``{Z: eV}`` from a file of single-atom structures with energies."""
    from training.data.readers import read_frames

    energies: dict[int, float] = {}
    for frame in read_frames(path, required=("energy",)):
        if frame.n_atoms != 1:
            raise ValueError(f"{path}: frame {frame.frame_id} has {frame.n_atoms} atoms, not 1")
        energies[int(frame.atomic_numbers[0])] = float(frame.energy)
    return energies


# ============================================================================ passes
Source = Store | Sequence[Frame]


def _selection(source: Source, indices: np.ndarray | Sequence[int] | None) -> np.ndarray:
    if indices is None:
        return np.arange(len(source), dtype=np.int64)
    return np.unique(np.asarray(indices, dtype=np.int64))


def _selection_key(selected: np.ndarray, n_frames: int) -> str:
    if len(selected) == n_frames:
        return "all"
    digest = hashlib.sha1(np.ascontiguousarray(selected, dtype=np.int64).tobytes())
    return f"subset-{len(selected)}-{digest.hexdigest()[:16]}"


def _chunks(source: Source, selected: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """(numbers, n_atoms, energy, forces) of the selected frames, in chunks, in order."""
    for start in range(0, len(selected), _CHUNK_FRAMES):
        chunk = selected[start : start + _CHUNK_FRAMES]
        if isinstance(source, Store):
            yield _store_chunk(source, chunk)
            continue
        frames = [source[int(i)] for i in chunk]
        yield (
            np.concatenate([f.atomic_numbers for f in frames]),
            np.array([f.n_atoms for f in frames], dtype=np.int64),
            np.array([np.nan if f.energy is None else f.energy for f in frames]),
            np.concatenate(
                [np.full((f.n_atoms, 3), np.nan) if f.forces is None else f.forces for f in frames]
            ),
        )


def _store_chunk(store: Store, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
    first, last = int(chunk[0]), int(chunk[-1])
    a0 = int(store.offsets[first])
    a1 = int(store.offsets[last] + store.n_atoms[last])
    n_atoms = store.n_atoms[first : last + 1]
    frame_mask = np.zeros(last - first + 1, dtype=bool)
    frame_mask[chunk - first] = True
    atom_mask = np.repeat(frame_mask, n_atoms)
    file = store.file
    forces = file["forces"][a0:a1] if "forces" in file else np.full((a1 - a0, 3), np.nan)
    energy = file["energy"][first : last + 1] if "energy" in file else np.full(len(n_atoms), np.nan)
    return (
        file["atomic_numbers"][a0:a1][atom_mask],
        n_atoms[frame_mask],
        energy[frame_mask],
        forces[atom_mask],
    )


def edge_counts(
    source: Source,
    cutoff: float,
    indices: np.ndarray | None = None,
    *,
    num_workers: int = 0,
    write_cache: bool = True,
) -> np.ndarray:
    """Directed edges at ``cutoff`` Å of the frames ``indices`` (None: all), int64.

    Builds the neighbour lists in ``num_workers`` DataLoader workers (0: this process). For a
    store, the counts of all frames are cached as ``/n_edges/<cutoff>`` (written only with
    ``write_cache``) and read back from there, so edge budgets and later runs reuse them.
    """
    name = f"n_edges/{float(cutoff)!r}"
    if isinstance(source, Store) and name in source.file:
        counts = source.file[name][:]
        return counts if indices is None else counts[indices]
    every = indices is None
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    loader = torch.utils.data.DataLoader(
        _EdgeCounter(source, cutoff, indices),
        batch_size=256,
        num_workers=num_workers,
        collate_fn=lambda counts: counts,
        worker_init_fn=single_threaded_worker if num_workers else None,
        generator=torch.Generator(),  # leaves the global RNG alone (model init)
    )
    if isinstance(source, Store):
        source.close()  # workers open their own handles
    counts = np.fromiter((c for chunk in loader for c in chunk), dtype=np.int64, count=len(indices))
    if isinstance(source, Store) and write_cache and every:
        _write_cache(source, lambda file: file.create_dataset(name, data=counts, chunks=True))
    return counts


class _EdgeCounter(torch.utils.data.Dataset):
    def __init__(self, source: Source, cutoff: float, indices: np.ndarray) -> None:
        self.source, self.cutoff, self.indices = source, cutoff, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> int:
        from mlip.neighbors import neighbor_list

        frame = self.source[int(self.indices[index])]
        return int(neighbor_list(frame.positions, frame.cell, frame.pbc, self.cutoff)[0].shape[1])


def single_threaded_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (workers run in parallel)."""
    torch.set_num_threads(1)


def _write_cache(store: Store, write: Any) -> None:
    try:
        with store.writable() as file:
            write(file)
    except OSError as exc:  # a read-only file: compute again next time
        warnings.warn(f"could not cache in {store.path}: {exc}", stacklevel=3)


def compute_statistics(
    source: Source | str | os.PathLike,
    *,
    cutoff: float | None = None,
    indices: np.ndarray | Sequence[int] | None = None,
    num_workers: int = 0,
    write_cache: bool = True,
) -> Statistics:
    """Statistics of ``source`` (a :class:`Store`, its path, or frames), or of its frames
    ``indices``; with ``cutoff`` also the mean neighbour count (builds neighbour lists once, see
    :func:`edge_counts`). Stores keep the sums in a cache, written only with ``write_cache``."""
    if isinstance(source, (str, os.PathLike)):
        source = Store(source)
    selected = _selection(source, indices)
    key = f"statistics/{_selection_key(selected, len(source))}"
    sums = None
    if isinstance(source, Store) and key in source.file:
        group = source.file[key]
        sums = Sums.from_arrays({name: group[name][()] for name in group})
    if sums is None:
        sums = Sums()
        for chunk in _chunks(source, selected):
            sums.add(*chunk)
        if isinstance(source, Store) and write_cache:

            def write(file: Any) -> None:
                group = file.require_group(key)
                for name, value in sums.to_arrays().items():
                    if name in group:
                        del group[name]
                    group.create_dataset(name, data=value)

            _write_cache(source, write)
    statistics = Statistics(sums)
    if cutoff is not None:
        statistics.cutoff = float(cutoff)
        statistics.mean_neighbors = _mean_neighbors(
            source, selected, cutoff, num_workers, write_cache
        )
    return statistics


def _mean_neighbors(
    source: Source, selected: np.ndarray, cutoff: float, num_workers: int, write_cache: bool
) -> float:
    """Edges per atom at ``cutoff`` over the selected frames, or over a seeded sample of
    :data:`NEIGHBOR_SAMPLE` of them when there are more (the same frames for a store or a
    list); cached in a store next to the sums."""
    key = f"statistics/{_selection_key(selected, len(source))}"
    name = f"mean_neighbors@{float(cutoff)!r}"
    if isinstance(source, Store) and key in source.file and name in source.file[key].attrs:
        return float(source.file[key].attrs[name])
    sample = selected
    if len(selected) > NEIGHBOR_SAMPLE:
        sample = np.sort(np.random.default_rng(0).choice(selected, NEIGHBOR_SAMPLE, replace=False))
    small = len(source) <= NEIGHBOR_SAMPLE  # count (and cache) every frame once
    options = {"num_workers": num_workers, "write_cache": write_cache}
    edges = edge_counts(source, cutoff, None if small else sample, **options)
    edges = edges[sample] if small else edges
    if isinstance(source, Store):
        atoms = source.n_atoms[sample]
    else:
        atoms = np.array([source[int(i)].n_atoms for i in sample])
    mean = float(edges.sum() / max(atoms.sum(), 1))
    if isinstance(source, Store) and write_cache:
        _write_cache(source, lambda file: file.require_group(key).attrs.__setitem__(name, mean))
    return mean
