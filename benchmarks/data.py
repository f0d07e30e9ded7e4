"""Data pipeline benchmark: MPTrj JSON -> HDF5 store conversion rate, loader throughput, memory.

Writes N synthetic MPTrj-sized frames (8-60 atoms, mean ~31, 10 frames per mp_id) in the MPTrj
JSON layout, converts them with :func:`training.data.store.convert`, reads the store once streaming
(peak Python memory with tracemalloc) and iterates the loader with 0 and 2 workers.

    python benchmarks/data.py                  # 100000 frames (slow on a small machine)
    python benchmarks/data.py --frames 5000    # quick run

Prints a table and writes JSON (``--out``, default ``benchmarks/results/data.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

_ELEMENTS = ["H", "Li", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca"]
_ELEMENTS += ["Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ba", "Sm", "Ir"]


def _structure_dict(rng: np.random.Generator, n_atoms: int) -> dict:
    length = (n_atoms * 12.0) ** (1 / 3)
    matrix = np.diag([length] * 3) + rng.normal(scale=0.3, size=(3, 3))
    fractional = rng.random((n_atoms, 3))
    cartesian = fractional @ matrix
    symbols = rng.choice(_ELEMENTS, size=n_atoms)
    sites = [
        {
            "species": [{"element": str(symbol), "occu": 1}],
            "abc": fractional[i].tolist(),
            "properties": {"magmom": float(rng.normal())},
            "label": str(symbol),
            "xyz": cartesian[i].tolist(),
        }
        for i, symbol in enumerate(symbols)
    ]
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0.0,
        "lattice": {"matrix": matrix.tolist(), "pbc": [True, True, True]},
        "properties": {},
        "sites": sites,
    }


def write_synthetic_mptrj(path: Path, n_frames: int, seed: int = 0) -> int:
    """Write ``n_frames`` synthetic frames in the MPTrj JSON layout; returns the atom count."""
    rng = np.random.default_rng(seed)
    n_atoms_total = 0
    with open(path, "w") as handle:
        handle.write("{")
        for frame in range(n_frames):
            group, step = divmod(frame, 10)
            if step == 0:
                handle.write(("" if group == 0 else "}, ") + f'"mp-{group}": {{')
            n_atoms = int(rng.integers(8, 61))
            n_atoms_total += n_atoms
            energy = float(rng.normal(-5.0, 1.0) * n_atoms)
            record = {
                "structure": _structure_dict(rng, n_atoms),
                "uncorrected_total_energy": energy,
                "corrected_total_energy": energy - 0.5,
                "energy_per_atom": energy / n_atoms,
                "ef_per_atom": -1.0,
                "e_per_atom_relaxed": -5.0,
                "ef_per_atom_relaxed": -1.0,
                "force": rng.normal(scale=0.5, size=(n_atoms, 3)).tolist(),
                "stress": rng.normal(scale=5.0, size=(3, 3)).tolist(),
                "magmom": None,
                "bandgap": 0.0,
                "mp_id": f"mp-{group}",
            }
            separator = "" if step == 0 else ", "
            handle.write(f'{separator}"mp-{frame}-0-{step}": {json.dumps(record)}')
        handle.write("}}" if n_frames else "}")
    return n_atoms_total


def _loader_rate(store_path: Path, cutoff: float, workers: int, limit: int) -> dict:
    from training.data.datasets import BatchBudget, GraphDataset, make_loader
    from training.data.store import Store

    n_frames = min(limit, len(Store(store_path)))
    dataset = GraphDataset(store_path, cutoff, indices=np.arange(n_frames))
    loader = make_loader(dataset, BatchBudget(1024, max_atoms=1024), seed=0, num_workers=workers)
    started = time.perf_counter()
    n_structures = n_edges = 0
    for batch in loader:
        n_structures += batch.num_graphs
        n_edges += batch.num_edges
    seconds = time.perf_counter() - started
    return {
        "workers": workers,
        "structures": n_structures,
        "seconds": seconds,
        "structures_per_s": n_structures / seconds,
        "mean_edges_per_structure": n_edges / max(n_structures, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="synthetic frames")
    parser.add_argument(
        "--loader-frames", type=int, default=5000, help="structures per loader run (≤ frames)"
    )
    parser.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff, Å")
    parser.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    parser.add_argument("--workdir", help="where to put the files (default: a temp dir)")
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args(argv)

    from training.data.statistics import compute_statistics
    from training.data.store import Store, convert

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        json_path, store_path = tmp_path / "mptrj.json", tmp_path / "mptrj.h5"
        started = time.perf_counter()
        n_atoms = write_synthetic_mptrj(json_path, args.frames)
        generate_s = time.perf_counter() - started
        json_mb = json_path.stat().st_size / 1e6

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = convert(
            json_path,
            store_path,
            compression=None if args.compression == "none" else args.compression,
        )
        convert_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        store_mb = store_path.stat().st_size / 1e6

        store = Store(store_path)
        order = np.random.default_rng(0).permutation(len(store))
        started = time.perf_counter()
        for index in order:
            store[int(index)]
        read_s = time.perf_counter() - started
        store.close()
        # Peak Python memory of a streaming read (tracemalloc slows it: timed separately).
        tracemalloc.start()
        store = Store(store_path)
        for index in range(min(len(store), 20_000)):
            store[index]
        _, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        store.close()

        started = time.perf_counter()
        stats = compute_statistics(store_path)
        stats_s = time.perf_counter() - started

        loader_runs = [
            _loader_rate(store_path, args.cutoff, workers, args.loader_frames) for workers in (0, 2)
        ]

    results = {
        "frames": args.frames,
        "atoms": n_atoms,
        "json_mb": json_mb,
        "store_mb": store_mb,
        "compression": args.compression,
        "generate_s": generate_s,
        "convert_s": report.seconds,
        "convert_frames_per_s": args.frames / report.seconds,
        "convert_peak_rss_mb": convert_rss_mb,
        "rss_before_convert_mb": rss_before / 1024,
        "read_all_frames_s": read_s,
        "read_random_order_frames_per_s": args.frames / read_s,
        "read_peak_tracemalloc_mb": read_peak / 1e6,
        "statistics_s": stats_s,
        "statistics_n_atoms": stats.sums.n_atoms,
        "loader": loader_runs,
        "cutoff": args.cutoff,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
    }
    print(f"{'metric':38s} {'value':>14s}")
    rows = [
        ("frames / atoms", f"{args.frames} / {n_atoms}"),
        ("JSON size / store size (MB)", f"{json_mb:.1f} / {store_mb:.1f}"),
        ("convert (frames/s)", f"{results['convert_frames_per_s']:.0f}"),
        ("convert peak RSS, whole process (MB)", f"{convert_rss_mb:.0f}"),
        ("random-order read (frames/s)", f"{results['read_random_order_frames_per_s']:.0f}"),
        ("read peak Python memory (MB)", f"{results['read_peak_tracemalloc_mb']:.2f}"),
        ("statistics pass (s)", f"{stats_s:.2f}"),
    ]
    rows += [
        (f"loader, {run['workers']} workers (structures/s)", f"{run['structures_per_s']:.0f}")
        for run in loader_runs
    ]
    for name, value in rows:
        print(f"{name:38s} {value:>14s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
