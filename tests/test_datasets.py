"""Loader: budget batching, seeded shuffling, DDP sharding, mid-epoch resume, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlip import AtomicGraph
from training.data.frames import Frame
from training.data.datasets import BudgetBatchSampler, GraphDataset, load_datasets, make_loader
from training.data.store import convert

MPTRJ_JSON = "mptrj/mptrj_11frames_MPtrj-json-layout.json"


def _frames(n: int = 40) -> list[Frame]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        n_atoms = int(rng.integers(2, 9))
        frames.append(
            Frame(
                positions=rng.random((n_atoms, 3)) * 4,
                atomic_numbers=rng.integers(1, 9, size=n_atoms),
                energy=float(rng.normal()),
                forces=rng.normal(size=(n_atoms, 3)),
                frame_id=str(i),
            ).validated()
        )
    return frames


def test_budget_sampler_packs_covers_and_is_seeded() -> None:
    sizes = np.random.default_rng(1).integers(1, 30, size=200)
    sampler = BudgetBatchSampler(sizes, 64, seed=5)
    batches = list(sampler)
    assert all(sizes[b].sum() <= 64 or len(b) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert list(BudgetBatchSampler(sizes, 64, seed=5)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    assert list(BudgetBatchSampler(sizes, 64, seed=6)) != batches
    ordered = list(BudgetBatchSampler(sizes, 64, shuffle=False))
    assert [i for b in ordered for i in b] == list(range(200))
    big = BudgetBatchSampler([100, 1, 1], 10, shuffle=False)
    assert list(big) == [[0], [1, 2]]


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_equal_batch_counts(drop_last: bool) -> None:
    sizes = np.random.default_rng(2).integers(1, 30, size=101)
    full = BudgetBatchSampler(sizes, 50, seed=0)
    n_batches = len(full)
    shards = [
        list(BudgetBatchSampler(sizes, 50, seed=0, rank=r, world_size=3, drop_last=drop_last))
        for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for shard in shards for b in shard for i in b)
    if drop_last:
        assert len(shards[0]) == n_batches // 3
        assert len(set(seen)) == len(seen)
    else:
        assert len(shards[0]) == -(-n_batches // 3)
        assert set(seen) == set(range(101))


def test_resume_mid_epoch() -> None:
    sizes = np.random.default_rng(3).integers(1, 30, size=100)
    sampler = BudgetBatchSampler(sizes, 60, seed=1, rank=1, world_size=2)
    sampler.set_epoch(4)
    whole = list(sampler)
    resumed = BudgetBatchSampler(sizes, 60, seed=1, rank=1, world_size=2)
    resumed.set_epoch(4, start_batch=3)
    assert len(resumed) == len(whole) - 3
    assert list(resumed) == whole[3:]


def test_loader_from_frames_budget_and_collate() -> None:
    frames = _frames()
    dataset = GraphDataset(frames, cutoff=3.0)
    loader = make_loader(dataset, max_atoms=30, seed=0)
    seen = []
    for batch in loader:
        assert isinstance(batch, AtomicGraph)
        assert batch.positions.shape[0] <= 30 or batch.num_graphs == 1
        seen.extend(g.energy.item() for g in batch.split())
    assert sorted(seen) == sorted(f.energy for f in frames)
    edge_loader = make_loader(dataset, max_edges=60, shuffle=False)
    for batch in edge_loader:
        assert batch.num_edges <= 60 or batch.num_graphs == 1
    with pytest.raises(ValueError, match="exactly one"):
        make_loader(dataset)


def test_store_loader_with_workers_matches_single_process(
    shared_data: Path, tmp_path: Path
) -> None:
    convert(shared_data / MPTRJ_JSON, tmp_path / "s.h5")
    datasets = load_datasets(tmp_path / "s.h5", cutoff=4.0, group_by="group_id", seed=0)
    assert set(datasets) == {"train", "valid"}
    dataset = GraphDataset(tmp_path / "s.h5", cutoff=4.0)
    serial = list(make_loader(dataset, max_atoms=50, seed=2))
    parallel = list(make_loader(dataset, max_atoms=50, seed=2, num_workers=2))
    assert len(serial) == len(parallel) > 1
    for a, b in zip(serial, parallel):
        for name, value in a.as_dict().items():
            assert torch.equal(value, getattr(b, name)), name


def test_load_datasets_from_raw_file_and_label_selection(shared_data: Path) -> None:
    datasets = load_datasets(
        [shared_data / MPTRJ_JSON, shared_data / "tiny/ethanol_rmd17_train_first50.xyz"],
        cutoff=4.0,
        fractions={"train": 0.8, "valid": 0.2},
        seed=1,
    )
    assert len(datasets["train"]) + len(datasets["valid"]) == 61
    mixed = GraphDataset(datasets["train"].source, 4.0, labels=("energy", "forces"))
    batch = next(iter(make_loader(mixed, max_atoms=10_000)))
    assert batch.num_graphs == 61 and batch.stress is None
