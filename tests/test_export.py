"""TorchScript export: metadata, round trip, torch-only loading, refusal of bad files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlip import AtomicGraph, keys
from mlip.derivatives import ForceStress
from mlip.export import FORMAT_VERSION, ModelFileError, load, read_metadata, save
from mlip.models import build_model

SPECIES = [1, 6, 8, 29, 79]
CUTOFF = 4.0


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(species=SPECIES, cutoff=CUTOFF, preset="small", dtype=dtype)
    with torch.no_grad():  # random but non-zero weights everywhere
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.set_statistics(avg_num_neighbors=12.0, reference_energies={29: -1.5, 79: -2.0})
    return model.eval()


def _graphs() -> list[AtomicGraph]:
    cu_au = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    cu_au.numbers[::3] = 79
    cu_au.rattle(0.1, seed=2)
    water = molecule("CH3OH")
    return [AtomicGraph.from_atoms(cu_au, CUTOFF), AtomicGraph.from_atoms(water, CUTOFF)]


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_round_trip_matches_eager(tmp_path: Path, dtype: torch.dtype, rtol: float) -> None:
    model = _model(dtype)
    path = save(model, tmp_path / "model.pt", dataset="unit test", metrics={"f_rmse": 0.1})
    scripted, metadata = load(path)
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["cutoff"] == CUTOFF and metadata["atomic_numbers"] == SPECIES
    assert metadata["species"] == ["H", "C", "O", "Cu", "Au"]
    assert metadata["model_dtype"] == str(dtype).replace("torch.", "")
    assert metadata["units"]["energy"] == "eV" and "ASE sign" in metadata["stress_convention"]
    assert metadata["info"] == {"dataset": "unit test", "metrics": {"f_rmse": 0.1}}
    assert set(metadata["versions"]) == {"mlip", "torch", "e3nn"}
    assert metadata["receptive_field"] == metadata["num_interactions"] * CUTOFF
    assert metadata["num_interactions"] == model.config["num_layers"]
    assert build_model(**metadata["model_config"]).config == model.config

    eager = ForceStress(model, compute_forces=True, compute_stress=True)
    periodic, molecule_graph = _graphs()
    for graph, stress in ((periodic, True), (molecule_graph, False)):
        eager.compute_stress = stress
        scripted.compute_stress = stress
        expected = eager(graph.as_dict())
        got = scripted(graph.as_dict())
        for name in (keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES) + (
            (keys.STRESS,) if stress else ()
        ):
            assert got[name].dtype == torch.float64
            scale = expected[name].abs().max().clamp_min(1e-12)
            assert ((got[name] - expected[name]).abs().max() / scale) <= rtol, name


def test_runs_with_torch_alone(tmp_path: Path) -> None:
    """Load and evaluate in a subprocess where mlip and e3nn cannot be imported."""
    model = _model(torch.float64)
    path = save(model, tmp_path / "model.pt")
    graph = _graphs()[0]
    torch.save(graph.as_dict(), tmp_path / "input.pt")
    expected = ForceStress(model, compute_forces=True, compute_stress=True)(graph.as_dict())
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("mlip", "e3nn", "calculators", "training"):
                    raise ImportError(f"blocked import of {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for name in list(sys.modules):
            if name.split(".")[0] in ("mlip", "e3nn"):
                del sys.modules[name]
        import torch
        model = torch.jit.load({str(path)!r})
        data = torch.load({str(tmp_path / "input.pt")!r}, weights_only=True)
        out = model(data)
        torch.save({{k: v.detach() for k, v in out.items()}}, {str(tmp_path / "out.pt")!r})
        assert "mlip" not in sys.modules and "e3nn" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for name in (keys.ENERGY, keys.FORCES, keys.STRESS):
        torch.testing.assert_close(got[name], expected[name].detach(), rtol=1e-10, atol=1e-12)


def test_refuses_foreign_corrupt_and_newer_files(tmp_path: Path) -> None:
    path = save(_model(torch.float32), tmp_path / "model.pt")

    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelFileError, match="no such model file"):
        load(missing)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not an mlip model file"):
        load(text)

    state_dict = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(3)}, state_dict)
    with pytest.raises(ModelFileError, match="not an mlip model file"):
        load(state_dict)

    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ModelFileError, match="without mlip.json"):
        load(foreign)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated.pt"):
        load(truncated)

    flipped = tmp_path / "flipped.pt"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="flipped.pt"):
        load(flipped)

    newer = tmp_path / "newer.pt"
    metadata = read_metadata(path)
    metadata["format_version"] = FORMAT_VERSION + 1
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("extra/mlip.json"):
                data = json.dumps(metadata).encode()
            target.writestr(item, data)
    with pytest.raises(ModelFileError, match="newer than this mlip"):
        load(newer)


def test_save_is_atomic_and_rejects_unserialisable_info(tmp_path: Path) -> None:
    model = _model(torch.float32)
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    with pytest.raises(TypeError, match="JSON"):
        save(model, target, bad=np.float32)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
