"""Run outputs: metrics.csv, optional TensorBoard, learning-curve and parity plots
(matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["RunLog", "learning_curve", "parity_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history: list[dict[str, float]], path: str | Path) -> None:
    """Training loss, validation loss and validation RMSEs against the epoch (log scale); a
    stress panel when the history has validation stress errors."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    panels = [
        ("loss", [("train_loss", "train"), ("valid_loss", "valid")]),
        ("energy RMSE (eV/atom)", [("valid_energy_rmse", "valid")]),
        ("forces RMSE (eV/Å)", [("valid_forces_rmse", "valid")]),
    ]
    if any("valid_stress_rmse" in row for row in history):
        panels.append(("stress RMSE (eV/Å³)", [("valid_stress_rmse", "valid")]))
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (title, series) in zip(axes, panels):
        for key, label in series:
            values = [row.get(key, np.nan) for row in history]
            if np.all(~np.isfinite(np.asarray(values, dtype=float))):
                continue
            axis.plot(epochs, values, marker=".", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        if axis.lines:
            axis.set_yscale("log")
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parity_plot(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    """Predicted against reference energy per atom (eV/atom), force components (eV/Å) and,
    when present, stress components (eV/Å³).

    Args:
        arrays: ``energy_ref``, ``energy_pred`` and optionally ``forces_ref``, ``forces_pred``,
            ``stress_ref``, ``stress_pred``.
    """
    plt = _pyplot()
    pairs = [("energy", "energy / atom (eV)")]
    if arrays.get("forces_ref") is not None and len(arrays["forces_ref"]):
        pairs.append(("forces", "force component (eV/Å)"))
    if arrays.get("stress_ref") is not None and len(arrays["stress_ref"]):
        pairs.append(("stress", "stress component (eV/Å³)"))
    figure, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for axis, (name, label) in zip(axes[0], pairs):
        reference, prediction = arrays[f"{name}_ref"], arrays[f"{name}_pred"]
        if len(reference):
            low = float(min(reference.min(), prediction.min()))
            high = float(max(reference.max(), prediction.max()))
            axis.plot([low, high], [low, high], color="0.6", linewidth=1)
            axis.scatter(reference, prediction, s=4, alpha=0.6)
            mae = float(np.mean(np.abs(prediction - reference)))
            rmse = float(np.sqrt(np.mean((prediction - reference) ** 2)))
            axis.text(
                0.04, 0.96, f"MAE {mae:.3g}\nRMSE {rmse:.3g}", transform=axis.transAxes, va="top"
            )
        axis.set_xlabel(f"reference {label}")
        axis.set_ylabel(f"predicted {label}")
        axis.set_title(f"{title} {name}".strip())
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class RunLog:
    """metrics.csv (rewritten from the history, so a resumed run has no duplicate rows),
    optional TensorBoard, learning-curve PNG. Rank 0 only."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.output_dir = output_dir
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tensorboard = None

    def write(self, history: list[dict[str, float]]) -> None:
        if not self.enabled or not history:
            return
        columns: list[str] = []
        for row in history:
            columns.extend(k for k in row if k not in columns)
        path = self.output_dir / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        tmp.replace(path)
        if self.tensorboard is not None:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.tensorboard.add_scalar(key, value, int(row["epoch"]))
            self.tensorboard.flush()
        learning_curve(history, self.output_dir / "learning_curve.png")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
