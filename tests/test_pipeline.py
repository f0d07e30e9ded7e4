"""The one data path: an extxyz file and the same frames as a store train identically, worker
processes change no number, and ``train.max_time`` counts the whole run across resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_trainer import tiny_config

from training.checkpoint import load_checkpoint
from training.data.store import Store, convert
from training.trainer import train

ACAC = "tiny/acac_test300K_first20.xyz"


def _run(train_file: Path, output: Path, workers: int, **sections: dict) -> dict:
    config = tiny_config(
        train_file,
        output,
        data={"num_workers": workers, "max_structures": None, **sections.pop("data", {})},
        train={"max_epochs": 1, "dtype": "float64", "batch": {"size": 4}},
        **sections,
    )
    train(config)
    return load_checkpoint(output / "checkpoint.pt")


def _assert_same_run(a: dict, b: dict) -> None:
    for key in ("shift", "scale", "avg_num_neighbors"):
        assert b["statistics"][key] == pytest.approx(a["statistics"][key], rel=1e-9), key
    for z, value in a["statistics"]["reference_energies"].items():
        assert b["statistics"]["reference_energies"][z] == pytest.approx(value, rel=1e-9)
    for key in ("train_loss", "valid_forces_rmse", "valid_energy_rmse"):
        assert b["history"][0][key] == pytest.approx(a["history"][0][key], rel=1e-6), key
    assert b["progress"]["global_step"] == a["progress"]["global_step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-6, atol=1e-9)


def test_extxyz_and_store_train_identically(shared_data: Path, tmp_path: Path) -> None:
    extxyz = shared_data / ACAC
    store = tmp_path / "acac.h5"
    convert(extxyz, store)
    from_file = _run(extxyz, tmp_path / "file", workers=0)
    from_store = _run(store, tmp_path / "store", workers=0)
    _assert_same_run(from_file, from_store)
    # the split was saved in the store once, and the store is still readable
    with Store(store).file as file:
        assert list(file["splits"]) == ["mlip-train-seed0-valid0.25-n20"]
        assert len(file["splits/mlip-train-seed0-valid0.25-n20/valid"]) == 5


def test_workers_change_no_number(shared_data: Path, tmp_path: Path) -> None:
    store = tmp_path / "acac.h5"
    convert(shared_data / ACAC, store)
    serial = _run(store, tmp_path / "serial", workers=0)
    parallel = _run(store, tmp_path / "parallel", workers=2)
    _assert_same_run(serial, parallel)
    for key, value in serial["model"].items():
        assert torch.equal(parallel["model"][key], value), key


def test_max_time_counts_the_whole_run_across_resumes(shared_data: Path, tmp_path: Path) -> None:
    first = tiny_config(shared_data / ACAC, tmp_path / "run", train={"max_epochs": 1})
    train(first)
    done = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]
    assert done["elapsed_s"] > 0
    # resume for more epochs with a budget the first run already used up: nothing more trains
    budget_min = 0.5 * done["elapsed_s"] / 60.0
    more = tiny_config(
        shared_data / ACAC, tmp_path / "run", train={"max_epochs": 3, "max_time": budget_min}
    )
    result = train(more, resume=True)
    assert result["stop_reason"] == "max_time"
    again = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]
    assert again["global_step"] == done["global_step"] and again["epoch"] == 1
    assert again["elapsed_s"] > done["elapsed_s"]


def test_edge_budget_and_step_budget_from_a_store(shared_data: Path, tmp_path: Path) -> None:
    store = tmp_path / "acac.h5"
    convert(shared_data / ACAC, store)
    config = tiny_config(
        store,
        tmp_path / "run",
        train={"max_steps": 2, "batch": {"size": 8, "max_edges": 200}},
    )
    result = train(config)
    assert result["stop_reason"] == "max_steps"
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]["global_step"] == 2
    assert (tmp_path / "run" / "model.pt").is_file()
    with Store(store).file as file:  # rank 0 counted every frame's edges once, for the budget
        assert len(file["n_edges/3.5"]) == 20
