"""Trainer pieces (loss, batching, schedule) and a tiny end-to-end run with export/eval/finetune."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlip import AtomicGraph
from training.config import Config, config_from_dict
from training.data.datasets import BatchBudget, pack_batches
from training.loss import LossCounts, LossWeights, batch_counts, weighted_loss
from training.schedule import LRSchedule
from training.trainer import train

TINY_MODEL = {"channels": 4, "mixer_channels": 8, "num_layers": 1, "num_radial": 4}


def tiny_config(train_file: Path, output_dir: Path, **sections: dict) -> Config:
    """A seconds-long run on a few structures with a very small model."""
    values: dict = {
        "data": {"train": str(train_file), "valid": 0.25, "max_structures": 12},
        "model": {"cutoff": 3.5, "hyper": dict(TINY_MODEL)},
        "train": {
            "max_epochs": 2,
            "batch": {"size": 3},
            "lr": 0.01,
            "warmup_steps": 2,
            "num_threads": 1,
            "progress_bar": False,
        },
        "loss": {"forces_weight": 10.0},
        "output_dir": str(output_dir),
    }
    for section, updates in sections.items():
        if isinstance(updates, dict):
            values.setdefault(section, {}).update(updates)
        else:
            values[section] = updates
    return config_from_dict(values)


def _graphs(n: int, periodic: bool = False) -> list[AtomicGraph]:
    generator = np.random.default_rng(1)
    graphs = []
    for i in range(n):
        n_atoms = 2 + i
        cell = np.eye(3) * 4.0 if periodic else None
        graphs.append(
            AtomicGraph.from_arrays(
                generator.uniform(0, 3, (n_atoms, 3)),
                [1] * n_atoms,
                2.0,
                cell=cell,
                pbc=periodic,
                energy=float(i),
                forces=generator.normal(size=(n_atoms, 3)),
                stress=generator.normal(size=(3, 3)) if periodic else None,
            )
        )
    return graphs


@pytest.mark.parametrize("loss_type", ["mse", "huber"])
def test_sharded_loss_sums_to_global_loss(loss_type: str) -> None:
    graphs = _graphs(5, periodic=True)
    generator = torch.Generator().manual_seed(0)

    def predict(graph: AtomicGraph) -> dict[str, torch.Tensor]:
        return {
            "energy": graph.energy + torch.randn(graph.num_graphs, generator=generator).double(),
            "forces": graph.forces + torch.randn(graph.forces.shape, generator=generator).double(),
            "stress": graph.stress + torch.randn(graph.stress.shape, generator=generator).double(),
        }

    weights = LossWeights(1.0, 2.0, 3.0)
    full = AtomicGraph.batch(graphs)
    predictions = predict(full)
    counts = batch_counts(full, use_stress=True)
    total, terms = weighted_loss(predictions, full, weights, counts, loss_type, 0.5)
    assert set(terms) == {"energy", "forces", "stress"}
    # split into two shards, normalised by the global counts: the sum is the global loss
    parts = [graphs[:2], graphs[2:]]
    atom_split = sum(g.positions.shape[0] for g in parts[0])
    shard_total = 0.0
    for b, part in enumerate(parts):
        shard = AtomicGraph.batch(part)
        sl = slice(0, 2) if b == 0 else slice(2, 5)
        al = slice(0, atom_split) if b == 0 else slice(atom_split, None)
        shard_predictions = {
            "energy": predictions["energy"][sl],
            "forces": predictions["forces"][al],
            "stress": predictions["stress"][sl],
        }
        shard_total += float(
            weighted_loss(shard_predictions, shard, weights, counts, loss_type, 0.5)[0]
        )
    assert shard_total == pytest.approx(float(total), rel=1e-12)
    if loss_type == "mse":
        n_atoms = full.num_atoms.double()
        expected = ((predictions["energy"] - full.energy) / n_atoms).square().mean()
        expected += 2.0 * (predictions["forces"] - full.forces).square().mean()
        expected += 3.0 * (predictions["stress"] - full.stress).square().mean()
        assert float(total) == pytest.approx(float(expected), rel=1e-12)


def test_empty_shard_counts() -> None:
    counts = LossCounts.from_tensor(LossCounts(2, 7, 0).as_tensor())
    assert counts == LossCounts(2.0, 7.0, 0.0)


def test_pack_batches_respects_budget() -> None:
    n_atoms = np.array([5, 5, 5, 20, 1, 1])
    n_edges = np.array([10, 10, 10, 100, 0, 0])
    batches = pack_batches(range(6), n_atoms, n_edges, BatchBudget(4, max_atoms=12))
    assert batches == [[0, 1], [2], [3], [4, 5]]
    assert sorted(sum(batches, [])) == list(range(6))
    batches = pack_batches(range(6), n_atoms, n_edges, BatchBudget(2, max_edges=25))
    assert all(len(b) <= 2 for b in batches)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_lr_schedule(schedule: str) -> None:
    config = config_from_dict(
        {
            "train": {
                "lr": 1.0,
                "min_lr": 0.0,
                "warmup_steps": 4,
                "schedule": schedule,
                "plateau_patience": 1,
            }
        }
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    lr_schedule = LRSchedule(optimizer, config, total_steps=104)
    assert lr_schedule.lr_at(0) == pytest.approx(0.25)
    assert lr_schedule.lr_at(3) == pytest.approx(1.0)
    if schedule == "cosine":
        assert lr_schedule.lr_at(54) == pytest.approx(0.5)
        assert lr_schedule.lr_at(104) == pytest.approx(0.0, abs=1e-12)
        # a wall-clock budget half used: the cosine is half way whatever the step
        assert lr_schedule.lr_at(10, time_share=0.5) == pytest.approx(0.5)
        assert lr_schedule.lr_at(10, time_share=1.2) == pytest.approx(0.0, abs=1e-12)
        assert lr_schedule.lr_at(54, time_share=0.1) == pytest.approx(0.5)
    else:
        for loss in (1.0, 2.0, 2.0):
            lr_schedule.epoch_end(loss)
        assert lr_schedule.lr_at(10) == pytest.approx(0.5)
        state = lr_schedule.state_dict()
        other = LRSchedule(optimizer, config, total_steps=104)
        other.load_state_dict(state)
        assert other.lr_at(10) == pytest.approx(0.5)


def test_end_to_end_export_eval_finetune(shared_data: Path, tmp_path: Path) -> None:
    import mlip.export
    from training.eval_cli import main as eval_main
    from training.export_cli import main as export_main

    acac = shared_data / "tiny" / "acac_test300K_first20.xyz"
    isolated = shared_data / "acac" / "isolated_atoms.xyz"
    config = tiny_config(
        acac,
        tmp_path / "run",
        data={
            "reference_energies": "isolated",
            "isolated_atoms": str(isolated),
            "test": str(acac),
            "max_structures": None,
        },
        loss={"switch_epoch": 1},
    )
    result = train(config)
    out = tmp_path / "run"
    for name in ("checkpoint.pt", "metrics.csv", "learning_curve.png", "parity.png", "model.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("valid_energy_mae", "valid_energy_rmse", "valid_forces_mae", "valid_forces_rmse"):
        assert math.isfinite(float(rows[-1][key]))
    assert set(result["test"]) >= {"energy_mae", "forces_rmse"}

    module, metadata = mlip.export.load(out / "model.pt")
    assert metadata["info"]["metrics"]["valid"]["forces_rmse"] == pytest.approx(
        result["valid"]["forces_rmse"]
    )
    assert metadata["info"]["dataset"]["train"] == str(acac)
    # the E0s from isolated_atoms.xyz reached the model
    e0 = dict(zip(metadata["atomic_numbers"], module.energy_model.reference_energies.tolist()))
    assert e0[1] == pytest.approx(-13.568422178253735)

    assert export_main([str(out / "checkpoint.pt"), "-o", str(tmp_path / "exported.pt")]) == 0
    exported, _ = mlip.export.load(tmp_path / "exported.pt")
    for key, value in module.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value)

    assert (
        eval_main(
            [
                str(acac),
                "--model",
                str(out / "model.pt"),
                "--plot",
                str(tmp_path / "parity"),
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert (tmp_path / "parity.png").is_file()
    import json

    evaluated = json.load(open(tmp_path / "eval.json"))[str(acac)]
    # the same file is data.test, so mlip-eval must reproduce the trainer's test metrics
    assert evaluated["forces_rmse"] == pytest.approx(result["test"]["forces_rmse"], rel=1e-5)

    finetune = tiny_config(
        acac,
        tmp_path / "finetune",
        finetune={"from": str(out / "model.pt"), "refit_references": True},
        train={"max_epochs": 1},
    )
    train(finetune)
    assert (tmp_path / "finetune" / "model.pt").is_file()
    # fine-tuning from a training checkpoint (its best EMA weights) works the same way
    from_checkpoint = tiny_config(
        acac,
        tmp_path / "from_checkpoint",
        finetune={"from": str(out / "checkpoint.pt")},
        train={"max_epochs": 1},
    )
    train(from_checkpoint)
    assert (tmp_path / "from_checkpoint" / "model.pt").is_file()


def test_early_stopping(shared_data: Path, tmp_path: Path) -> None:
    # weights that cannot move (tiny lr, float32) give the same validation loss every epoch
    config = tiny_config(
        shared_data / "tiny" / "acac_test300K_first20.xyz",
        tmp_path / "run",
        train={"max_epochs": 5, "patience": 1, "lr": 1e-15, "min_lr": 0.0, "ema_decay": 0.0},
    )
    result = train(config)
    assert result["stop_reason"] == "early_stopping"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header, epoch 0 (best), epoch 1 (no improvement) -> stop


@pytest.mark.parametrize(
    ("budget", "switched_at"), [({"max_epochs": 4}, 2), ({"max_epochs": 4, "max_time": 0.0}, 0)]
)
def test_loss_switch_at_a_fraction_of_the_budget(
    shared_data: Path, tmp_path: Path, budget: dict, switched_at: int
) -> None:
    """``switch_fraction`` 0.5 of 4 epochs switches at epoch 2; of a spent time budget at once,
    and the validation criterion then uses the late weights."""
    config = tiny_config(
        shared_data / "tiny" / "acac_test300K_first20.xyz",
        tmp_path / "run",
        train=budget,
        loss={
            "energy_weight": 1.0,
            "forces_weight": 10.0,
            "switch_fraction": 0.5,
            "switch_energy_weight": 1000.0,
            "switch_forces_weight": 1.0,
        },
    )
    train(config)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["switched_epoch"] == switched_at
    for row in checkpoint["history"]:
        late = row["epoch"] >= switched_at
        weights = (1000.0, 1.0) if late else (1.0, 10.0)
        expected = (
            weights[0] * row["valid_energy_rmse"] ** 2 + weights[1] * row["valid_forces_rmse"] ** 2
        )
        assert row["valid_loss"] == pytest.approx(expected, rel=1e-9)


def test_switch_epoch_and_fraction_exclusive(tmp_path: Path) -> None:
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="switch_fraction"):
        tiny_config(tmp_path / "x.xyz", tmp_path, loss={"switch_epoch": 2, "switch_fraction": 0.5})
    with pytest.raises(ConfigError, match="switch_fraction must be in"):
        tiny_config(tmp_path / "x.xyz", tmp_path, loss={"switch_fraction": 1.5})


def test_stress_and_max_time(shared_data: Path, tmp_path: Path) -> None:
    mptrj = shared_data / "tiny" / "mptrj_11frames.extxyz"
    config = tiny_config(
        mptrj,
        tmp_path / "run",
        data={"valid": 0.3},
        model={"cutoff": 3.0},
        loss={"stress_weight": 1.0, "type": "huber"},
        train={"max_epochs": 1, "dtype": "float64", "schedule": "plateau"},
    )
    result = train(config)
    assert "stress_rmse" in result["valid"]
    from training.eval_cli import main as eval_main

    report = tmp_path / "eval.json"
    model = tmp_path / "run" / "model.pt"
    assert eval_main([str(mptrj), "--model", str(model), "--json", str(report)]) == 0
    import json

    assert "stress_rmse" in json.loads(report.read_text())[str(mptrj)]
    timed = tiny_config(mptrj, tmp_path / "timed", train={"max_time": 0.0})
    result = train(timed)
    assert result["stop_reason"] == "max_time"
    assert (tmp_path / "timed" / "model.pt").is_file()


def test_trains_from_hdf5_store(shared_data: Path, tmp_path: Path) -> None:
    from training.data.store import convert

    store = tmp_path / "acac.h5"
    convert(shared_data / "tiny" / "acac_test300K_first20.xyz", store)
    config = tiny_config(store, tmp_path / "run", train={"max_epochs": 1})
    result = train(config)
    assert result["valid"]["energy_rmse"] < 0.1  # least-squares E0s from the store's cache
    assert (tmp_path / "run" / "model.pt").is_file()
