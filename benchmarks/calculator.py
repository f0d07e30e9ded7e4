"""Calculator overhead: neighbour list + conversion against the model's own time.

For rattled fcc Cu with 64 to 10k atoms, an exported ``small`` GMEP model (float32, cutoff 5 Å):

* ``model``: the scripted model alone on a prebuilt graph (energy, forces, stress);
* ``step (reuse)``: ``MLIPCalculator`` on atoms moved by 0.002 Å, as in MD, so the Verlet-skin
  neighbour list is reused (0.5 Å skin);
* ``step (rebuild)``: the same with the skin disabled, so every call builds the list.

Overhead is ``(step - model) / step``. Usage::

    python benchmarks/calculator.py [--sizes 64 256 1024 4096 10976] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

from calculators import MLIPCalculator
from mlip import AtomicGraph
from mlip.export import load, save
from mlip.models import build_model

CUTOFF = 5.0
REPEATS = {64: (2, 2, 4), 256: (4, 4, 4), 1024: (8, 8, 4), 4096: (8, 8, 16), 10976: (14, 14, 14)}


def median_time(function, repeats: int) -> float:
    """Median seconds over ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(model_path: Path, n_atoms: int, repeats: int) -> dict:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(REPEATS[n_atoms])
    atoms.rattle(0.05, seed=0)
    module, _ = load(model_path)
    module.compute_stress = True
    data = AtomicGraph.from_atoms(atoms, CUTOFF).as_dict()
    t_model = median_time(lambda: module(data), repeats)

    rng = np.random.default_rng(0)
    results = {"n_atoms": n_atoms, "model_ms": 1e3 * t_model}
    for label, skin in (("reuse", 0.5), ("rebuild", 0.0)):
        moving = atoms.copy()
        moving.calc = MLIPCalculator(model_path, skin=skin)

        def step(moving=moving) -> None:
            moving.positions += rng.normal(scale=0.002, size=moving.positions.shape)
            moving.get_forces()
            moving.get_stress()

        t_step = median_time(step, repeats)
        results[f"step_{label}_ms"] = 1e3 * t_step
        results[f"overhead_{label}_pct"] = 100.0 * (t_step - t_model) / t_step
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(REPEATS), choices=REPEATS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/calculator.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(species=[29], cutoff=CUTOFF, preset="small", dtype=torch.float32)
    model.set_statistics(avg_num_neighbors=42.0)
    with tempfile.TemporaryDirectory() as folder:
        path = save(model.eval(), Path(folder) / "model.pt")
        rows = [measure(path, n, 10 if n <= 1024 else 3) for n in args.sizes]

    print(f"GMEP small, float32, cutoff {CUTOFF} Å, {args.threads} threads, energy+forces+stress")
    header = ("atoms", "model ms", "step ms", "overhead", "rebuild ms", "overhead")
    print("{:>7} {:>9} {:>9} {:>9} {:>11} {:>9}".format(*header))
    for row in rows:
        print(
            f"{row['n_atoms']:>7} {row['model_ms']:>9.2f} {row['step_reuse_ms']:>9.2f} "
            f"{row['overhead_reuse_pct']:>8.1f}% {row['step_rebuild_ms']:>11.2f} "
            f"{row['overhead_rebuild_pct']:>8.1f}%"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "calculator",
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
