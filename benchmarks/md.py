"""MD throughput: ns/day of NVE velocity Verlet through the ASE calculator, GMEP against MACE.

Rattled fcc Cu (1372 and 10976 atoms), cutoff 6 Å, 1 fs time step, 300 K start, float32,
2 threads. GMEP runs through :class:`calculators.MLIPCalculator` on an exported model with the
Verlet skin on (0.5 Å, so most steps reuse the neighbour list); MACE through its own
``MACECalculator`` in its venv (``--mace-python``), same structures, same invocation. Besides
ns/day the table gives the share of the step spent in the model itself (``model %``), measured
by timing the scripted model alone on the same graph, and the neighbour-list rebuilds.

    python benchmarks/md.py --mace-python /tmp/mace-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import md_run  # noqa: E402
import measure  # noqa: E402
import structures  # noqa: E402
import torch  # noqa: E402

from calculators import MLIPCalculator  # noqa: E402
from mlip import AtomicGraph  # noqa: E402
from mlip.export import save  # noqa: E402
from mlip.models import build_model  # noqa: E402

CUTOFF = 6.0


def gmep_md(preset: str, n_atoms: int, steps: int, folder: Path) -> dict:
    atoms = structures.copper(n_atoms)
    graph = AtomicGraph.from_atoms(atoms, CUTOFF)
    torch.manual_seed(0)
    model = build_model(species=[29], cutoff=CUTOFF, preset=preset)
    model.set_statistics(avg_num_neighbors=graph.num_edges / n_atoms)
    path = save(model.eval(), folder / f"{preset}_{n_atoms}.pt")
    calculator = MLIPCalculator(path, skin=0.5)
    row = md_run.time_md(atoms, calculator, steps)
    module = calculator.model  # the calculator computes stress too for periodic cells
    module.compute_stress = True
    data = graph.as_dict()
    model_seconds = measure.median_seconds(lambda: module(data), max(3, steps // 3))
    return {
        "code": "gmep",
        "model": f"GMEP {preset}",
        **row,
        "model_seconds": model_seconds,
        "model_share": model_seconds / row["seconds_per_step"],
        "rebuilds": calculator._neighbors.rebuilds,
    }


def mace_md(python: str, n_atoms: int, steps: int, threads: int) -> dict:
    atoms = structures.copper(n_atoms)
    graph = AtomicGraph.from_atoms(atoms, CUTOFF)
    payload = {
        "n_atoms": n_atoms,
        "steps": steps,
        "threads": threads,
        "cutoff": CUTOFF,
        "avg_num_neighbors": graph.num_edges / n_atoms,
    }
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # e3nn 0.4 constants
    worker = Path(__file__).with_name("mace_md_worker.py")
    proc = subprocess.run(
        [python, str(worker), json.dumps(payload)], capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"code": "mace", "model": "MACE", "failed": tail[0][:200]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1372, 10976])
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a fifth for 10k+)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mace-python", default=None)
    parser.add_argument("--mace-max-atoms", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/md.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"NVE, 1 fs, Cu, cutoff {CUTOFF} Å, float32, {args.threads} threads")
    with tempfile.TemporaryDirectory() as folder:
        for n_atoms in args.sizes:
            steps = args.steps if n_atoms < 10000 else max(3, args.steps // 5)
            runs = [gmep_md(p, n_atoms, steps, Path(folder)) for p in args.presets]
            if args.mace_python and n_atoms <= args.mace_max_atoms:
                runs.append(mace_md(args.mace_python, n_atoms, max(3, steps // 4), args.threads))
            for row in runs:
                row["n_atoms"] = n_atoms
                rows.append(row)
                if "failed" in row or row.get("oom"):
                    print(f"{n_atoms:6d} {row['model']:22s} {row.get('failed', 'does not fit')}")
                    continue
                share = f"{100 * row['model_share']:5.1f} %" if "model_share" in row else "    -"
                print(
                    f"{n_atoms:6d} {row['model']:22s} {row['seconds_per_step'] * 1e3:9.1f} ms/step "
                    f"{row['ns_per_day']:8.4f} ns/day  model {share}  "
                    f"ΔE {row['energy_change_ev_per_atom']:+.1e} eV/atom",
                    flush=True,
                )
    meta = {
        "benchmark": "md",
        "torch": torch.__version__,
        "threads": args.threads,
        "timestep_fs": md_run.TIMESTEP_FS,
    }
    measure.write_record(args.out, meta, rows)


if __name__ == "__main__":
    main()
