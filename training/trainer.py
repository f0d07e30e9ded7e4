"""The training loop: set-up, :meth:`Trainer.run_epoch`, :meth:`Trainer.take_step`,
:meth:`Trainer.validate`, checkpoints and the final export.

Entry point: :func:`train` (``mlip-train`` parses the YAML and calls it). Data comes from
:mod:`training.data` (neighbour lists built in DataLoader workers). Runs unchanged under
``torchrun`` (see :mod:`training.distributed`): each global batch is split over the ranks,
gradients and metrics are summed, and only rank 0 writes files.

Reproducibility: the batch order of epoch ``e`` is a function of ``(seed, e)``, so resuming
mid-epoch only needs the number of batches already done. Model, optimiser, EMA, scheduler, RNG
and loop state (including the elapsed time ``train.max_time`` counts) live in the checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlip import AtomicGraph
from mlip.allocator import keep_freed_memory
from mlip.derivatives import ForceStress
from training import distributed
from training.checkpoint import capture_rng_state, read_for_resume, restore_rng_state
from training.checkpoint import save_checkpoint as write_checkpoint
from training.config import Config, config_to_dict, model_heads
from training.data.datasets import make_loader
from training.data.prepare import make_loaders, prepare_data
from training.ema import EMA
from training.log_format import format_metrics, make_progress
from training.loss import LossCounts, LossWeights, batch_counts, weighted_loss
from training.metrics import evaluate, force_predictor, selection_loss, wants_stress
from training.model_io import export_model, initial_model
from training.plots import RunLog
from training.schedule import LRSchedule

__all__ = ["Trainer", "train"]

log = logging.getLogger("mlip.train")

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
MAY_CHANGE_ON_RESUME = ("train.max_epochs", "train.max_time", "train.max_steps")


@dataclass
class Progress:
    """Loop state saved in checkpoints (plain numbers and one tensor)."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed_s: float = 0.0  # wall time of the whole run up to the last checkpoint
    switched_epoch: int = -1  # epoch the loss weights switched at (-1: not yet)
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))


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
        return Trainer(config, resume, info, device).run()
    finally:  # leave the process as we found it (tests train in-process)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
        distributed.cleanup()


class Trainer:
    """One training run; :meth:`run` goes from the current progress to the end."""

    def __init__(
        self, config: Config, resume: bool, info: distributed.DistInfo, device: torch.device
    ) -> None:
        self.started = time.monotonic()
        self.config, self.info, self.device = config, info, device
        cfg = config.train
        self.output_dir = Path(config.output_dir)
        if info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if device.type == "cpu":
            keep_freed_memory()  # large tensors reuse heap memory instead of page-faulting
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        for seed_fn in (random.seed, np.random.seed, torch.manual_seed):
            seed_fn(cfg.seed)
        checkpoint = None
        if resume:
            path, values = self.output_dir / CHECKPOINT_NAME, config_to_dict(config)
            checkpoint = read_for_resume(path, values, MAY_CHANGE_ON_RESUME, info.is_main)
        self.data = prepare_data(config, info)
        model, self.statistics, self.model_config = initial_model(config, self.data, checkpoint)
        self.model = model.to(device)
        distributed.broadcast_module(self.model)
        self.eval_model = copy.deepcopy(self.model).eval()
        self.wrappers = {
            flag: ForceStress(self.model, compute_forces=True, compute_stress=flag).train()
            for flag in (False, True)
        }
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.ema = EMA(self.model, cfg.ema_decay)
        loss = config.loss
        self.use_stress = loss.stress_weight > 0 or (
            (loss.switch_epoch is not None or loss.switch_fraction is not None)
            and loss.switch_stress_weight > 0
        )
        self.loader, self.valid_loader = make_loaders(self.data, config, info, device)
        steps_per_epoch = len(self.loader.batch_sampler.global_batches())
        total_steps = steps_per_epoch * cfg.max_epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        self.schedule = LRSchedule(self.optimizer, config, total_steps)
        self.time_share = 0.0  # of train.max_time, updated before every step
        self.progress = Progress()
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
        self.run_log = RunLog(self.output_dir, info.is_main)
        # this process's training loop: structures, seconds, seconds waiting for batches
        self.throughput = {"structures": 0.0, "loop_s": 0.0, "data_wait_s": 0.0}

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        self.ema.load_state_dict(checkpoint["ema"])
        saved = dict(checkpoint["progress"])
        saved["epoch_loss"] = saved["epoch_loss"].clone()
        switch = self.config.loss.switch_epoch
        if "switched_epoch" not in saved and switch is not None:  # checkpoint of an older mlip
            epoch, batches = saved["epoch"], saved["batches_done"]
            started = epoch > switch or (epoch == switch and batches > 0)
            saved["switched_epoch"] = switch if started else -1
        self.progress = Progress(**saved)
        self.best_state = checkpoint.get("best_model")
        self.history = list(checkpoint["history"])
        restore_rng_state(checkpoint["rng"])
        if self.info.is_main:
            p = self.progress
            log.info(
                "resumed at epoch %d, batch %d (step %d)", p.epoch, p.batches_done, p.global_step
            )

    # ------------------------------------------------------------------ the loop
    def elapsed(self) -> float:
        """Seconds of the whole run, across resumes."""
        return self.progress.elapsed_s + time.monotonic() - self.started

    def stop_reason(self) -> str | None:
        """``max_steps`` or ``max_time`` when that budget is used up (rank 0 decides the time
        for everyone), else None."""
        cfg = self.config.train
        if cfg.max_steps is not None and self.progress.global_step >= cfg.max_steps:
            return "max_steps"
        self.time_share = self.time_used()
        return "max_time" if self.time_share > 1.0 else None

    def time_used(self) -> float:
        """Share of ``train.max_time`` used so far (0 without it); rank 0's clock decides for
        every rank."""
        cfg = self.config.train
        if cfg.max_time is None:
            return 0.0
        share = torch.tensor([self.elapsed() / max(cfg.max_time * 60.0, 1e-9)])
        if self.info.enabled:
            share = distributed.all_reduce_sum(share * float(self.info.is_main))
        return float(share.item())

    def budget_used(self) -> float:
        """Fraction of the run's budget used: the largest of epochs, ``max_steps`` and
        ``max_time`` (rank 0's clock decides for everyone)."""
        cfg, p = self.config.train, self.progress
        used = max(p.epoch / max(cfg.max_epochs, 1), self.time_used())
        if cfg.max_steps is not None:
            used = max(used, p.global_step / max(cfg.max_steps, 1))
        return used

    def switch_due(self) -> bool:
        """Whether the loss weights switch at the start of the current epoch."""
        loss = self.config.loss
        if loss.switch_epoch is not None:
            return self.progress.epoch >= loss.switch_epoch
        return loss.switch_fraction is not None and self.budget_used() >= loss.switch_fraction

    def loss_weights(self) -> LossWeights:
        """The loss weights of the current epoch."""
        return LossWeights.select(self.config.loss, self.progress.switched_epoch >= 0)

    def run(self) -> dict[str, Any]:
        cfg, p = self.config.train, self.progress
        stop_reason = "max_epochs"
        while p.epoch < cfg.max_epochs:
            budget_used = self.run_epoch()
            if budget_used is not None:
                stop_reason = budget_used
                self.end_early()
                break
            if cfg.patience is not None and p.bad_epochs >= cfg.patience:
                stop_reason = "early_stopping"
                break
        result: dict[str, Any] = {"stop_reason": stop_reason, "best_epoch": p.best_epoch}
        if self.info.is_main:
            result.update(self.finish())
            result.update(stop_reason=stop_reason, best_epoch=p.best_epoch)
            result["world_size"] = self.info.world_size
            result["throughput"] = self.throughput
            with open(self.output_dir / "summary.json", "w") as handle:
                json.dump(result, handle, indent=2, default=float)
        self.run_log.close()
        return result

    def run_epoch(self) -> str | None:
        """Train the rest of the current epoch, then validate and checkpoint it; returns the
        budget (``max_steps``/``max_time``) that ran out first, else None."""
        cfg, p, info = self.config.train, self.progress, self.info
        if p.switched_epoch < 0 and p.batches_done == 0 and self.switch_due():
            p.switched_epoch = p.epoch
            p.best_loss, p.bad_epochs = math.inf, 0  # the criterion changes
        weights = self.loss_weights()
        sampler = self.loader.batch_sampler
        sampler.set_epoch(p.epoch, start_batch=p.batches_done)
        bar = None
        if info.is_main and cfg.progress_bar:
            total = len(sampler.global_batches())
            bar = make_progress(total, p.batches_done, f"epoch {p.epoch}")
        tick, waited, structures = time.monotonic(), 0.0, 0
        batches = iter(self.loader)
        while not (stop := self.stop_reason()):
            wait = time.monotonic()
            graph = next(batches, StopIteration)
            waited += time.monotonic() - wait
            if graph is StopIteration:
                break
            loss = self.take_step(graph, weights)
            structures += 0 if graph is None else graph.num_graphs
            if bar is not None:
                rate = structures * info.world_size / max(time.monotonic() - tick, 1e-9)
                bar.set_postfix(loss=f"{loss * info.world_size:.4g}", s_s=f"{rate:.1f}")
                bar.update(1)
            if cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        seconds = time.monotonic() - tick
        for key, value in (
            ("structures", structures),
            ("loop_s", seconds),
            ("data_wait_s", waited),
        ):
            self.throughput[key] += value
        if not stop:
            self.end_epoch(weights, seconds, waited)
        return stop

    def structure_weights(self, graph: AtomicGraph) -> torch.Tensor | None:
        """(B,) ``loss.head_weights`` of the batch's structures by head (None: no weights)."""
        chosen = self.config.loss.head_weights
        heads = model_heads(self.config)
        if not chosen or heads is None:
            return None
        table = torch.tensor(
            [float(chosen.get(name, 1.0)) for name in heads], dtype=torch.float64
        ).to(graph.positions.device)
        head = graph.head
        if head is None:  # frames without a head belong to the first head
            return table[:1].expand(graph.num_graphs)
        return table.index_select(0, head.reshape(-1).to(torch.int64))

    def take_step(self, graph: AtomicGraph | None, weights: LossWeights) -> float:
        """One optimiser step on this rank's share of a global batch; returns its loss."""
        cfg, p, info = self.config.train, self.progress, self.info
        step_stress = graph is not None and self.use_stress and wants_stress(graph)
        if info.enabled:  # every rank must agree on whether stress is used
            flag = torch.tensor([0.0 if step_stress or graph is None else 1.0])
            step_stress = self.use_stress and distributed.all_reduce_sum(flag).item() == 0
        local = batch_counts(graph, step_stress) if graph is not None else LossCounts(0, 0, 0)
        counts = LossCounts.from_tensor(distributed.all_reduce_sum(local.as_tensor()))
        self.schedule.set_step(p.global_step, self.time_share)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        if graph is not None:
            graph = graph.to(self.device, non_blocking=True)
            predictions = self.wrappers[step_stress](graph.as_dict())
            loss_type, delta = self.config.loss.type, self.config.loss.huber_delta
            loss, _ = weighted_loss(
                predictions, graph, weights, counts, loss_type, delta, self.structure_weights(graph)
            )
            auxiliary = getattr(self.model, "auxiliary_loss", None)  # e.g. TransIP's objective
            extra = auxiliary(graph.as_dict()) if auxiliary is not None else None
            if extra is not None:  # a per-rank mean: gradients are summed over ranks
                loss = loss + extra / info.world_size
            loss.backward()
            loss_value = float(loss.detach())
        distributed.all_reduce_gradients(self.parameters)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        p.global_step += 1
        p.batches_done += 1
        p.epoch_loss += torch.tensor([loss_value, 1.0 / info.world_size], dtype=torch.float64)
        return loss_value

    def validate(self) -> dict[str, float]:
        """Metrics of the EMA weights on this rank's share of the validation set, summed
        over ranks."""
        self.ema.copy_to(self.eval_model)
        if self.valid_loader is None:
            return {}
        self.valid_loader.batch_sampler.set_epoch(0)
        metrics, _ = evaluate(
            force_predictor(self.eval_model), self.valid_loader, self.device, reduce=True
        )
        return metrics

    def end_epoch(self, weights: LossWeights, seconds: float, waited: float) -> None:
        """Validation, best model, early-stopping count, history row, checkpoint."""
        p = self.progress
        summed = distributed.all_reduce_sum(p.epoch_loss)
        metrics = self.validate()
        val_loss = selection_loss(metrics, weights)
        row: dict[str, float] = {
            "epoch": p.epoch,
            "step": p.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": float(summed[0] / max(float(summed[1]), 1.0)),
            "time_s": self.elapsed(),
            "epoch_s": seconds,
            "data_wait_s": waited,
        }
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        row["valid_loss"] = val_loss
        self.history.append(row)
        self.schedule.epoch_end(val_loss)
        p.bad_epochs = 0 if self.track_best(val_loss) else p.bad_epochs + 1
        if self.info.is_main:
            text = format_metrics(metrics)
            log.info("epoch %d: train loss %.4g; valid %s", p.epoch, row["train_loss"], text)
        p.epoch += 1
        p.batches_done = 0
        p.epoch_loss = torch.zeros(2, dtype=torch.float64)
        self.save_checkpoint()
        self.run_log.write(self.history)

    def end_early(self) -> None:
        """Validate the current EMA weights once more, so a step- or time-limited run has a
        result."""
        weights = self.loss_weights()
        self.track_best(selection_loss(self.validate(), weights))
        self.save_checkpoint()

    def track_best(self, val_loss: float) -> bool:
        """Keep the EMA weights as the best model if ``val_loss`` is the best so far."""
        p = self.progress
        if val_loss < p.best_loss or self.best_state is None:
            p.best_loss, p.best_epoch = val_loss, p.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.ema.shadow.items()}
            return True
        return False

    # ------------------------------------------------------------------ outputs
    def save_checkpoint(self) -> None:
        if not self.info.is_main:
            return
        progress = asdict(self.progress)
        progress["elapsed_s"] = self.elapsed()
        state = {
            "format": "mlip-checkpoint-1",
            "config": config_to_dict(self.config),
            "model_config": self.model_config,
            "statistics": self.statistics,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": capture_rng_state(),
            "progress": progress,
            "history": self.history,
        }
        if self.best_state is not None:
            state["best_model"] = self.best_state
        write_checkpoint(state, self.output_dir / CHECKPOINT_NAME)

    def finish(self) -> dict[str, Any]:
        """Rank 0: evaluate the best EMA model on valid/test, parity plot, export."""
        from training.plots import parity_plot

        config = self.config
        final = copy.deepcopy(self.model).eval()
        if self.best_state is not None:
            final.load_state_dict(self.best_state)
        predict = force_predictor(final)
        result: dict[str, Any] = {}
        for name, dataset in (("valid", self.data.valid), ("test", self.data.test)):
            if dataset is None:
                continue
            loader = make_loader(
                dataset,
                self.loader.batch_sampler.budget,
                shuffle=False,
                num_workers=self.loader.num_workers,
                pin_memory=self.loader.pin_memory,
            )
            metrics, arrays = evaluate(predict, loader, self.device, collect=name == "valid")
            result[name] = metrics
            if name == "valid":
                parity_plot(arrays, self.output_dir / "parity.png", title="validation")
        result["wall_time_s"] = self.elapsed()
        metrics = {k: v for k, v in result.items() if k in ("valid", "test")}
        path, epochs = self.output_dir / MODEL_NAME, len(self.history)
        states = self.statistics.get("trained_states")
        export_model(
            final,
            path,
            self.model_config,
            config_to_dict(config),
            metrics,
            epochs,
            trained_states=states,
        )
        result["model"] = str(self.output_dir / MODEL_NAME)
        return result
