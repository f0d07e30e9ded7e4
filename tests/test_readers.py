"""Readers: MPTrj JSON (streamed) vs extxyz vs ASE-LMDB on real data; label keys; bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from training.data import readers
from training.data.frames import Frame, InvalidFrameError, SkipReport
from training.data.readers import ReaderOptions, iter_frames, read_frames

MPTRJ_JSON = "mptrj/mptrj_11frames_MPtrj-json-layout.json"


def _mptrj(shared_data: Path) -> dict:
    return json.loads((shared_data / MPTRJ_JSON).read_text())


def test_mptrj_json_matches_extxyz_and_aselmdb(shared_data: Path) -> None:
    from_json = read_frames(shared_data / MPTRJ_JSON)
    from_xyz = read_frames(shared_data / "mptrj/mptrj_11frames.extxyz")
    from_lmdb = read_frames(shared_data / "mptrj/mptrj_11frames.aselmdb")
    atoms_xyz = ase.io.read(shared_data / "mptrj/mptrj_11frames.extxyz", ":")
    assert len(from_json) == len(from_xyz) == len(from_lmdb) == 11
    for a, b, c, atoms in zip(from_json, from_xyz, from_lmdb, atoms_xyz):
        info = atoms.info
        assert a.frame_id == f"{info['task_id']}-{info['calc_id']}-{info['ionic_step']}"
        assert a.group_id == b.group_id == c.group_id == info["mp_id"]
        for other in (b, c):
            np.testing.assert_array_equal(a.atomic_numbers, other.atomic_numbers)
            np.testing.assert_array_equal(a.pbc, other.pbc)
            assert a.energy == pytest.approx(other.energy, rel=1e-14, abs=0)
            np.testing.assert_allclose(a.forces, other.forces, rtol=0, atol=1e-14)
            # extxyz stores stress = -0.1 kBar * GPa: same up to rounding of the product.
            np.testing.assert_allclose(a.stress, other.stress, rtol=1e-13, atol=1e-18)
            np.testing.assert_allclose(a.cell, other.cell, rtol=0, atol=1e-12)
            np.testing.assert_allclose(a.positions, other.positions, rtol=0, atol=1e-7)
        assert a.source.endswith(".json") and c.source.endswith(".aselmdb")


def test_mptrj_units_and_energy_choice(shared_data: Path) -> None:
    data = _mptrj(shared_data)
    mp_id, frames = next(iter(data.items()))
    frame_id, record = next(iter(frames.items()))
    default = next(iter_frames(shared_data / MPTRJ_JSON))
    corrected = next(
        iter_frames(
            shared_data / MPTRJ_JSON, options=ReaderOptions(energy_key="corrected_total_energy")
        )
    )
    assert default.energy == record["uncorrected_total_energy"]
    assert corrected.energy == record["corrected_total_energy"]
    expected_stress = -0.1 * ase.units.GPa * np.asarray(record["stress"])
    np.testing.assert_array_equal(default.stress, expected_stress)
    assert (default.group_id, default.frame_id) == (mp_id, frame_id)


def test_mptrj_streaming_tiny_chunks_and_layout_variants(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _mptrj(shared_data)
    for frames in data.values():
        for record in frames.values():
            record["structure"].pop("properties", None)
            record["structure"]["lattice"].pop("pbc", None)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(data, indent=1))
    reference = read_frames(shared_data / MPTRJ_JSON)
    original_init = readers._JsonStream.__init__
    monkeypatch.setattr(
        readers._JsonStream,
        "__init__",
        lambda self, handle, chunk_chars=0: original_init(self, handle, chunk_chars=7),
    )
    streamed = read_frames(path)
    assert [f.frame_id for f in streamed] == [f.frame_id for f in reference]
    for a, b in zip(streamed, reference):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)
        assert a.energy == b.energy and a.pbc.all()
    # start= skips records (used when resuming a conversion)
    tail = list(iter_frames(path, start=8))
    assert [f.frame_id for f in tail] == [f.frame_id for f in reference[8:]]


def test_ase_label_keys_and_virial(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cell = np.diag([4.0, 5.0, 6.0])
    atoms = ase.Atoms("Si2", positions=rng.random((2, 3)), cell=cell, pbc=True)
    virial = rng.normal(size=(3, 3))
    virial = virial + virial.T
    atoms.info["REF_energy"] = -3.5
    atoms.info["REF_virial"] = virial.reshape(-1)
    atoms.info["config"] = "bulk-7"
    atoms.arrays["REF_forces"] = rng.normal(size=(2, 3))
    path = tmp_path / "keys.extxyz"
    ase.io.write(path, atoms)
    options = ReaderOptions(
        energy_key="REF_energy",
        forces_key="REF_forces",
        virial_key="REF_virial",
        frame_id_key="config",
    )
    (frame,) = read_frames(path, options=options)
    assert frame.energy == -3.5
    np.testing.assert_allclose(frame.forces, atoms.arrays["REF_forces"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(frame.stress, -virial / 120.0, rtol=1e-7)
    assert frame.frame_id == "bulk-7"


def test_ase_calc_labels_and_outcar(shared_data: Path) -> None:
    frames = read_frames(shared_data / "hfo2/outcars/OUTCAR_1", format="ase")
    atoms = ase.io.read(shared_data / "hfo2/outcars/OUTCAR_1")
    assert frames[-1].energy == atoms.get_potential_energy()
    np.testing.assert_array_equal(frames[-1].forces, atoms.get_forces())
    assert frames[-1].stress.shape == (3, 3)


def _write_aselmdb(path: Path, with_spin: bool = True) -> list[ase.Atoms]:
    import ase.db

    rng = np.random.default_rng(1)
    structures = []
    db = ase.db.connect(str(path))
    for i in range(3):
        atoms = ase.Atoms("H2O", positions=rng.random((3, 3)) * 2)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - i, forces=rng.normal(size=(3, 3)))
        data = {"charge": i - 1, "spin": 2 * i + 1} if with_spin else {}
        db.write(atoms, data=data)
        structures.append(atoms)
    if hasattr(db, "close"):
        db.close()
    return structures


def test_aselmdb_folder_keeps_charge_and_spin(tmp_path: Path) -> None:
    folder = tmp_path / "omol"
    folder.mkdir()
    first = _write_aselmdb(folder / "a.aselmdb")
    second = _write_aselmdb(folder / "b.aselmdb")
    frames = read_frames(folder)
    assert len(frames) == 6
    assert [f.charge for f in frames[:3]] == [-1.0, 0.0, 1.0]
    assert [f.spin for f in frames[:3]] == [1.0, 3.0, 5.0]
    assert frames[0].cell is None and not frames[0].pbc.any()
    for frame, atoms in zip(frames, first + second):
        np.testing.assert_array_equal(frame.positions, atoms.positions)
        assert frame.energy == atoms.get_potential_energy()
    assert [f.frame_id for f in iter_frames(folder, start=4)] == ["2", "3"]


def test_missing_omol_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.aselmdb"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(ImportError, match=r'pip install "mlip\[omol\]"'):
        read_frames(path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="no_such.extxyz"):
        read_frames("/nonexistent/no_such.extxyz")


def _bad_extxyz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    structures = []
    for kind in ("good", "no_energy", "nan_forces", "good"):
        atoms = ase.Atoms("CO", positions=rng.random((2, 3)))
        forces = rng.normal(size=(2, 3))
        if kind == "nan_forces":
            forces[1, 2] = np.nan
        energy = None if kind == "no_energy" else -1.0
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        structures.append(atoms)
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, structures)
    return path


def test_bad_frames_raise_with_file_frame_and_field(tmp_path: Path) -> None:
    path = _bad_extxyz(tmp_path)
    with pytest.raises(InvalidFrameError, match=r"bad\.extxyz: frame 1 .*'energy'.*missing"):
        read_frames(path)
    with pytest.raises(ValueError, match=r"frame 2 .*'forces'.*nan"):
        read_frames(path, required=("forces",))


def test_skip_invalid_counts_reasons(tmp_path: Path) -> None:
    report = SkipReport()
    frames = read_frames(_bad_extxyz(tmp_path), skip_invalid=True, report=report)
    assert len(frames) == 2
    assert report.as_dict() == {"missing energy": 1, "nan forces": 1}
    assert "skipped 2" in str(report)


def test_mptrj_shape_mismatch_and_missing_label(shared_data: Path, tmp_path: Path) -> None:
    data = _mptrj(shared_data)
    records = [r for frames in data.values() for r in frames.values()]
    records[1]["force"] = records[1]["force"][:-1]
    del records[3]["uncorrected_total_energy"]
    records[4]["stress"][0][0] = float("inf")
    del records[5]["structure"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidFrameError, match=r"frame 1 \(id 'mp-1095441-0-1'\).*'forces'"):
        read_frames(path)
    report = SkipReport()
    frames = read_frames(path, skip_invalid=True, report=report)
    assert len(frames) == 7
    assert report.as_dict() == {
        "bad shape forces": 1,
        "missing energy": 1,
        "nan stress": 1,
        "unreadable": 1,
    }


def test_truncated_mptrj_json(shared_data: Path, tmp_path: Path) -> None:
    text = (shared_data / MPTRJ_JSON).read_text()
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="cut.json: not in the MPTrj JSON layout"):
        read_frames(path)


def test_frame_validation_shapes() -> None:
    frame = Frame(positions=np.zeros((2, 3)), atomic_numbers=[1, 1], energy=1.0)
    with pytest.raises(InvalidFrameError, match="'forces'"):
        frame.validated()
    bad = Frame(positions=np.zeros((2, 3)), atomic_numbers=[1], energy=1.0, forces=np.zeros((2, 3)))
    with pytest.raises(InvalidFrameError, match="atomic_numbers"):
        bad.validated()
    periodic = Frame(positions=np.zeros((1, 3)), atomic_numbers=[1], pbc=np.ones(3, bool))
    with pytest.raises(InvalidFrameError, match="cell"):
        periodic.validated(required=())
