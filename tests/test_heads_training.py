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


# ------------------------------------------------------------------ per-frame heads (head_key)
def _mixed(path: Path, labels: list[str | None]) -> Path:
    """Frames alternating 4-atom Cu cells and molecules, ``info["level"]`` = ``labels[i]``
    (no key where None)."""
    copper = read(_copper(path.with_suffix(".cu.extxyz"), len(labels), seed=10), index=":")
    molecules = read(CHARGED, index=f":{len(labels)}")
    frames = []
    for i, label in enumerate(labels):
        atoms = copper[i] if i % 2 == 0 else molecules[i]
        if label is not None:
            atoms.info["level"] = label
        frames.append(atoms)
    write(path, frames)
    return path


def _train_heads(data) -> list[int]:
    return [int(data.train.frame(i).value("head")) for i in range(len(data.train))]


def test_mixed_file_heads_train_end_to_end(tmp_path: Path) -> None:
    """One file with frames of two heads: every frame (train and valid split) gets the head its
    info names, and each head's fitted statistics are those of its own training frames."""
    from training.checkpoint import load_checkpoint
    from training.data.statistics import compute_statistics

    labels = ["a" if i % 2 == 0 else "b" for i in range(16)]
    mixed = _mixed(tmp_path / "mixed.extxyz", labels)
    data = {"train": str(mixed), "valid": 0.25, "head_key": "level"}
    config = _config(tmp_path, data, heads=["a", "b"])
    prepared = prepare_data(config, DistInfo())
    for part in (prepared.train, prepared.valid):
        for i in range(len(part)):
            frame = part.frame(i)  # frame_id: its index in the file
            assert int(frame.value("head")) == ["a", "b"].index(labels[int(frame.frame_id)])
            assert int(part[i].head) == int(frame.value("head"))
    assert set(_train_heads(prepared)) == {0, 1}
    assert set(prepared.head_statistics) == {"a", "b"}

    result = train(config)
    fitted = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["statistics"]["heads"]
    species = prepared.species
    for number, head in enumerate(["a", "b"]):
        frames = [
            prepared.train.frame(i) for i, h in enumerate(_train_heads(prepared)) if h == number
        ]
        expected = compute_statistics(frames, cutoff=config.model.cutoff).for_model(
            "least_squares", species
        )
        assert fitted[head]["shift"] == pytest.approx(expected["shift"], rel=1e-10)
        # each head normalises messages by its own frames' neighbour count
        assert fitted[head]["avg_num_neighbors"] == pytest.approx(expected["avg_num_neighbors"])
        exported = torch.jit.load(result["model"]).energy_model.avg_num_neighbors
        assert float(exported[number]) == pytest.approx(expected["avg_num_neighbors"], rel=1e-6)
        assert fitted[head]["scale"] == pytest.approx(expected["scale"], rel=1e-10)
        for z, e0 in expected["reference_energies"].items():
            assert fitted[head]["reference_energies"][z] == pytest.approx(e0, rel=1e-10, abs=1e-12)
    assert fitted["a"]["avg_num_neighbors"] != fitted["b"]["avg_num_neighbors"]
    assert fitted["a"]["reference_energies"][29] != 0.0  # Cu: head a only
    assert fitted["b"]["reference_energies"][29] == 0.0
    assert fitted["b"]["reference_energies"][1] != 0.0  # H: head b only
    assert Path(result["model"]).exists()


def test_missing_head_names_file_frame_and_key(tmp_path: Path) -> None:
    labels = ["a", "b", "a", None, "a", "b", "a", "b"]
    mixed = _mixed(tmp_path / "mixed.extxyz", labels)
    data = {"train": str(mixed), "valid": 0.25, "head_key": "level"}
    pattern = r"mixed.extxyz: frame 3: field 'level': missing head .*no 'level' in its info"
    with pytest.raises(InvalidFrameError, match=pattern):
        prepare_data(_config(tmp_path, data, heads=["a", "b"]), DistInfo())
    # data.head is the head of the frames without the key
    data["head"] = "b"
    prepared = prepare_data(_config(tmp_path, data, heads=["a", "b"]), DistInfo())
    for part in (prepared.train, prepared.valid):
        for i in range(len(part)):
            frame = part.frame(i)
            label = labels[int(frame.frame_id)] or "b"
            assert int(frame.value("head")) == ["a", "b"].index(label)


def test_unknown_head_names_file_frame_value_and_heads(tmp_path: Path) -> None:
    mixed = _mixed(tmp_path / "mixed.extxyz", ["a", "b", "pbe", "b"])
    data = {"train": str(mixed), "valid": 0.25, "head_key": "level", "head": "a"}
    pattern = r"mixed.extxyz: frame 2: field 'level': unknown head 'pbe'.*heads are a, b"
    with pytest.raises(InvalidFrameError, match=pattern):
        prepare_data(_config(tmp_path, data, heads=["a", "b"]), DistInfo())
    with pytest.raises(ConfigError, match="data.head_key: 'level' given, but the model has no"):
        _config(tmp_path, {"train": str(mixed), "head_key": "level"})


def test_store_keeps_head_names(tmp_path: Path) -> None:
    """``mlip-data convert --head-key`` keeps each frame's head: a store-based run gets the
    same heads and per-head statistics as the raw file; a store without head names (written
    before they were kept) still reads, with no names."""
    import h5py

    from training.data.store import Store
    from training.data_cli import main

    labels = ["a", "b", "b", "a", None, "b", "a", "b"]
    mixed = _mixed(tmp_path / "mixed.extxyz", labels)
    store = tmp_path / "mixed.h5"
    assert main(["convert", str(mixed), "-o", str(store), "--head-key", "level"]) == 0
    kept = Store(store)
    assert [kept[i].head_name for i in range(8)] == [x or "" for x in labels]
    assert list(kept.strings("head_name")) == [x or "" for x in labels]
    kept.close()

    def prepared(train: Path):
        data = {"train": str(train), "valid": 0.25, "head_key": "level", "head": "a"}
        return prepare_data(_config(tmp_path, data, heads=["a", "b"]), DistInfo())

    from_file, from_store = prepared(mixed), prepared(store)
    assert _train_heads(from_store) == _train_heads(from_file)
    assert set(from_store.head_statistics) == {"a", "b"}
    for head, statistics in from_file.head_statistics.items():
        ours = from_store.head_statistics[head].for_model("least_squares", from_file.species)
        theirs = statistics.for_model("least_squares", from_file.species)
        assert ours["shift"] == pytest.approx(theirs["shift"], rel=1e-10)
        assert ours["scale"] == pytest.approx(theirs["scale"], rel=1e-10)

    from_store.train.close()
    with h5py.File(store, "r+") as file:  # an older store: no head names
        del file["head_name"]
    old = Store(store)
    assert old[0].head_name == "" and list(old.strings("head_name")) == [""] * 8
    old.close()
    with pytest.raises(InvalidFrameError, match=r"mixed.h5: frame 0 .*field 'level'.*--head-key"):
        data = {"train": str(store), "valid": 0.25, "head_key": "level"}
        prepare_data(_config(tmp_path, data, heads=["a", "b"]), DistInfo())


def test_head_weights_multiply_each_structures_loss_terms(tmp_path: Path) -> None:
    """``loss.head_weights``: every term of a structure is multiplied by its head's weight,
    normalisers unchanged; unknown heads are refused."""
    from mlip import AtomicGraph
    from training.loss import LossWeights, batch_counts, weighted_loss
    from training.trainer import Trainer

    frames = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.7, cubic=True)]
    graphs = []
    rng = np.random.default_rng(0)
    for head, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=head)
        graph = AtomicGraph.from_atoms(atoms, 3.5, read_labels=False)
        labels = {
            "energy": torch.tensor([-3.0 - head], dtype=torch.float64),
            "forces": torch.from_numpy(rng.normal(size=(4, 3))),
            "stress": torch.from_numpy(rng.normal(size=(1, 3, 3))) * 0.01,
            "head": torch.tensor([head]),
        }
        graphs.append(graph.with_labels(**labels))
    batch = AtomicGraph.batch(graphs)
    predictions = {
        "energy": batch.energy + torch.tensor([0.4, -0.8], dtype=torch.float64),
        "forces": batch.forces + torch.from_numpy(rng.normal(size=(8, 3))),
        "stress": batch.stress + 0.02,
    }
    weights, counts = LossWeights(1.0, 10.0, 100.0), batch_counts(batch, use_stress=True)
    _, plain = weighted_loss(predictions, batch, weights, counts)
    total, weighted = weighted_loss(
        predictions, batch, weights, counts, structure_weights=torch.tensor([0.25, 1.0])
    )
    # the same terms with only structure 1, and with only structure 0 scaled by 0.25
    only = {k: v.clone() for k, v in predictions.items()}
    only["energy"][0], only["forces"][:4], only["stress"][0] = (
        batch.energy[0],
        batch.forces[:4],
        batch.stress[0],
    )
    _, second = weighted_loss(only, batch, weights, counts)
    for name in ("energy", "forces", "stress"):
        first = plain[name] - second[name]
        assert float(weighted[name]) == pytest.approx(0.25 * float(first) + float(second[name]))
    expected = sum(
        w * float(weighted[n]) for n, w in zip(("energy", "forces", "stress"), (1, 10, 100))
    )
    assert float(total) == pytest.approx(expected)

    # the trainer maps graph heads to the configured weights
    config = _config(
        tmp_path,
        {"train": str(_copper(tmp_path / "cu.extxyz", 4, seed=0)), "head": "b"},
        heads=["a", "b"],
    )
    config.loss.head_weights = {"b": 0.5}
    trainer = Trainer.__new__(Trainer)
    trainer.config = config
    assert trainer.structure_weights(batch).tolist() == [1.0, 0.5]
    with pytest.raises(ConfigError, match="loss.head_weights: unknown head 'c'"):
        config_from_dict(
            {
                "data": {"train": "x.extxyz"},
                "model": {"hyper": {"heads": ["a", "b"]}},
                "loss": {"head_weights": {"c": 1.0}},
            }
        )
