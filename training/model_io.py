"""Build, rebuild and load energy models for training, export and evaluation.

``model.name`` is a registered model (``mlip.models.build_model``) or ``module:function``, a
builder with the same signature imported on demand (tests and plug-ins). A model is stored as
its ``model_config`` dict (``model.config`` plus the ``builder`` for imported builders) and a
state dict, so checkpoints stay ``weights_only``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.config import Config

__all__ = ["build_energy_model", "load_pretrained", "model_config", "rebuild_model"]


def _resolve_builder(name: str | None) -> tuple[Callable[..., nn.Module], str | None]:
    """``module:function`` imports a builder; anything else uses ``mlip.models.build_model``."""
    if name is not None and ":" in name:
        module_name, attr = name.split(":", 1)
        return getattr(importlib.import_module(module_name), attr), None
    from mlip.models import build_model

    return build_model, name


def build_energy_model(config: Config, species: Sequence[int]) -> nn.Module:
    """A fresh energy model for ``species`` as the config describes it."""
    builder, name = _resolve_builder(config.model.name)
    return builder(
        name,
        species=list(species),
        cutoff=config.model.cutoff,
        preset=config.model.preset,
        dtype=getattr(torch, config.train.dtype),
        **config.model.hyper,
    )


def model_config(model: nn.Module, config: Config) -> dict[str, Any]:
    """The dict :func:`rebuild_model` needs: ``model.config`` (+ the imported builder)."""
    out = dict(model.config)
    if config.model.name is not None and ":" in config.model.name:
        out["builder"] = config.model.name
        out.pop("name", None)
    return out


def rebuild_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """A model from its ``model_config`` dict and a state dict (checkpoints, exported files)."""
    config = dict(config)
    builder, _ = _resolve_builder(config.pop("builder", None))
    if "dtype" in config and isinstance(config["dtype"], str):
        config["dtype"] = getattr(torch, config["dtype"].replace("torch.", ""))
    model = builder(**config)
    # scripted modules also list non-persistent buffers; keep what the model saves
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
    return model


def load_pretrained(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The energy model of a training checkpoint (best or EMA weights) or an exported model."""
    import mlip.export

    try:
        mlip.export.read_metadata(path)
    except mlip.export.ModelFileError:  # not an exported model: a training checkpoint
        state = load_checkpoint(path)
        weights = state.get("best_model") or state["ema"]["shadow"]
        return rebuild_model(state["model_config"], weights), {"source": str(path)}
    scripted, metadata = mlip.export.load(path, device="cpu")
    meta = dict(metadata) if isinstance(metadata, dict) else dict(vars(metadata))
    config = meta.get("info", {}).get("model_config") or meta.get("model_config")
    if config is None:
        raise ValueError(f"{path}: the exported model has no model_config in its metadata")
    prefix = "energy_model."  # the exported module is ForceStress(energy_model)
    weights = {
        k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in scripted.state_dict().items()
    }
    return rebuild_model(config, weights), meta
