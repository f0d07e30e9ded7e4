"""From ``config.data`` to the train/valid/test datasets and the training statistics.

Any input goes the same way: a raw file (extxyz/ASE, MPTrj JSON, ``.aselmdb``) is read into
frames in memory; an HDF5 store (``mlip-data convert``) is read lazily. Both are truncated to
``data.max_structures``, split with :func:`training.data.splits.training_split`, and measured
with :func:`training.data.statistics.compute_statistics`, so the same frames give the same
split, statistics and batches either way.

Several ``data.sources`` (e.g. one per level-of-theory head) each go that way with their own
keys, split and head; their datasets are concatenated and their statistics kept per head. With
``data.head_key`` each frame names its own head: a source's training frames are grouped by head
and measured per group, so a head's statistics are those of its frames, whichever file or
source they come from.

Under torchrun only rank 0 writes the store's caches (split, edge counts, statistics); the
other ranks wait for it and then only read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlip import keys
from training import distributed
from training.config import Config, DataConfig, data_sources, model_heads
from training.data.datasets import (
    BatchBudget,
    ConcatGraphDataset,
    GraphDataset,
    default_num_workers,
    make_loader,
)
from training.data.statistics import Statistics, compute_statistics
from training.data.store import Store, is_store
from training.errors import DataError
from training.label_checks import (
    check_charge_spin,
    check_training_set,
    frame_heads,
    warn_reference_fit,
)

__all__ = ["TrainingData", "make_loaders", "num_workers", "open_source", "prepare_data"]

log = logging.getLogger("mlip.train")


Dataset = GraphDataset | ConcatGraphDataset


@dataclass
class TrainingData:
    """The datasets of a run and the statistics of the training set (at the model cutoff).

    Attributes:
        head_statistics: for a model with heads, the statistics of each head's training frames
            (frames without a head belong to the first head); heads without frames are absent.
        states: for a charge/spin model, the distinct total charges (e) and multiplicities of
            the training frames, ``{"charge": [...], "spin": [...]}``; else empty.
    """

    train: Dataset
    valid: Dataset | None
    test: Dataset | None
    statistics: Statistics
    species: list[int]
    head_statistics: dict[str, Statistics]
    states: dict[str, list[int]] = field(default_factory=dict)


def open_source(
    path: str, config: Config, data: DataConfig | None = None
) -> tuple[Store | list, np.ndarray]:
    """A store or the frames of a raw file, and the indices of its first ``max_structures``;
    read as ``data`` (one of ``data.sources``) says, by default ``config.data``."""
    from training.data.frames import SkipReport
    from training.data.readers import ReaderOptions, read_frames

    data = config.data if data is None else data
    report = SkipReport()
    if is_store(path):
        source: Store | list = Store(path)
    else:
        options = ReaderOptions(
            energy_key=data.energy_key,
            forces_key=data.forces_key,
            stress_key=data.stress_key,
            virial_key=data.virial_key,
            stress_units=data.stress_units,
            stress_convention=data.stress_convention,
            max_stress=data.max_stress,
            charge_key=data.charge_key,
            spin_key=data.spin_key,
            head_key=data.head_key,
        )
        source = read_frames(
            path,
            data.format,
            options,
            required=("energy",),
            skip_invalid=data.skip_invalid,
            report=report,
        )
        if report.total:
            log.warning("%s: %s", path, report)
    n_frames = len(source)
    if data.max_structures is not None:
        n_frames = min(n_frames, data.max_structures)
    if not n_frames:
        reason = f"all {report.total} skipped ({report})" if report.total else "empty file?"
        raise DataError(f"{path}: no usable structures ({reason})")
    return source, np.arange(n_frames, dtype=np.int64)


def num_workers(config: Config) -> int:
    """``data.num_workers``, or :func:`~training.data.datasets.default_num_workers` if unset."""
    value = config.data.num_workers
    return default_num_workers() if value is None else value


def prepare_data(config: Config, info: distributed.DistInfo) -> TrainingData:
    """The datasets and training statistics ``config.data`` describes (see module docstring)."""
    if not info.is_main:
        distributed.barrier()  # rank 0 writes the store's caches first
    try:
        data = _prepare(config, info.is_main)
    finally:
        if info.is_main:
            distributed.barrier()
    for part in (data.train, data.valid, data.test):
        if part is not None:
            part.close()  # no store handle crosses into the DataLoader workers
    return data


@dataclass
class _SourceData:
    """The datasets and training statistics of one ``data.sources`` entry.

    Attributes:
        statistics: of all its training frames.
        head_statistics: for a model with heads, of its training frames of each head (heads
            without frames absent).
        states: for a charge/spin model, the total charges and multiplicities of its training
            frames (:func:`check_charge_spin`); else empty.
    """

    train: GraphDataset
    valid: GraphDataset | None
    test: GraphDataset | None
    statistics: Statistics
    head_statistics: dict[str, Statistics]
    states: dict[str, list[int]]


def _prepare_source(data: DataConfig, config: Config, write: bool) -> _SourceData:
    from training.data.splits import training_split

    cutoff, workers = config.model.cutoff, num_workers(config)
    if not data.train:
        raise ValueError("data.train: a training file is required")
    heads = model_heads(config)
    options: dict = {}
    if data.head is not None and data.head_key is None:  # validated against model.hyper.heads
        options["values"] = {keys.HEAD: heads.index(data.head)}
    charge_spin = bool(config.model.hyper.get("charge_spin", False))
    if charge_spin:
        options["defaults"] = {keys.CHARGE: data.default_charge, keys.SPIN: data.default_spin}

    def dataset(
        source: Store | list, indices: np.ndarray, name: str, head_of: np.ndarray | None
    ) -> GraphDataset:
        """The frames ``indices`` of ``source``; ``head_of``: the head index of each frame of
        ``source`` (``data.head_key``), or None."""
        per_frame = None if head_of is None else {keys.HEAD: head_of[indices]}
        return GraphDataset(source, cutoff, indices, name, frame_values=per_frame, **options)

    def heads_of(source: Store | list, indices: np.ndarray) -> np.ndarray | None:
        if data.head_key is None:
            return None
        return frame_heads(source, len(indices), data, heads)  # validated: heads is set

    source, indices = open_source(data.train, config, data)
    head_of = heads_of(source, indices)
    if isinstance(data.valid, str):
        valid_source, valid_indices = open_source(data.valid, config, data)
        valid_heads = heads_of(valid_source, valid_indices)
        valid = dataset(valid_source, valid_indices, f"{data.valid}", valid_heads)
    else:
        split = training_split(source, len(indices), data.valid, config.train.seed, write=write)
        valid = dataset(source, split["valid"], f"{data.train} (valid split)", head_of)
        indices = split["train"]
    train = dataset(source, indices, data.train, head_of)
    if isinstance(source, list):  # frames in memory: labels and compositions at hand
        check_training_set([source[i] for i in indices], config, str(data.train))
    test = None
    if data.test:
        test_source, test_indices = open_source(data.test, config, data)
        test_heads = heads_of(test_source, test_indices)
        test = dataset(test_source, test_indices, data.test, test_heads)
    states: dict[str, list[int]] = {}
    if charge_spin:
        states = check_charge_spin(train, data)  # the training frames' states are exported
        for part in (valid, test):
            if part is not None:
                check_charge_spin(part, data)

    def measured(chosen: np.ndarray, name: str) -> Statistics:
        statistics = compute_statistics(
            source, cutoff=cutoff, indices=chosen, num_workers=workers, write_cache=write
        )
        warn_reference_fit(statistics, config, name)
        return statistics

    if head_of is None:
        statistics = measured(indices, str(data.train))
        head_statistics = {} if heads is None else {data.head or heads[0]: statistics}
    else:  # each head's training frames on their own
        head_statistics = {}
        for number, name in enumerate(heads):
            chosen = indices[head_of[indices] == number]
            if chosen.size:
                head_statistics[name] = measured(chosen, f"{data.train} (head {name})")
        statistics = Statistics.combined(list(head_statistics.values()))
    return _SourceData(train, valid, test, statistics, head_statistics, states)


def _joined(parts: list[GraphDataset | None]) -> Dataset | None:
    present = [part for part in parts if part is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else ConcatGraphDataset(present)


def _prepare(config: Config, write: bool) -> TrainingData:
    workers = num_workers(config)
    sources = [_prepare_source(data, config, write) for data in data_sources(config.data)]
    train = _joined([s.train for s in sources])
    valid = _joined([s.valid for s in sources])
    test = _joined([s.test for s in sources])
    statistics = Statistics.combined([s.statistics for s in sources])
    heads = model_heads(config)
    head_statistics: dict[str, Statistics] = {}
    if heads is not None:
        for name in heads:
            parts = [s.head_statistics[name] for s in sources if name in s.head_statistics]
            if parts:
                head_statistics[name] = Statistics.combined(parts)
        missing = [name for name in heads if name not in head_statistics]
        if missing:
            log.warning(
                "head(s) %s have no training frames; they get the statistics of all frames",
                ", ".join(missing),
            )
    if config.train.batch.max_edges is not None:  # edge budgets count every frame once
        for part in (train, valid):
            if part is not None:
                part.n_edges(workers, write_cache=write)
    # an element only in valid/test gets a least-squares reference energy of 0
    species = set(statistics.species)
    for part in [s.valid for s in sources] + [s.test for s in sources]:
        if part is None:
            continue
        found = compute_statistics(part.source, indices=part.indices, write_cache=write)
        extra = set(found.species) - species
        if extra:
            log.warning("atomic number(s) %s are not in the training set", sorted(extra))
        species |= extra
    states = {
        name: sorted({value for s in sources for value in s.states.get(name, [])})
        for name in ("charge", "spin")
        if any(s.states for s in sources)
    }
    return TrainingData(train, valid, test, statistics, sorted(species), head_statistics, states)


def make_loaders(
    data: TrainingData, config: Config, info: distributed.DistInfo, device: torch.device
) -> tuple[DataLoader, DataLoader | None]:
    """This rank's training loader (shuffled per epoch, ``data.num_workers`` workers) and
    validation loader (in order, at most one worker), both under ``train.batch``; batches are
    pinned for ``non_blocking`` copies when ``device`` is a GPU."""
    batch = config.train.batch
    budget = BatchBudget(batch.size, batch.max_atoms, batch.max_edges)
    workers = num_workers(config)
    options = {
        "seed": config.train.seed,
        "rank": info.rank,
        "world_size": info.world_size,
        "pin_memory": device.type == "cuda",
    }

    def loader_workers(dataset: Dataset, most: int) -> int:
        """Frames already in memory get their graphs built once (in ``workers`` workers) and
        kept, so their loader needs no worker; a store's are built every epoch in workers."""
        if config.data.cache_graphs and dataset.in_memory:
            dataset.cache_graphs(workers)
            return 0
        return most

    train = make_loader(
        data.train, budget, num_workers=loader_workers(data.train, workers), **options
    )
    if data.valid is None:
        return train, None
    valid_workers = loader_workers(data.valid, min(workers, 1))
    valid = make_loader(data.valid, budget, shuffle=False, num_workers=valid_workers, **options)
    return train, valid
