"""From ``config.data`` to the train/valid/test datasets and the training statistics.

Any input goes the same way: a raw file (extxyz/ASE, MPTrj JSON, ``.aselmdb``) is read into
frames in memory; an HDF5 store (``mlip-data convert``) is read lazily. Both are truncated to
``data.max_structures``, split with :func:`training.data.splits.training_split`, and measured
with :func:`training.data.statistics.compute_statistics`, so the same frames give the same
split, statistics and batches either way.

Under torchrun only rank 0 writes the store's caches (split, edge counts, statistics); the
other ranks wait for it and then only read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from training import distributed
from training.config import Config
from training.data.datasets import BatchBudget, GraphDataset, default_num_workers, make_loader
from training.data.statistics import Statistics, compute_statistics
from training.data.store import Store, is_store
from training.errors import DataError
from training.label_checks import check_training_set, warn_reference_fit

__all__ = ["TrainingData", "make_loaders", "num_workers", "open_source", "prepare_data"]

log = logging.getLogger("mlip.train")


@dataclass
class TrainingData:
    """The datasets of a run and the statistics of the training set (at the model cutoff)."""

    train: GraphDataset
    valid: GraphDataset | None
    test: GraphDataset | None
    statistics: Statistics
    species: list[int]


def open_source(path: str, config: Config) -> tuple[Store | list, np.ndarray]:
    """A store or the frames of a raw file, and the indices of its first ``max_structures``."""
    from training.data.frames import SkipReport
    from training.data.readers import ReaderOptions, read_frames

    data = config.data
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
        if part is not None and isinstance(part.source, Store):
            part.source.close()  # no handle crosses into the DataLoader workers
    return data


def _prepare(config: Config, write: bool) -> TrainingData:
    from training.data.splits import training_split

    data, cutoff = config.data, config.model.cutoff
    workers = num_workers(config)
    if not data.train:
        raise ValueError("data.train: a training file is required")
    source, indices = open_source(data.train, config)
    valid = None
    if isinstance(data.valid, str):
        valid_source, valid_indices = open_source(data.valid, config)
        valid = GraphDataset(valid_source, cutoff, valid_indices, f"{data.valid}")
    else:
        split = training_split(source, len(indices), data.valid, config.train.seed, write=write)
        valid = GraphDataset(source, cutoff, split["valid"], f"{data.train} (valid split)")
        indices = split["train"]
    train = GraphDataset(source, cutoff, indices, data.train)
    if isinstance(source, list):  # frames in memory: labels and compositions at hand
        check_training_set([source[i] for i in indices], config, str(data.train))
    test = None
    if data.test:
        test_source, test_indices = open_source(data.test, config)
        test = GraphDataset(test_source, cutoff, test_indices, data.test)
    statistics = compute_statistics(
        source, cutoff=cutoff, indices=indices, num_workers=workers, write_cache=write
    )
    warn_reference_fit(statistics, config, str(data.train))
    if config.train.batch.max_edges is not None:  # edge budgets count every frame once
        for part in (train, valid):
            if part is not None:
                part.n_edges(workers, write_cache=write)
    # an element only in valid/test gets a least-squares reference energy of 0
    species = set(statistics.species)
    for part in (valid, test):
        if part is None:
            continue
        found = compute_statistics(part.source, indices=part.indices, write_cache=write)
        extra = set(found.species) - species
        if extra:
            log.warning("atomic number(s) %s are not in the training set", sorted(extra))
        species |= extra
    return TrainingData(train, valid, test, statistics, sorted(species))


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
    train = make_loader(data.train, budget, num_workers=workers, **options)
    if data.valid is None:
        return train, None
    valid = make_loader(data.valid, budget, shuffle=False, num_workers=min(workers, 1), **options)
    return train, valid
