"""Charge/spin inputs on the PySCF charged set: energy differences between states of a geometry.

Trains two tiny GMEPs on the same training geometries of ``data/charged/charged.extxyz`` (every
state of a geometry stays in the same split), one with ``charge_spin=True`` and one blind to
charge and spin, with a minimal self-contained loop (Adam on per-atom energy + force MSE through
:class:`mlip.derivatives.ForceStress`). On the unseen test geometries it reports, over all pairs
of states of one geometry, the RMS of the DFT energy differences and the RMS error of the
predicted differences (a blind model predicts exactly zero), plus energy and force errors.

Usage::

    python benchmarks/charge_spin.py --epochs 100 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from mlip import AtomicGraph, keys
from mlip.derivatives import ForceStress
from mlip.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def load_split(path: Path, cutoff: float, test_every: int) -> tuple[list, list, list, list]:
    """Graphs and frames of the training and test geometries (every ``test_every``-th id)."""
    frames = read(path, index=":")
    train, test = [], []
    for atoms in frames:
        (test if int(atoms.info["geometry"]) % test_every == 0 else train).append(atoms)
    graph = lambda atoms: AtomicGraph.from_atoms(atoms, cutoff)  # noqa: E731
    return [graph(a) for a in train], [graph(a) for a in test], train, test


def reference_energies(graphs: list[AtomicGraph], species: list[int]) -> dict[int, float]:
    """Least-squares E0 per element from the training energies (eV)."""
    counts = np.array([[int((g.atomic_numbers == z).sum()) for z in species] for g in graphs])
    energies = np.array([float(g.energy) for g in graphs])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    return {z: float(e) for z, e in zip(species, solution)}


def train(
    charge_spin: bool, graphs: list[AtomicGraph], species: list[int], args: argparse.Namespace
) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = build_model(
        species=species,
        cutoff=args.cutoff,
        preset="small",
        dtype=torch.float64,
        channels=args.channels,
        mixer_channels=args.channels,
        charge_spin=charge_spin,
    )
    e0 = reference_energies(graphs, species)
    residual = np.array(
        [
            (float(g.energy) - sum(e0[int(z)] for z in g.atomic_numbers)) / g.num_atoms.item()
            for g in graphs
        ]
    )
    neighbours = np.mean([g.num_edges / int(g.num_atoms) for g in graphs])
    model.set_statistics(
        avg_num_neighbors=float(neighbours), reference_energies=e0, scale=float(residual.std())
    )
    wrapper = ForceStress(model, compute_forces=True).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        order = rng.permutation(len(graphs))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = AtomicGraph.batch([graphs[i] for i in order[start : start + args.batch_size]])
            out = wrapper(batch.as_dict())
            per_atom = (out[keys.ENERGY] - batch.energy) / batch.num_atoms
            loss = (per_atom**2).mean() + args.force_weight * (
                (out[keys.FORCES] - batch.forces) ** 2
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.num_graphs
        schedule.step()
        if (epoch + 1) % max(args.epochs // 10, 1) == 0:
            print(f"  charge_spin={charge_spin} epoch {epoch + 1}: loss {total / len(graphs):.4g}")
    return model.eval()


def evaluate(model: torch.nn.Module, graphs: list[AtomicGraph], frames: list) -> dict[str, float]:
    wrapper = ForceStress(model, compute_forces=True).eval()
    out = wrapper(AtomicGraph.batch(graphs).as_dict())
    predicted = out[keys.ENERGY].detach().numpy()
    reference = np.array([float(g.energy) for g in graphs])
    forces = torch.cat([g.forces for g in graphs]).numpy()
    by_geometry: dict[int, list[int]] = defaultdict(list)
    for index, atoms in enumerate(frames):
        by_geometry[int(atoms.info["geometry"])].append(index)
    dft_diff, pred_diff, pair_kind = [], [], []
    for members in by_geometry.values():
        for i, j in itertools.combinations(members, 2):
            dft_diff.append(reference[i] - reference[j])
            pred_diff.append(predicted[i] - predicted[j])
            info_i, info_j = frames[i].info, frames[j].info
            pair_kind.append((info_i["config_type"], info_i["state"], info_j["state"]))
    dft_diff, pred_diff = np.array(dft_diff), np.array(pred_diff)
    rms_diff = float(np.sqrt(np.mean(dft_diff**2)))
    # the geometry-dependent part: dE minus its mean over all test geometries of that state pair
    centred = dft_diff.copy()
    for kind in set(pair_kind):
        mask = np.array([k == kind for k in pair_kind])
        centred[mask] -= centred[mask].mean()
    diff_error = float(np.sqrt(np.mean((pred_diff - dft_diff) ** 2)))
    return {
        "pairs": len(dft_diff),
        "rms_state_difference_eV": rms_diff,
        "rmse_state_difference_eV": diff_error,
        "relative_error": diff_error / rms_diff,
        "rms_geometry_dependent_part_eV": float(np.sqrt(np.mean(centred**2))),
        "energy_mae_eV": float(np.mean(np.abs(predicted - reference))),
        "force_rmse_eV_per_A": float(
            np.sqrt(np.mean((out[keys.FORCES].detach().numpy() - forces) ** 2))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/charged/charged.extxyz")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--force-weight", type=float, default=0.1)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--test-every", type=int, default=5, help="every n-th geometry is test")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/charge_spin.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_graphs, test_graphs, _, test_frames = load_split(args.data, args.cutoff, args.test_every)
    species = sorted({int(z) for g in train_graphs for z in g.atomic_numbers})
    print(
        f"{len(train_graphs)} training frames, {len(test_graphs)} test frames; "
        f"threads {args.threads}, load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for charge_spin in (False, True):
        start = time.perf_counter()
        model = train(charge_spin, train_graphs, species, args)
        metrics = evaluate(model, test_graphs, test_frames)
        rows.append({"charge_spin": charge_spin, **metrics, "train_s": time.perf_counter() - start})
    print()
    print(
        "| charge_spin | pairs | RMS dE(states) eV | RMS dE - mean(pair) eV | RMSE of dE eV "
        "| RMSE / RMS | E MAE eV | F RMSE eV/Å |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['charge_spin']} | {r['pairs']} | {r['rms_state_difference_eV']:.3f} | "
            f"{r['rms_geometry_dependent_part_eV']:.3f} | "
            f"{r['rmse_state_difference_eV']:.3f} | {100 * r['relative_error']:.1f} % | "
            f"{r['energy_mae_eV']:.3f} | {r['force_rmse_eV_per_A']:.3f} |"
        )
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "load": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
