"""The shipped model calculators/data/model.pt: present, valid, and physically sensible on Cu-Au."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.optimize import BFGS

from calculators import relax_cli
from calculators.defaults import default_model_path
from mlip.export import read_metadata

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


def test_builtin_model_is_shipped_with_metadata() -> None:
    path = default_model_path()
    assert path == ROOT / "calculators" / "data" / "model.pt" and path.stat().st_size < 5_000_000
    metadata = read_metadata(path)
    assert metadata["species"] == ["Cu", "Au"]
    assert metadata["info"]["metrics"], "training metrics are recorded in the model"


def test_builtin_model_is_package_data() -> None:
    """A non-editable install gets the file only if it lives in a package and is listed."""
    from importlib import resources

    from calculators.defaults import DEFAULT_MODEL_RESOURCE

    resource = resources.files("calculators").joinpath(DEFAULT_MODEL_RESOURCE)
    assert resource.is_file() and Path(str(resource)).resolve() == default_model_path()
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert f'calculators = ["{DEFAULT_MODEL_RESOURCE}"]' in section


def test_relaxed_volume_within_one_percent_of_emt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = DEMO / "CuAu_rattled.cif"
    reference = read(source)
    reference.calc = EMT()
    BFGS(FrechetCellFilter(reference), logfile=None).run(fmax=0.005, steps=1000)
    emt_volume = reference.get_volume()

    argv = [str(source), "--fmax", "0.005", "--steps", "1000", "--summary", "relax.json"]
    assert relax_cli.main(argv + ["-o", "relaxed.extxyz"]) == 0
    relaxed = read("relaxed.extxyz")
    (summary,) = json.loads(Path("relax.json").read_text())["structures"]
    assert summary["converged"] is True
    error = abs(relaxed.get_volume() - emt_volume) / emt_volume
    assert error < 0.01, f"relaxed volume {relaxed.get_volume():.3f} vs EMT {emt_volume:.3f} Å^3"
    assert np.isclose(relaxed.get_volume(), reference.get_volume(), rtol=0.01)
