"""The learning-rate schedule: linear warm-up, then cosine decay or reduce-on-plateau."""

from __future__ import annotations

import math

import torch

from training.config import Config

__all__ = ["LRSchedule"]


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

    def lr_at(self, step: int, time_share: float = 0.0) -> float:
        """Learning rate of optimiser step ``step``; ``time_share`` is the share of
        ``train.max_time`` used: the cosine follows whichever budget is nearer its end."""
        cfg = self.train
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "cosine":
            span = max(self.total_steps - cfg.warmup_steps, 1)
            progress = max((step - cfg.warmup_steps) / span, time_share)
            progress = min(max(progress, 0.0), 1.0)
            base = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            base = max(cfg.lr * self.plateau_scale, cfg.min_lr)
        return base * warm

    def set_step(self, step: int, time_share: float = 0.0) -> float:
        lr = self.lr_at(step, time_share)
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
