"""``mlip-eval`` (training/eval_cli.py): outputs never overwrite, bad frames are skipped,
per-structure predictions and per-group errors, one-line errors. Uses the built-in model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from calculators import MLIPCalculator
from calculators.defaults import default_model_path
from training.eval_cli import EXIT_SKIPPED, main

DEMO_TEST = Path(__file__).resolve().parents[1] / "data" / "demo" / "demo_test.extxyz"


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """Four labelled demo frames in ``test.extxyz`` in a scratch working directory."""
    monkeypatch.chdir(tmp_path)
    write("test.extxyz", read(DEMO_TEST, ":4"))
    return tmp_path


def _model() -> str:
    return str(default_model_path())


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mlip-eval: error: ")
    return lines[0]


def test_outputs_never_overwrite_and_never_replace_an_input(data, capsys):
    Path("e.json").write_text("keep me")
    assert main(["test.extxyz", "--model", _model(), "--json", "e.json"]) == 1
    assert "'e.json' already exists (use --overwrite" in _error_line(capsys)
    assert Path("e.json").read_text() == "keep me"
    original = Path("test.extxyz").read_text()
    for option in ("--json", "-o"):
        argv = ["test.extxyz", "--model", _model(), option, "test.extxyz", "--overwrite"]
        assert main(argv) == 1
        assert "'test.extxyz' is also an input" in _error_line(capsys)
    assert main(["test.extxyz", "--model", _model(), "--plot", "p"]) == 0
    assert main(["test.extxyz", "--model", _model(), "--plot", "p"]) == 1
    assert "'p.png' already exists" in _error_line(capsys)
    assert Path("test.extxyz").read_text() == original
    assert main(["test.extxyz", "--model", _model(), "--json", "e.json", "--overwrite"]) == 0
    assert json.loads(Path("e.json").read_text())["test.extxyz"]["n_frames"] == 4


def test_bad_frames_are_reported_and_skipped(data, capsys):
    frames = read("test.extxyz", ":")
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    fe.calc = SinglePointCalculator(fe, energy=-8.0, forces=np.zeros((2, 3)))
    overlap = frames[1].copy()
    overlap.positions[1] = overlap.positions[0] + [0.03, 0.0, 0.0]
    overlap.calc = SinglePointCalculator(overlap, **frames[1].calc.results)
    write("mixed.extxyz", [frames[0], fe, frames[2], overlap])
    assert main(["mixed.extxyz", "--model", _model(), "--json", "m.json"]) == EXIT_SKIPPED == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "mixed.extxyz: frame 1: element(s) Fe (Z=26) not known" in captured.err
    assert re.search(
        r"mixed.extxyz: frame 3: atoms (0 and 1|1 and 0) are 0.03 Å apart", captured.err
    )
    result = json.loads(Path("m.json").read_text())["mixed.extxyz"]
    assert result["n_frames"] == 2 and result["n_skipped"] == 2
    assert np.isfinite(result["forces_rmse"])


def test_predictions_file_and_errors_per_group(data, capsys):
    argv = ["test.extxyz", "--model", _model(), "-o", "preds.extxyz", "--json", "e.json"]
    assert main([*argv, "--group-by", "config_type"]) == 0
    out = capsys.readouterr().out
    assert "E MAE/(meV/atom)" in out and "F RMSE/(meV/Å)" in out and "S MAE/(meV/Å³)" in out

    references = read("test.extxyz", ":")
    predictions = read("preds.extxyz", ":")
    assert len(predictions) == len(references)
    calc = MLIPCalculator()
    for reference, predicted in zip(references, predictions):
        assert predicted.info["config_type"] == reference.info["config_type"]
        assert predicted.info["REF_energy"] == pytest.approx(reference.get_potential_energy())
        np.testing.assert_allclose(predicted.arrays["REF_forces"], reference.get_forces())
        atoms = reference.copy()
        atoms.calc = calc
        assert predicted.get_potential_energy() == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_allclose(predicted.get_forces(), atoms.get_forces(), atol=1e-6)
        np.testing.assert_allclose(predicted.get_stress(), atoms.get_stress(), atol=1e-8)

    result = json.loads(Path("e.json").read_text())["test.extxyz"]
    assert result["units"] == {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}
    groups = result["groups"]["config_type"]
    assert set(groups) == {a.info["config_type"] for a in references}
    assert sum(g["n_frames"] for g in groups.values()) == 4
    for name, group in groups.items():
        members = [(p, r) for p, r in zip(predictions, references) if r.info["config_type"] == name]
        errors = [
            abs(p.get_potential_energy() - r.get_potential_energy()) / len(r) for p, r in members
        ]
        assert group["energy_mae"] == pytest.approx(np.mean(errors), rel=1e-6)


@pytest.mark.parametrize(
    ("setup", "argv", "expected"),
    [
        ("empty", ["empty.extxyz"], "cannot read empty.extxyz: the file is empty"),
        ("cut", ["cut.extxyz"], "cannot read cut.extxyz, frame 3: "),
        (None, ["missing.extxyz"], "dataset file not found: missing.extxyz"),
        (None, ["test.extxyz", "--model", "missing.pt"], "model file not found: missing.pt"),
        ("badmodel", ["test.extxyz", "--model", "bad.pt"], "cannot load model bad.pt"),
        (None, ["test.extxyz", "--device", "tpu"], "unknown device 'tpu'"),
        (None, ["test.extxyz", "-o", "p.cif"], "predictions are written as .extxyz"),
        (
            None,
            ["test.extxyz", "--memory-budget", "-2"],
            "--memory-budget must be a positive number of GB, got -2.0",
        ),
        (
            None,
            ["test.extxyz", "--json", "no_dir_file/e.json"],
            "'no_dir_file' is a file, not a directory",
        ),
    ],
)
def test_bad_input_one_error_line(data, capsys, setup, argv, expected):
    Path("no_dir_file").write_text("")
    if setup == "empty":
        Path("empty.extxyz").write_text("")
    if setup == "cut":
        Path("cut.extxyz").write_text(Path("test.extxyz").read_text()[:-300])
    if setup == "badmodel":
        Path("bad.pt").write_text("not a model")
    if "--model" not in argv:
        argv = [*argv, "--model", _model()]
    assert main(argv) == 1
    assert expected in _error_line(capsys)


def test_memory_budget_chunks_large_structures_exactly(data, capsys, monkeypatch):
    """A budget below one structure's needs: every frame is evaluated chunk by chunk
    (energy, forces and stress of a periodic cell), with the unchunked predictions."""
    from ase.calculators.emt import EMT

    from mlip.chunked import ChunkedEvaluator

    chunks = []
    call = ChunkedEvaluator.__call__

    def counting(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        chunks.append(self.last_chunks)
        return result

    monkeypatch.setattr(ChunkedEvaluator, "__call__", counting)

    frames = []
    for seed in range(2):
        atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((4, 4, 4))
        atoms.numbers[::5] = 79
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        frames.append(atoms)
    write("big.extxyz", frames)
    assert main(["big.extxyz", "--model", _model(), "-o", "whole.extxyz"]) == 0
    assert chunks == []
    argv = ["big.extxyz", "--model", _model(), "-o", "chunked.extxyz", "--memory-budget", "0.01"]
    assert main(argv) == 0
    assert len(chunks) == 2 and min(chunks) > 1
    argv = ["big.extxyz", "--model", _model(), "--memory-budget", "1e-6"]  # not one atom
    assert main(argv) == 1
    assert "memory budget 0.00 GiB is too small" in _error_line(capsys)
    for whole, chunked in zip(read("whole.extxyz", ":"), read("chunked.extxyz", ":")):
        scale = np.abs(whole.get_forces()).max()
        np.testing.assert_allclose(chunked.get_forces(), whole.get_forces(), atol=1e-5 * scale)
        assert chunked.get_potential_energy() == pytest.approx(
            whole.get_potential_energy(), rel=1e-6
        )
        np.testing.assert_allclose(chunked.get_stress(), whole.get_stress(), atol=1e-6)


def test_stress_in_kbar_vasp_order_reads_as_ase_stress(data):
    """A kBar / VASP-order / VASP-sign copy of each stress label gives the same errors."""
    from ase.units import GPa

    frames = read("test.extxyz", ":")
    for atoms in frames:
        xx, yy, zz, yz, xz, xy = atoms.get_stress()  # ASE Voigt, eV/Å³, tensile positive
        atoms.info["virial_kbar"] = -np.array([xx, yy, zz, xy, yz, xz]) / (0.1 * GPa)
    write("kbar.extxyz", frames)
    assert main(["test.extxyz", "--model", _model(), "--json", "ase.json"]) == 0
    argv = ["kbar.extxyz", "--model", _model(), "--json", "kbar.json", "--stress-key"]
    argv += ["virial_kbar", "--stress-units", "kbar", "--stress-convention", "vasp"]
    assert main(argv) == 0
    ase_metrics = json.loads(Path("ase.json").read_text())["test.extxyz"]
    kbar_metrics = json.loads(Path("kbar.json").read_text())["kbar.extxyz"]
    assert ase_metrics["stress_rmse"] > 0
    assert kbar_metrics["stress_rmse"] == pytest.approx(ase_metrics["stress_rmse"], rel=1e-9)
    assert kbar_metrics["stress_mae"] == pytest.approx(ase_metrics["stress_mae"], rel=1e-9)
