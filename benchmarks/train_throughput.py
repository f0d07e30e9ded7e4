"""Training throughput (structures/s): GMEP presets against MACE, same frames, same batches.

Datasets (``benchmarks/training_frames.py``): AcAc (15-atom molecules, E + F, cutoff 5 Å) and
the 11 real MPtrj frames (12-30 atoms, periodic, E + F + S, cutoff 6 Å), 400 frames each,
batch size 16, float32, 2 threads. A step is: forward with forces (and stress) by a
double-differentiable gradient, the weighted E/F(/S) loss (10x on forces), backward, and an
Adam(W) step. Batches are built before timing, so data loading is not included (the loader's
own rate is in ``benchmarks/data.py``). Mean over ``--steps`` steps after 2 warm-up steps.
MACE runs in its own venv (``--mace-python``), in the same invocation.

    python benchmarks/train_throughput.py --mace-python /tmp/mace-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import torch  # noqa: E402
import training_frames  # noqa: E402

from mlip import AtomicGraph  # noqa: E402
from mlip.allocator import keep_freed_memory  # noqa: E402
from mlip.derivatives import ForceStress  # noqa: E402
from mlip.models import build_model  # noqa: E402
from training.loss import LossWeights, batch_counts, weighted_loss  # noqa: E402


def gmep_throughput(dataset: str, preset: str, batch_size: int, steps: int) -> dict:
    frames, cutoff, use_stress = training_frames.load(dataset)
    graphs = [AtomicGraph.from_atoms(atoms, cutoff) for atoms in frames]
    batches = [
        AtomicGraph.batch(graphs[i : i + batch_size])
        for i in range(0, len(graphs) - batch_size + 1, batch_size)
    ]
    torch.manual_seed(0)
    model = build_model(species=training_frames.species(frames), cutoff=cutoff, preset=preset)
    n_edges = sum(b.num_edges for b in batches)
    n_atoms = sum(b.positions.shape[0] for b in batches)
    model.set_statistics(avg_num_neighbors=n_edges / n_atoms)
    wrapper = ForceStress(model, compute_forces=True, compute_stress=use_stress).train()
    weights = LossWeights(energy=1.0, forces=10.0, stress=10.0 if use_stress else 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)

    def step(graph: AtomicGraph) -> None:
        optimizer.zero_grad(set_to_none=True)
        predictions = wrapper(graph.as_dict())
        loss, _ = weighted_loss(predictions, graph, weights, batch_counts(graph, use_stress))
        loss.backward()
        optimizer.step()

    for graph in batches[:2]:
        step(graph)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    return {
        "code": "gmep",
        "model": f"GMEP {preset}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": seconds / steps,
        "structures_per_second": steps * batch_size / seconds,
    }


def mace_throughput(python: str, dataset: str, batch_size: int, steps: int, threads: int) -> dict:
    payload = {"dataset": dataset, "batch_size": batch_size, "steps": steps, "threads": threads}
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # e3nn 0.4 constants
    worker = Path(__file__).with_name("mace_train_worker.py")
    proc = subprocess.run(
        [python, str(worker), json.dumps(payload)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"code": "mace", "failed": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["acac", "mptrj"])
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mace-python", default=None)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/train_throughput.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    rows = []
    print(f"batch {args.batch_size}, {args.steps} steps, {args.threads} threads, float32")
    for dataset in args.datasets:
        runs = [("gmep", preset) for preset in args.presets]
        if args.mace_python:
            runs.append(("mace", None))
        for code, preset in runs:
            if code == "gmep":
                row = gmep_throughput(dataset, preset, args.batch_size, args.steps)
            else:
                row = mace_throughput(
                    args.mace_python, dataset, args.batch_size, args.steps, args.threads
                )
            row["dataset"] = dataset
            rows.append(row)
            if "failed" in row:
                print(f"{dataset:6s} {code}: failed {row['failed']}", flush=True)
                continue
            print(
                f"{dataset:6s} {row['model']:20s} {row['parameters']:>9d} params  "
                f"{row['seconds_per_step'] * 1e3:8.1f} ms/step  "
                f"{row['structures_per_second']:7.1f} structures/s",
                flush=True,
            )
    meta = {
        "benchmark": "train_throughput",
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
    }
    measure.write_record(args.out, meta, rows)


if __name__ == "__main__":
    main()
