"""How training reports progress: metrics with units, a progress bar only on a terminal.

Metrics are computed in eV/atom, eV/Å and eV/Å³ (:class:`training.metrics.ErrorMetrics`) and
shown in meV/atom, meV/Å and meV/Å³ with 4 significant digits, e.g.
``energy MAE 1.234 meV/atom``. When stderr is not a terminal (a log file, CI, ``nohup``), the
progress bar is replaced by a plain line at most every ``interval`` seconds, so a redirected log
holds readable lines instead of carriage-return updates.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["PlainProgress", "format_metrics", "is_terminal", "make_progress"]

log = logging.getLogger("training.trainer")

# metric name prefix -> (label, unit, factor from the computed unit)
_QUANTITIES = {
    "energy": ("energy", "meV/atom", 1e3),
    "forces": ("forces", "meV/Å", 1e3),
    "stress": ("stress", "meV/Å³", 1e3),
}


def format_metrics(metrics: dict[str, float]) -> str:
    """``{"forces_mae": 0.0324, ...}`` (eV units) as ``"forces MAE 32.40 meV/Å, ..."``.

    Keys that are not ``<quantity>_mae`` / ``<quantity>_rmse`` (e.g. ``loss``) are shown as
    ``name value``.
    """
    parts = []
    for key, value in metrics.items():
        quantity, _, kind = key.rpartition("_")
        if quantity in _QUANTITIES and kind in ("mae", "rmse"):
            label, unit, factor = _QUANTITIES[quantity]
            parts.append(f"{label} {kind.upper()} {value * factor:.4g} {unit}")
        else:
            parts.append(f"{key} {value:.4g}")
    return ", ".join(parts)


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress:
    """The part of tqdm's interface the trainer uses, writing a log line every ``interval`` s."""

    def __init__(self, total: int, initial: int, desc: str, interval: float = 30.0) -> None:
        self.total, self.n, self.desc, self.interval = total, initial, desc, interval
        self.postfix: dict[str, Any] = {}
        self._last = time.monotonic()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval and self.n < self.total:
            self._last = now
            names = {"s_s": "structures/s"}
            extra = " ".join(f"{names.get(k, k)} {v}" for k, v in self.postfix.items())
            log.info("%s: batch %d/%d %s", self.desc, self.n, self.total, extra)

    def close(self) -> None:
        pass


def make_progress(total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal, else a :class:`PlainProgress`."""
    if is_terminal():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
    return PlainProgress(total, initial, desc)
