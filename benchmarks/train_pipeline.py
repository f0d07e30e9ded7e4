"""End-to-end ``mlip-train`` throughput on an MPTrj-like HDF5 store, data loading included.

Synthesises a 100k-frame (and a 10k-frame) store from the MPTrj sample frames in
``../shared/data/mptrj`` (rattled copies and 1x1x1 / 2x1x1 / 2x2x1 supercells, 12-120 atoms), fills
the store's caches once (statistics and edge counts at the cutoff, in 2 workers: what a first
run does), then runs ``mlip-train`` in a fresh process for a fixed number of optimiser steps
(``train.max_steps``) per row: ``small`` and ``medium`` with 0 and 2 DataLoader workers on the
100k store, and ``small`` with 2 workers on the 10k store. Reports structures/s of the training
loop, the fraction of the loop spent waiting for a batch, the run's wall time, and the peak RSS
of the training process and of its largest worker (it must not grow with the store).

    flock /work/wt/bench.lock python benchmarks/train_pipeline.py --steps-small 40 --steps-medium 12

Prints a table and writes JSON (``--out``, default ``benchmarks/results/train_pipeline.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import ROOT, write_record  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "data" / "mptrj" / "mptrj_11frames.extxyz"
REPEATS = [(1, 1, 1), (2, 1, 1), (2, 2, 1)]


def synthesise_store(path: Path, n_frames: int, seed: int = 0) -> float:
    """Write ``n_frames`` rattled supercells of the MPTrj samples to a store; returns seconds."""
    from training.data.frames import Frame
    from training.data.readers import read_frames
    from training.data.store import write_frames

    samples = read_frames(SAMPLES)
    rng = np.random.default_rng(seed)

    def frames():
        for index in range(n_frames):
            base = samples[index % len(samples)]
            repeat = REPEATS[(index // len(samples)) % len(REPEATS)]
            shifts = np.array(np.meshgrid(*[range(r) for r in repeat], indexing="ij"))
            shifts = shifts.reshape(3, -1).T @ base.cell  # (copies, 3)
            positions = (base.positions[None] + shifts[:, None]).reshape(-1, 3)
            copies = len(shifts)
            yield Frame(
                positions=positions + rng.normal(scale=0.03, size=positions.shape),
                atomic_numbers=np.tile(base.atomic_numbers, copies),
                cell=base.cell * np.array(repeat)[:, None],
                pbc=base.pbc,
                energy=base.energy * copies + rng.normal(scale=0.01),
                forces=np.tile(base.forces, (copies, 1))
                + rng.normal(scale=0.05, size=positions.shape),
                stress=base.stress,
                source="synthetic",
                frame_id=str(index),
                group_id=f"mp-{index // 10}",
            )

    started = time.perf_counter()
    write_frames(frames(), path)
    return time.perf_counter() - started


def fill_caches(path: Path, cutoff: float) -> float:
    """Statistics and edge counts of the whole store, as a first training run computes them."""
    from training.data.statistics import compute_statistics

    started = time.perf_counter()
    compute_statistics(path, cutoff=cutoff, num_workers=2)
    return time.perf_counter() - started


def run_training(
    store: Path, output: Path, preset: str, workers: int, steps: int, threads: int
) -> dict:
    """One ``mlip-train`` process; returns its summary throughput plus wall time and RSS."""
    config = {
        "data": {"train": str(store), "valid": str(SAMPLES), "num_workers": workers},
        "model": {"preset": preset, "cutoff": 5.0},
        "train": {
            "max_epochs": 1,
            "max_steps": steps,
            "batch": {"size": 16},
            "num_threads": threads,
            "progress_bar": False,
            "deterministic": False,
        },
        "output_dir": str(output),
    }
    config_path = output.with_suffix(".json")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config))  # JSON is YAML
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    memory = json.loads(completed.stdout.strip().splitlines()[-1])
    summary = json.loads((output / "summary.json").read_text())
    throughput = summary["throughput"]
    return {
        "preset": preset,
        "workers": workers,
        "store_frames": int(store.stem.split("_")[-1]),
        "steps": steps,
        "structures": throughput["structures"],
        "structures_per_s": throughput["structures"] / throughput["loop_s"],
        "data_wait_fraction": throughput["data_wait_s"] / throughput["loop_s"],
        "run_wall_s": wall,
        **memory,
    }


def worker(config_path: str) -> int:
    """Inside the training process: train, then print peak RSS (MB) as the last line."""
    from training.train_cli import main

    status = main([config_path])
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": own, "worker_peak_rss_mb": children}))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames of the large store")
    parser.add_argument("--small-frames", type=int, default=10_000, help="frames of the small one")
    parser.add_argument("--steps-small", type=int, default=40, help="optimiser steps, small")
    parser.add_argument("--steps-medium", type=int, default=12, help="optimiser steps, medium")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    parser.add_argument("--workdir", help="where to put the stores (default: a temp dir)")
    parser.add_argument("--out", default="benchmarks/results/train_pipeline.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if not SAMPLES.is_file():
        print(f"skipped: {SAMPLES} is missing (the shared MPTrj samples)")
        return 0

    rows, meta = [], {"threads": args.threads, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        stores = {n: tmp_path / f"mptrj_like_{n}.h5" for n in (args.frames, args.small_frames)}
        for n, path in stores.items():
            meta[f"synthesise_{n}_s"] = synthesise_store(path, n)
            meta[f"caches_{n}_s"] = fill_caches(path, 5.0)
            made, cached = meta[f"synthesise_{n}_s"], meta[f"caches_{n}_s"]
            print(f"store {n}: written in {made:.0f} s, caches filled in {cached:.0f} s")
        runs = [(args.frames, p, w) for p in ("small", "medium") for w in (0, 2)]
        runs.append((args.small_frames, "small", 2))
        for n, preset, workers in runs:
            steps = args.steps_small if preset == "small" else args.steps_medium
            output = tmp_path / f"run_{preset}_{workers}_{n}"
            rows.append(run_training(stores[n], output, preset, workers, steps, args.threads))
            print(json.dumps(rows[-1]))
    meta["load_after"] = os.getloadavg()

    header = f"{'model':>7} {'workers':>7} {'store':>7} {'steps':>5} {'struct/s':>9} "
    header += f"{'wait':>6} {'wall s':>7} {'RSS MB':>7} {'worker MB':>9}"
    print(header)
    for row in rows:
        print(
            f"{row['preset']:>7} {row['workers']:>7} {row['store_frames']:>7} {row['steps']:>5} "
            f"{row['structures_per_s']:>9.1f} {row['data_wait_fraction']:>6.1%} "
            f"{row['run_wall_s']:>7.1f} {row['peak_rss_mb']:>7.0f} "
            f"{row['worker_peak_rss_mb']:>9.0f}"
        )
    write_record(ROOT / args.out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
