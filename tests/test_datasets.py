"""Datasets: budget batching, seeded shuffling, DDP sharding, mid-epoch resume, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlip import AtomicGraph
from training.data.datasets import BatchBudget, BudgetBatchSampler, GraphDataset, make_loader
from training.data.frames import Frame
from training.data.readers import read_frames
from training.data.splits import make_split
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
    budget = BatchBudget(1000, max_atoms=64)
    sampler = BudgetBatchSampler(sizes, None, budget, seed=5)
    batches = list(sampler)
    assert all(sizes[b].sum() <= 64 or len(b) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert list(BudgetBatchSampler(sizes, None, budget, seed=5)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    assert list(BudgetBatchSampler(sizes, None, budget, seed=6)) != batches
    ordered = list(BudgetBatchSampler(sizes, None, budget, shuffle=False))
    assert [i for b in ordered for i in b] == list(range(200))
    big = BudgetBatchSampler([100, 1, 1], None, BatchBudget(5, max_atoms=10), shuffle=False)
    assert list(big) == [[0], [1, 2]]
    edges = BudgetBatchSampler([1, 1, 1], [4, 4, 4], BatchBudget(5, max_edges=8), shuffle=False)
    assert list(edges) == [[0, 1], [2]]


def test_ranks_share_every_global_batch() -> None:
    sizes = np.random.default_rng(2).integers(1, 30, size=101)
    budget = BatchBudget(7, max_atoms=50)
    full = list(BudgetBatchSampler(sizes, None, budget, seed=0))
    shards = [
        list(BudgetBatchSampler(sizes, None, budget, seed=0, rank=r, world_size=3))
        for r in range(3)
    ]
    assert all(len(shard) == len(full) for shard in shards)
    for step, batch in enumerate(full):  # the ranks' shares make up the one-process batch
        assert sorted(i for shard in shards for i in shard[step]) == sorted(batch)


def test_resume_mid_epoch() -> None:
    sizes = np.random.default_rng(3).integers(1, 30, size=100)
    budget = BatchBudget(6, max_atoms=60)
    sampler = BudgetBatchSampler(sizes, None, budget, seed=1, rank=1, world_size=2)
    sampler.set_epoch(4)
    whole = list(sampler)
    resumed = BudgetBatchSampler(sizes, None, budget, seed=1, rank=1, world_size=2)
    resumed.set_epoch(4, start_batch=3)
    assert len(resumed) == len(whole) - 3
    assert list(resumed) == whole[3:]


def test_loader_from_frames_budget_and_collate() -> None:
    frames = _frames()
    dataset = GraphDataset(frames, cutoff=3.0)
    loader = make_loader(dataset, BatchBudget(100, max_atoms=30), seed=0)
    seen = []
    for batch in loader:
        assert isinstance(batch, AtomicGraph)
        assert batch.positions.shape[0] <= 30 or batch.num_graphs == 1
        seen.extend(g.energy.item() for g in batch.split())
    assert sorted(seen) == sorted(f.energy for f in frames)
    edge_loader = make_loader(dataset, BatchBudget(100, max_edges=60), shuffle=False)
    for batch in edge_loader:
        assert batch.num_edges <= 60 or batch.num_graphs == 1
    # a rank whose share of a one-structure batch is empty gets None
    lonely = make_loader(dataset, BatchBudget(1), shuffle=False, rank=1, world_size=2)
    assert next(iter(lonely)) is None


def test_store_loader_with_workers_matches_single_process(
    shared_data: Path, tmp_path: Path
) -> None:
    convert(shared_data / MPTRJ_JSON, tmp_path / "s.h5")
    split = make_split(tmp_path / "s.h5", group_by="group_id", seed=0)
    assert set(split) == {"train", "valid"}
    dataset = GraphDataset(tmp_path / "s.h5", cutoff=4.0, indices=split["train"])
    budget = BatchBudget(100, max_atoms=50)
    serial = list(make_loader(dataset, budget, seed=2))
    parallel = list(make_loader(dataset, budget, seed=2, num_workers=2))
    assert len(serial) == len(parallel) > 1
    for a, b in zip(serial, parallel):
        for name, value in a.as_dict().items():
            assert torch.equal(value, getattr(b, name)), name


def test_mixed_labels_are_dropped_per_batch(shared_data: Path) -> None:
    frames = read_frames(
        [shared_data / MPTRJ_JSON, shared_data / "tiny/ethanol_rmd17_train_first50.xyz"]
    )
    loader = make_loader(GraphDataset(frames, 4.0), BatchBudget(100), shuffle=False)
    batch = next(iter(loader))
    assert batch.num_graphs == 61 and batch.stress is None and batch.forces is not None


def test_every_registry_field_travels_store_dataset_batch(tmp_path: Path) -> None:
    from training.data.frames import FRAME_FIELDS
    from training.data.store import Store, write_frames

    assert "head" in FRAME_FIELDS  # read from mlip.keys.FIELDS, not listed here
    frames = [
        frame.with_values(head=None if i == 1 else i % 3) for i, frame in enumerate(_frames(4))
    ]
    write_frames([f.validated() for f in frames], tmp_path / "h.h5")
    store = Store(tmp_path / "h.h5")
    assert [store[i].value("head") for i in range(4)] == [0, None, 2, 0]
    batch = next(iter(make_loader(GraphDataset(store, 3.0), BatchBudget(4), shuffle=False)))
    assert batch.head.dtype == torch.int64 and batch.head.tolist() == [0, 0, 2, 0]


def test_cached_graphs_equal_built_ones() -> None:
    """Frames held in memory get their graphs built once in workers and kept; every kept
    graph equals the one built on demand (so ``data.cache_graphs`` changes no number)."""
    frames = _frames(12)
    built = GraphDataset(frames, cutoff=3.0)
    cached = GraphDataset(frames, cutoff=3.0)
    assert cached.in_memory
    cached.cache_graphs(num_workers=2)
    for index in range(len(frames)):
        a, b = built[index].as_dict(), cached[index].as_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
