"""Stress/virial units and conventions (training.units) through every reader path, the
implausible-magnitude refusal, the weighted-label check, and mlearn Si trained from YAML only."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import GPa

from training.config import load_config
from training.data.frames import InvalidFrameError
from training.data.prepare import open_source, prepare_data
from training.data.readers import ReaderOptions, read_frames
from training.distributed import DistInfo
from training.errors import DataError
from training.units import stress_to_ase, virial_to_stress

REPO = Path(__file__).resolve().parents[1]
MLEARN_CONFIG = REPO / "training" / "configs" / "mlearn_si.yaml"
MLEARN_KEY = "virial_stress_kbar_vasp_order"


def test_vasp_kbar_voigt_by_hand() -> None:
    raw = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # VASP order xx yy zz xy yz zx, compressive positive
    stress = stress_to_ase(raw, "kbar", "vasp")
    kbar = 0.1 * GPa
    expected = -kbar * np.array([[1.0, 4.0, 6.0], [4.0, 2.0, 5.0], [6.0, 5.0, 3.0]])
    np.testing.assert_allclose(stress, expected, rtol=1e-14)
    # ASE order xx yy zz yz xz xy, tensile positive, GPa
    ase_voigt = stress_to_ase([1.0, 2.0, 3.0, 5.0, 6.0, 4.0], "GPa", "ase")
    np.testing.assert_allclose(ase_voigt, -expected / kbar * GPa, rtol=1e-14)


def test_virial_voigt_order_and_sign() -> None:
    cell = np.diag([2.0, 3.0, 4.0])
    vasp = virial_to_stress([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], cell, "vasp")
    assert vasp[0, 1] == pytest.approx(-4.0 / 24.0) and vasp[1, 2] == pytest.approx(-5.0 / 24.0)
    ase_order = virial_to_stress([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], cell, "ase")
    assert ase_order[1, 2] == pytest.approx(-4.0 / 24.0)


def _mlearn_options() -> ReaderOptions:
    data = load_config(MLEARN_CONFIG).data
    return ReaderOptions(
        stress_key=data.stress_key,
        stress_units=data.stress_units,
        stress_convention=data.stress_convention,
    )


def test_mlearn_stress_with_yaml_options_matches_hand_conversion(shared_data: Path) -> None:
    path = shared_data / "mlearn_si" / "Si_training.extxyz"
    config = load_config(MLEARN_CONFIG, [f"data.train={path}", "data.max_structures=2"])
    source, indices = open_source(str(path), config)
    frames = [source[i] for i in indices]
    raw = [a.info[MLEARN_KEY] for a in ase.io.read(path, index=":2")]
    assert len(frames) == 2
    for frame, (xx, yy, zz, xy, yz, zx) in zip(frames, raw):
        factor = -0.1 * GPa  # kBar -> eV/Å³, and VASP's compressive-positive sign flipped
        hand = factor * np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]])
        np.testing.assert_allclose(np.reshape(frame.stress, (3, 3)), hand, rtol=1e-12)


def test_kbar_read_as_ev_per_a3_is_refused_naming_unit(shared_data: Path) -> None:
    path = shared_data / "mlearn_si" / "Si_training.extxyz"
    with pytest.raises(InvalidFrameError) as error:
        read_frames(path, options=ReaderOptions(stress_key=MLEARN_KEY))
    message = str(error.value)
    assert "frame 0" in message and "eV/A^3" in message and "data.stress_units" in message


def test_mptrj_goes_through_the_same_check(shared_data: Path) -> None:
    path = shared_data / "mptrj" / "mptrj_11frames_MPtrj-json-layout.json"
    frames = read_frames(path)
    reference = read_frames(shared_data / "mptrj" / "mptrj_11frames.extxyz")
    np.testing.assert_allclose(frames[0].stress, reference[0].stress, atol=1e-6)
    with pytest.raises(InvalidFrameError, match="implausible stress"):
        read_frames(path, options=ReaderOptions(max_stress=1e-6))


def _periodic_without_stress(path: Path) -> Path:
    frames = []
    for seed in range(4):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        frames.append(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True))
        frames[-1].info["energy"] = atoms.info["energy"]
        frames[-1].arrays["forces"] = atoms.arrays["forces"]
    ase.io.write(path, frames, format="extxyz")
    return path


def test_stress_weight_without_stress_is_refused(tmp_path: Path) -> None:
    path = _periodic_without_stress(tmp_path / "cu.extxyz")
    config = load_config(None, [f"data.train={path}", "loss.stress_weight=10", "data.valid=0.25"])
    with pytest.raises(DataError, match="no stress label.*stress_weight=10"):
        prepare_data(config, DistInfo())
    config = load_config(None, [f"data.train={path}", "loss.stress_weight=0", "data.valid=0.25"])
    assert len(prepare_data(config, DistInfo()).train) == 3


def test_mlearn_trains_from_yaml_only(shared_data: Path, tmp_path: Path) -> None:
    from training.trainer import train

    overrides = [
        "data.max_structures=6",
        "data.valid=0.34",
        "data.test=null",
        "model.cutoff=3.0",
        "model.hyper={channels: 4, mixer_channels: 8, num_layers: 1, num_radial: 4}",
        "train.max_epochs=1",
        "train.batch.size=2",
        "train.num_threads=1",
        "train.progress_bar=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    config = load_config(MLEARN_CONFIG, overrides)
    config.data.train = str(shared_data / "mlearn_si" / "Si_training.extxyz")
    result = train(config)
    stress_mae = result["valid"]["stress_mae"]
    assert np.isfinite(stress_mae) and stress_mae < 0.2  # eV/Å³; kBar-as-eV/Å³ would be ~5


def test_forces_weight_without_forces_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mol.xyz"
    molecules = []
    for i in range(4):
        atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.2, 0.93 + 0.01 * i, 0]])
        atoms.info["energy"] = -10.0 - i
        molecules.append(atoms)
    ase.io.write(path, molecules, format="extxyz")
    config = load_config(None, [f"data.train={path}", "data.valid=0.25"])
    with pytest.raises(DataError, match="no forces label.*forces_weight=10"):
        prepare_data(config, DistInfo())
