"""Conformance suite (mlip.testing) for every registered model and the GMEP ablation arms."""

from __future__ import annotations

import copy

import pytest
import torch

from mlip import AtomicGraph, keys
from mlip.chunked import ChunkedEvaluator
from mlip.derivatives import ForceStress
from mlip.models import MODELS, PRESETS, build_model
from mlip.testing import (
    EnergyModelTests,
    perturb_parameters,
    rattled_crystal,
    rattled_molecule,
)

_TINY = {"channels": 8, "mixer_channels": 8, "num_radial": 6, "readout_hidden": 4}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TestGMEPSmallPreset(EnergyModelTests):
    """The default model, as shipped (``preset="small"``)."""

    model_name = None
    model_kwargs = {"preset": "small"}


class TestGMEPHigherOrder(EnergyModelTests):
    """L = 3, vector features between layers, correlation 3: every message path and both
    grid products."""

    model_kwargs = {"preset": "medium", **_TINY}


class TestGMEPLebedev(EnergyModelTests):
    model_kwargs = {
        "preset": "small",
        "lmax_hidden": 1,
        "correlation": 3,
        "grid": "lebedev",
        **_TINY,
    }


class TestGMEPBesselMLPRadial(EnergyModelTests):
    model_kwargs = {"preset": "small", "radial": "mlp", "radial_mlp_hidden": [8], **_TINY}


class TestGMEPNoMixer(EnergyModelTests):
    model_kwargs = {"preset": "small", "mixer": "none", "lmax_hidden": 1, **_TINY}


class TestGMEPGridMLP(EnergyModelTests):
    """Facet-style SiLU grid MLP: approximately equivariant, error reported not asserted."""

    model_kwargs = {"preset": "small", "mixer": "grid_mlp", "lmax_hidden": 1, **_TINY}
    exact = False


class TestGMEPChargeSpinHeads(EnergyModelTests):
    """Total charge and spin multiplicity as inputs, two heads, vector features between layers
    (the first layer runs on per-atom features, not the species table)."""

    model_kwargs = {
        "preset": "small",
        "lmax_hidden": 1,
        "charge_spin": True,
        "heads": ["omol", "mptrj"],
        "head_readout": True,
        **_TINY,
    }


def test_head_readout_columns_belong_to_their_head() -> None:
    """With ``head_readout`` every readout has one output per head: a structure's energy
    depends on its head's column only, the shared weights serve both, and the columns make
    the heads' forces differ."""
    model = build_model(
        species=[1, 8], cutoff=4.0, dtype="float64", heads=["a", "b"], head_readout=True, **_TINY
    )
    perturb_parameters(model)
    graph = AtomicGraph.from_atoms(rattled_molecule([1, 8], seed=2), model.cutoff)
    last = [layer.readout for layer in model.layers]
    columns = [r[-1].weight if isinstance(r, torch.nn.Sequential) else r.weight for r in last]
    assert all(c.shape[0] == 2 for c in columns)
    for head in (0, 1):
        data = graph.as_dict()
        data[keys.HEAD] = torch.tensor([head])
        grads = torch.autograd.grad(model(data)[keys.ENERGY].sum(), columns)
        for grad in grads:
            assert grad[head].abs().sum() > 0
            assert torch.equal(grad[1 - head], torch.zeros_like(grad[1 - head]))
    with pytest.raises(ValueError, match="head_readout needs heads"):
        build_model(species=[1], cutoff=4.0, head_readout=True, **_TINY)


class TestGMEPHeadsOnlyMLPRadial(EnergyModelTests):
    """Two heads without charge/spin, with the per-edge (Bessel MLP radial) message path."""

    model_kwargs = {
        "preset": "small",
        "radial": "mlp",
        "radial_mlp_hidden": [8],
        "heads": ["a", "b"],
        **_TINY,
    }


class TestGMEPLargePreset(EnergyModelTests):
    """``large`` at tiny width: three layers, two of them with l = 1 input features."""

    model_kwargs = {"preset": "large", **_TINY}


@pytest.mark.parametrize("preset", ["small", "large"])
def test_receiver_gemm_equals_edge_messages(preset: str) -> None:
    """Per-receiver GEMM layers (scalar inputs: small; l = 1 inputs: large) against the
    per-edge messages with the same weights: energy, forces, stress, also with the layers
    restricted to fewer receivers (chunked evaluation)."""
    model = build_model(species=[29, 79], cutoff=4.0, preset=preset, dtype="float64", **_TINY)
    perturb_parameters(model)
    edges = copy.deepcopy(model)
    for layer in edges.layers:
        layer.receiver_gemm = False
    for layer in model.layers:  # small test structures: force the form whatever the density
        layer.receiver_min_neighbors = 0.0
    lmax_in = 1 if preset == "large" else 0
    assert any(layer.receiver_gemm and layer.lmax_in == lmax_in for layer in model.layers)
    hops = len(model.layers)
    for atoms, stress in ((rattled_crystal(), True), (rattled_molecule([29, 79]), False)):
        graph = AtomicGraph.from_atoms(atoms, 4.0, read_labels=False)
        wrapped = ForceStress(model, compute_forces=True, compute_stress=stress)
        wrapped_edges = ForceStress(edges, compute_forces=True, compute_stress=stress)
        expected = {name: value.detach() for name, value in wrapped_edges(graph.as_dict()).items()}
        results = [{name: value.detach() for name, value in wrapped(graph.as_dict()).items()}]
        for module in (wrapped, wrapped_edges):
            # two owned atoms per chunk: every layer runs on fewer receivers than senders
            results.append(ChunkedEvaluator(module, hops, chunk_atoms=2)(graph, "cpu", stress))
        for result in results:
            assert set(result) == set(expected)
            for name, value in expected.items():
                error = float((result[name] - value).abs().max())
                assert error < 1e-10 * max(float(value.abs().max()), 1.0), (name, error)


def test_every_registered_model_is_covered() -> None:
    assert set(MODELS) == {
        "gmep",
        "egnn",
        "hegnn",
        "transip",
        "leftnet",
    }  # others: test_architectures


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_config(preset: str) -> None:
    model = build_model(species=[29, 79], cutoff=5.0, preset=preset)
    assert model.config["preset"] == preset
    assert model.config["dtype"] == "float32"
    assert model.cutoff == 5.0 and model.species == [29, 79]
    assert model.model_dtype == torch.float32
    rebuilt = build_model(**model.config)
    assert rebuilt.config == model.config


def test_unknown_element_message() -> None:
    from mlip.graph import AtomicGraph

    model = build_model(species=[29, 79], cutoff=4.0)
    graph = AtomicGraph.from_arrays([[0, 0, 0], [2.0, 0, 0]], [29, 26], 4.0)
    with pytest.raises(ValueError, match=r"element Fe \(Z=26\) is not in this model's species"):
        model(graph.as_dict())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", species=[29], cutoff=4.0)
    with pytest.raises(TypeError, match="unknown GMEP hyperparameters"):
        build_model(species=[29], cutoff=4.0, chanels=3)
    with pytest.raises(ValueError, match="unknown mixer"):
        build_model(species=[29], cutoff=4.0, mixer="mlp")
    with pytest.raises(ValueError, match="not in this model's species"):
        build_model(species=[29], cutoff=4.0).set_statistics(reference_energies={26: -1.0})


def test_statistics_define_energy() -> None:
    from mlip.graph import AtomicGraph
    from mlip.testing import rattled_crystal

    model = build_model(species=[29, 79], cutoff=4.0, dtype=torch.float64)
    graph = AtomicGraph.from_atoms(rattled_crystal(), 4.0)
    base = model(graph.as_dict())
    model.set_statistics(reference_energies={29: -3.0, 79: -5.0}, scale=2.0, shift=0.5)
    out = model(graph.as_dict())
    e0 = torch.where(graph.atomic_numbers == 29, -3.0, -5.0).double()
    expected = e0 + 2.0 * base["energies"] + 0.5
    torch.testing.assert_close(out["energies"], expected)
    torch.testing.assert_close(out["energy"], expected.sum().reshape(1))
    state = model.state_dict()
    fresh = build_model(**model.config)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(graph.as_dict())["energy"], out["energy"])


def test_neighbour_count_per_head() -> None:
    """A model with heads normalises each structure's messages by its head's neighbour count:
    doubling every atomic-basis normaliser of one head changes only that head's energies; a
    state dict with one scalar count (written before counts were per head) still loads."""
    model = build_model(species=[1, 8], cutoff=4.0, dtype="float64", heads=["a", "b"], **_TINY)
    perturb_parameters(model)
    model.set_statistics(avg_num_neighbors=2.0, head="a")
    model.set_statistics(avg_num_neighbors=40.0, head="b")
    assert model.avg_num_neighbors.tolist() == [2.0, 40.0]
    graph = AtomicGraph.from_atoms(rattled_molecule([1, 8], seed=1), model.cutoff)

    def energy(head: int) -> float:
        data = graph.as_dict()
        data[keys.HEAD] = torch.tensor([head])
        return float(model(data)[keys.ENERGY])

    before = [energy(0), energy(1)]
    model.set_statistics(avg_num_neighbors=4.0, head="a")
    assert energy(0) != pytest.approx(before[0], rel=1e-9)
    assert energy(1) == pytest.approx(before[1], rel=1e-12)

    old = dict(model.state_dict())
    old["avg_num_neighbors"] = torch.tensor(7.0, dtype=torch.float64)
    model.load_state_dict(old)
    assert model.avg_num_neighbors.tolist() == [7.0, 7.0]
