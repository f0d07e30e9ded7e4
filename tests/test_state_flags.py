"""``--charge``, ``--spin`` and ``--head`` of ``mlip-relax``, ``mlip-md`` and ``mlip-eval``.

Each command run with the flags gives the energies of :class:`MLIPCalculator` in the same state
and head; relax/md flags replace a file's values (with a warning), mlip-eval keeps a frame's own
state and fills only missing ones; an impossible multiplicity, an unknown head and flags for a
model that takes no charge/spin are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from charged_model import SPECIES, charged_model, water

from calculators import MLIPCalculator, md_cli, relax_cli
from mlip.export import save
from mlip.models import build_model
from training import eval_cli


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The charge/spin model with heads ``omol`` and ``mptrj``, exported."""
    return str(save(charged_model(), tmp_path_factory.mktemp("model") / "charged.pt"))


@pytest.fixture(scope="module")
def plain_model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model that takes neither charge nor spin and has no heads, exported."""
    plain = build_model(species=SPECIES, cutoff=4.0, channels=8, mixer_channels=8)
    return str(save(plain, tmp_path_factory.mktemp("plain") / "plain.pt"))


def _labelled(atoms: Atoms) -> Atoms:
    """``atoms`` with dummy energy/forces labels (mlip-eval needs a reference energy)."""
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
    return atoms


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory with ``water.extxyz``: one labelled H2O without a state."""
    monkeypatch.chdir(tmp_path)
    write("water.extxyz", _labelled(water()))
    return tmp_path


def _energy(model: str, charge: int, spin: int, head: str) -> float:
    return float(MLIPCalculator(model, head=head).get_potential_energy(water(charge, spin)))


def _relax_argv(model: str) -> list[str]:
    return ["water.extxyz", "--model", model, "--steps", "0", "--fmax", "1000"]


def _md_argv(model: str) -> list[str]:
    return ["water.extxyz", "--model", model, "--ensemble", "nve", "--temperature", "0"]


MD_RUN = ["--timestep", "0.5", "--steps", "1", "--interval", "1"]

COMMANDS = {
    "mlip-relax": (relax_cli.main, _relax_argv),
    "mlip-md": (md_cli.main, lambda model: [*_md_argv(model), *MD_RUN]),
    "mlip-eval": (eval_cli.main, lambda model: ["water.extxyz", "--model", model]),
}


def _stderr_lines(capsys: pytest.CaptureFixture[str], prog: str) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"{prog}: ") for line in lines), err
    return lines


# ---------------------------------------------------------------- energies match the calculator
def test_relax_flags_override_file_values_and_pick_the_head(model_file, workdir, capsys):
    write("in.extxyz", [water(), water(0, 1)])  # one without a state, one with another one
    argv = ["in.extxyz", "--model", model_file, "--steps", "0", "--fmax", "1000"]
    argv += ["--charge", "1", "--spin", "2", "--head", "mptrj", "--summary", "s.json"]
    assert relax_cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "--charge 1 replaces a different total charge in 1 structure(s)" in err
    assert "--spin 2 replaces a different spin multiplicity in 1 structure(s)" in err
    expected = _energy(model_file, 1, 2, "mptrj")
    assert abs(expected - _energy(model_file, 0, 1, "mptrj")) > 1e-4  # the state matters
    assert abs(expected - _energy(model_file, 1, 2, "omol")) > 1e-4  # the head matters
    summary = json.loads(Path("s.json").read_text())
    assert summary["settings"]["head"] == "mptrj"
    for row in summary["structures"]:
        assert row["energy_initial_eV"] == pytest.approx(expected, abs=1e-9)
    for atoms in read("relaxed.extxyz", ":"):  # the output records the state used
        assert (atoms.info["charge"], atoms.info["spin"]) == (1, 2)


def test_relax_without_flags_uses_file_state_or_warned_default(model_file, workdir, capsys):
    write("in.extxyz", [water(), water(-1, 2)])
    argv = ["in.extxyz", "--model", model_file, "--steps", "0", "--fmax", "1000"]
    assert relax_cli.main([*argv, "--summary", "s.json"]) == 0
    charge, spin = capsys.readouterr().err.strip().splitlines()
    assert "1 structure(s) have no total charge" in charge and "assuming 0" in charge
    assert "1 structure(s) have no spin multiplicity" in spin and "assuming 1" in spin
    rows = json.loads(Path("s.json").read_text())["structures"]
    assert rows[0]["energy_initial_eV"] == pytest.approx(_energy(model_file, 0, 1, "omol"))
    assert rows[1]["energy_initial_eV"] == pytest.approx(_energy(model_file, -1, 2, "omol"))


def test_md_flags_give_the_calculator_energy(model_file, workdir, capsys):
    argv = [*_md_argv(model_file), *MD_RUN, "--charge", "-1", "--spin", "2", "--head", "mptrj"]
    assert md_cli.main(argv) == 0
    assert capsys.readouterr().err == ""  # flags given: nothing assumed, nothing replaced
    first = read("md.extxyz", 0)
    assert first.info["step"] == 0
    assert (first.info["charge"], first.info["spin"]) == (-1, 2)
    expected = _energy(model_file, -1, 2, "mptrj")
    assert first.get_potential_energy() == pytest.approx(expected, abs=1e-9)
    assert abs(expected - _energy(model_file, 0, 1, "mptrj")) > 1e-4


def test_eval_keeps_frame_states_and_fills_missing_ones(model_file, workdir, capsys):
    write("data.extxyz", [_labelled(water()), _labelled(water(1, 2)), _labelled(water(-1, 2))])
    argv = ["data.extxyz", "--model", model_file, "--charge", "1", "--spin", "2"]
    assert eval_cli.main([*argv, "--head", "mptrj", "-o", "preds.extxyz"]) == 0
    err = capsys.readouterr().err
    assert "--charge 1 is not applied to 1 structure(s) with their own total charge" in err
    predictions = read("preds.extxyz", ":")
    for atoms, (charge, spin) in zip(predictions, [(1, 2), (1, 2), (-1, 2)], strict=True):
        assert (atoms.info["charge"], atoms.info["spin"]) == (charge, spin)
        expected = _energy(model_file, charge, spin, "mptrj")
        assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_impossible_multiplicity_is_refused_naming_both(prog, model_file, workdir, capsys):
    main, base = COMMANDS[prog]
    assert main([*base(model_file), "--spin", "2"]) != 0
    lines = _stderr_lines(capsys, prog)
    assert any("multiplicity 2 is impossible with total charge 0" in line for line in lines)
    assert lines[-1].startswith(f"{prog}: error: ")


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_unknown_head_lists_the_model_heads(prog, model_file, workdir, capsys):
    main, base = COMMANDS[prog]
    assert main([*base(model_file), "--head", "pbe"]) == 1
    (line,) = _stderr_lines(capsys, prog)
    assert line.startswith(f"{prog}: error: unknown --head 'pbe'")
    assert line.endswith("has the heads omol, mptrj")


@pytest.mark.parametrize("prog", sorted(COMMANDS))
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--charge", "1"], "--charge 1 given, but model"),
        (["--spin", "1"], "--spin 1 given, but model"),
        (["--head", "omol"], "--head 'omol' given, but model"),
    ],
)
def test_flags_for_a_model_without_them_are_an_error(
    prog, flags, message, plain_model_file, workdir, capsys
):
    main, base = COMMANDS[prog]
    assert main([*base(plain_model_file), *flags]) == 1
    (line,) = _stderr_lines(capsys, prog)
    assert message in line
    assert main(base(plain_model_file) + ["--overwrite"] * (prog != "mlip-eval")) == 0


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_charge_outside_the_model_range_is_one_line(prog, model_file, workdir, capsys):
    """The model's own check (raised inside TorchScript) reaches the user as one line."""
    main, base = COMMANDS[prog]
    assert main([*base(model_file), "--charge", "-12", "--spin", "1"]) == 1
    lines = _stderr_lines(capsys, prog)
    assert lines[-1].startswith(f"{prog}: error: water.extxyz")
    assert "charge must be an integer in [-10, 10] for this model, got -12" in lines[-1]
