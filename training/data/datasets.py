"""Torch datasets and loaders of :class:`mlip.AtomicGraph` batches.

- :class:`GraphDataset` wraps a :class:`~training.data.store.Store` or in-memory frames and
  builds each neighbour list in ``__getitem__``, i.e. inside the DataLoader workers.
- :class:`BudgetBatchSampler` packs structures greedily into *global* batches under a budget
  (structures, atoms, edges), shuffled with a seed and the epoch, and yields this rank's share
  of each global batch (structures ``rank::world_size``), so N ranks see exactly the batches of
  one process. It resumes mid-epoch.
- :func:`make_loader` puts them together: workers, pinned host memory for CUDA.

Typical use::

    loader = make_loader(dataset, BatchBudget(16, max_atoms=4096), seed=0, num_workers=2,
                         rank=rank, world_size=world_size)
    for epoch in range(start_epoch, n_epochs):
        loader.batch_sampler.set_epoch(epoch, start_batch=batches_done if resuming else 0)
        for graph in loader:  # None when this rank's share of a batch is empty
            ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlip import AtomicGraph, keys
from training.data.frames import Frame
from training.data.statistics import edge_counts, single_threaded_worker
from training.data.store import Store

__all__ = [
    "BatchBudget",
    "BudgetBatchSampler",
    "ConcatGraphDataset",
    "GraphDataset",
    "collate_graphs",
    "default_num_workers",
    "make_loader",
]


def default_num_workers() -> int:
    """``data.num_workers`` when unset: ``min(2, cpus - 1)`` (0 on a single core)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(2, (cpus or 1) - 1))


def collate_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph | None:
    """DataLoader ``collate_fn``: one batched :class:`mlip.AtomicGraph` (None for no graphs).

    A label that only some of the structures carry (e.g. stress in a mix of crystals and
    molecules) is dropped from that batch.
    """
    if not graphs:
        return None
    partial = {
        name: None
        for name in keys.LABEL_FIELDS
        if len({getattr(g, name) is None for g in graphs}) > 1
    }
    if partial:
        graphs = [g.with_labels(**partial) for g in graphs]
    return AtomicGraph.batch(list(graphs))


class GraphDataset(Dataset):
    """Frames of a store (or a list) as :class:`mlip.AtomicGraph` with neighbour lists.

    Args:
        source: a :class:`~training.data.store.Store`, a store path, or a sequence of
            :class:`~training.data.frames.Frame` (kept in memory).
        cutoff: neighbour-list radius, Å.
        indices: the frames of ``source`` to use (e.g. one part of a split); None for all.
        name: a label for logs and metadata.
        values: data fields every frame takes (e.g. ``{"head": 1}``), replacing its own.
        defaults: data fields a frame takes when it has none (e.g. ``{"charge": 0}``).
        frame_values: data fields each frame takes, one value per frame of ``indices`` (e.g.
            ``{"head": np.array([0, 1, 1])}``), replacing its own.
    """

    def __init__(
        self,
        source: Store | str | os.PathLike | Sequence[Frame],
        cutoff: float,
        indices: np.ndarray | Sequence[int] | None = None,
        name: str = "",
        values: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
        frame_values: Mapping[str, np.ndarray | Sequence[Any]] | None = None,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = Store(source)
        self.source = source
        self.cutoff = float(cutoff)
        self.name = name or (str(source.path) if isinstance(source, Store) else "frames")
        n_source = len(source)
        self.indices = (
            np.arange(n_source, dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n_source):
            raise IndexError(f"indices out of range for a source of {n_source} frames")
        self._n_edges: np.ndarray | None = None
        self.values = dict(values or {})
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.frame_values = {k: np.asarray(v) for k, v in (frame_values or {}).items()}
        for key, column in self.frame_values.items():
            if len(column) != len(self.indices):
                raise ValueError(
                    f"frame_values[{key!r}]: {len(column)} values for {len(self.indices)} frames"
                )
        self._graphs: list[AtomicGraph] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def in_memory(self) -> bool:
        """True when the frames are held in memory (a raw file), False for a store."""
        return not isinstance(self.source, Store)

    def cache_graphs(self, num_workers: int = 0) -> None:
        """Build every graph once, in ``num_workers`` DataLoader workers (0: here), and keep
        them; later ``self[i]`` returns the kept graph (the same one it would build)."""
        if self._graphs is not None:
            return
        loader = DataLoader(
            self,
            batch_size=None,  # one graph at a time, in order
            num_workers=num_workers,
            worker_init_fn=single_threaded_worker if num_workers > 0 else None,
            generator=torch.Generator(),  # leave the global RNG alone
        )
        self._graphs = list(loader)

    def frame(self, index: int) -> Frame:
        """The :class:`~training.data.frames.Frame` ``index`` (no neighbour list), with
        ``values``, ``frame_values`` and ``defaults`` applied."""
        frame = self.source[int(self.indices[index])]
        if not (self.values or self.defaults or self.frame_values):
            return frame
        filled = {k: v for k, v in self.defaults.items() if frame.value(k) is None}
        own = {k: column[index] for k, column in self.frame_values.items()}
        return frame.with_values(**{**filled, **own, **self.values})

    def close(self) -> None:
        """Close a store's file handle (DataLoader workers open their own)."""
        if isinstance(self.source, Store):
            self.source.close()

    def __getitem__(self, index: int) -> AtomicGraph:
        if self._graphs is not None:
            return self._graphs[index]
        return self.frame(index).to_graph(self.cutoff)

    @property
    def n_atoms(self) -> np.ndarray:
        """(len(self),) int64 atoms per structure (no file access for a store)."""
        if isinstance(self.source, Store):
            return self.source.n_atoms[self.indices]
        return np.array([self.source[int(i)].n_atoms for i in self.indices], dtype=np.int64)

    def n_edges(self, num_workers: int = 0, write_cache: bool = True) -> np.ndarray:
        """(len(self),) int64 edges per structure at ``cutoff`` (cached in a store; built in
        ``num_workers`` workers the first time)."""
        if self._n_edges is None:
            every = edge_counts(
                self.source, self.cutoff, num_workers=num_workers, write_cache=write_cache
            )
            self._n_edges = every[self.indices]
        return self._n_edges


class ConcatGraphDataset(Dataset):
    """Several :class:`GraphDataset` (e.g. one per ``data.sources`` entry) as one, in order.

    Args:
        parts: the datasets; all at the same cutoff.
        name: a label for logs and metadata.
    """

    def __init__(self, parts: Sequence[GraphDataset], name: str = "") -> None:
        if not parts:
            raise ValueError("ConcatGraphDataset needs at least one dataset")
        self.parts = list(parts)
        self.cutoff = self.parts[0].cutoff
        self.name = name or " + ".join(part.name for part in self.parts)
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, index: int) -> tuple[GraphDataset, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} structures")
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part], index - int(self.starts[part])

    def frame(self, index: int) -> Frame:
        """The :class:`~training.data.frames.Frame` ``index`` of the concatenation."""
        part, local = self._locate(int(index))
        return part.frame(local)

    def __getitem__(self, index: int) -> AtomicGraph:
        part, local = self._locate(int(index))
        return part[local]

    @property
    def n_atoms(self) -> np.ndarray:
        """(len(self),) int64 atoms per structure."""
        return np.concatenate([part.n_atoms for part in self.parts])

    def n_edges(self, num_workers: int = 0, write_cache: bool = True) -> np.ndarray:
        """(len(self),) int64 edges per structure (see :meth:`GraphDataset.n_edges`)."""
        return np.concatenate([part.n_edges(num_workers, write_cache) for part in self.parts])

    def close(self) -> None:
        """Close every part's store handle."""
        for part in self.parts:
            part.close()

    @property
    def in_memory(self) -> bool:
        """True when every part's frames are held in memory."""
        return all(part.in_memory for part in self.parts)

    def cache_graphs(self, num_workers: int = 0) -> None:
        """:meth:`GraphDataset.cache_graphs` of every part."""
        for part in self.parts:
            part.cache_graphs(num_workers)


@dataclass(frozen=True)
class BatchBudget:
    """A global batch is closed when one more structure would exceed any limit.

    Attributes:
        size: structures per batch.
        max_atoms: atoms per batch, or None.
        max_edges: edges per batch, or None.
    """

    size: int
    max_atoms: int | None = None
    max_edges: int | None = None


def pack_batches(
    order: Sequence[int] | np.ndarray,
    n_atoms: np.ndarray,
    n_edges: np.ndarray | None,
    budget: BatchBudget,
) -> list[list[int]]:
    """Split ``order`` greedily into batches within ``budget`` (a structure larger than the
    budget gets a batch of its own). ``n_edges`` is needed only with ``budget.max_edges``."""
    batches: list[list[int]] = []
    current: list[int] = []
    atoms = edges = 0
    for index in np.asarray(order, dtype=np.int64).tolist():
        a = int(n_atoms[index])
        e = int(n_edges[index]) if budget.max_edges is not None else 0
        full = len(current) >= budget.size
        full = full or (budget.max_atoms is not None and atoms + a > budget.max_atoms)
        full = full or (budget.max_edges is not None and edges + e > budget.max_edges)
        if current and full:
            batches.append(current)
            current, atoms, edges = [], 0, 0
        current.append(index)
        atoms += a
        edges += e
    if current:
        batches.append(current)
    return batches


class BudgetBatchSampler(Sampler):
    """This rank's share of every global batch of an epoch.

    Each epoch: permute the structures with ``(seed, epoch)`` (or keep their order when
    ``shuffle`` is False), pack them into global batches under ``budget``, and yield
    ``batch[rank::world_size]`` of each (possibly empty when a batch has fewer structures than
    ranks). Every rank yields the same number of batches.

    Args:
        n_atoms: (n,) atoms per structure.
        n_edges: (n,) edges per structure (only with ``budget.max_edges``), or None.
        budget: the global batch budget.
        shuffle: permute every epoch.
        seed: base seed; the order is a function of (seed, epoch) only.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(
        self,
        n_atoms: np.ndarray,
        n_edges: np.ndarray | None,
        budget: BatchBudget,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if budget.size <= 0:
            raise ValueError(f"the batch size must be > 0, got {budget.size}")
        if budget.max_edges is not None and n_edges is None:
            raise ValueError("an edge budget needs the edge counts")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n_atoms = np.asarray(n_atoms, dtype=np.int64)
        self.n_edges = n_edges
        self.budget = budget
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (changes the shuffle) and skip its first ``start_batch`` batches.

        ``start_batch`` resumes mid-epoch: the iteration yields exactly the batches an
        uninterrupted epoch would have yielded after its first ``start_batch``.
        """
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def global_batches(self) -> list[list[int]]:
        """The global batches of the current epoch (ignoring ``start_batch``)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.n_atoms)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        batches = pack_batches(order, self.n_atoms, self.n_edges, self.budget)
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start_batch :]:
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return max(len(self.global_batches()) - self.start_batch, 0)


def make_loader(
    dataset: GraphDataset | ConcatGraphDataset,
    budget: BatchBudget,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of this rank's share of the global batches (:class:`BudgetBatchSampler`,
    ``loader.batch_sampler``: call its ``set_epoch(epoch, start_batch)`` before each epoch).

    With ``num_workers > 0`` frames are read and neighbour lists built in persistent worker
    processes (one torch thread each), never on the training thread; ``pin_memory`` puts the
    batches in page-locked memory for ``non_blocking`` copies to a GPU. The batches are the
    same for any ``num_workers``.
    """
    n_edges = None
    if budget.max_edges is not None:  # a store's cache is written by prepare_data (rank 0)
        n_edges = dataset.n_edges(num_workers, write_cache=False)
    sampler = BudgetBatchSampler(
        dataset.n_atoms,
        n_edges,
        budget,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    dataset.close()  # workers open their own handles
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_graphs,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=single_threaded_worker if num_workers > 0 else None,
        generator=torch.Generator(),  # iterators draw a seed: leave the global RNG alone
    )
