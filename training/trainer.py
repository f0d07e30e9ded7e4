"""The training loop: data, statistics, model, AdamW + schedule + EMA, validation,
checkpoints, logs, plots and the final export.

Entry point: :func:`train` (``mlip-train`` parses the YAML and calls it). Runs unchanged under
``torchrun`` (see :mod:`training.distributed`): every rank holds the data, each global batch is
split over the ranks, gradients and metrics are summed, and only rank 0 writes files.

Reproducibility: the batch order of epoch ``e`` is a permutation drawn from a generator seeded
with ``(seed, e)``, so resuming mid-epoch only needs the number of batches already done. Model,
optimiser, EMA, scheduler, RNG and loop state live in the checkpoint.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlip import AtomicGraph
from mlip.allocator import keep_freed_memory
from training import distributed
from training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.config import Config, config_from_dict, config_to_dict
from training.ema import EMA
from training.loss import (
    LossCounts,
    LossWeights,
    batch_counts,
    compute_statistics,
    weighted_loss,
)
from training.metrics import ErrorMetrics, selection_loss
from training.plots import RunLog

__all__ = [
    "GraphSet",
    "LRSchedule",
    "build_energy_model",
    "evaluate",
    "load_graphs",
    "make_batches",
    "train",
]

log = logging.getLogger("mlip.train")

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


# ============================================================================ data
@dataclass
class GraphSet:
    """Structures with their neighbour lists, indexable.

    Attributes:
        graphs: one :class:`mlip.AtomicGraph` per structure: a list in memory, or a lazy
            :class:`training.data.datasets.GraphDataset` over an HDF5 store (``mlip-data convert``).
        source: where they came from (for metadata).
        store_statistics: for a store, its cached :class:`training.data.store.Statistics`.
    """

    graphs: Sequence[AtomicGraph]
    source: str = ""
    store_statistics: Any = None
    n_atoms: np.ndarray = field(init=False)
    n_edges: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if hasattr(self.graphs, "n_edges"):  # GraphDataset: counts without building graphs
            self.n_atoms = np.asarray(self.graphs.n_atoms, dtype=np.int64)
            self.n_edges = np.asarray(self.graphs.n_edges, dtype=np.int64)
        else:
            self.n_atoms = np.array([g.positions.shape[0] for g in self.graphs], dtype=np.int64)
            self.n_edges = np.array([g.num_edges for g in self.graphs], dtype=np.int64)

    @property
    def lazy(self) -> bool:
        return not isinstance(self.graphs, list)

    def __len__(self) -> int:
        return len(self.graphs)

    def subset(self, indices: Sequence[int], source: str | None = None) -> GraphSet:
        return GraphSet([self.graphs[i] for i in indices], source or self.source)

    def species(self) -> list[int]:
        if self.store_statistics is not None:
            return sorted(int(z) for z in self.store_statistics.element_counts)
        if not len(self.graphs):
            return []
        return sorted(set(torch.cat([g.atomic_numbers for g in self.graphs]).tolist()))


def _is_store(path: str) -> bool:
    import h5py

    return Path(path).is_file() and h5py.is_hdf5(path)


def load_store(path: str, config: Config) -> tuple[GraphSet, GraphSet | None]:
    """Train (and, for a fractional ``data.valid``, valid) sets of an HDF5 store, read lazily;
    statistics come from the store's cache (``training.data.store.compute_statistics``)."""
    from training.data.datasets import GraphDataset
    from training.data.store import Store, compute_statistics, make_split

    store = Store(path)
    cutoff = config.model.cutoff
    if isinstance(config.data.valid, float):
        fractions = {"train": 1.0 - config.data.valid, "valid": config.data.valid}
        parts = make_split(
            store, fractions, seed=config.train.seed, name=f"mlip-train-{config.train.seed}"
        )
    else:
        parts = {"train": np.arange(len(store)), "valid": None}
    sets = {}
    for name, indices in parts.items():
        if indices is None:
            continue
        statistics = compute_statistics(store, cutoff=cutoff, indices=indices)
        sets[name] = GraphSet(GraphDataset(store, cutoff, indices), f"{path} ({name})", statistics)
    return sets["train"], sets.get("valid")


def load_graphs(path: str, config: Config, required: Sequence[str] = ("energy",)) -> GraphSet:
    """Read a dataset file with :mod:`training.data.readers` and build graphs at the model cutoff."""
    from training.data.frames import SkipReport
    from training.data.readers import ReaderOptions, read_frames

    data = config.data
    options = ReaderOptions(
        energy_key=data.energy_key,
        forces_key=data.forces_key,
        stress_key=data.stress_key,
        virial_key=data.virial_key,
    )
    report = SkipReport()
    frames = read_frames(
        path,
        data.format,
        options,
        required=required,
        skip_invalid=data.skip_invalid,
        report=report,
    )
    if report.total:
        log.warning("%s: %s", path, report)
    if data.max_structures is not None:
        frames = frames[: data.max_structures]
    if not frames:
        raise ValueError(f"{path}: no usable structures")
    return GraphSet([frame.to_graph(config.model.cutoff) for frame in frames], str(path))


def make_batches(
    order: Sequence[int],
    n_atoms: np.ndarray,
    n_edges: np.ndarray,
    max_structures: int,
    max_atoms: int | None = None,
    max_edges: int | None = None,
) -> list[list[int]]:
    """Split ``order`` greedily into batches within the budget (a structure larger than the
    budget gets a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    atoms = edges = 0
    for index in order:
        index = int(index)
        a, e = int(n_atoms[index]), int(n_edges[index])
        full = len(current) >= max_structures
        full = full or (max_atoms is not None and atoms + a > max_atoms)
        full = full or (max_edges is not None and edges + e > max_edges)
        if current and full:
            batches.append(current)
            current, atoms, edges = [], 0, 0
        current.append(index)
        atoms += a
        edges += e
    if current:
        batches.append(current)
    return batches


def _epoch_batches(dataset: GraphSet, config: Config, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(config.train.seed * 1_000_003 + epoch)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    budget = config.train.batch
    return make_batches(
        order, dataset.n_atoms, dataset.n_edges, budget.size, budget.max_atoms, budget.max_edges
    )


def _fixed_batches(dataset: GraphSet, config: Config, indices: Sequence[int]) -> list[list[int]]:
    budget = config.train.batch
    return make_batches(
        indices, dataset.n_atoms, dataset.n_edges, budget.size, budget.max_atoms, budget.max_edges
    )


def _is_3d_periodic_with_stress(graph: AtomicGraph) -> bool:
    return graph.stress is not None and bool(graph.pbc.all())


# ============================================================================ model
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


def rebuild_model(model_config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """A model from its ``config`` dict and a state dict (checkpoints, exported files)."""
    model_config = dict(model_config)
    builder, _ = _resolve_builder(model_config.pop("builder", None))
    if "dtype" in model_config and isinstance(model_config["dtype"], str):
        model_config["dtype"] = getattr(torch, model_config["dtype"].replace("torch.", ""))
    model = builder(**model_config)
    # scripted modules also list non-persistent buffers; keep what the model saves
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
    return model


def _model_config(model: nn.Module, config: Config) -> dict[str, Any]:
    out = dict(model.config)
    if config.model.name is not None and ":" in config.model.name:
        out["builder"] = config.model.name
        out.pop("name", None)
    return out


def load_pretrained(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The energy model of a training checkpoint (EMA weights) or of an exported model."""
    import mlip.export

    try:
        mlip.export.read_metadata(path)
    except mlip.export.ModelFileError:  # not an exported model: a training checkpoint
        state = load_checkpoint(path)
        weights = state.get("best_model") or state["ema"]["shadow"]
        return rebuild_model(state["model_config"], weights), {"source": str(path)}
    scripted, metadata = mlip.export.load(path, device="cpu")
    meta = dict(metadata) if isinstance(metadata, dict) else dict(vars(metadata))
    model_config = meta.get("info", {}).get("model_config") or meta.get("model_config")
    if model_config is None:
        raise ValueError(f"{path}: the exported model has no model_config in its metadata")
    prefix = "energy_model."  # the exported module is ForceStress(energy_model)
    weights = {
        k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in scripted.state_dict().items()
    }
    return rebuild_model(model_config, weights), meta


def _force_stress(model: nn.Module, stress: bool) -> nn.Module:
    from mlip.derivatives import ForceStress

    return ForceStress(model, compute_forces=True, compute_stress=stress)


# ============================================================================ schedule
class LRSchedule:
    """Linear warm-up, then cosine decay to ``min_lr`` or reduce-on-plateau.

    The state is plain numbers (:meth:`state_dict`), so checkpoints stay ``weights_only``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: Config, total_steps: int):
        self.optimizer = optimizer
        self.train = config.train
        self.total_steps = max(total_steps, 1)
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0

    def lr_at(self, step: int) -> float:
        cfg = self.train
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "cosine":
            span = max(self.total_steps - cfg.warmup_steps, 1)
            progress = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
            base = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            base = max(cfg.lr * self.plateau_scale, cfg.min_lr)
        return base * warm

    def set_step(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def epoch_end(self, val_loss: float) -> None:
        if self.train.schedule != "plateau" or not math.isfinite(val_loss):
            return
        if val_loss < self.best:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.train.plateau_patience:
                self.plateau_scale *= self.train.plateau_factor
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, float]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad"])


# ============================================================================ evaluation
def evaluate(
    model: nn.Module,
    dataset: GraphSet,
    config: Config,
    device: torch.device,
    indices: Sequence[int] | None = None,
    reduce: bool = True,
    collect: bool = False,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """MAE/RMSE of ``model`` (an energy model, eval mode) on ``dataset[indices]``.

    Returns the metrics (summed over ranks when ``reduce``) and, with ``collect``, arrays for
    parity plots: ``energy_ref``/``energy_pred`` (eV/atom), ``forces_ref``/``forces_pred``.
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    wrappers = {flag: _force_stress(model, flag).eval() for flag in (False, True)}
    metrics = ErrorMetrics()
    parity: dict[str, list[np.ndarray]] = {
        k: [] for k in ("energy_ref", "energy_pred", "forces_ref", "forces_pred")
    }
    for batch in _fixed_batches(dataset, config, indices):
        graph = AtomicGraph.batch([dataset.graphs[i] for i in batch]).to(device)
        use_stress = all(_is_3d_periodic_with_stress(dataset.graphs[i]) for i in batch)
        predictions = wrappers[use_stress](graph.as_dict())
        predictions = {k: v.detach() for k, v in predictions.items()}
        metrics.update(predictions, graph)
        if collect:
            n_atoms = graph.num_atoms.to(torch.float64)
            parity["energy_ref"].append((graph.energy / n_atoms).cpu().numpy())
            parity["energy_pred"].append((predictions["energy"] / n_atoms).cpu().numpy())
            if graph.forces is not None:
                parity["forces_ref"].append(graph.forces.cpu().numpy().ravel())
                parity["forces_pred"].append(predictions["forces"].cpu().numpy().ravel())
    if reduce:
        metrics.all_reduce()
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parity.items()}
    return metrics.compute(), arrays


# ============================================================================ the loop
@dataclass
class _Data:
    train: GraphSet
    valid: GraphSet | None
    test: GraphSet | None

    def species(self) -> list[int]:
        """Atomic numbers present in any split (an element only in valid/test gets a
        least-squares reference energy of 0 and a warning)."""
        found = set(self.train.species())
        for other in (self.valid, self.test):
            if other is not None:
                extra = set(other.species()) - found
                if extra:
                    log.warning("atomic number(s) %s are not in the training set", sorted(extra))
                found |= extra
        return sorted(found)


def _load_data(config: Config) -> _Data:
    data = config.data
    if not data.train:
        raise ValueError("data.train: a training file is required")
    if _is_store(data.train):
        train_set, valid_from_store = load_store(data.train, config)
        if isinstance(data.valid, str):
            valid_from_store = load_graphs(data.valid, config)
        test_store = load_graphs(data.test, config) if data.test else None
        return _Data(train_set, valid_from_store, test_store)
    train_set = load_graphs(data.train, config)
    if isinstance(data.valid, str):
        valid_set: GraphSet | None = load_graphs(data.valid, config)
    else:
        n_valid = max(1, int(round(data.valid * len(train_set))))
        if n_valid >= len(train_set):
            raise ValueError(
                f"data.valid={data.valid} leaves no training data of {len(train_set)} structures"
            )
        generator = torch.Generator().manual_seed(config.train.seed)
        order = torch.randperm(len(train_set), generator=generator).tolist()
        valid_set = train_set.subset(sorted(order[:n_valid]), f"{data.train} (valid split)")
        train_set = train_set.subset(sorted(order[n_valid:]))
    test_set = load_graphs(data.test, config) if data.test else None
    return _Data(train_set, valid_set, test_set)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loss_weights(config: Config, epoch: int) -> LossWeights:
    loss = config.loss
    if loss.switch_epoch is not None and epoch >= loss.switch_epoch:
        return LossWeights(
            loss.switch_energy_weight, loss.switch_forces_weight, loss.switch_stress_weight
        )
    return LossWeights(loss.energy_weight, loss.forces_weight, loss.stress_weight)


def _config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("hyper",):
            keys += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def train(config: Config, resume: bool = False) -> dict[str, Any]:
    """Run a whole training as configured; return the final metrics.

    Writes to ``config.output_dir``: ``checkpoint.pt`` (every epoch and every
    ``train.checkpoint_every`` steps), ``metrics.csv``, ``learning_curve.png``,
    ``parity.png``, ``model.pt`` (best EMA model, exported) and ``summary.json``.
    """
    info, device = distributed.setup(config.train.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    try:
        return _train(config, resume, info, device)
    finally:  # leave the process as we found it (tests train in-process)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
        distributed.cleanup()


def _train(
    config: Config, resume: bool, info: distributed.DistInfo, device: torch.device
) -> dict[str, Any]:
    start_time = time.monotonic()
    cfg = config.train
    output_dir = Path(config.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cpu":
        keep_freed_memory()  # large tensors reuse heap memory instead of page-faulting each step
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _seed_everything(cfg.seed)

    checkpoint_path = output_dir / CHECKPOINT_NAME
    checkpoint = None
    if resume:
        if checkpoint_path.exists():
            checkpoint = load_checkpoint(checkpoint_path)
            changed = _config_differences(checkpoint["config"], config_to_dict(config))
            changed = [k for k in changed if k not in ("train.max_epochs", "train.max_time")]
            if changed and info.is_main:
                log.warning("resuming with a changed configuration: %s", ", ".join(changed))
        elif info.is_main:
            log.warning("--resume: no %s yet, starting from scratch", checkpoint_path)

    data = _load_data(config)
    train_set = data.train

    # ---- model
    if checkpoint is not None:
        model = rebuild_model(checkpoint["model_config"], checkpoint["model"])
        statistics = checkpoint["statistics"]
    else:
        if config.finetune.from_:
            model, _ = load_pretrained(config.finetune.from_)
            species = [int(z) for z in model.species]
            unknown = sorted(set(data.species()) - set(species))
            if unknown:
                raise ValueError(
                    f"finetune.from: the model does not know atomic number(s) {unknown}"
                )
            statistics = {}
            if config.finetune.refit_references:
                statistics = compute_statistics(train_set, config, species)
                model.set_statistics(reference_energies=statistics["reference_energies"])
        else:
            species = data.species()
            model = build_energy_model(config, species)
            statistics = compute_statistics(train_set, config, species)
            model.set_statistics(**statistics)
    model = model.to(device)
    distributed.broadcast_module(model)
    model_config = (
        checkpoint["model_config"] if checkpoint is not None else _model_config(model, config)
    )

    use_stress = config.loss.stress_weight > 0 or (
        config.loss.switch_epoch is not None and config.loss.switch_stress_weight > 0
    )
    if use_stress and not train_set.lazy:
        use_stress = any(_is_3d_periodic_with_stress(g) for g in train_set.graphs)
    wrappers = {False: _force_stress(model, False).train()}
    if use_stress:
        wrappers[True] = _force_stress(model, True).train()
    eval_model = copy.deepcopy(model).eval()

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_epoch_batches(train_set, config, 0))
    schedule = LRSchedule(optimizer, config, steps_per_epoch * cfg.max_epochs)
    ema = EMA(model, cfg.ema_decay)

    epoch, batches_done, global_step = 0, 0, 0
    best_loss, best_epoch, bad_epochs = math.inf, -1, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    epoch_loss = torch.zeros(2, dtype=torch.float64)  # sum of step losses, number of steps
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["scheduler"])
        ema.load_state_dict(checkpoint["ema"])
        progress = checkpoint["progress"]
        epoch, batches_done = int(progress["epoch"]), int(progress["batches_done"])
        global_step = int(progress["global_step"])
        best_loss, best_epoch = float(progress["best_loss"]), int(progress["best_epoch"])
        bad_epochs = int(progress["bad_epochs"])
        epoch_loss = progress["epoch_loss"].clone()
        best_state = checkpoint.get("best_model")
        history = list(checkpoint["history"])
        restore_rng_state(checkpoint["rng"])
        if info.is_main:
            log.info("resumed at epoch %d, batch %d (step %d)", epoch, batches_done, global_step)

    run_log = RunLog(output_dir, info.is_main)

    def make_checkpoint() -> None:
        if not info.is_main:
            return
        state = {
            "format": "mlip-checkpoint-1",
            "config": config_to_dict(config),
            "model_config": model_config,
            "statistics": statistics,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": capture_rng_state(),
            "progress": {
                "epoch": epoch,
                "batches_done": batches_done,
                "global_step": global_step,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "epoch_loss": epoch_loss,
            },
            "history": history,
        }
        if best_state is not None:
            state["best_model"] = best_state
        save_checkpoint(state, checkpoint_path)

    def out_of_time() -> bool:
        if cfg.max_time is None:
            return False
        flag = torch.tensor([float(time.monotonic() - start_time > cfg.max_time * 60.0)])
        if info.enabled:  # rank 0 decides for everyone
            flag = distributed.all_reduce_sum(flag * float(info.is_main))
        return bool(flag.item() > 0)

    def validate(epoch_index: int) -> dict[str, float]:
        ema.copy_to(eval_model)
        if data.valid is None:
            return {}
        indices = list(range(info.rank, len(data.valid), info.world_size))
        metrics, _ = evaluate(eval_model, data.valid, config, device, indices)
        return metrics

    stop_reason = "max_epochs"
    progress_bar = None
    timed_out = False
    while epoch < cfg.max_epochs:
        weights = _loss_weights(config, epoch)
        if config.loss.switch_epoch is not None and epoch == config.loss.switch_epoch:
            if batches_done == 0:  # the criterion changes: restart best-model tracking
                best_loss, bad_epochs = math.inf, 0
        batches = _epoch_batches(train_set, config, epoch)
        if info.is_main and cfg.progress_bar:
            from tqdm import tqdm

            progress_bar = tqdm(
                total=len(batches),
                initial=batches_done,
                desc=f"epoch {epoch}",
                leave=False,
                dynamic_ncols=True,
            )
        tick, structures_seen = time.monotonic(), 0
        for batch in batches[batches_done:]:
            if out_of_time():
                timed_out = True
                break
            share = batch[info.rank :: info.world_size]
            graphs = [train_set.graphs[i] for i in share]
            step_stress = use_stress and all(_is_3d_periodic_with_stress(g) for g in graphs)
            if info.enabled:  # every rank must agree on whether stress is used
                flag = torch.tensor([0.0 if step_stress or not graphs else 1.0])
                step_stress = use_stress and distributed.all_reduce_sum(flag).item() == 0
            graph = AtomicGraph.batch(graphs) if graphs else None
            local = (
                batch_counts(graph, step_stress) if graph is not None else LossCounts(0.0, 0.0, 0.0)
            )
            counts = LossCounts.from_tensor(distributed.all_reduce_sum(local.as_tensor()))
            schedule.set_step(global_step)
            optimizer.zero_grad(set_to_none=True)
            if graph is not None:
                graph = graph.to(device)
                predictions = wrappers[step_stress](graph.as_dict())
                loss, _ = weighted_loss(
                    predictions,
                    graph,
                    weights,
                    counts,
                    config.loss.type,
                    config.loss.huber_delta,
                )
                loss.backward()
                loss_value = float(loss.detach())
            else:
                loss_value = 0.0
            distributed.all_reduce_gradients(parameters)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            ema.update(model)
            global_step += 1
            batches_done += 1
            epoch_loss += torch.tensor([loss_value, 1.0 / info.world_size], dtype=torch.float64)
            structures_seen += len(batch)
            if progress_bar is not None:
                rate = structures_seen / max(time.monotonic() - tick, 1e-9)
                progress_bar.set_postfix(
                    loss=f"{loss_value * info.world_size:.4g}", s_s=f"{rate:.1f}"
                )
                progress_bar.update(1)
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                make_checkpoint()
        if progress_bar is not None:
            progress_bar.close()
        if timed_out:
            stop_reason = "max_time"
            break

        # ---- end of epoch: validation, best model, early stopping, checkpoint
        summed = distributed.all_reduce_sum(epoch_loss)
        valid_metrics = validate(epoch)
        val_loss = selection_loss(valid_metrics, weights)
        row: dict[str, float] = {
            "epoch": epoch,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(summed[0] / max(float(summed[1]), 1.0)),
            "time_s": time.monotonic() - start_time,
        }
        row.update({f"valid_{k}": v for k, v in valid_metrics.items()})
        row["valid_loss"] = val_loss
        history.append(row)
        schedule.epoch_end(val_loss)
        if val_loss < best_loss or best_state is None:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in ema.shadow.items()}
        else:
            bad_epochs += 1
        if info.is_main:
            log.info(
                "epoch %d: train_loss %.4g valid %s",
                epoch,
                row["train_loss"],
                " ".join(f"{k}={v:.4g}" for k, v in valid_metrics.items()),
            )
        epoch += 1
        batches_done = 0
        epoch_loss = torch.zeros(2, dtype=torch.float64)
        make_checkpoint()
        run_log.write(history)
        if cfg.patience is not None and bad_epochs >= cfg.patience:
            stop_reason = "early_stopping"
            break

    if timed_out:
        # validate the current EMA weights once more, so the time-limited run has a result
        weights = _loss_weights(config, epoch)
        valid_metrics = validate(epoch)
        val_loss = selection_loss(valid_metrics, weights)
        if val_loss < best_loss or best_state is None:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in ema.shadow.items()}
        make_checkpoint()

    result: dict[str, Any] = {"stop_reason": stop_reason, "best_epoch": best_epoch}
    if info.is_main:
        result.update(
            _finish(config, data, model, best_state, model_config, history, device, start_time)
        )
        result["stop_reason"] = stop_reason
        result["best_epoch"] = best_epoch
        result["world_size"] = info.world_size
        with open(output_dir / "summary.json", "w") as handle:
            json.dump(result, handle, indent=2, default=float)
    run_log.close()
    return result


def _finish(
    config: Config,
    data: _Data,
    model: nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    model_config: dict[str, Any],
    history: list[dict[str, float]],
    device: torch.device,
    start_time: float,
) -> dict[str, Any]:
    """Rank 0: evaluate the best EMA model on valid/test, parity plot, export."""
    from training.plots import parity_plot

    output_dir = Path(config.output_dir)
    final = copy.deepcopy(model).eval()
    if best_state is not None:
        final.load_state_dict(best_state)
    result: dict[str, Any] = {}
    if data.valid is not None:
        metrics, arrays = evaluate(final, data.valid, config, device, reduce=False, collect=True)
        result["valid"] = metrics
        parity_plot(arrays, output_dir / "parity.png", title="validation")
    if data.test is not None:
        metrics, _ = evaluate(final, data.test, config, device, reduce=False)
        result["test"] = metrics
    result["wall_time_s"] = time.monotonic() - start_time
    import mlip.export

    final_cpu = final.to("cpu")
    mlip.export.save(
        final_cpu,
        output_dir / MODEL_NAME,
        dataset={"train": config.data.train, "valid": config.data.valid, "test": config.data.test},
        metrics={k: v for k, v in result.items() if k in ("valid", "test")},
        model_config=model_config,
        training_config=config_to_dict(config),
        epochs=len(history),
    )
    result["model"] = str(output_dir / MODEL_NAME)
    return result


def config_from_checkpoint(checkpoint: dict[str, Any]) -> Config:
    """The :class:`Config` stored in a checkpoint."""
    return config_from_dict(checkpoint["config"])
