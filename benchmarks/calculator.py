"""Calculator overhead: neighbour list + conversion against the model's own time.

Rattled fcc Cu (``benchmarks/structures.py``, 256 to 11k atoms), exported GMEP models (float32,
cutoff 6 Å), energy + forces + stress:

* ``model``: the scripted model alone on a prebuilt graph;
* ``step (reuse)``: ``MLIPCalculator`` on atoms moved by 0.002 Å, as in MD, so the Verlet-skin
  neighbour list is reused (0.5 Å skin);
* ``step (rebuild)``: the same with the skin disabled, so every call builds the list.

The three are timed interleaved (model, reuse, rebuild, model, ...) so that a slow spell of the
shared machine hits all of them alike; the table gives medians. Because the model's own time
varies by 10-20 % between calls on the shared machine, the overhead is also measured inside
each step: the calculator's model is wrapped in a timer, and ``python %`` is the share of the
step spent outside the model call (neighbour list, skin filtering, graph building, results).

    python benchmarks/calculator.py [--sizes 256 1372 4000 10976] [--presets small medium]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import structures  # noqa: E402
import torch  # noqa: E402
from measure import write_record  # noqa: E402

from calculators import MLIPCalculator  # noqa: E402
from mlip import AtomicGraph  # noqa: E402
from mlip.export import save  # noqa: E402
from mlip.models import build_model  # noqa: E402

CUTOFF = 6.0


class _TimedModel:
    """Forwards calls and attribute writes to the calculator's model; adds up call seconds."""

    def __init__(self, module: torch.nn.Module) -> None:
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "seconds", 0.0)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self.module, name, value)

    def __call__(self, data: dict) -> dict:
        start = time.perf_counter()
        outputs = self.module(data)
        object.__setattr__(self, "seconds", self.seconds + time.perf_counter() - start)
        return outputs


def measure(preset: str, n_atoms: int, repeats: int, folder: Path) -> dict:
    atoms = structures.copper(n_atoms)
    graph = AtomicGraph.from_atoms(atoms, CUTOFF)
    torch.manual_seed(0)
    model = build_model(species=[29], cutoff=CUTOFF, preset=preset, dtype=torch.float32)
    model.set_statistics(avg_num_neighbors=graph.num_edges / n_atoms)
    path = save(model.eval(), folder / f"{preset}_{n_atoms}.pt")
    rng = np.random.default_rng(0)
    calculators = {"reuse": MLIPCalculator(path, skin=0.5), "rebuild": MLIPCalculator(path, skin=0)}
    module = calculators["reuse"].model
    timers = {label: _TimedModel(calc.model) for label, calc in calculators.items()}
    for label, calculator in calculators.items():
        calculator.model = timers[label]
    data = graph.as_dict()
    moving = {label: atoms.copy() for label in calculators}
    for label, calculator in calculators.items():
        moving[label].calc = calculator

    def model_call() -> None:
        module.compute_stress = True
        module(data)

    def step(label: str) -> None:
        moving[label].positions += rng.normal(scale=0.002, size=(n_atoms, 3))
        moving[label].get_forces()
        moving[label].get_stress()

    calls = {
        "model": model_call,
        "reuse": lambda: step("reuse"),
        "rebuild": lambda: step("rebuild"),
    }
    times: dict[str, list[float]] = {label: [] for label in calls}
    outside: dict[str, list[float]] = {label: [] for label in calculators}
    for round_index in range(repeats + 2):
        for label, call in calls.items():
            inside = timers[label].seconds if label in timers else 0.0
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_index >= 2:  # two warm-up rounds (TorchScript profiles the first calls)
                times[label].append(elapsed)
                if label in timers:
                    outside[label].append((elapsed - timers[label].seconds + inside) / elapsed)
    t_model = statistics.median(times["model"])
    row = {"preset": preset, "n_atoms": n_atoms, "model_ms": 1e3 * t_model}
    for label in ("reuse", "rebuild"):
        t_step = statistics.median(times[label])
        row[f"step_{label}_ms"] = 1e3 * t_step
        row[f"overhead_{label}_pct"] = 100.0 * (t_step - t_model) / t_step
        row[f"python_{label}_pct"] = 100.0 * statistics.median(outside[label])
    row["rebuilds"] = calculators["reuse"]._neighbors.rebuilds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1372, 4000, 10976])
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/calculator.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"GMEP float32, cutoff {CUTOFF} Å, {args.threads} threads, energy+forces+stress")
    header = (
        "preset", "atoms", "model ms", "step ms", "overhead", "python %",
        "rebuild ms", "overhead", "python %",
    )  # fmt: skip
    print("{:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}".format(*header))
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            for n in args.sizes:
                repeats = 15 if n <= 1500 else 5 if n <= 5000 else 3
                row = measure(preset, n, repeats, Path(folder))
                rows.append(row)
                print(
                    f"{preset:>7} {n:>7} {row['model_ms']:>9.1f} {row['step_reuse_ms']:>9.1f} "
                    f"{row['overhead_reuse_pct']:>8.1f}% {row['python_reuse_pct']:>8.1f}% "
                    f"{row['step_rebuild_ms']:>11.1f} {row['overhead_rebuild_pct']:>8.1f}% "
                    f"{row['python_rebuild_pct']:>8.1f}%",
                    flush=True,
                )
    meta = {"benchmark": "calculator", "torch": torch.__version__, "threads": args.threads}
    write_record(args.out, meta, rows)


if __name__ == "__main__":
    main()
