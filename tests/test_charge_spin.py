"""Charge, spin and heads end to end: parity rule, export metadata, calculator, .aselmdb data."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from charged_model import HEADS, SPECIES, charged_model, water

from calculators import MLIPCalculator
from mlip.electronic import charge_and_spin, check_multiplicity
from mlip.export import load, save
from mlip.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(charged_model(), tmp_path_factory.mktemp("model") / "charged.pt")


# ------------------------------------------------------------------ parity rule
@pytest.mark.parametrize(
    "symbols, charge, spin",
    [("H2O", 0, 1), ("H2O", 0, 3), ("H2O", 1, 2), ("OH", 0, 2), ("OH", -1, 1), ("O2", -1, 2)],
)
def test_possible_multiplicities(symbols: str, charge: int, spin: int) -> None:
    check_multiplicity(molecule(symbols).numbers, charge, spin)


@pytest.mark.parametrize(
    "symbols, charge, spin",
    [("H2O", 0, 2), ("H2O", 1, 1), ("OH", 0, 1), ("O2", -1, 3), ("H2", 0, 5), ("H2", 0, 0)],
)
def test_impossible_multiplicities_name_both(symbols: str, charge: int, spin: int) -> None:
    with pytest.raises(ValueError, match=f"multiplicity.*{spin}"):
        check_multiplicity(molecule(symbols).numbers, charge, spin)
    if spin >= 1:
        with pytest.raises(ValueError, match=f"charge {charge}"):
            check_multiplicity(molecule(symbols).numbers, charge, spin)


def test_charge_and_spin_defaults_warn_and_reject_fractions() -> None:
    with pytest.warns(UserWarning, match="'charge'"):
        assert charge_and_spin([8, 1, 1], {"spin": 1}) == (0, 1)
    with pytest.raises(ValueError, match="no total charge"):
        charge_and_spin([8, 1, 1], {}, default_charge=None)
    with pytest.raises(ValueError, match="integer"):
        charge_and_spin([8, 1, 1], {"charge": 0.5, "spin": 1})


# ------------------------------------------------------------------ export
def test_export_records_inputs_and_heads(model_file: Path, tmp_path: Path) -> None:
    _, metadata = load(model_file)
    assert metadata["inputs"] == ["charge", "spin"]
    assert metadata["heads"] == HEADS
    plain = build_model(species=SPECIES, cutoff=4.0, channels=8, mixer_channels=8)
    _, plain_metadata = load(save(plain, tmp_path / "plain.pt"))
    assert plain_metadata["inputs"] == [] and plain_metadata["heads"] == []


# ------------------------------------------------------------------ calculator
def test_calculator_states_and_heads(model_file: Path) -> None:
    calc = MLIPCalculator(model_file)
    assert calc.head == "omol"
    atoms = water(0, 1)
    atoms.calc = calc
    neutral = atoms.get_potential_energy()
    atoms.info.update(charge=1, spin=2)  # an info change alone must trigger a new calculation
    cation = atoms.get_potential_energy()
    assert abs(cation - neutral) > 1e-6
    bare = water()
    bare.calc = calc
    with pytest.warns(UserWarning, match="assuming"):
        assert bare.get_potential_energy() == pytest.approx(neutral, abs=1e-10)
    other = MLIPCalculator(model_file, head="mptrj")
    assert abs(other.get_potential_energy(water(0, 1)) - neutral) > 1e-6
    batch = calc.calculate_batch([water(0, 1), water(1, 2), water(-1, 2)], batch_size=2)
    assert batch[0]["energy"] == pytest.approx(neutral, abs=1e-9)
    assert batch[1]["energy"] == pytest.approx(cation, abs=1e-9)
    np.testing.assert_allclose(batch[1]["forces"], atoms.get_forces(), atol=1e-9)


def test_calculator_bad_states_and_heads(model_file: Path) -> None:
    calc = MLIPCalculator(model_file)
    with pytest.raises(ValueError, match="multiplicity 2.*charge 0"):
        calc.get_potential_energy(water(0, 2))
    with pytest.raises(ValueError, match=r"structure 1: .*multiplicity 1"):
        calc.calculate_batch([water(0, 1), water(1, 1)])
    with pytest.raises(ValueError, match=r"unknown head 'pbe'.*\['omol', 'mptrj'\]"):
        MLIPCalculator(model_file, head="pbe")


def test_plain_model_needs_no_state(tmp_path: Path) -> None:
    plain = build_model(species=SPECIES, cutoff=4.0, channels=8, mixer_channels=8)
    calc = MLIPCalculator(save(plain, tmp_path / "plain.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calc.get_potential_energy(water())
    with pytest.raises(ValueError, match="no heads"):
        MLIPCalculator(tmp_path / "plain.pt", head="omol")


# ------------------------------------------------------------------ data
def _data_script():
    spec = importlib.util.spec_from_file_location(
        "make_charged_data", ROOT / "scripts" / "make_charged_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aselmdb_conversion_keeps_charge_and_spin(tmp_path: Path) -> None:
    pytest.importorskip("ase_db_backends", reason="needs the omol extra")
    from training.data.readers import read_frames

    rng = np.random.default_rng(0)
    frames = []
    for index, (charge, spin) in enumerate([(0, 2), (-1, 1), (1, 1)]):
        atoms = molecule("CH3")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.info.update(charge=charge, spin=spin, config_type="CH3", geometry=index)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-1080.0 + index, forces=rng.normal(size=(4, 3))
        )
        frames.append(atoms)
    write(tmp_path / "x.extxyz", frames, format="extxyz")
    target = tmp_path / "x.aselmdb"
    assert _data_script().to_aselmdb(tmp_path / "x.extxyz", target) == 3
    read = read_frames(target)
    assert [f.charge for f in read] == [0.0, -1.0, 1.0]
    assert [f.spin for f in read] == [2.0, 1.0, 1.0]
    for frame, atoms in zip(read, frames):
        assert frame.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(frame.forces, atoms.get_forces(), atol=1e-9)
    with pytest.raises(FileExistsError):
        _data_script().to_aselmdb(tmp_path / "x.extxyz", target)


def test_shipped_charged_data_has_every_state_of_every_geometry() -> None:
    from ase.io import read

    frames = read(ROOT / "data" / "charged" / "charged.extxyz", index=":")
    states = _data_script().STATES
    by_geometry: dict[int, list] = {}
    for atoms in frames:
        by_geometry.setdefault(int(atoms.info["geometry"]), []).append(atoms)
        check_multiplicity(atoms.numbers, atoms.info["charge"], atoms.info["spin"])
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (len(atoms), 3)
    assert len(frames) == 560
    for members in by_geometry.values():
        name = members[0].info["config_type"]
        assert [(a.info["charge"], a.info["spin"]) for a in members] == states[name][1]
        for atoms in members[1:]:
            np.testing.assert_array_equal(atoms.positions, members[0].positions)


def test_parity_rule_is_for_finite_systems_only() -> None:
    """29 electrons cannot be a singlet molecule, but a Cu cell may carry multiplicity 1."""
    from mlip.electronic import check_multiplicity

    with pytest.raises(ValueError, match="impossible"):
        check_multiplicity([29], 0, 1)
    check_multiplicity([29], 0, 1, periodic=True)
    with pytest.raises(ValueError, match=">= 1"):
        check_multiplicity([29], 0, 0, periodic=True)


def test_omol25_road_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OMol25 road on the shipped charged set, through the command lines: an ``.aselmdb``
    with charge and spin in each row's ``data`` -> ``mlip-data convert`` -> ``mlip-train`` with
    ``model.charge_spin: true`` -> ``mlip-export`` -> calculator and ``mlip-eval``."""
    pytest.importorskip("ase_db_backends", reason="needs the omol extra")
    import yaml
    from ase.io import read

    from training import data_cli, eval_cli, export_cli, train_cli
    from training.data.readers import read_frames

    monkeypatch.chdir(tmp_path)
    frames = read(ROOT / "data" / "charged" / "charged.extxyz", index=":40")
    write("subset.extxyz", frames)
    assert _data_script().to_aselmdb("subset.extxyz", "omol.aselmdb") == 40
    assert data_cli.main(["convert", "omol.aselmdb", "-o", "omol.h5"]) == 0
    config = {
        "data": {"train": "omol.h5", "valid": 0.2},
        "model": {
            "cutoff": 4.0,
            "hyper": {"channels": 8, "mixer_channels": 8, "num_layers": 1, "charge_spin": True},
        },
        "train": {"max_epochs": 2, "batch": {"size": 8}, "dtype": "float64", "num_threads": 1},
        "output_dir": "run",
    }
    Path("omol.yaml").write_text(yaml.safe_dump(config))
    assert train_cli.main(["omol.yaml", "train.progress_bar=false"]) == 0
    assert export_cli.main(["run/checkpoint.pt", "-o", "omol.pt"]) == 0
    metadata = load("omol.pt")[1]
    assert metadata["inputs"] == ["charge", "spin"]
    assert metadata["input_ranges"] == {"charge": [-10, 10], "spin": [1, 11]}
    trained = metadata["info"]["trained_states"]  # the states of the training split
    assert set(trained["charge"]) <= {int(a.info["charge"]) for a in frames}
    assert set(trained["spin"]) <= {int(a.info["spin"]) for a in frames}
    assert len(trained["charge"]) > 1 and len(trained["spin"]) > 1

    # calculator on the rows as OMol25 users read them: charge and spin from the row data
    rows = read_frames(Path("omol.aselmdb"))
    calc = MLIPCalculator("omol.pt")
    predicted = []
    for row, atoms in zip(rows, frames):
        atoms = atoms.copy()
        atoms.info = {"charge": int(row.charge), "spin": int(row.spin)}
        atoms.calc = calc
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "charge/spin missing" default
            predicted.append(atoms.get_potential_energy())
    # mlip-eval reads the same rows and predicts the same energies
    assert eval_cli.main(["omol.aselmdb", "--model", "omol.pt", "-o", "preds.extxyz"]) == 0
    evaluated = [a.get_potential_energy() for a in read("preds.extxyz", index=":")]
    np.testing.assert_allclose(evaluated, predicted, rtol=1e-9, atol=1e-9)
    # the states of one geometry get different energies: the model sees charge and spin
    geometry = [(a.info["config_type"], a.info["geometry"]) for a in frames]
    same = [i for i in range(1, 40) if geometry[i] == geometry[0]]
    assert same and all(abs(predicted[i] - predicted[0]) > 1e-6 for i in same)

    # a charge no training frame had: predicted, with a warning that its embedding is untrained
    dication = frames[0].copy()  # H2O2+: 8 electrons, singlet
    dication.info = {"charge": 2, "spin": 1}
    dication.calc = calc
    assert 2 not in trained["charge"]
    with pytest.warns(UserWarning, match=r"total charge 2 was never seen in training \(seen: "):
        dication.get_potential_energy()
