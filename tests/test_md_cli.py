"""End-to-end tests of ``mlip-md`` (calculators/md_cli.py).

Most tests use ASE's EMT in place of the model (``cli_common.make_calculator`` is
monkeypatched); one test uses the real ``MLIPCalculator`` and is skipped until the
calculator and a model file exist.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from contract_emt import ContractEMT, export_untrained_cu_au_model

from calculators import cli_common, md_cli

COLUMNS = ["step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]


@pytest.fixture
def emt(monkeypatch):
    monkeypatch.setattr(cli_common, "make_calculator", lambda *args, **kwargs: ContractEMT())


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """4-atom CuAu cell (CIF), a 4-atom Cu cluster (xyz) and a 2-frame file."""
    monkeypatch.chdir(tmp_path)
    cell = bulk("Cu", "fcc", a=3.75, cubic=True)
    cell.symbols[0] = "Au"
    write("cuau.cif", cell)
    write("cluster.xyz", Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]]))
    write("two.extxyz", [cell, cell])
    return tmp_path


def _read_log(path: str = "md.csv") -> tuple[list[str], np.ndarray]:
    with open(path) as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("mlip-md: error: ")
    return lines[0]


BASE = ["--temperature", "300", "--timestep", "2", "--steps", "10", "--interval", "5"]


@pytest.mark.parametrize(
    "options",
    [
        ["--ensemble", "nve"],
        ["--ensemble", "nvt", "--friction", "0.05"],
        ["--ensemble", "nvt", "--thermostat", "nose-hoover"],
        ["--ensemble", "npt", "--pressure", "1.0", "--barostat", "iso"],
        ["--ensemble", "npt", "--thermostat", "nose-hoover", "--barostat", "full"],
    ],
    ids=["nve", "nvt-langevin", "nvt-nose-hoover", "npt-langevin-iso", "npt-nose-hoover-full"],
)
def test_md_ensembles(emt, inputs, capsys, options):
    assert md_cli.main(["cuau.cif", *BASE, *options]) == 0
    header, data = _read_log()
    assert header == [*COLUMNS, "pressure_GPa", "volume_A3"]
    assert data[:, 0].tolist() == [0, 5, 10]
    assert data[:, 1].tolist() == [0, 10, 20]
    assert np.allclose(data[:, 4], data[:, 2] + data[:, 3])
    assert np.all(data[:, 5] > 0) and np.all(data[:, 7] > 0)
    frames = read("md.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10]
    assert frames[-1].get_forces().shape == (4, 3)
    assert Path("md.png").stat().st_size > 1000
    assert "ns/day" in capsys.readouterr().out
    if options[1] == "nve" or options[1] == "nvt":
        assert np.allclose(data[:, 7], read("cuau.cif").get_volume())


def test_nve_conserves_energy_and_seed_reproducible(emt, inputs):
    argv = ["cuau.cif", "--ensemble", "nve", "--temperature", "500", "--timestep", "1"]
    argv += ["--steps", "40", "--interval", "10", "--overwrite"]
    assert md_cli.main([*argv, "--seed", "7"]) == 0
    _, first = _read_log()
    assert np.ptp(first[:, 4]) < 2e-3 * len(read("cuau.cif"))  # eV
    assert md_cli.main([*argv, "--seed", "7"]) == 0
    assert np.array_equal(_read_log()[1], first)
    assert md_cli.main([*argv, "--seed", "8"]) == 0
    assert not np.array_equal(_read_log()[1], first)


def test_non_periodic_log_has_no_pressure_and_last_step_logged(emt, inputs):
    argv = ["cluster.xyz", "--ensemble", "nvt", "--temperature", "300", "--timestep", "1"]
    argv += ["--steps", "7", "--interval", "5", "--log", "out/cluster.csv", "-o", "out/c.xyz"]
    assert md_cli.main(argv) == 0
    header, data = _read_log("out/cluster.csv")
    assert header == COLUMNS
    assert data[:, 0].tolist() == [0, 5, 7]
    assert Path("out/cluster.png").exists()
    assert len(read("out/c.xyz", ":")) == 3


def test_frame_selection(emt, inputs):
    argv = ["two.extxyz@-1", "--ensemble", "nve", "--temperature", "0", "--timestep", "1"]
    assert md_cli.main([*argv, "--steps", "2"]) == 0
    _, data = _read_log()
    assert data[0, 3] == 0.0  # zero temperature: no initial velocities


def test_never_overwrites(emt, inputs, capsys):
    Path("md.csv").write_text("keep me")
    assert md_cli.main(["cuau.cif", "--ensemble", "nve", *BASE]) == 1
    assert "'md.csv' already exists" in _error_line(capsys)
    assert Path("md.csv").read_text() == "keep me"
    assert not Path("md.extxyz").exists()
    assert md_cli.main(["cuau.cif", "--ensemble", "nve", *BASE, "--overwrite"]) == 0
    assert _read_log()[1].shape[0] == 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["missing.cif", "--ensemble", "nve", *BASE], "input file not found: missing.cif"),
        (["two.extxyz", "--ensemble", "nve", *BASE], "holds 2 structures; choose one"),
        (["bad.cif", "--ensemble", "nve", *BASE], "cannot read bad.cif"),
        (["fe.cif", "--ensemble", "nve", *BASE], "not in the model's species"),
        (["cluster.xyz", "--ensemble", "npt", *BASE], "not 3-D periodic; --ensemble npt"),
        (["cuau.cif", "--ensemble", "nvt", "--pressure", "1", *BASE], "--pressure needs"),
        (["cuau.cif", "--ensemble", "nve", "--thermostat", "langevin", *BASE], "no effect"),
        (["cuau.cif", "--ensemble", "muvt", *BASE], "invalid choice: 'muvt'"),
        (["cuau.cif", *BASE], "the following arguments are required: --ensemble"),
        (["cuau.cif", "--ensemble", "nve", *BASE, "--bogus"], "unrecognized arguments"),
        (["cuau.cif", "--ensemble", "nve", *BASE, "--timestep", "-1"], "--timestep must"),
        (["cuau.cif", "--ensemble", "nvt", *BASE, "--temperature", "0"], "positive --temp"),
        (["cuau.cif", "--ensemble", "nve", *BASE, "-o", "t.cif"], "cannot tell the format"),
        (["cuau.cif", "--ensemble", "nve", *BASE, "--device", "tpu"], "unknown device"),
    ],
)
def test_bad_input_one_error_line(inputs, capsys, monkeypatch, argv, expected):
    if "--device" not in argv:  # the device is checked by the real factory
        monkeypatch.setattr(cli_common, "make_calculator", lambda *args, **kwargs: ContractEMT())
    Path("bad.cif").write_text("data_broken\n_cell_length_a oops\n")
    write("fe.cif", bulk("Fe", "bcc", a=2.87, cubic=True))
    if "--device" in argv:
        Path("m.pt").write_text("")
        argv = [*argv, "--model", "m.pt"]
    assert md_cli.main(argv) == 1
    assert expected in _error_line(capsys)
    assert not Path("md.csv").exists()


def test_missing_default_model_is_clear(inputs, capsys, monkeypatch):
    import calculators.defaults as defaults

    def missing():
        raise FileNotFoundError("built-in default model not found at /x/model.pt")

    monkeypatch.setattr(defaults, "default_model_path", missing)
    assert md_cli.main(["cuau.cif", "--ensemble", "nve", *BASE]) == 1
    assert "built-in default model not found" in _error_line(capsys)


@pytest.fixture(scope="module")
def real_model(tmp_path_factory) -> Path:
    return export_untrained_cu_au_model(tmp_path_factory.mktemp("model") / "model.pt")


def test_md_with_real_mlip_calculator(real_model, inputs, capsys):
    argv = ["cuau.cif", "--ensemble", "nvt", "--temperature", "300", "--timestep", "2"]
    assert md_cli.main([*argv, "--steps", "2", "--interval", "1", "--model", str(real_model)]) == 0
    header, data = _read_log()
    assert header == [*COLUMNS, "pressure_GPa", "volume_A3"]
    assert data.shape == (3, 8) and np.all(np.isfinite(data))

    capsys.readouterr()
    write("fe.cif", bulk("Fe", "bcc", a=2.87, cubic=True))
    argv = ["fe.cif", "--ensemble", "nve", *BASE, "--model", str(real_model), "--overwrite"]
    assert md_cli.main(argv) == 1
    assert "Au" in _error_line(capsys)


def test_default_model(inputs):
    argv = ["cuau.cif", "--ensemble", "nve", "--temperature", "300", "--timestep", "1"]
    assert md_cli.main([*argv, "--steps", "2"]) == 0


# ------------------------------------------------- issue 12: blown-up runs, progress, inputs


def test_blown_up_nve_exits_1_and_keeps_written_frames(emt, inputs, capsys):
    argv = ["cuau.cif", "--ensemble", "nve", "--temperature", "300", "--timestep", "50"]
    assert md_cli.main([*argv, "--steps", "200", "--interval", "1"]) == 1
    line = _error_line(capsys)
    assert "simulation blew up at step " in line and "total energy drifted" in line
    assert "try a smaller --timestep (now 50 fs)" in line
    blown_at = int(line.split("blew up at step ")[1].split()[0])
    _, data = _read_log()
    frames = read("md.extxyz", ":")
    assert f"the {len(frames)} frame(s) written before are kept" in line
    assert [f.info["step"] for f in frames] == data[:, 0].tolist() == list(range(blown_at))
    assert np.all(np.isfinite(data)) and Path("md.png").is_file()


def test_stability_guard_flags_temperature_and_non_finite_values(inputs):
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    atoms = read("cuau.cif")
    atoms.calc = EMT()
    guard = md_cli.StabilityGuard(VelocityVerlet(atoms, 1.0), atoms, "nvt", 300.0, 1.0)
    assert guard.problem() is None
    assert md_cli.temperature_limit(300.0) == 3500.0
    atoms.set_momenta(np.full((4, 3), 5.0))  # ~1e5 K
    assert "(limit 3500 K)" in guard.problem()
    atoms.positions[0, 0] = np.nan
    assert guard.problem() == "non-finite positions"


def test_progress_lines_when_not_a_terminal(emt, inputs, capsys):
    argv = ["cuau.cif", "--ensemble", "nvt", "--temperature", "300", "--timestep", "2"]
    assert md_cli.main([*argv, "--steps", "40", "--interval", "1"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("mlip-md: step ")]
    assert lines[0].startswith("mlip-md: step 0/40  t = 0 fs  T = ")
    assert lines[-1].startswith("mlip-md: step 40/40  t = 80 fs")
    assert len(lines) == 21 and all("E_tot = " in x and " GPa" in x for x in lines)


def test_output_equal_to_input_and_bad_frames_are_refused(emt, inputs, capsys):
    argv = ["--ensemble", "nve", *BASE, "--overwrite"]
    assert md_cli.main(["two.extxyz@0", *argv, "-o", "two.extxyz"]) == 1
    assert "'two.extxyz' is also an input" in _error_line(capsys)
    assert len(read("two.extxyz", ":")) == 2
    assert md_cli.main(["two.extxyz@7", *argv]) == 1
    assert "two.extxyz@7: index out of range, the file holds 2 frame(s)" in _error_line(capsys)
    nan = read("cuau.cif")
    nan.positions[2, 1] = np.inf
    write("nan.extxyz", nan)
    assert md_cli.main(["nan.extxyz", *argv]) == 1
    assert "nan.extxyz (frame 0): positions contain NaN or inf (atoms [2])" in _error_line(capsys)


def test_ctrl_c_keeps_written_frames(inputs, capsys, monkeypatch):
    class InterruptedEMT(ContractEMT):
        calls = 0

        def calculate(self, *args, **kwargs):
            InterruptedEMT.calls += 1
            if InterruptedEMT.calls == 13:  # as if Ctrl-C were pressed during step 12
                raise KeyboardInterrupt
            super().calculate(*args, **kwargs)

    monkeypatch.setattr(cli_common, "make_calculator", lambda *args, **kwargs: InterruptedEMT())
    argv = ["cuau.cif", "--ensemble", "nvt", "--temperature", "300", "--timestep", "2"]
    assert md_cli.main([*argv, "--steps", "100", "--interval", "5"]) == 130
    line = _error_line(capsys)
    assert line.startswith("mlip-md: error: interrupted at step ")
    frames = read("md.extxyz", ":")
    assert f"the {len(frames)} frame(s) written before are kept in md.extxyz and md.csv" in line
    assert [f.info["step"] for f in frames] == _read_log()[1][:, 0].tolist() == [0, 5, 10]
