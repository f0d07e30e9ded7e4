"""GMEP ``large``: energy + forces time of layers with l > 0 inputs as per-receiver GEMMs
against per-edge messages, same weights, one invocation.

Random-weight ``large`` models in float32 on rattled fcc Cu (256 atoms, cutoff 6 Å and 4 Å:
78 and 18 neighbours per atom) and a 960-atom AcAc liquid (cutoff 5 Å, 43 neighbours). For
each structure the exported-style ``ForceStress`` (forces only) is timed with every l > 0
layer forced into the per-receiver form (``receiver_min_neighbors = 0``), then into the
per-edge form (``receiver_gemm = False``): median of ``--repeats`` calls after 2 warm-ups.
The ratio sets ``mlip.models.gmep.RECEIVER_MIN_NEIGHBORS_VECTOR_INPUT``.

Usage::

    python benchmarks/receiver_forms.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structures  # noqa: E402

from mlip import AtomicGraph  # noqa: E402
from mlip.derivatives import ForceStress  # noqa: E402
from mlip.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def time_per_atom(model: torch.nn.Module, atoms, cutoff: float, repeats: int) -> float:
    """Median seconds per atom of one energy + forces call."""
    wrapped = ForceStress(model, compute_forces=True, compute_stress=False)
    for parameter in wrapped.parameters():
        parameter.requires_grad_(False)
    data = AtomicGraph.from_atoms(atoms, cutoff, read_labels=False).as_dict()
    for _ in range(2):
        wrapped(data)["forces"].sum().item()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        wrapped(data)["forces"].sum().item()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(atoms)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/receiver_forms.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    copper = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    copper.rattle(0.03, seed=0)
    cases = [
        ("fcc Cu 256, 6 A", copper, [29], 6.0),
        ("AcAc liquid 960, 5 A", structures.acac_liquid(960, molecular=False), [1, 6, 8], 5.0),
        ("fcc Cu 256, 4 A", copper, [29], 4.0),
    ]
    rows = []
    print(f"{'structure':<22} {'nbrs':>5} {'receiver ms/at':>15} {'edge ms/at':>11} {'ratio':>6}")
    for label, atoms, species, cutoff in cases:
        torch.manual_seed(0)
        model = build_model(species=species, cutoff=cutoff, preset="large", dtype="float32")
        vector_layers = [layer for layer in model.layers if layer.lmax_in >= 1]
        for layer in vector_layers:
            layer.receiver_min_neighbors = 0.0
        receiver = time_per_atom(model, atoms, cutoff, args.repeats)
        for layer in vector_layers:
            layer.receiver_gemm = False
        edge = time_per_atom(model, atoms, cutoff, args.repeats)
        graph = AtomicGraph.from_atoms(atoms, cutoff, read_labels=False)
        neighbours = graph.edge_index.shape[1] / len(atoms)
        rows.append(
            {
                "structure": label,
                "neighbours_per_atom": neighbours,
                "receiver_ms_per_atom": 1e3 * receiver,
                "edge_ms_per_atom": 1e3 * edge,
                "edge_over_receiver": edge / receiver,
            }
        )
        print(
            f"{label:<22} {neighbours:>5.0f} {1e3 * receiver:>15.2f} {1e3 * edge:>11.2f} "
            f"{edge / receiver:>6.2f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
