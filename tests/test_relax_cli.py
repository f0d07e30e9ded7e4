"""End-to-end tests of ``mlip-relax`` (calculators/relax_cli.py).

Most tests run the command line in-process with ASE's EMT in place of the model
(``cli_common.make_calculator`` is monkeypatched); one test uses the real
``MLIPCalculator`` and is skipped until the calculator and a model file exist.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.io import read, write
from contract_emt import ContractEMT, export_untrained_cu_au_model

from calculators import cli_common, relax_cli


@pytest.fixture
def emt(monkeypatch):
    """Use ContractEMT as the model; records the (model, device) arguments."""
    calls = []

    def factory(model, device, head=None, memory_budget=None):
        calls.append((model, device))
        return ContractEMT()

    monkeypatch.setattr(cli_common, "make_calculator", factory)
    return calls


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A strained 4-atom Cu cell (CIF) and a 2-frame Au extxyz, in a temporary working dir."""
    monkeypatch.chdir(tmp_path)
    cu = bulk("Cu", "fcc", a=3.70, cubic=True)
    cu.positions += np.random.default_rng(0).normal(scale=0.05, size=cu.positions.shape)
    write("cu.cif", cu)
    au = bulk("Au", "fcc", a=4.00) * (2, 1, 1)
    au.positions[0] += [0.05, 0.02, 0.0]
    write("au.extxyz", [au, au])
    return tmp_path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("mlip-relax: error: ")
    return lines[0]


def test_relax_end_to_end(emt, inputs, capsys):
    argv = ["cu.cif", "*.extxyz", "--device", "cpu", "--fmax", "0.05"]
    argv += ["--summary", "s.csv", "--summary", "s.json", "--trajectory", "traj"]
    assert relax_cli.main(argv) == 0
    assert emt == [(None, "cpu")]

    out = capsys.readouterr().out
    assert "Cu4" in out and "Au2" in out and "3/3 converged" in out

    relaxed = read("relaxed.extxyz", ":")
    assert [a.get_chemical_formula() for a in relaxed] == ["Cu4", "Au2", "Au2"]
    assert relaxed[0].info["converged"]
    assert np.abs(relaxed[0].get_forces()).max() < 0.05
    assert relaxed[0].get_stress().shape == (6,)
    assert abs(relaxed[0].get_volume() / read("cu.cif").get_volume() - 1) > 0.02  # cell relaxed

    with open("s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["cu.cif", "au.extxyz", "au.extxyz"]
    assert [r["frame"] for r in rows] == ["0", "0", "1"]
    for column in ("formula", "energy_initial_eV", "energy_final_eV", "energy_per_atom_eV"):
        assert column in rows[0]
    for column in ("volume_change_percent", "steps", "converged"):
        assert column in rows[0]
    assert float(rows[0]["energy_final_eV"]) < float(rows[0]["energy_initial_eV"])
    assert float(rows[0]["volume_change_percent"]) < 0  # a = 3.70 Å is larger than EMT's
    assert all(r["converged"] == "True" for r in rows)

    summary = json.loads(Path("s.json").read_text())
    assert summary["settings"]["optimizer"] == "fire"
    assert [s["formula"] for s in summary["structures"]] == ["Cu4", "Au2", "Au2"]
    assert summary["structures"][0]["energy_final_eV"] == pytest.approx(
        relaxed[0].get_potential_energy()
    )
    trajectories = sorted(p.name for p in Path("traj").iterdir())
    assert trajectories == ["0000_cu_0.extxyz", "0001_au_0.extxyz", "0002_au_1.extxyz"]
    steps = summary["structures"][0]["steps"]
    assert len(read("traj/0000_cu_0.extxyz", ":")) == steps + 1


def test_cif_output_no_cell_and_bfgs(emt, inputs):
    assert relax_cli.main(["cu.cif", "--no-cell", "--optimizer", "bfgs", "-o", "out.cif"]) == 0
    relaxed = read("out.cif")
    assert relaxed.get_volume() == pytest.approx(read("cu.cif").get_volume())


def test_pressure_and_fix_symmetry(emt, inputs):
    write("cu_sym.cif", bulk("Cu", "fcc", a=3.62, cubic=True))
    argv = ["cu_sym.cif", "--fix-symmetry", "--optimizer", "lbfgs", "--overwrite"]
    assert relax_cli.main([*argv, "-o", "p0.extxyz"]) == 0
    assert relax_cli.main([*argv, "--pressure", "20", "-o", "p20.extxyz"]) == 0
    at_0, at_20 = read("p0.extxyz"), read("p20.extxyz")
    assert at_20.get_volume() < 0.95 * at_0.get_volume()
    assert np.allclose(at_20.cell.angles(), 90.0)  # cubic symmetry kept
    pressure = -at_20.get_stress()[:3].mean() / units.GPa
    assert pressure == pytest.approx(20, abs=1)


def test_molecule_relaxes_positions_only(emt, inputs):
    write("dimer.xyz", Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.0]]))
    assert relax_cli.main(["dimer.xyz", "--summary", "m.csv"]) == 0
    with open("m.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["volume_change_percent"] == ""
    assert read("relaxed.extxyz").get_distance(0, 1) > 2.0


def test_not_converged_exit_status(emt, inputs, capsys):
    rc = relax_cli.main(["cu.cif", "--steps", "2", "--summary", "s.json"])
    assert rc == relax_cli.EXIT_NOT_CONVERGED == 2
    captured = capsys.readouterr()
    assert "NO" in captured.out and "did not converge" in captured.err
    (structure,) = json.loads(Path("s.json").read_text())["structures"]
    assert structure["converged"] is False and structure["steps"] == 2
    assert read("relaxed.extxyz").info["converged"] is False  # result still written


def test_never_overwrites(emt, inputs, capsys):
    Path("relaxed.extxyz").write_text("keep me")
    assert relax_cli.main(["cu.cif"]) == 1
    assert "already exists" in _error_line(capsys)
    assert Path("relaxed.extxyz").read_text() == "keep me"

    Path("s.csv").write_text("keep me too")
    assert relax_cli.main(["cu.cif", "-o", "new.extxyz", "--summary", "s.csv"]) == 1
    assert "s.csv" in _error_line(capsys)
    assert not Path("new.extxyz").exists()  # checked before doing anything

    assert relax_cli.main(["cu.cif", "--overwrite"]) == 0
    assert len(read("relaxed.extxyz", ":")) == 1


def _write_bad_inputs() -> None:
    Path("garbage.cif").write_text("this is not a CIF file\n")
    write("fe.cif", bulk("Fe", "bcc", a=2.87, cubic=True))
    write("dimer.xyz", Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.3]]))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["missing.cif"], "input file not found: missing.cif"),
        (["nothing*.cif"], "no input file matches"),
        (["garbage.cif"], "cannot read garbage.cif"),
        (["fe.cif"], "not in the model's species"),
        (["dimer.xyz", "--cell"], "not 3-D periodic; --cell"),
        (["dimer.xyz", "--pressure", "1"], "not 3-D periodic; --pressure"),
        (["cu.cif", "--no-cell", "--pressure", "1"], "--pressure needs cell relaxation"),
        (["cu.cif", "--bogus"], "unrecognized arguments: --bogus"),
        (["cu.cif", "--optimizer", "newton"], "invalid choice: 'newton'"),
        (["cu.cif", "--fmax", "0"], "--fmax must be positive"),
        (["cu.cif", "-o", "out.pdb"], "cannot tell the format of output"),
        (["cu.cif", "--summary", "s.txt"], "use a .csv or .json file"),
        ([], "the following arguments are required: INPUT"),
    ],
)
def test_bad_input_one_error_line(emt, inputs, capsys, argv, expected):
    _write_bad_inputs()
    assert relax_cli.main(argv) == 1
    assert expected in _error_line(capsys)
    assert not Path("relaxed.extxyz").exists()


def test_missing_model_file(inputs, capsys):
    assert relax_cli.main(["cu.cif", "--model", "no_such_model.pt"]) == 1
    assert "model file not found: no_such_model.pt" in _error_line(capsys)


def test_help_exits_zero(capsys):
    assert relax_cli.main(["--help"]) == 0
    assert "--fix-symmetry" in capsys.readouterr().out


@pytest.fixture(scope="module")
def real_model(tmp_path_factory) -> Path:
    return export_untrained_cu_au_model(tmp_path_factory.mktemp("model") / "model.pt")


def test_relax_with_real_mlip_calculator(real_model, inputs, capsys):
    cuau = bulk("Cu", "fcc", a=3.75, cubic=True)
    cuau.symbols[:2] = "Au"
    cuau.positions[0] += [0.1, 0.0, 0.05]
    write("cuau.cif", cuau)
    argv = ["cuau.cif", "--model", str(real_model), "--steps", "2", "--summary", "r.json"]
    assert relax_cli.main(argv) in (0, relax_cli.EXIT_NOT_CONVERGED)
    (structure,) = json.loads(Path("r.json").read_text())["structures"]
    assert structure["formula"] == "Au2Cu2" and structure["steps"] <= 2
    assert np.isfinite(structure["energy_final_eV"])
    assert read("relaxed.extxyz").get_stress().shape == (6,)

    # An element outside the model's species gives one error line naming the species.
    capsys.readouterr()
    write("fe.cif", bulk("Fe", "bcc", a=2.87, cubic=True))
    assert relax_cli.main(["fe.cif", "--model", str(real_model), "-o", "fe.extxyz"]) == 1
    assert "Au" in _error_line(capsys)


def test_memory_budget_reaches_the_calculator(real_model, inputs, capsys):
    """``--memory-budget`` sets the calculator's budget; one too small for one chunk of
    a single atom (next to the stored layer features), or not positive, is one error line that
    names the file, the frame and the budget."""
    write("cu.cif", bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 2, 2)))
    calcs = []
    factory = cli_common.make_calculator

    def recording(*args, **kwargs):
        calcs.append(factory(*args, **kwargs))
        return calcs[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_common, "make_calculator", recording)
        argv = ["cu.cif", "--model", str(real_model), "--steps", "1", "--overwrite"]
        assert relax_cli.main([*argv, "--memory-budget", "2.5"]) in (0, 2)
        assert calcs[-1].chunked.memory_budget == 2.5e9
        capsys.readouterr()
        assert relax_cli.main([*argv, "--memory-budget", "1e-7"]) == 1
        line = _error_line(capsys)
        assert "cu.cif (frame 0): memory budget 0.00 GiB is too small" in line
        assert "KiB per atom and layer" in line
        assert relax_cli.main([*argv, "--memory-budget", "0"]) == 1
        assert "--memory-budget must be a positive number of GB, got 0.0" in _error_line(capsys)


def test_default_model(inputs):
    cuau = Path(__file__).resolve().parents[1] / "data" / "demo" / "CuAu_rattled.cif"
    assert relax_cli.main([str(cuau), "--steps", "2"]) in (0, relax_cli.EXIT_NOT_CONVERGED)


# ----------------------------------------------------------------- issue 12: no lost work


def test_bad_frames_are_skipped_and_reported(emt, inputs, capsys):
    cu = read("cu.cif")
    fe = bulk("Fe", "bcc", a=2.87, cubic=True)
    nan = cu.copy()
    nan.positions[1, 2] = np.nan
    write("mixed.extxyz", [cu, fe, nan, cu])
    assert relax_cli.main(["mixed.extxyz", "--summary", "s.csv"]) == relax_cli.EXIT_SKIPPED == 3
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert any("mixed.extxyz (frame 1)" in w and "Fe" in w and "skipped" in w for w in warnings)
    assert any("mixed.extxyz (frame 2)" in w and "NaN" in w for w in warnings)
    assert [a.info["source_frame"] for a in read("relaxed.extxyz", ":")] == [0, 3]
    with open("s.csv") as handle:
        assert [r["frame"] for r in csv.DictReader(handle)] == ["0", "3"]


def test_outputs_are_checked_before_computing(emt, inputs, capsys):
    Path("plain_file").write_text("")
    assert relax_cli.main(["cu.cif", "--summary", "plain_file/s.csv"]) == 1
    assert (
        "cannot write output 'plain_file/s.csv': 'plain_file' is a file, not a directory"
        in _error_line(capsys)
    )
    assert emt == [] and not Path("relaxed.extxyz").exists()  # no model was even built
    assert relax_cli.main(["au.extxyz", "-o", "au.extxyz", "--overwrite"]) == 1
    assert "'au.extxyz' is also an input" in _error_line(capsys)
    assert len(read("au.extxyz", ":")) == 2


@pytest.mark.parametrize(
    ("content", "argv", "expected"),
    [
        ("", ["empty.extxyz"], "cannot read empty.extxyz: the file is empty"),
        (None, ["au.extxyz@5"], "au.extxyz@5: index out of range, the file holds 2 frame(s)"),
        (None, ["au.extxyz@1:1"], "au.extxyz@1:1 selects no frame"),
        ("truncate", ["cut.extxyz"], "cannot read cut.extxyz, frame 1 (after 1 readable"),
    ],
)
def test_unreadable_inputs_name_file_and_frame(emt, inputs, capsys, content, argv, expected):
    if content == "":
        Path("empty.extxyz").write_text("")
    if content == "truncate":
        Path("cut.extxyz").write_text(Path("au.extxyz").read_text()[:-40])
    assert relax_cli.main(argv) == 1
    line = _error_line(capsys)
    assert expected in line and "StopIteration" not in line


def test_cell_relaxation_meets_the_stress_criterion(emt, inputs, capsys):
    argv = ["cu.cif", "--fmax", "0.05", "--smax", "0.02", "--summary", "s.json"]
    assert relax_cli.main(argv) == 0
    (row,) = json.loads(Path("s.json").read_text())["structures"]
    stress = read("relaxed.extxyz").get_stress()
    assert row["max_stress_GPa"] == pytest.approx(np.abs(stress).max() / units.GPa)
    assert row["max_stress_GPa"] < 0.02 and row["max_force_eV_per_A"] < 0.05
    # loosely converged forces alone would have stopped earlier, at a larger stress
    assert relax_cli.main([*argv[:-1], "l.json", "--smax", "5", "-o", "l.extxyz"]) == 0
    (loose,) = json.loads(Path("l.json").read_text())["structures"]
    assert loose["steps"] < row["steps"]


def test_progress_lines_when_not_a_terminal(emt, inputs, capsys):
    assert relax_cli.main(["cu.cif", "--progress-every", "2", "--summary", "s.csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("[1/1] cu.cif (frame 0) Cu4: step ")]
    assert steps[0].startswith("[1/1] cu.cif (frame 0) Cu4: step 0  E = ")
    assert len(steps) >= 2 and all("fmax = " in s and "smax = " in s for s in steps)
    (done,) = [line for line in out if "converged in" in line]
    assert "GPa" in done


def test_multi_frame_cif_output_is_written_per_structure(emt, inputs):
    assert relax_cli.main(["au.extxyz", "-o", "out.cif"]) == 0
    assert len(read("out.cif", ":")) == 2


def test_ctrl_c_keeps_finished_structures(inputs):
    """SIGINT a real run after some structures: output and summaries hold exactly those."""
    import signal
    import subprocess
    import sys
    import time

    cuau = read(Path(__file__).resolve().parents[1] / "data" / "demo" / "CuAu_rattled.cif")
    write("many.extxyz", [cuau] * 2000)  # far more than can finish before the signal
    script = "import sys; from calculators.relax_cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["many.extxyz", "--steps", "15", "--fmax", "1e-9", "--summary", "s.csv"]
    argv += ["--summary", "s.json", "--progress-every", "0"]
    process = subprocess.Popen(
        [sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if Path("s.csv").exists() and len(Path("s.csv").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.decode()
    assert lines[0].startswith("mlip-relax: error: interrupted after ")
    assert "the finished ones are in relaxed.extxyz, s.csv, s.json" in lines[0]
    relaxed = read("relaxed.extxyz", ":")
    with open("s.csv") as handle:
        rows = list(csv.DictReader(handle))
    structures = json.loads(Path("s.json").read_text())["structures"]
    assert 2 <= len(relaxed) == len(rows) == len(structures) < 2000
    assert f"interrupted after {len(rows)} of 2000" in lines[0]
    assert [a.info["source_frame"] for a in relaxed] == list(range(len(rows)))


def test_json_summary_is_complete_after_many_structures(emt, inputs):
    write("many.extxyz", [read("cu.cif")] * 120)
    argv = ["many.extxyz", "--no-cell", "--steps", "1", "--progress-every", "0"]
    assert relax_cli.main([*argv, "--summary", "s.json"]) == relax_cli.EXIT_NOT_CONVERGED
    structures = json.loads(Path("s.json").read_text())["structures"]
    assert [s["frame"] for s in structures] == list(range(120))
