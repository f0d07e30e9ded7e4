"""pair_style mlip with and without ``chunk_atoms``: time per atom and peak memory of one rank.

An untrained GMEP preset for Cu (float32, cutoff 6 Å, exported like any trained model; speed
and memory do not depend on the weights) on rattled fcc Cu of each ``--sizes``, one MPI rank,
one torch thread. Each point is a fresh ``lmp`` process: ``run 0`` (warm-up), then ``run
--steps`` of NVE; the time is LAMMPS' loop time of the second run per step and atom, the peak
memory the process's maximum resident set (``wait4``). ``--chunk-atoms 0`` is the whole-graph
call; a point that exceeds ``--limit-gb`` of address space is reported as not fitting.

    taskset -c 1 python benchmarks/lammps_chunked.py --preset medium --sizes 4000 32000 \\
        --chunk-atoms 0 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lammps  # noqa: E402
import measure  # noqa: E402
import structures  # noqa: E402
import torch  # noqa: E402

from calculators.lammps_build import build_plugin  # noqa: E402
from mlip.export import save  # noqa: E402
from mlip.models import build_model  # noqa: E402

BIN = Path(sys.executable).parent


def export_model(preset: str, folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(species=[29], cutoff=6.0, preset=preset, dtype=torch.float32)
    return save(model.eval(), folder / f"cu_{preset}.pt")


def run_point(
    plugin: Path,
    model: Path,
    atoms,
    chunk_atoms: int,
    keep_graphs: str,
    steps: int,
    limit_gb: float,
    folder: Path,
) -> dict:
    extra = f"chunk_atoms {chunk_atoms} keep_graphs {keep_graphs}" if chunk_atoms else ""
    lammps.write_nve_input(folder, atoms, plugin, model, 0, steps, extra)
    limit = int(limit_gb * 2**30)
    command = ["prlimit", f"--as={limit}", str(BIN / "lmp"), "-in", "in.bench", "-log", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    row = {
        "atoms": len(atoms),
        "chunk_atoms": chunk_atoms,
        "keep_graphs": keep_graphs if chunk_atoms else None,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
    }
    loops = lammps.LOOP_TIME.findall(output)
    if os.waitstatus_to_exitcode(status) != 0 or len(loops) < 2:
        tail = " | ".join(output.strip().splitlines()[-3:])
        row["error"] = f"did not run within {limit_gb:g} GB: {tail[-300:]}"
        return row
    seconds, n_steps = loops[-1]
    row["us_per_atom_step"] = 1e6 * float(seconds) / int(n_steps) / len(atoms)
    chunks = re.search(r"([0-9.]+) chunks per evaluation", output)
    row["chunks"] = float(chunks.group(1)) if chunks else 1.0
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    parser.add_argument("--chunk-atoms", type=int, nargs="+", default=[0, 2000])
    parser.add_argument(
        "--keep-graphs",
        nargs="+",
        choices=["yes", "no"],
        default=["yes"],
        help="pair_style keep_graphs of the chunked points (each one a point)",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=20.0)
    parser.add_argument(
        "--out", type=Path, default=measure.ROOT / "benchmarks/results/lammps_chunked.json"
    )
    args = parser.parse_args(argv)
    plugin = build_plugin(log=lambda text: None)
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}; GMEP {args.preset} float32, 1 rank, 1 thread")
    print(
        f"{'atoms':>8} {'chunk_atoms':>11} {'keep':>5} {'chunks':>7} {'us/atom/step':>13} "
        f"{'peak GiB':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_model(args.preset, folder)
        for size in args.sizes:
            atoms = structures.copper(size)
            points = [
                (n, keep) for n in args.chunk_atoms for keep in (args.keep_graphs if n else ["-"])
            ]
            for chunk_atoms, keep in points:
                row = run_point(
                    plugin, model, atoms, chunk_atoms, keep, args.steps, args.limit_gb, folder
                )
                rows.append(row)
                if "error" in row:
                    print(f"{len(atoms):>8} {chunk_atoms:>11} {keep:>5} {row['error']}")
                else:
                    print(
                        f"{len(atoms):>8} {chunk_atoms:>11} {keep:>5} {row['chunks']:>7.1f} "
                        f"{row['us_per_atom_step']:>13.0f} {row['peak_rss_gib']:>9.2f}"
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
