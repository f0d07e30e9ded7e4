"""Build, rebuild, load and export energy models (``mlip-train``, ``mlip-export``).

``model.name`` is a registered model (``mlip.models.build_model``) or ``module:function``, a
builder with the same signature imported on demand (tests and plug-ins). A model is stored as
its ``model_config`` dict (``model.config`` plus the ``builder`` for imported builders) and a
state dict, so checkpoints stay ``weights_only``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.config import Config, data_sources, model_heads, source_heads

if TYPE_CHECKING:
    from training.data.prepare import TrainingData

__all__ = [
    "build_energy_model",
    "export_model",
    "fit_statistics",
    "initial_model",
    "load_pretrained",
    "model_config",
    "rebuild_model",
]


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


def fit_statistics(
    model: nn.Module, config: Config, data: TrainingData, references_only: bool = False
) -> dict[str, Any]:
    """Fit the model's statistics on the training data and set them; return what was set.

    A model with heads gets the statistics of all training frames on every head, then each
    head with training frames its own reference energies, shift and scale (``data.sources``
    of that head say how references are fitted); the result then has ``heads``:
    ``{name: statistics}``. ``references_only`` sets only the reference energies (fine-tuning).
    """
    species = [int(z) for z in model.species]
    sources = data_sources(config.data)

    def fitted(statistics: Any, head: str | None) -> dict[str, Any]:
        heads = model_heads(config)
        source = next((s for s in sources if head in source_heads(s, heads)), sources[0])
        values = statistics.for_model(source.reference_energies, species, source.isolated_atoms)
        return {"reference_energies": values["reference_energies"]} if references_only else values

    values = fitted(data.statistics, None)
    model.set_statistics(**values)
    if not data.head_statistics:
        return values
    values = dict(values, heads={})
    for name, statistics in data.head_statistics.items():
        head_values = fitted(statistics, name)
        model.set_statistics(**head_values, head=name)
        values["heads"][name] = head_values
    return values


def initial_model(
    config: Config, data: TrainingData, checkpoint: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The model a run starts from, the statistics given to it and its ``model_config``: the
    checkpoint's when resuming, else ``finetune.from`` (optionally with refitted reference
    energies), else a fresh model with the training statistics (per head for a model with
    heads, :func:`fit_statistics`)."""
    if checkpoint is not None:
        model = rebuild_model(checkpoint["model_config"], checkpoint["model"])
        return model, checkpoint["statistics"], checkpoint["model_config"]
    if config.finetune.from_:
        model, _ = load_pretrained(config.finetune.from_)
        species = [int(z) for z in model.species]
        unknown = sorted(set(data.species) - set(species))
        if unknown:
            raise ValueError(f"finetune.from: the model does not know atomic number(s) {unknown}")
        statistics: dict[str, Any] = {}
        if config.finetune.refit_references:
            statistics = fit_statistics(model, config, data, references_only=True)
    else:
        model = build_energy_model(config, data.species)
        statistics = fit_statistics(model, config, data)
    if data.states:  # exported as metadata info "trained_states" (the calculator warns)
        statistics["trained_states"] = data.states
    return model, statistics, model_config(model, config)


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


def export_model(
    model: nn.Module,
    path: str | Path,
    model_config: dict[str, Any],
    training_config: dict[str, Any],
    metrics: dict[str, Any],
    epochs: int,
    **info: Any,
) -> None:
    """Write a trained energy model as one TorchScript file (:func:`mlip.export.save`) with its
    dataset paths, metrics, ``model_config`` (for :func:`load_pretrained`), the training
    configuration and the number of epochs in the metadata; ``info`` adds entries (None values
    are left out), e.g. ``trained_states``: the total charges and multiplicities of the training
    frames, ``{"charge": [...], "spin": [...]}``, which the calculator warns outside of."""
    import mlip.export

    data = training_config.get("data", {})
    info = {k: v for k, v in info.items() if v is not None}
    dataset = {part: data.get(part) for part in ("train", "valid", "test")}
    if data.get("sources"):  # several sources: each part lists them (source order)
        dataset = {
            part: [{**data, **source}.get(part) for source in data["sources"]] for part in dataset
        }
    mlip.export.save(
        model.to("cpu"),
        path,
        dataset=dataset,
        metrics=metrics,
        model_config=model_config,
        training_config=training_config,
        epochs=epochs,
        **info,
    )
