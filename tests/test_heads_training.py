"""Training with charge/spin and level-of-theory heads: readers' checks, data.sources, per-head
statistics, and a two-head run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from test_trainer import TINY_MODEL

from training.config import ConfigError, config_from_dict
from training.data.datasets import ConcatGraphDataset, GraphDataset
from training.data.frames import InvalidFrameError
from training.data.prepare import prepare_data
from training.distributed import DistInfo
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CHARGED = ROOT / "data" / "charged" / "charged.extxyz"


def _copper(path: Path, n: int, seed: int) -> Path:
    """``n`` rattled 4-atom fcc Cu cells with EMT energies and forces (no charge, no spin)."""
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed + i)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    write(path, frames)
    return path


def _charged(path: Path, start: int, stop: int) -> Path:
    write(path, read(CHARGED, index=f"{start}:{stop}"))
    return path


def _config(tmp_path: Path, data: dict, **hyper) -> object:
    return config_from_dict(
        {
            "data": data,
            "model": {"cutoff": 3.5, "hyper": {**TINY_MODEL, **hyper}},
            "train": {
                "max_epochs": 1,
                "batch": {"size": 4},
                "dtype": "float64",
                "num_threads": 1,
                "progress_bar": False,
            },
            "output_dir": str(tmp_path / "run"),
        }
    )


# ------------------------------------------------------------------ configuration
def test_unknown_head_lists_the_model_heads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.sources\[1\].head: unknown head 'c'.*a, b"):
        _config(
            tmp_path,
            {"sources": [{"train": "x.xyz", "head": "a"}, {"train": "y.xyz", "head": "c"}]},
            heads=["a", "b"],
        )
    with pytest.raises(ConfigError, match="data.head: 'a' given, but the model has no heads"):
        _config(tmp_path, {"train": "x.xyz", "head": "a"})
    with pytest.raises(ConfigError, match=r"data.sources\[0\].num_workers"):
        _config(tmp_path, {"sources": [{"train": "x.xyz", "num_workers": 0}]})
    with pytest.raises(ConfigError, match=r"data.sources\[0\].energy_kye: unknown key"):
        _config(tmp_path, {"sources": [{"train": "x.xyz", "energy_kye": "e"}]})


# ------------------------------------------------------------------ charge and spin
def test_missing_charge_names_file_frame_and_field(tmp_path: Path) -> None:
    copper = _copper(tmp_path / "cu.extxyz", 4, seed=0)
    config = _config(tmp_path, {"train": str(copper), "valid": 0.25}, charge_spin=True)
    with pytest.raises(InvalidFrameError, match=r"cu.extxyz: frame \d+: field 'charge'.*default_c"):
        prepare_data(config, DistInfo())
    # with the defaults every frame gets them (and 4 Cu atoms are a possible singlet)
    config = _config(
        tmp_path,
        {"train": str(copper), "valid": 0.25, "default_charge": 0, "default_spin": 1},
        charge_spin=True,
    )
    data = prepare_data(config, DistInfo())
    graph = data.train[0]
    assert float(graph.charge) == 0.0 and float(graph.spin) == 1.0
    # a model without charge_spin needs neither
    data = prepare_data(_config(tmp_path, {"train": str(copper), "valid": 0.25}), DistInfo())
    assert data.train[0].charge is None


def test_impossible_multiplicity_names_charge_and_multiplicity(tmp_path: Path) -> None:
    frames = read(CHARGED, index=":4")
    frames[2].info["spin"] = frames[2].info["spin"] + 1  # wrong parity
    path = tmp_path / "bad.extxyz"
    write(path, frames)
    config = _config(tmp_path, {"train": str(path), "valid": 0.25}, charge_spin=True)
    charge, spin = frames[2].info["charge"], frames[2].info["spin"]
    pattern = rf"bad.extxyz: frame 2: field 'spin'.*multiplicity {spin} .*charge {charge}"
    with pytest.raises(InvalidFrameError, match=pattern):
        prepare_data(config, DistInfo())


def test_parity_rule_skips_periodic_cells(tmp_path: Path) -> None:
    """An odd electron count per cell with default_spin 1 is no error for a 3-D periodic
    cell (MPtrj-style data), while the same default on an odd-electron molecule is refused."""
    cells = []
    for i in range(4):  # Cu (Z = 29): one atom per cell gives 29 electrons
        atoms = bulk("Cu", "fcc", a=3.6)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        cells.append(atoms)
    periodic = tmp_path / "cells.extxyz"
    write(periodic, cells)
    data = {"train": str(periodic), "valid": 0.25, "default_charge": 0, "default_spin": 1}
    prepare_data(_config(tmp_path, data, charge_spin=True), DistInfo())
    molecules = [atoms.copy() for atoms in cells]
    for atoms in molecules:
        atoms.pbc = False
        atoms.calc = EMT()
        atoms.get_forces()
    finite = tmp_path / "molecules.extxyz"
    write(finite, molecules)
    data = {**data, "train": str(finite)}
    with pytest.raises(InvalidFrameError, match="impossible multiplicity"):
        prepare_data(_config(tmp_path, data, charge_spin=True), DistInfo())


def test_charge_and_spin_keys(tmp_path: Path) -> None:
    frames = read(CHARGED, index=":4")
    for atoms in frames:
        atoms.info["q"] = atoms.info.pop("charge")
        atoms.info["mult"] = atoms.info.pop("spin")
    path = tmp_path / "keys.extxyz"
    write(path, frames)
    data = {"train": str(path), "valid": 0.25, "charge_key": "q", "spin_key": "mult"}
    loaded = prepare_data(_config(tmp_path, data, charge_spin=True), DistInfo())
    states = {(float(g.charge), float(g.spin)) for g in (loaded.train[i] for i in range(3))}
    expected = {(float(a.info["q"]), float(a.info["mult"])) for a in frames}
    assert states <= expected


# ------------------------------------------------------------------ sources and heads
def test_concatenated_dataset_indexes_its_parts(tmp_path: Path) -> None:
    from training.data.readers import read_frames

    copper = read_frames(_copper(tmp_path / "cu.extxyz", 3, seed=0))
    molecules = read_frames(_charged(tmp_path / "mol.extxyz", 0, 2))
    parts = [
        GraphDataset(copper, 3.0, [2, 0], values={"head": 0}),
        GraphDataset(molecules, 3.0, None, values={"head": 1}),
    ]
    both = ConcatGraphDataset(parts)
    assert len(both) == 4
    assert both.n_atoms.tolist() == [4, 4] + [m.n_atoms for m in molecules]
    assert [int(both[i].head) for i in range(4)] == [0, 0, 1, 1]
    np.testing.assert_array_equal(both.frame(1).positions, copper[0].positions)
    np.testing.assert_array_equal(both.frame(3).positions, molecules[1].positions)
    with pytest.raises(IndexError):
        both.frame(4)


def test_two_heads_train_end_to_end(tmp_path: Path) -> None:
    import mlip.export
    from training.checkpoint import load_checkpoint

    copper = _copper(tmp_path / "cu.extxyz", 6, seed=0)
    copper_valid = _copper(tmp_path / "cu_valid.extxyz", 2, seed=50)
    molecules = _charged(tmp_path / "mol.extxyz", 0, 16)
    molecules_valid = _charged(tmp_path / "mol_valid.extxyz", 16, 20)
    sources = [
        {
            "train": str(copper),
            "valid": str(copper_valid),
            "head": "a",
            "default_charge": 0,
            "default_spin": 1,
        },
        {"train": str(molecules), "valid": str(molecules_valid), "head": "b"},
    ]
    config = _config(tmp_path, {"sources": sources}, heads=["a", "b"], charge_spin=True)
    result = train(config)
    module, metadata = mlip.export.load(result["model"])
    assert metadata["heads"] == ["a", "b"]
    assert metadata["inputs"] == ["charge", "spin"]
    assert metadata["info"]["dataset"]["train"] == [str(copper), str(molecules)]

    species = list(metadata["atomic_numbers"])
    e0 = module.energy_model.reference_energies  # (heads, species)
    assert tuple(e0.shape) == (2, len(species))
    cu = species.index(29)
    # head a: least squares on its own 4-atom Cu cells = mean energy / 4; head b has no Cu
    energies = [a.get_potential_energy() for a in read(copper, index=":")]
    assert float(e0[0, cu]) == pytest.approx(np.mean(energies) / 4, rel=1e-10)
    assert float(e0[1, cu]) == 0.0
    # head b: fitted on the molecules, head a never saw H, C, N or O
    light = [species.index(z) for z in (1, 8)]
    assert torch.all(e0[0, light] == 0) and torch.all(e0[1, light] != 0)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    fitted = checkpoint["statistics"]["heads"]
    assert set(fitted) == {"a", "b"}
    assert fitted["a"]["scale"] != fitted["b"]["scale"]
    for head, row in (("a", 0), ("b", 1)):
        assert float(module.energy_model.scale[row]) == pytest.approx(fitted[head]["scale"])
        assert float(module.energy_model.shift[row]) == pytest.approx(fitted[head]["shift"])
    # the same molecule under head b (its E0s) and head a (E0 0 for H, C, N, O)
    from calculators import MLIPCalculator

    atoms = read(molecules_valid, index=0)
    energies = []
    for head in ("a", "b"):
        atoms.calc = MLIPCalculator(result["model"], head=head)
        energies.append(atoms.get_potential_energy())
    assert abs(energies[0] - energies[1]) > 1.0


def test_store_frames_are_checked_and_take_the_head(tmp_path: Path) -> None:
    from training.data.store import convert

    frames = read(CHARGED, index=":8")
    del frames[5].info["spin"]
    write(tmp_path / "mol.extxyz", frames)
    store = tmp_path / "mol.h5"
    convert(tmp_path / "mol.extxyz", store)
    data = {"train": str(store), "valid": 0.25}
    with pytest.raises(InvalidFrameError, match=r"mol.h5: frame 5 .*field 'spin': missing spin"):
        prepare_data(_config(tmp_path, data, charge_spin=True), DistInfo())
    data.update(default_spin=2, head="b")  # frame 5 (NH3+) is a doublet
    loaded = prepare_data(_config(tmp_path, data, charge_spin=True, heads=["a", "b"]), DistInfo())
    graphs = [loaded.train[i] for i in range(len(loaded.train))]
    assert all(int(g.head) == 1 for g in graphs)
    assert set(loaded.head_statistics) == {"b"}
