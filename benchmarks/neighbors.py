"""Neighbour-list speed: mlip.neighbors against raw vesin and ASE, fcc Cu at 5 Å.

Usage::

    python benchmarks/neighbors.py [--sizes 64 1000 10000 100000] [--out PATH]

Prints a table (ms per call, median of repeats) and writes JSON. ASE is skipped above
``--ase-max`` atoms because it takes seconds there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import vesin
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.neighbors import neighbor_list

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import median_seconds  # noqa: E402

CUTOFF = 5.0


def cu_supercell(n_target: int):
    """Cubic fcc Cu supercell with about ``n_target`` atoms (4 atoms per cubic cell)."""
    reps = max(1, round((n_target / 4) ** (1 / 3)))
    counts = [reps, reps, reps]
    while 4 * np.prod(counts) < n_target * 0.9:
        counts[np.argmin(counts)] += 1
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * tuple(counts)
    atoms.rattle(0.05, seed=0)
    return atoms


def measure(atoms, ase_max: int) -> dict:
    """Time ours, raw vesin and ASE on one structure."""
    positions, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    repeats = 20 if len(atoms) <= 10000 else 5
    raw = vesin.NeighborList(cutoff=CUTOFF, full_list=True)
    t_vesin = median_seconds(lambda: raw.compute(positions, cell, True, "ijS"), repeats)
    t_ours = median_seconds(lambda: neighbor_list(positions, cell, pbc, CUTOFF), repeats)
    t_ase = None
    if len(atoms) <= ase_max:
        t_ase = median_seconds(
            lambda: ase_neighbor_list("ijS", atoms, CUTOFF), max(1, repeats // 5)
        )
    n_edges = int(neighbor_list(positions, cell, pbc, CUTOFF)[0].shape[1])
    return {
        "n_atoms": len(atoms),
        "n_edges": n_edges,
        "mlip_ms": 1e3 * t_ours,
        "vesin_ms": 1e3 * t_vesin,
        "ase_ms": None if t_ase is None else 1e3 * t_ase,
        "mlip_over_vesin": t_ours / t_vesin,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1000, 10000, 100000])
    parser.add_argument("--ase-max", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/neighbors.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    rows = [measure(cu_supercell(size), args.ase_max) for size in args.sizes]

    header = (
        f"{'atoms':>8} {'edges':>9} {'mlip ms':>9} {'vesin ms':>9} {'ase ms':>9} {'mlip/vesin':>10}"
    )
    print(f"fcc Cu, cutoff {CUTOFF} Å, {platform.processor() or platform.machine()}")
    print(header)
    for row in rows:
        ase_ms = "-" if row["ase_ms"] is None else f"{row['ase_ms']:.2f}"
        print(
            f"{row['n_atoms']:>8} {row['n_edges']:>9} {row['mlip_ms']:>9.2f} "
            f"{row['vesin_ms']:>9.2f} {ase_ms:>9} {row['mlip_over_vesin']:>10.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "neighbors",
        "cutoff": CUTOFF,
        "vesin": vesin.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
