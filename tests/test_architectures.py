"""Conformance suite (mlip.testing) for the comparison architectures: EGNN, HEGNN, TransIP,
LEFTNet (tiny configurations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlip.testing import EnergyModelTests


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TestEGNN(EnergyModelTests):
    model_name = "egnn"
    model_kwargs = {"channels": 8, "num_radial": 6, "readout_hidden": 4}


class TestHEGNN(EnergyModelTests):
    """Degrees up to 3, two layers so the steerable update is exercised."""

    model_name = "hegnn"
    model_kwargs = {
        "num_layers": 2,
        "channels": 8,
        "lmax": 3,
        "vector_channels": 2,
        "num_radial": 6,
        "readout_hidden": 4,
    }


_TINY_TRANSIP = {
    "num_layers": 2,
    "channels": 8,
    "num_heads": 2,
    "ffn_hidden": 8,
    "num_radial": 6,
    "readout_hidden": 4,
    "transform_hidden": 8,
}


class TestTransIPEmbedding(EnergyModelTests):
    """Not equivariant by construction: errors are printed (``pytest -s``), only finiteness is
    asserted."""

    model_name = "transip"
    model_kwargs = {"arm": "embedding", **_TINY_TRANSIP}
    exact = False


class TestTransIPAugmentation(EnergyModelTests):
    model_name = "transip"
    model_kwargs = {"arm": "augmentation", **_TINY_TRANSIP}
    exact = False


class TestLEFTNet(EnergyModelTests):
    """Molecule-only: every check runs on a rattled acetone-shaped molecule."""

    model_name = "leftnet"
    model_kwargs = {"num_layers": 2, "channels": 8, "num_radial": 6, "readout_hidden": 4}
    species = [1, 6, 8]
    periodic = False


def test_leftnet_refuses_periodic_input() -> None:
    from mlip.derivatives import ForceStress
    from mlip.graph import AtomicGraph
    from mlip.models import build_model
    from mlip.testing import rattled_crystal

    model = build_model("leftnet", species=[29, 79], cutoff=4.0, channels=4, num_radial=4)
    data = AtomicGraph.from_atoms(rattled_crystal(), 4.0, read_labels=False).as_dict()
    with pytest.raises(ValueError, match="LEFTNet is for molecules only.*periodic"):
        model(data)
    scripted = torch.jit.script(ForceStress(model, True, False).eval())
    with pytest.raises(Exception, match="LEFTNet is for molecules only"):
        scripted(data)


def _transip_batch(**hyper: object) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from mlip.graph import AtomicGraph
    from mlip.models import build_model
    from mlip.testing import rattled_molecule

    model = build_model(
        "transip", species=[1, 6, 8], cutoff=4.0, dtype="float64", **_TINY_TRANSIP, **hyper
    )
    graphs = [
        AtomicGraph.from_atoms(rattled_molecule([1, 6, 8], seed=s), 4.0, read_labels=False)
        for s in (0, 1)
    ]
    return model, AtomicGraph.batch(graphs).as_dict()


def test_transip_arms_in_config() -> None:
    model, _ = _transip_batch()
    assert model.config["arm"] == "embedding" and model.config["rotation_augmentation"] is False
    model, _ = _transip_batch(arm="augmentation")
    assert model.config["arm"] == "augmentation" and model.config["rotation_augmentation"] is True
    with pytest.raises(ValueError, match="unknown TransIP arm"):
        _transip_batch(arm="both")


def test_transip_augmentation_rotates_in_training_only() -> None:
    model, data = _transip_batch(arm="augmentation")
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(data)["energy"], model(data)["energy"])
        model.train()
        assert not torch.equal(model(data)["energy"], model(data)["energy"])


def test_transip_equivariance_loss_is_learnable() -> None:
    """The objective is a finite scalar that gradient steps on it lower (on a fixed rotation)."""
    from mlip.models.transip import equivariance_loss, random_rotations

    model, data = _transip_batch()
    rotation = random_rotations(2, torch.float64, torch.device("cpu"))
    first = equivariance_loss(model, data, rotation)
    assert first.shape == () and bool(torch.isfinite(first)) and float(first) > 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        equivariance_loss(model, data, rotation).backward()
        optimizer.step()
    assert float(equivariance_loss(model, data, rotation)) < 0.5 * float(first)
    # a single (3, 3) matrix applies to every structure; a non-orthogonal shape is refused
    assert bool(torch.isfinite(equivariance_loss(model, data, rotation[0])))
    with pytest.raises(ValueError, match="rotation must be"):
        equivariance_loss(model, data, torch.eye(3).expand(5, 3, 3))


_CALCULATOR_KWARGS = {
    "egnn": {"channels": 8, "num_radial": 6},
    "hegnn": {"channels": 8, "vector_channels": 2, "num_radial": 6},
    "transip": {"arm": "augmentation", **_TINY_TRANSIP},
    "leftnet": {"channels": 8, "num_radial": 6},
}


@pytest.mark.parametrize("name", sorted(_CALCULATOR_KWARGS))
def test_export_and_calculator_round_trip(name: str, tmp_path) -> None:
    """mlip.export.save -> MLIPCalculator gives the eager model's energy, forces and stress."""
    import numpy as np
    from ase.stress import full_3x3_to_voigt_6_stress

    from calculators import MLIPCalculator
    from mlip import keys
    from mlip.derivatives import ForceStress
    from mlip.export import save
    from mlip.graph import AtomicGraph
    from mlip.models import build_model
    from mlip.testing import perturb_parameters, rattled_crystal, rattled_molecule

    species = [1, 6, 8, 29]
    model = build_model(
        name, species=species, cutoff=4.0, dtype="float64", **_CALCULATOR_KWARGS[name]
    )
    model.set_statistics(avg_num_neighbors=10.0, reference_energies={1: -13.6, 6: -1000.0})
    perturb_parameters(model).eval()
    path = save(model, tmp_path / "model.pt", dataset="none")
    structures = [rattled_molecule(species, seed=3)]
    if name != "leftnet":
        structures.append(rattled_crystal(("Cu", "C"), seed=3))
    for atoms in structures:
        periodic = bool(atoms.pbc.all())
        atoms.calc = MLIPCalculator(path)
        expected = ForceStress(model, True, periodic)(AtomicGraph.from_atoms(atoms, 4.0).as_dict())
        energy = float(expected[keys.ENERGY])
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), expected[keys.FORCES].detach(), atol=1e-9)
        if periodic:
            stress = full_3x3_to_voigt_6_stress(expected[keys.STRESS][0].detach().numpy())
            np.testing.assert_allclose(atoms.get_stress(), stress, atol=1e-9)


def test_transip_augmentation_arm_has_no_objective_network() -> None:
    from mlip.models.transip import equivariance_loss

    model, data = _transip_batch(arm="augmentation")
    assert model.latent_transform is None
    with pytest.raises(ValueError, match="'embedding' arm"):
        equivariance_loss(model, data, torch.eye(3, dtype=torch.float64))


def test_trainer_adds_the_transip_objective(tmp_path: Path) -> None:
    """mlip-train adds the embedding arm's ``auxiliary_loss``: with equivariance_weight 0 and 1
    the same seeded run ends with different shared weights (identical if the hook were absent)."""
    from training.config import config_from_dict
    from training.trainer import train

    data = Path(__file__).resolve().parents[1] / "data" / "demo" / "demo_train.extxyz"

    def run(weight: float) -> dict[str, torch.Tensor]:
        out = tmp_path / f"w{weight}"
        hyper = {"num_layers": 1, "channels": 8, "num_heads": 2, "ffn_hidden": 8}
        config = config_from_dict(
            {
                "data": {"train": str(data), "valid": 0.25, "max_structures": 8},
                "model": {
                    "name": "transip",
                    "cutoff": 3.5,
                    "hyper": {**hyper, "arm": "embedding", "equivariance_weight": weight},
                },
                "train": {
                    "max_epochs": 1,
                    "batch": {"size": 3},
                    "num_threads": 1,
                    "progress_bar": False,
                },
                "output_dir": str(out),
            }
        )
        train(config)
        state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
        return {k: v for k, v in state.items() if "latent_transform" not in k}

    without, with_objective = run(0.0), run(1.0)
    assert any(not torch.equal(without[k], with_objective[k]) for k in without)
