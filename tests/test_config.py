"""Typed training configuration: defaults, overrides, error messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_defaults_and_round_trip() -> None:
    config = config_from_dict({"data": {"train": "a.xyz"}})
    assert isinstance(config, Config)
    assert config.train.max_epochs == 100 and config.train.dtype == "float32"
    assert config.data.valid == 0.1
    assert config_from_dict(config_to_dict(config)) == config


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "data: {train: a.xyz, valid: b.xyz}\n"
        "train: {lr: 5e-3, batch: {size: 4}}\n"
        "finetune: {from: old.pt}\n"
        "model: {hyper: {channels: 8}}\n"
    )
    config = load_config(
        path,
        [
            "train.max_epochs=3",
            "train.lr=1e-4",
            "data.valid=0.2",
            "loss.type=huber",
            "train.batch.max_atoms=100",
            "data.reference_energies={1: -13.6, 8: -2000}",
            "model.hyper.num_layers=1",
        ],
    )
    assert config.train.max_epochs == 3
    assert config.train.lr == pytest.approx(1e-4)
    assert config.data.valid == pytest.approx(0.2)
    assert config.loss.type == "huber"
    assert config.train.batch.size == 4 and config.train.batch.max_atoms == 100
    assert config.data.reference_energies == {1: -13.6, 8: -2000.0}
    assert config.finetune.from_ == "old.pt"
    assert config.model.hyper == {"channels": 8, "num_layers": 1}
    assert config_to_dict(config)["finetune"]["from"] == "old.pt"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"max_epochs": "abc"}}, "train.max_epochs: expected int, got 'abc'"),
        ({"train": {"max_epoch": 3}}, "train.max_epoch: unknown key"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"train": {"batch": {"size": 1.5}}}, "train.batch.size: expected int"),
        ({"loss": {"type": "l1"}}, "loss.type: expected 'mse' or 'huber'"),
        ({"train": {"schedule": "step"}}, "train.schedule"),
        ({"train": {"deterministic": "yes"}}, "train.deterministic: expected bool"),
        ({"data": {"valid": 1.5}}, "data.valid: a fraction must be in (0, 1)"),
        ({"data": {"reference_energies": "isolated"}}, "data.isolated_atoms"),
        ({"train": 3}, "train: expected a mapping"),
        ({"train": {"lr": -1}}, "train.lr: must be > 0"),
    ],
)
def test_errors_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    assert message in str(info.value)


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="train.max_epochs: expected int, got 'abc'"):
        load_config(None, ["train.max_epochs=abc"])


@pytest.mark.parametrize("name", ["acac.yaml", "demo.yaml", "mptrj.yaml", "omol25.yaml"])
def test_example_configs_parse(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.data.train
