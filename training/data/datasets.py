"""Torch datasets and loaders of :class:`mlip.AtomicGraph` batches.

- :class:`GraphDataset` wraps a :class:`~training.data.store.Store` (or an in-memory list of frames)
  and builds each neighbour list in ``__getitem__``, i.e. inside DataLoader workers.
- :class:`BudgetBatchSampler` packs structures into batches under a budget of atoms or edges,
  shuffles with a seed and the epoch, shards batches across DDP ranks (every rank gets the same
  number) and can resume mid-epoch.
- :func:`make_loader` puts them together; :func:`load_datasets` builds train/valid datasets
  from a store (using a saved split) or straight from raw files.

Typical trainer use::

    datasets = load_datasets("mptrj.h5", cutoff=5.0, split="default")
    stats = compute_statistics("mptrj.h5", cutoff=5.0, indices=datasets["train"].indices)
    loader = make_loader(datasets["train"], max_atoms=4096, seed=0, num_workers=2,
                         rank=rank, world_size=world_size)
    for epoch in range(start_epoch, n_epochs):
        loader.batch_sampler.set_epoch(epoch, start_batch=batches_done if resuming else 0)
        for batch in loader: ...
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlip import AtomicGraph
from training.data.frames import DEFAULT_REQUIRED, Frame
from training.data.readers import ReaderOptions, read_frames
from training.data.store import Store, edge_counts, load_split, make_split, split_by_groups

__all__ = [
    "BudgetBatchSampler",
    "GraphDataset",
    "collate_graphs",
    "load_datasets",
    "make_loader",
]


_LABELS = ("energy", "forces", "stress", "charge", "spin")


def collate_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """DataLoader ``collate_fn``: one batched :class:`mlip.AtomicGraph`."""
    return AtomicGraph.batch(list(graphs))


class GraphDataset(Dataset):
    """Frames of a store (or list) as :class:`mlip.AtomicGraph` with neighbour lists.

    Args:
        source: a :class:`~training.data.store.Store`, a store path, or a sequence of
            :class:`~training.data.frames.Frame` (kept in memory).
        cutoff: neighbour-list radius, Å.
        indices: the frames of ``source`` to use (e.g. one part of a split); None for all.
        labels: the labels to keep (e.g. ``("energy", "forces")`` to batch frames with and
            without stress together); None keeps every label a frame has.
    """

    def __init__(
        self,
        source: Store | str | os.PathLike | Sequence[Frame],
        cutoff: float,
        indices: np.ndarray | Sequence[int] | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        unknown = set(labels or ()) - set(_LABELS)
        if unknown:
            raise ValueError(f"unknown label(s) {sorted(unknown)}; known: {_LABELS}")
        self.labels = None if labels is None else tuple(labels)
        if isinstance(source, (str, os.PathLike)):
            source = Store(source)
        self.source = source
        self.cutoff = float(cutoff)
        n_source = len(source)
        self.indices = (
            np.arange(n_source, dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n_source):
            raise IndexError(f"indices out of range for a source of {n_source} frames")
        self._n_edges: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def frame(self, index: int) -> Frame:
        """The raw :class:`~training.data.frames.Frame` ``index`` (no neighbour list)."""
        return self.source[int(self.indices[index])]

    def __getitem__(self, index: int) -> AtomicGraph:
        frame = self.frame(index)
        if self.labels is not None:
            frame = dataclasses.replace(
                frame, **{name: None for name in _LABELS if name not in self.labels}
            )
        return frame.to_graph(self.cutoff)

    @property
    def n_atoms(self) -> np.ndarray:
        """(len(self),) int64 atoms per structure (no file access for a store)."""
        if isinstance(self.source, Store):
            return self.source.n_atoms[self.indices]
        return np.array([self.source[int(i)].n_atoms for i in self.indices], dtype=np.int64)

    @property
    def n_edges(self) -> np.ndarray:
        """(len(self),) int64 edges per structure at ``cutoff`` (cached in a store)."""
        if self._n_edges is None:
            if isinstance(self.source, Store):
                counts = edge_counts(self.source, self.cutoff)
                self._n_edges = counts[self.indices]
            else:
                from mlip.neighbors import neighbor_list

                self._n_edges = np.array(
                    [
                        neighbor_list(f.positions, f.cell, f.pbc, self.cutoff)[0].shape[1]
                        for f in (self.frame(i) for i in range(len(self)))
                    ],
                    dtype=np.int64,
                )
        return self._n_edges


class BudgetBatchSampler(Sampler):
    """Batches of dataset indices whose total size (atoms or edges) stays within a budget.

    Each epoch: permute the structures with ``seed`` and ``epoch`` (or keep their order when
    ``shuffle`` is False), pack them greedily into batches of at most ``max_budget`` (a structure
    larger than the budget forms a batch alone), then deal the batches round-robin to the
    ``world_size`` ranks. Without ``drop_last`` the batch list is padded by repeating its first
    batches so every rank gets the same number; with it the remainder is dropped.

    Args:
        sizes: (n_structures,) atoms (or edges) per structure.
        max_budget: the most atoms (or edges) per batch.
        shuffle: permute every epoch.
        seed: base seed; the order is a function of (seed, epoch) only.
        rank: this process's rank.
        world_size: number of ranks.
        drop_last: drop the batches that would make ranks unequal instead of padding.
    """

    def __init__(
        self,
        sizes: np.ndarray | Sequence[int],
        max_budget: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if max_budget <= 0:
            raise ValueError(f"max_budget must be > 0, got {max_budget}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.max_budget = int(max_budget)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = drop_last
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

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        total = 0
        sizes = self.sizes
        for index in order.tolist():
            size = int(sizes[index])
            if current and total + size > self.max_budget:
                batches.append(current)
                current, total = [], 0
            current.append(index)
            total += size
        if current:
            batches.append(current)
        return batches

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch (ignoring ``start_batch``)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.sizes)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        batches = self._pack(order)
        world = self.world_size
        if world > 1 and batches:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % world]
            else:
                n_pad = (-len(batches)) % world
                batches = batches + [batches[i % len(batches)] for i in range(n_pad)]
        mine = batches[self.rank :: world]
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(len(self.epoch_batches()) - self.start_batch, 0)


def make_loader(
    dataset: GraphDataset,
    *,
    max_atoms: int | None = None,
    max_edges: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader of batched :class:`mlip.AtomicGraph` under an atom or edge budget.

    Exactly one of ``max_atoms`` / ``max_edges`` must be given. The batch sampler is
    ``loader.batch_sampler`` (a :class:`BudgetBatchSampler`): call its ``set_epoch(epoch,
    start_batch)`` before each epoch. Neighbour lists are built in the worker processes.
    """
    if (max_atoms is None) == (max_edges is None):
        raise ValueError("give exactly one of max_atoms or max_edges")
    sizes = dataset.n_atoms if max_atoms is not None else dataset.n_edges
    sampler = BudgetBatchSampler(
        sizes,
        int(max_atoms if max_atoms is not None else max_edges),  # type: ignore[arg-type]
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
    if isinstance(dataset.source, Store):
        dataset.source.close()  # workers open their own handles
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_graphs,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def _is_store(path: Path) -> bool:
    return path.is_file() and h5py.is_hdf5(path)


def load_datasets(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    cutoff: float,
    *,
    split: str = "default",
    fractions: dict[str, float] | None = None,
    group_by: str | None = None,
    seed: int = 0,
    options: ReaderOptions | None = None,
    format: str | None = None,
    required: Sequence[str] = DEFAULT_REQUIRED,
    skip_invalid: bool = False,
) -> dict[str, GraphDataset]:
    """Datasets for every part of a split (e.g. ``{"train": ..., "valid": ...}``).

    ``source`` is a store (``.h5``) or raw dataset file(s). For a store, the split named
    ``split`` is used if saved, else made with ``fractions``/``group_by``/``seed`` and saved.
    Raw files are read into memory (small datasets) and split the same way (not saved).
    """
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if len(paths) == 1 and _is_store(Path(paths[0])):
        store = Store(paths[0])
        try:
            parts = load_split(store, split)
        except KeyError:
            parts = make_split(store, fractions, group_by=group_by, seed=seed, name=split)
        return {part: GraphDataset(store, cutoff, indices) for part, indices in parts.items()}
    frames = read_frames(paths, format, options, required=required, skip_invalid=skip_invalid)
    parts = _split_frames(frames, fractions or {"train": 0.9, "valid": 0.1}, group_by, seed)
    return {part: GraphDataset(frames, cutoff, indices) for part, indices in parts.items()}


def _split_frames(
    frames: Sequence[Frame], fractions: dict[str, float], group_by: str | None, seed: int
) -> dict[str, np.ndarray]:
    """The same split rule as :func:`training.data.store.make_split`, for in-memory frames."""
    n_frames = len(frames)
    if group_by is None:
        group_of = np.arange(n_frames)
    else:
        labels = [
            (getattr(f, group_by) or f"\0{i}") if group_by != "source" else f.source
            for i, f in enumerate(frames)
        ]
        _, group_of = np.unique(np.array(labels, dtype=str), return_inverse=True)
    return split_by_groups(group_of, fractions, seed)
