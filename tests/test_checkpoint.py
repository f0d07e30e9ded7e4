"""Checkpoints: atomic writes, weights_only loading, RNG round trip, exact resume after SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


def test_save_load_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    state = {"model": {"w": torch.arange(3.0)}, "progress": {"epoch": 2}, "history": [{"a": 1.0}]}
    save_checkpoint(state, path)
    save_checkpoint({**state, "progress": {"epoch": 3}}, path)
    loaded = load_checkpoint(path)
    assert loaded["progress"]["epoch"] == 3
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left over


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert random.random() == expected[0]
    assert np.random.rand() == expected[1]
    torch.testing.assert_close(torch.rand(2), expected[2], rtol=0, atol=0)


def _run(config: Path, *extra: str) -> subprocess.Popen:
    code = "import sys; from training.train_cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(config), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_resume_after_sigkill_matches_uninterrupted(shared_data: Path, tmp_path: Path) -> None:
    values = {
        "data": {
            "train": str(shared_data / "tiny" / "acac_test300K_first20.xyz"),
            "valid": 0.25,
            "max_structures": 16,
        },
        "model": {
            "cutoff": 3.5,
            "hyper": {"channels": 4, "mixer_channels": 8, "num_layers": 1, "num_radial": 4},
        },
        "train": {
            "max_epochs": 4,
            "batch": {"size": 2},
            "lr": 0.01,
            "warmup_steps": 3,
            "schedule": "plateau",
            "plateau_patience": 0,
            "checkpoint_every": 1,
            "num_threads": 1,
            "progress_bar": False,
        },
        "loss": {"switch_epoch": 2},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))

    def first_checkpoint(process: subprocess.Popen, path: Path) -> None:
        while not path.exists() and process.poll() is None:
            time.sleep(0.01)

    reference_dir = tmp_path / "reference"  # also times the run
    reference = _run(config, f"output_dir={reference_dir}")
    first_checkpoint(reference, reference_dir / "checkpoint.pt")
    started = time.monotonic()
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()
    duration = time.monotonic() - started  # from the first checkpoint to the end

    interrupted_dir = tmp_path / "interrupted"
    process = _run(config, f"output_dir={interrupted_dir}")
    checkpoint = interrupted_dir / "checkpoint.pt"
    first_checkpoint(process, checkpoint)
    # a random moment: the optimiser steps take milliseconds and the epoch ends (validation,
    # plots) most of the time, so wait for a random mid-epoch step to be checkpointed, then a
    # random few milliseconds more
    rng = random.Random()
    target = rng.choice([s for s in range(1, 24) if s % 6])  # 4 epochs x 6 steps, mid-epoch
    waiting = time.monotonic()
    while process.poll() is None and time.monotonic() - waiting < 10 * duration + 60:
        try:
            if load_checkpoint(checkpoint)["progress"]["global_step"] >= target:
                break
        except (OSError, RuntimeError, EOFError):
            pass
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.005))
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    if killed:
        progress = load_checkpoint(checkpoint)["progress"]
        print(f"killed at epoch {progress['epoch']} batch {progress['batches_done']}")
    resumed = _run(config, f"output_dir={interrupted_dir}", "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()

    final = load_checkpoint(tmp_path / "reference" / "checkpoint.pt")
    again = load_checkpoint(checkpoint)
    assert again["progress"]["global_step"] == final["progress"]["global_step"]
    for part in ("model", "best_model"):
        for key, value in final[part].items():
            torch.testing.assert_close(again[part][key], value, rtol=1e-6, atol=1e-7)
    for key, value in final["ema"]["shadow"].items():
        torch.testing.assert_close(again["ema"]["shadow"][key], value, rtol=1e-6, atol=1e-7)
    assert [row["epoch"] for row in again["history"]] == [0, 1, 2, 3]
    assert (interrupted_dir / "model.pt").is_file()
    lines = (interrupted_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == 5  # header + one row per epoch, no duplicates from the restart
