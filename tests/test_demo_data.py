"""Tests of scripts/make_demo_data.py and the committed files in data/demo/."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


@pytest.fixture(scope="module")
def make_demo_data():
    spec = importlib.util.spec_from_file_location(
        "make_demo_data", ROOT / "scripts" / "make_demo_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_same_frames(first, second) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        assert a.info["config_type"] == b.info["config_type"]
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-7)
        np.testing.assert_allclose(a.cell.array, b.cell.array, rtol=0, atol=1e-7)
        for name in ("energy", "forces", "stress"):
            np.testing.assert_allclose(
                a.calc.results[name], b.calc.results[name], rtol=1e-7, atol=1e-7
            )


def test_generator_is_reproducible_and_covers_all_recipes(make_demo_data):
    n_recipes = len(make_demo_data.BASES) * len(make_demo_data.PERTURBATIONS)
    first = make_demo_data.generate_frames(n_recipes, seed=5)
    second = make_demo_data.generate_frames(n_recipes, seed=5)
    _assert_same_frames(first, second)
    assert len({f.info["config_type"] for f in first}) == n_recipes
    other = make_demo_data.generate_frames(3, seed=6)
    assert [a.positions.tolist() for a in other] != [a.positions.tolist() for a in first[:3]]


def test_written_files_are_byte_identical(make_demo_data, tmp_path):
    make_demo_data.write_demo_data(tmp_path / "a", n_train=3, n_test=2)
    make_demo_data.write_demo_data(tmp_path / "b", n_train=3, n_test=2)
    for name in ("demo_train.extxyz", "demo_test.extxyz", "CuAu_rattled.cif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_committed_train_set_matches_generator(make_demo_data):
    committed = read(DEMO / "demo_train.extxyz", index=":10")
    _assert_same_frames(committed, make_demo_data.generate_frames(10, make_demo_data.TRAIN_SEED))


def test_committed_files_shape_and_sizes():
    train = read(DEMO / "demo_train.extxyz", index=":")
    test = read(DEMO / "demo_test.extxyz", index=":")
    assert 300 <= len(train) <= 500 and 40 <= len(test) <= 60
    assert all(4 <= len(a) <= 32 for a in train + test)
    assert {s for a in train for s in a.get_chemical_symbols()} == {"Cu", "Au"}
    assert all(a.pbc.all() for a in train)
    perturbations = Counter(a.info["config_type"].split("/")[1] for a in train)
    assert set(perturbations) == {"strain_iso", "strain_shear", "rattle", "vacancy", "md"}
    assert (DEMO / "demo_train.extxyz").stat().st_size < 5 * 2**20
    example = read(DEMO / "CuAu_rattled.cif")
    assert example.get_chemical_formula() == "Au8Cu8"
    assert (DEMO / "README.md").read_text().count("EMT") >= 2


@pytest.mark.parametrize("index", [0, 7, 123, 399])
def test_labels_match_emt(index):
    frame = read(DEMO / "demo_train.extxyz", index=index)
    reference = frame.copy()
    reference.calc = EMT()
    assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-6)
    np.testing.assert_allclose(frame.get_stress(), reference.get_stress(), atol=1e-7)
