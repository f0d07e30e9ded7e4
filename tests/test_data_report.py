"""mlip-data stats as a table with the under-determined reference warning; stress in the
parity and learning-curve plots."""

from __future__ import annotations

import logging
from pathlib import Path

import ase.io
import matplotlib.image
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from training.cli import data_main
from training.config import load_config
from training.plots import learning_curve, parity_plot


def _alloy_frames(n: int, same_composition: bool) -> list:
    frames = []
    for seed in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.numbers[: 1 if same_composition else 1 + seed % 3] = 79  # Au
        atoms.rattle(0.03, seed=seed)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(atoms)
    return frames


def test_stats_table_and_reference_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "same.extxyz"
    ase.io.write(path, _alloy_frames(4, same_composition=True))
    store = tmp_path / "same.h5"
    assert data_main(["convert", str(path), "-o", str(store)]) == 0
    capsys.readouterr()
    assert data_main(["stats", str(store), "--cutoff", "4"]) == 0
    out = capsys.readouterr().out
    assert "Cu" in out and "Au" in out and "eV/atom" in out and "meV/atom" in out
    assert "{" not in out  # a table, not JSON
    assert "2 elements are fitted to 4 frame(s) (1 independent composition(s))" in out

    varied = tmp_path / "varied.extxyz"
    ase.io.write(varied, _alloy_frames(4, same_composition=False))
    assert data_main(["convert", str(varied), "-o", str(tmp_path / "varied.h5")]) == 0
    assert data_main(["stats", str(tmp_path / "varied.h5")]) == 0
    assert "warning" not in capsys.readouterr().out


def test_training_warns_about_underdetermined_references(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from training.data.prepare import prepare_data
    from training.distributed import DistInfo

    path = tmp_path / "same.extxyz"
    ase.io.write(path, _alloy_frames(4, same_composition=True))
    config = load_config(None, [f"data.train={path}", "data.valid=0.25"])
    with caplog.at_level(logging.WARNING):
        prepare_data(config, DistInfo())
    assert "under-determined" in caplog.text


def _width(path: Path) -> int:
    return matplotlib.image.imread(path).shape[1]


def test_plots_include_stress_when_trained(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {f"{q}_{k}": rng.normal(size=9) for q in ("energy", "forces") for k in ("ref", "pred")}
    parity_plot(arrays, tmp_path / "no_stress.png")
    arrays.update(stress_ref=rng.normal(size=9), stress_pred=rng.normal(size=9))
    parity_plot(arrays, tmp_path / "stress.png")
    assert _width(tmp_path / "stress.png") > 1.3 * _width(tmp_path / "no_stress.png")

    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "valid_loss": 1.0,
            "valid_energy_rmse": 0.1,
            "valid_forces_rmse": 0.2,
        }  # fmt: skip
        for e in range(3)
    ]
    learning_curve(history, tmp_path / "curve.png")
    for row in history:
        row["valid_stress_rmse"] = 0.01
    learning_curve(history, tmp_path / "curve_stress.png")
    assert _width(tmp_path / "curve_stress.png") > 1.2 * _width(tmp_path / "curve.png")
