"""``mlip-eval DATA... --model PATH``: errors of an exported model on dataset files.

Prints energy-per-atom (eV/atom), force (eV/Å) and stress (eV/Å³) MAE and RMSE per file,
optionally writes them as JSON, and draws a parity plot per file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_file", "main"]


def evaluate_file(
    module: torch.nn.Module,
    cutoff: float,
    path: str,
    *,
    data_format: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics and parity arrays of an exported (scripted) model on one file (or store)."""
    from training.data.datasets import BatchBudget, GraphDataset, make_loader
    from training.data.readers import ReaderOptions, read_frames
    from training.data.store import Store, is_store
    from training.metrics import evaluate

    if is_store(path):
        source: Store | list = Store(path)
    else:
        options = ReaderOptions(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
        source = read_frames(path, data_format, options, required=("energy",))
    loader = make_loader(
        GraphDataset(source, cutoff),
        BatchBudget(batch_size),
        shuffle=False,
        pin_memory=torch.device(device).type == "cuda",
    )

    def predict(graph: Any, stress: bool) -> dict[str, torch.Tensor]:
        if hasattr(module, "compute_stress"):
            module.compute_stress = stress
        return module(graph.as_dict())

    return evaluate(predict, loader, device, collect=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlip-eval", description="Energy/force/stress errors of an exported model."
    )
    parser.add_argument("data", nargs="+", help="dataset files (any format training reads)")
    parser.add_argument("--model", required=True, help="exported model file (model.pt)")
    parser.add_argument("--format", default=None, help="reader format; default: guess")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--energy-key", default=None)
    parser.add_argument("--forces-key", default=None)
    parser.add_argument("--stress-key", default=None)
    parser.add_argument("--plot", default=None, help="parity plot PNG prefix (one per file)")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)

    import mlip.export
    from mlip.allocator import keep_freed_memory
    from training.plots import parity_plot

    if torch.device(args.device).type == "cpu":
        keep_freed_memory()
    module, metadata = mlip.export.load(args.model, device=args.device)
    for parameter in module.parameters():  # forces only: autograd then saves less
        parameter.requires_grad_(False)
    cutoff = float(metadata["cutoff"])
    results: dict[str, Any] = {}
    for index, path in enumerate(args.data):
        try:
            metrics, arrays = evaluate_file(
                module,
                cutoff,
                path,
                data_format=args.format,
                batch_size=args.batch_size,
                device=args.device,
                energy_key=args.energy_key,
                forces_key=args.forces_key,
                stress_key=args.stress_key,
            )
        except (OSError, ValueError) as error:
            print(f"mlip-eval: {path}: {error}", file=sys.stderr)
            return 1
        results[path] = metrics
        text = "  ".join(
            f"{k}={v * 1000:.3f}m" if not k.startswith("loss") else "" for k, v in metrics.items()
        )
        print(f"{path}: {text}   (m = meV/atom, meV/Å, meV/Å³)")
        if args.plot is not None:
            suffix = f"_{index}" if len(args.data) > 1 else ""
            plot_path = Path(f"{args.plot}{suffix}.png")
            parity_plot(arrays, plot_path, title=Path(path).name)
            print(f"  parity plot: {plot_path}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
