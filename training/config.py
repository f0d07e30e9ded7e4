"""Typed training configuration: YAML (plus ``key=value`` overrides) into dataclasses.

Every section is a dataclass with documented defaults. :func:`load_config` rejects unknown keys
and wrong types with a message naming the dotted key, e.g.
``train.max_epochs: expected int, got 'abc'``.

Example::

    data:
      train: ../shared/data/acac/train_300K.xyz
      valid: 0.1                    # a path, or a fraction of train held out (seeded)
    model: {preset: small, cutoff: 5.0}
    train: {max_epochs: 100, lr: 0.005}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from training.errors import InputError

__all__ = [
    "BatchConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FinetuneConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "source_heads",
]


class ConfigError(InputError):
    """A configuration key is unknown, missing or has the wrong type (exit status 2)."""

    exit_code = 2


@dataclass
class DataConfig:
    """Where the data comes from and how to read it.

    Attributes:
        train: training file (any ASE-readable file, e.g. extxyz). Required (in each entry of
            ``sources`` when they are given).
        valid: a validation file, or a fraction in (0, 1) of ``train`` held out with
            ``train.seed``.
        test: optional test file, evaluated with the final model.
        format: reader format (``ase``, ``asedb``, ``aselmdb``, ``mptrj``; see
            ``training.data.readers``); None guesses it from the file name.
        energy_key: ``atoms.info`` key of the total energy (eV); None: the calculator, then
            ``info["energy"]``. For MPTrj JSON the frame field used as the energy.
        forces_key: ``atoms.arrays`` key of the forces (eV/Å); None: calculator / ``forces``.
        stress_key: ``atoms.info`` key of the stress (in ``stress_units`` and
            ``stress_convention``; 6 Voigt, 9 or 3x3 values); None: calculator / ``stress``.
        virial_key: ``atoms.info`` key of a virial (eV; stress = -virial / volume), used when
            there is no stress.
        stress_units: unit of the stress label: ``eV/A^3``, ``GPa`` or ``kbar``
            (mlearn, VASP OUTCAR ``in kB``: ``kbar``). MPTrj JSON is always read as kbar/vasp.
        stress_convention: ``ase`` (tensile positive; Voigt order xx yy zz yz xz xy) or ``vasp``
            (compressive positive; Voigt order xx yy zz xy yz zx). For a virial only the Voigt
            order applies.
        max_stress: largest accepted |stress component| in eV/Å³ after conversion (1 eV/Å³ =
            160 GPa); a larger one is refused as a unit mix-up.
        skip_invalid: skip frames with missing/NaN labels (counted and reported) instead of
            failing.
        reference_energies: per-element reference energies subtracted before learning:
            ``least_squares`` (fit on train), ``isolated`` (from ``isolated_atoms``), ``none``,
            or a mapping ``{atomic_number: eV}``.
        isolated_atoms: file of single-atom structures with their energies (E0s).
        max_structures: read at most this many structures of each file (debugging).
        num_workers: DataLoader worker processes that read frames and build neighbour lists
            (0: the training process does it). None: ``min(2, cpus - 1)``, 0 on one core.
            Changes no number of the run, only its speed.
        cache_graphs: keep the neighbour lists of frames read from a raw file (extxyz/ASE,
            MPTrj JSON, ``.aselmdb``: already held in memory) after building them once, in the
            workers; false rebuilds them every epoch (less memory). A store's frames are never
            cached: they are read lazily. Changes no number of the run.
        charge_key: ``atoms.info`` (or db ``data``) key of the total charge (e).
        spin_key: ``atoms.info`` (or db ``data``) key of the spin multiplicity (2S+1).
        default_charge: total charge of frames without one; None: with
            ``model.hyper.charge_spin`` a frame without a charge is an error.
        default_spin: spin multiplicity of frames without one; None: with
            ``model.hyper.charge_spin`` a frame without a multiplicity is an error.
        head: level-of-theory head (one of ``model.hyper.heads``) of every frame of this
            data (train, valid, test); None: the model's first head. With ``head_key`` the
            head of the frames that lack that key (None: such a frame is an error).
        head_key: ``atoms.info`` (or db ``data``) key holding each frame's head name (e.g.
            ``omol``, ``mptrj``), for one file mixing levels of theory; reference energies,
            shift and scale are then fitted per head on the training frames of that head. A
            store keeps the names read by ``mlip-data convert --head-key`` (default ``head``).
            None: every frame has the head ``head``.
        sources: several datasets in one run, e.g. one per head:
            ``[{train: a.extxyz, head: mptrj}, {train: b.extxyz, head: omol}]``. Each entry
            takes any ``data`` key but ``sources`` and ``num_workers``; keys it does not give
            come from this section. The training sets are concatenated; a fractional
            ``valid`` is held out of each source; reference energies, shift and scale are
            fitted per head on that head's training frames (of every source).
    """

    train: str | None = None
    valid: str | float = 0.1
    test: str | None = None
    format: Literal["ase", "asedb", "aselmdb", "mptrj"] | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    virial_key: str | None = None
    stress_units: Literal["eV/A^3", "GPa", "kbar"] = "eV/A^3"
    stress_convention: Literal["ase", "vasp"] = "ase"
    max_stress: float = 1.0
    skip_invalid: bool = False
    reference_energies: str | dict[int, float] = "least_squares"
    isolated_atoms: str | None = None
    max_structures: int | None = None
    num_workers: int | None = None
    cache_graphs: bool = True
    charge_key: str = "charge"
    spin_key: str = "spin"
    default_charge: int | None = None
    default_spin: int | None = None
    head: str | None = None
    head_key: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)


SOURCE_SHARED_KEYS = ("sources", "num_workers")
"""``data`` keys a ``data.sources`` entry cannot set (they belong to the whole run)."""


def data_sources(data: DataConfig) -> list[DataConfig]:
    """The datasets of a run: each ``data.sources`` entry over the rest of ``data``, or
    ``[data]`` without sources. Raises :class:`ConfigError` naming the entry's bad key."""
    if not data.sources:
        return [data]
    base = {k: v for k, v in config_to_dict(data).items() if k not in SOURCE_SHARED_KEYS}
    out = []
    for i, entry in enumerate(data.sources):
        if not isinstance(entry, dict):
            raise ConfigError(f"data.sources[{i}]: expected a mapping, got {entry!r}")
        for key in entry:
            if key in SOURCE_SHARED_KEYS:
                raise ConfigError(f"data.sources[{i}].{key}: set it in data, not per source")
        out.append(_build(DataConfig, {**base, **entry}, f"data.sources[{i}]"))
    return out


def model_heads(config: Config) -> list[str] | None:
    """``model.hyper.heads`` (the model's level-of-theory heads), or None."""
    heads = config.model.hyper.get("heads")
    return None if heads is None else [str(h) for h in heads]


def source_heads(data: DataConfig, heads: list[str] | None) -> list[str | None]:
    """The heads the frames of one dataset (one of :func:`data_sources`) may have: every head
    with ``head_key`` (each frame names its own), else ``head`` (None: the first head);
    ``[None]`` for a model without heads."""
    if heads is None:
        return [None]
    if data.head_key is not None:
        return list(heads)
    return [data.head or heads[0]]


@dataclass
class ModelConfig:
    """Which model to build (``mlip.models.build_model``).

    Attributes:
        name: registered model name; None = the library default. ``module:function`` imports a
            builder with the same signature (used by tests and plug-ins).
        preset: size preset of the model (GMEP: ``small``, ``medium``, ``large``).
        cutoff: neighbour cutoff in Å.
        hyper: extra hyperparameters passed to the builder as keyword arguments.
    """

    name: str | None = None
    preset: str = "small"
    cutoff: float = 5.0
    hyper: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchConfig:
    """Batch budget: a batch is closed when adding a structure would exceed any limit.

    Attributes:
        size: maximum structures per (global) batch.
        max_atoms: maximum atoms per batch, or None.
        max_edges: maximum edges per batch, or None.
    """

    size: int = 16
    max_atoms: int | None = None
    max_edges: int | None = None


@dataclass
class LossConfig:
    """Weighted loss on energy per atom (eV/atom), forces (eV/Å) and stress (eV/Å³).

    Attributes:
        type: ``mse`` or ``huber``.
        huber_delta: Huber transition point (same units as each target).
        energy_weight, forces_weight, stress_weight: weights of the three terms.
        switch_epoch: from this epoch (0-based) on use the ``switch_*`` weights (e.g. raise the
            energy weight late in training); None = never switch.
        switch_fraction: instead of ``switch_epoch``: switch at the first epoch that starts
            after this fraction (0-1] of the run's budget is used, the budget being
            ``train.max_epochs`` and, where set, ``train.max_steps`` and ``train.max_time``
            (the most used of them counts). With 200 epochs, 0.75 is epoch 150; under a
            ``max_time`` budget the switch moves with the machine's speed.
        switch_energy_weight, switch_forces_weight, switch_stress_weight: the late weights.
        head_weights: for a model with heads, a multiplier of every loss term of the structures
            of each head, e.g. ``{mptrj: 0.1, omol: 1.0}`` (heads not listed: 1); balances
            levels of theory whose errors differ in size. None: all 1.
    """

    type: Literal["mse", "huber"] = "mse"
    huber_delta: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 0.0
    switch_epoch: int | None = None
    switch_fraction: float | None = None
    switch_energy_weight: float = 10.0
    switch_forces_weight: float = 10.0
    switch_stress_weight: float = 0.0
    head_weights: dict[str, float] | None = None


@dataclass
class TrainConfig:
    """Optimisation, schedule and run control.

    Attributes:
        max_epochs: number of epochs.
        max_time: wall-clock limit in minutes (checked between steps); then validate, export
            and stop cleanly. None = no limit.
        max_steps: stop after this many optimiser steps in total (then validate, export and
            stop cleanly, like ``max_time``). None = no limit.
        seed: seeds Python, NumPy and torch, the validation split and the batch order.
        device: ``cpu``, ``cuda``, ``cuda:1``... Under torchrun each rank uses its local GPU.
        dtype: model dtype, ``float32`` or ``float64``.
        batch: batch budget (global over all ranks).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0 to ``lr`` over this many optimiser steps.
        schedule: ``cosine`` (to ``min_lr`` at the end of the budget: the last step of
            ``max_epochs`` / ``max_steps``, or ``max_time`` if the clock runs out first, in
            which case the learning rate depends on the machine's speed) or ``plateau`` (multiply by
            ``plateau_factor`` after ``plateau_patience`` epochs without improvement).
        min_lr: lower bound of the learning rate.
        plateau_factor, plateau_patience: see ``schedule``.
        grad_clip: maximum gradient norm; None or 0 = no clipping.
        ema_decay: decay of the exponential moving average of the weights (used for validation
            and export); 0 disables it.
        patience: early stopping after this many epochs without a better validation loss;
            None = never.
        checkpoint_every: also write a checkpoint every N optimiser steps (0 = per epoch only).
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``.
        progress_bar: show progress on rank 0: a tqdm bar on a terminal, else a plain log
            line every 30 s.
        num_threads: torch CPU threads; None leaves torch's default.
    """

    max_epochs: int = 100
    max_time: float | None = None
    max_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    batch: BatchConfig = field(default_factory=BatchConfig)
    lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["cosine", "plateau"] = "cosine"
    min_lr: float = 1e-6
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    grad_clip: float | None = 10.0
    ema_decay: float = 0.99
    patience: int | None = None
    checkpoint_every: int = 0
    deterministic: bool = True
    progress_bar: bool = True
    num_threads: int | None = None


@dataclass
class FinetuneConfig:
    """Start from trained weights.

    Attributes:
        from_: an exported model (``mlip-export`` / ``model.pt``) or a training checkpoint.
            Written ``from`` in YAML.
        refit_references: refit the per-element reference energies on the new training data.
    """

    from_: str | None = None
    refit_references: bool = False


@dataclass
class Config:
    """The whole run.

    Attributes:
        data: where the data comes from (:class:`DataConfig`).
        model: which model to build (:class:`ModelConfig`).
        train: optimisation and run control (:class:`TrainConfig`).
        loss: loss weights (:class:`LossConfig`).
        finetune: start from trained weights (:class:`FinetuneConfig`).
        output_dir: folder that receives ``checkpoint.pt``, ``metrics.csv``, plots,
            ``summary.json`` and ``model.pt``; a folder holding a run is not replaced without
            ``mlip-train --overwrite`` (``--resume`` continues it).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    output_dir: str = "runs/default"


# YAML spelling -> attribute name where they differ (``from`` is a Python keyword).
_ALIASES = {"from": "from_"}
_REVERSE_ALIASES = {v: k for k, v in _ALIASES.items()}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` and return it (ints widen to float)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(annotation):
            return value
    elif origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if isinstance(value, dict):
            return {
                _convert(k, key_type, f"{key}.{k}"): _convert(v, value_type, f"{key}.{k}")
                for k, v in value.items()
            }
    elif origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, list | tuple):
            return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are used
        raise ConfigError(f"{key}: unsupported annotation {annotation}")
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        name = _ALIASES.get(str(raw_key), str(raw_key))
        dotted = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        if name not in names:
            known = sorted(_REVERSE_ALIASES.get(n, n) for n in names)
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(known)})")
        kwargs[name] = _convert(value, hints[name], dotted)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and check a :class:`Config` from a plain (YAML) mapping."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(values).__name__}")
    config = _build(Config, values, "")
    validate(config)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict (YAML/JSON-able) form; ``config_from_dict`` inverts it."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[_REVERSE_ALIASES.get(f.name, f.name)] = value
    return out


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a plain mapping (in place; also returned).

    The value is parsed with ``yaml.safe_load`` so ``train.lr=1e-3`` is a float and
    ``data.test=null`` is None.
    """
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        dotted, text = override.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {override!r} has an empty key")
        target = values
        for i, part in enumerate(parts[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a section")
            target = child
        target[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    return values


def _fix_yaml_floats(values: Any) -> Any:
    """YAML 1.1 reads ``5e-3`` as a string; turn such strings into floats."""
    if isinstance(values, dict):
        return {k: _fix_yaml_floats(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_fix_yaml_floats(v) for v in values]
    if isinstance(values, str):
        try:
            if any(c in values for c in "eE") and values.lstrip("+-")[:1].isdigit():
                return float(values)
        except ValueError:
            return values
    return values


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from defaults when ``path`` is None), apply overrides, check.

    Relative data paths stay relative to the current directory (run from the repo root).
    """
    values: dict[str, Any] = {}
    if path is not None:
        with open(path) as handle:
            loaded = yaml.safe_load(handle)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        values = loaded or {}
    values = apply_overrides(values, list(overrides or []))
    return config_from_dict(_fix_yaml_floats(values))


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    data, train = config.data, config.train
    if isinstance(data.valid, float) and data.valid == 0.0:
        raise ConfigError(
            "data.valid: 0 leaves no validation set, but mlip-train picks the exported model "
            "and stops early by the validation loss; hold out a fraction (e.g. data.valid=0.1) "
            "or give a validation file (data.valid=path.extxyz)"
        )
    if isinstance(data.valid, float) and not 0.0 < data.valid < 1.0:
        raise ConfigError(f"data.valid: a fraction must be in (0, 1), got {data.valid}")
    if data.max_stress <= 0:
        raise ConfigError(f"data.max_stress: must be > 0 eV/Å³, got {data.max_stress}")
    if config.model.name in (None, "gmep"):
        from mlip.models.gmep import PRESETS

        if config.model.preset not in PRESETS:
            raise ConfigError(
                f"model.preset: unknown preset {config.model.preset!r}; known: {', '.join(PRESETS)}"
            )
    if isinstance(data.reference_energies, str) and data.reference_energies not in (
        "least_squares",
        "isolated",
        "none",
    ):
        raise ConfigError(
            "data.reference_energies: expected 'least_squares', 'isolated', 'none' or a "
            f"mapping, got {data.reference_energies!r}"
        )
    if data.sources and (data.train or data.head):
        raise ConfigError(
            "data.train/data.head: give each source's train file and head in data.sources"
        )
    loss = config.loss
    if loss.switch_epoch is not None and loss.switch_fraction is not None:
        raise ConfigError("loss.switch_epoch and loss.switch_fraction: give one of them")
    if loss.switch_fraction is not None and not 0 < loss.switch_fraction <= 1:
        raise ConfigError(f"loss.switch_fraction must be in (0, 1], got {loss.switch_fraction}")
    heads = model_heads(config)
    for head, weight in (config.loss.head_weights or {}).items():
        if heads is None or head not in heads:
            known = f"the model's heads are {', '.join(heads)}" if heads else "the model has none"
            raise ConfigError(f"loss.head_weights: unknown head {head!r}; {known}")
        if not (isinstance(weight, int | float) and weight >= 0):
            raise ConfigError(f"loss.head_weights.{head}: must be a number >= 0, got {weight!r}")
    fits: dict[str | None, tuple[Any, Any]] = {}
    for i, source in enumerate(data_sources(data)):
        where = f"data.sources[{i}]" if data.sources else "data"
        if source.reference_energies == "isolated" and not source.isolated_atoms:
            raise ConfigError(
                f"{where}.isolated_atoms: required when data.reference_energies=isolated"
            )
        if source.head is not None and heads is None:
            raise ConfigError(
                f"{where}.head: {source.head!r} given, but the model has no heads; "
                "list them in model.hyper.heads"
            )
        if source.head is not None and source.head not in heads:
            raise ConfigError(
                f"{where}.head: unknown head {source.head!r}; the model's heads are "
                f"{', '.join(heads)} (model.hyper.heads)"
            )
        if source.head_key is not None and heads is None:
            raise ConfigError(
                f"{where}.head_key: {source.head_key!r} given, but the model has no heads; "
                "list them in model.hyper.heads"
            )
        if data.sources and not source.train:
            raise ConfigError(f"{where}.train: a training file is required")
        fit = (source.reference_energies, source.isolated_atoms)
        for head in source_heads(source, heads):
            if fits.setdefault(head, fit) != fit:
                mixed = " (a source with head_key may hold frames of any head)"
                raise ConfigError(
                    f"{where}.reference_energies/isolated_atoms: the sources of head "
                    f"{head!r} must agree (the head's reference energies are fitted once)"
                    + (mixed if source.head_key is not None else "")
                )
    if config.model.cutoff <= 0:
        raise ConfigError(f"model.cutoff: must be > 0 Å, got {config.model.cutoff}")
    positive = {
        "train.max_epochs": train.max_epochs,
        "train.batch.size": train.batch.size,
        "train.lr": train.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if train.patience is not None and train.patience < 1:
        raise ConfigError(f"train.patience: must be >= 1 or null, got {train.patience}")
    if not 0.0 <= train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {train.ema_decay}")
    if train.max_steps is not None and train.max_steps < 0:
        raise ConfigError(f"train.max_steps: must be >= 0 or null, got {train.max_steps}")
    if data.num_workers is not None and data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0 or null, got {data.num_workers}")
    if train.checkpoint_every < 0 or train.warmup_steps < 0:
        raise ConfigError("train.checkpoint_every and train.warmup_steps must be >= 0")
