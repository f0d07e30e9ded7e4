"""Two CPU processes (torchrun, gloo) train to the same weights as one process with the same
global batch: each rank's loss is normalised by the global batch and gradients are summed.
From a store, rank 0 alone writes the split and caches; the store stays readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.checkpoint import load_checkpoint
from training.data.store import Store, convert

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("source", ["extxyz", "store"])
def test_two_ranks_match_one(shared_data: Path, tmp_path: Path, source: str) -> None:
    extxyz = shared_data / "tiny" / "acac_test300K_first20.xyz"
    inputs = {"single": str(extxyz), "double": str(extxyz)}
    if source == "store":  # a fresh store each, so the two-rank run writes its caches itself
        for name in inputs:
            convert(extxyz, tmp_path / f"{name}.h5")
            inputs[name] = str(tmp_path / f"{name}.h5")
    values = {
        "data": {
            "train": inputs["single"],
            "valid": 0.25,
            "max_structures": 13,
            "num_workers": 1,
        },
        "model": {
            "cutoff": 3.5,
            "hyper": {"channels": 4, "mixer_channels": 8, "num_layers": 1, "num_radial": 4},
        },
        "train": {
            "max_epochs": 2,
            "dtype": "float64",
            "batch": {"size": 4},  # 10 training structures: batches of 4, 4, 2 (2+2, 2+2, 1+1)
            "lr": 0.01,
            "warmup_steps": 2,
            "num_threads": 1,
            "progress_bar": False,
        },
        "loss": {"forces_weight": 10.0},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from training.train_cli import main; sys.exit(main(sys.argv[1:]))"
    script = tmp_path / "train.py"
    script.write_text(code)
    single = subprocess.run(
        [
            sys.executable,
            str(script),
            str(config),
            f"output_dir={tmp_path / 'single'}",
            f"data.train={inputs['single']}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(config),
            f"output_dir={tmp_path / 'double'}",
            f"data.train={inputs['double']}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert double.returncode == 0, double.stderr.decode()[-3000:]

    one = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "double" / "checkpoint.pt")
    assert one["progress"]["global_step"] == two["progress"]["global_step"] == 6
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-9, atol=1e-10)
    # all-reduced validation metrics equal the single-process ones
    for row_one, row_two in zip(one["history"], two["history"]):
        for key in ("train_loss", "valid_energy_rmse", "valid_forces_mae"):
            assert abs(row_one[key] - row_two[key]) <= 1e-9 * max(1.0, abs(row_one[key])), key
    # it really ran as two ranks, and rank 0 wrote the outputs
    summary = json.loads((tmp_path / "double" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (tmp_path / "double" / "model.pt").is_file()
    if source == "store":  # one split, written by rank 0; every cache readable
        store = Store(inputs["double"])
        assert list(store.file["splits"]) == ["mlip-train-seed0-valid0.25-n13"]
        assert "n_edges/3.5" in store.file and len(store.file["statistics"]) == 2  # train, valid
        assert store[12].energy is not None
