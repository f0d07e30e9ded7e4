"""HDF5 store: exact round trip, interrupted + resumed conversion, statistics, splits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mlip.neighbors import neighbor_list
from training.data import store as store_module
from training.data.datasets import GraphDataset
from training.data.frames import Frame
from training.data.readers import read_frames
from training.data.splits import load_split, make_split
from training.data.statistics import compute_statistics
from training.data.store import IncompleteStoreError, Store, convert, write_frames

MPTRJ_JSON = "mptrj/mptrj_11frames_MPtrj-json-layout.json"
REPO = Path(__file__).resolve().parents[1]


def _inputs(shared_data: Path) -> list[Path]:
    return [shared_data / MPTRJ_JSON, shared_data / "tiny/ethanol_rmd17_train_first50.xyz"]


def _assert_same(a: Frame, b: Frame) -> None:
    for name in ("positions", "atomic_numbers", "pbc", "cell", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name  # bit-equal
    for name in ("energy", "charge", "spin", "source", "frame_id", "group_id"):
        assert getattr(a, name) == getattr(b, name), name


def test_round_trip_reader_store_loader_is_exact(shared_data: Path, tmp_path: Path) -> None:
    inputs = _inputs(shared_data)
    frames = read_frames(inputs)
    report = convert(inputs, tmp_path / "s.h5", batch_size=7)
    assert (report.n_frames, report.written) == (61, 61)
    store = Store(tmp_path / "s.h5")
    assert len(store) == 61
    for index, frame in enumerate(frames):
        _assert_same(store[index], frame)
    dataset = GraphDataset(store, cutoff=4.0)
    for index in (0, 10, 11, 60):
        graph, expected = dataset[index], frames[index].to_graph(4.0)
        for name, value in expected.as_dict().items():
            assert torch.equal(getattr(graph, name), value), name


def test_molecules_and_charge_spin_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [
        Frame(
            positions=rng.normal(size=(n, 3)),
            atomic_numbers=rng.integers(1, 10, size=n),
            energy=float(rng.normal()),
            forces=rng.normal(size=(n, 3)),
            charge=float(n % 3 - 1),
            spin=None if n == 4 else 1.0,
            source="memory",
            frame_id=str(n),
            group_id="é-unicode",
        ).validated()
        for n in (3, 4, 5)
    ]
    write_frames(frames, tmp_path / "m.h5", batch_size=2)
    store = Store(tmp_path / "m.h5")
    for a, b in zip(store, frames):
        _assert_same(a, b)
    assert store[1].spin is None and store[0].cell is None


def _all_datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    left, right = _all_datasets(a), _all_datasets(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def test_sigkill_then_resume_equals_uninterrupted(shared_data: Path, tmp_path: Path) -> None:
    inputs = [str(p) for p in _inputs(shared_data)]
    reference = tmp_path / "reference.h5"
    convert(inputs, reference, batch_size=4)
    output = tmp_path / "killed.h5"
    env = dict(os.environ, **{store_module.COMMIT_DELAY_ENV: "30"})
    command = [sys.executable, "-m", "training.data_cli", "convert", *inputs]
    command += ["-o", str(output), "--batch-size", "4", "-v"]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("committed 4 frames"), (line, process.stderr.read())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    with pytest.raises(IncompleteStoreError, match="interrupted after 4 frames"):
        Store(output)
    report = convert(inputs, output, batch_size=4)
    assert report.resumed_from == 4 and report.written == 57
    _assert_same_store(output, reference)


def test_crash_between_append_and_commit_resumes(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _inputs(shared_data)
    reference = tmp_path / "reference.h5"
    convert(inputs, reference, batch_size=5)
    output = tmp_path / "crashed.h5"
    original = store_module._Writer.commit
    calls = {"n": 0}

    def failing_commit(self: store_module._Writer) -> None:
        calls["n"] += 1
        # commits: 5, 10, 11 (end of the MPTrj file), then 16 appended but never committed
        if calls["n"] == 4:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(store_module._Writer, "commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        convert(inputs, output, batch_size=5)
    monkeypatch.setattr(store_module._Writer, "commit", original)
    with h5py.File(output, "r") as file:
        assert file.attrs["n_frames"] == 11 and file["energy"].shape[0] == 16
    with pytest.raises(ValueError, match="different inputs or options"):
        convert(inputs, output, batch_size=5, skip_invalid=True)
    report = convert(inputs, output, batch_size=5)
    assert report.resumed_from == 11
    _assert_same_store(output, reference)
    with pytest.raises(FileExistsError, match="already a complete store"):
        convert(inputs, output)


def test_failed_conversion_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text('1\nLattice="1 0 0 0 1 0 0 0 1" Properties=species:S:1:pos:R:3\nH 0 0 0\n')
    with pytest.raises(ValueError, match="bad.xyz: frame 0 .*'energy'"):
        convert(path, tmp_path / "s.h5")
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        Store(tmp_path / "s.h5")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing.xyz", tmp_path / "t.h5")


def test_statistics_match_direct_computation(shared_data: Path, tmp_path: Path) -> None:
    inputs = _inputs(shared_data)
    frames = read_frames(inputs)
    convert(inputs, tmp_path / "s.h5")
    stats = compute_statistics(tmp_path / "s.h5", cutoff=4.0)
    numbers = np.concatenate([f.atomic_numbers for f in frames])
    forces = np.concatenate([f.forces for f in frames])
    elements = np.unique(numbers)
    assert stats.species == elements.tolist()
    assert stats.sums.element_counts[elements].tolist() == [(numbers == z).sum() for z in elements]
    assert stats.force_rms == pytest.approx(np.sqrt((forces**2).mean()), rel=1e-12)
    counts = np.array([[(f.atomic_numbers == z).sum() for z in elements] for f in frames])
    energies = np.array([f.energy for f in frames])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    references = stats.least_squares_references()
    fitted = np.array([references[int(z)] for z in elements])
    np.testing.assert_allclose(counts @ fitted, counts @ solution, rtol=1e-9, atol=1e-6)
    # shift and (energy-only) scale: mean and std over frames of the residual per atom
    residual = (energies - counts @ fitted) / np.array([f.n_atoms for f in frames])
    model = stats.for_model("least_squares", elements.tolist())
    assert model["shift"] == pytest.approx(residual.mean(), abs=1e-9)
    assert model["scale"] == pytest.approx(stats.force_rms, rel=1e-12)
    assert stats.energy_moments(references)[1] == pytest.approx(residual.std(), rel=1e-6)
    n_edges = sum(neighbor_list(f.positions, f.cell, f.pbc, 4.0)[0].shape[1] for f in frames)
    assert stats.mean_neighbors == pytest.approx(n_edges / len(numbers))
    assert model["avg_num_neighbors"] == pytest.approx(n_edges / len(numbers))
    with h5py.File(tmp_path / "s.h5", "r") as file:
        assert "statistics/all" in file and "n_edges/4.0" in file
    cached = compute_statistics(tmp_path / "s.h5", cutoff=4.0)
    assert cached.to_json() == stats.to_json()
    # the in-memory frames give the same statistics (one formula)
    in_memory = compute_statistics(frames, cutoff=4.0)
    for key, value in in_memory.for_model("least_squares", elements.tolist()).items():
        assert value == pytest.approx(model[key], rel=1e-9), key
    subset = compute_statistics(tmp_path / "s.h5", indices=np.arange(11))
    assert subset.sums.n_frames == 11 and subset.mean_neighbors is None


def test_splits_grouped_seeded_and_saved(shared_data: Path, tmp_path: Path) -> None:
    convert(_inputs(shared_data), tmp_path / "s.h5")
    store = Store(tmp_path / "s.h5")
    groups = store.strings("group_id")
    split = make_split(store, {"train": 0.8, "valid": 0.2}, group_by="group_id", seed=3)
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(61))
    assert not set(groups[split["train"]]) - {""} & set(groups[split["valid"]]) - {""}
    again = make_split(store, {"train": 0.8, "valid": 0.2}, group_by="group_id", seed=3, name=None)
    for part in split:
        np.testing.assert_array_equal(split[part], again[part])
    loaded = load_split(tmp_path / "s.h5")
    assert list(loaded) == ["train", "valid"]
    np.testing.assert_array_equal(loaded["valid"], split["valid"])
    random_split = make_split(store, {"train": 0.9, "valid": 0.1}, seed=0, name="random")
    assert len(random_split["valid"]) == 6
    with pytest.raises(KeyError, match="no split 'nope'"):
        load_split(store, "nope")


def test_mean_neighbors_of_a_large_set_comes_from_the_same_sample(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import statistics

    inputs = _inputs(shared_data)
    frames = read_frames(inputs)
    convert(inputs, tmp_path / "s.h5")
    monkeypatch.setattr(statistics, "NEIGHBOR_SAMPLE", 7)
    from_store = compute_statistics(tmp_path / "s.h5", cutoff=4.0).mean_neighbors
    assert compute_statistics(frames, cutoff=4.0).mean_neighbors == from_store
    assert compute_statistics(tmp_path / "s.h5", cutoff=4.0).mean_neighbors == from_store  # cache
    with h5py.File(tmp_path / "s.h5", "r") as file:
        assert "n_edges" not in file  # only the 7 sampled frames were counted
