"""Architecture comparison on AcAc: EGNN, HEGNN, TransIP (both arms), LEFTNet, GMEP small and
medium, and MACE, each trained under the same wall-clock budget, one run at a time.

Training and test errors use ``benchmarks/train_acac.py`` (same 450/50 split of
``train_300K.xyz``, isolated-atom E0s, ``training/configs/acac.yaml``, float32, CPU; MACE in its
own venv, killed at the budget). For every trained model this script then measures, from its
exported file:

* parameters;
* energy + forces time per atom on a ~1k-atom molecular liquid (64 AcAc molecules, 960
  atoms, periodic; for LEFTNet the same positions as a droplet without cell): median of
  ``--repeats`` calls (after 3 warm-up calls) of the exported TorchScript module (stress
  off), neighbour list built once outside; MACE through ``benchmarks/mace_worker.py`` with
  the trained model file;
* for TransIP (both arms) the equivariance error on ``--equivariance-frames`` test frames under
  random O(3) matrices: RMS of ``E(Rx) - E(x)`` (meV/atom) and of ``F(Rx) - R F(x)``
  (meV/Å, per component).

The TransIP ``embedding`` arm trains with its equivariance objective: the trainer adds the
model's ``auxiliary_loss`` (``equivariance_weight * equivariance_loss``) to every step's loss
(column "objective").

Usage::

    flock /work/wt/bench.lock python benchmarks/architectures.py --minutes 10 --threads 2
    python benchmarks/architectures.py --minutes 0.2 --runs egnn leftnet   # smoke test

Writes ``benchmarks/results/architectures.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from ase.io import read

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import structures  # noqa: E402
import train_acac  # noqa: E402

REPO = measure.ROOT

# label -> mlip-train overrides (model.preset defaults to small)
RUNS: dict[str, list[str]] = {
    "egnn": ["model.name=egnn"],
    "hegnn": ["model.name=hegnn"],
    "transip_embedding": ["model.name=transip", "model.hyper.arm=embedding", "train.lr=0.002"],
    "transip_augmentation": [
        "model.name=transip",
        "model.hyper.arm=augmentation",
        "train.lr=0.002",
    ],
    "leftnet": ["model.name=leftnet"],
    "gmep_small": ["model.preset=small"],
    "gmep_medium": ["model.preset=medium"],
}
LIQUID_ATOMS = 960


def trainer_applies_equivariance_loss() -> bool:
    """Whether the trainer adds a model's ``auxiliary_loss`` (TransIP's objective) to the loss."""
    return any("auxiliary_loss" in p.read_text() for p in (REPO / "training").glob("*.py"))


def load_exported(path: str) -> tuple[torch.jit.ScriptModule, dict]:
    import mlip.export

    module, metadata = mlip.export.load(path, device="cpu")
    module.compute_stress = False
    return module, metadata


def time_energy_forces(path: str, molecular: bool, repeats: int) -> dict:
    """Parameters and E+F seconds per atom of an exported model on the AcAc liquid."""
    from mlip.graph import AtomicGraph

    module, metadata = load_exported(path)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    atoms = structures.acac_liquid(LIQUID_ATOMS, molecular=molecular)
    data = AtomicGraph.from_atoms(atoms, float(metadata["cutoff"]), read_labels=False).as_dict()
    # TorchScript's profiling executor optimises during the first calls: warm up 3 times
    seconds = measure.median_seconds(lambda: module(data)["forces"].sum().item(), repeats, warmup=3)
    return {
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "time_us_per_atom": 1e6 * seconds / len(atoms),
        "timing_atoms": len(atoms),
        "timing_edges": int(data["edge_index"].shape[1]),
        "timing_structure": "AcAc droplet (no pbc)" if molecular else "AcAc liquid (pbc)",
    }


def equivariance_error(path: str, test_file: str, n_frames: int, seed: int = 0) -> dict:
    """RMS change of energy (meV/atom) and forces (meV/Å) under random O(3) matrices."""
    from mlip.graph import AtomicGraph
    from mlip.testing import random_orthogonal

    module, metadata = load_exported(path)
    cutoff = float(metadata["cutoff"])
    frames = read(test_file, f":{n_frames}")
    energy_sq, forces_sq, n_components = 0.0, 0.0, 0
    for k, atoms in enumerate(frames):
        rotation = random_orthogonal(seed + k, reflect=bool(k % 2))
        turned = atoms.copy()
        turned.positions = atoms.positions @ rotation.T
        out = [
            module(AtomicGraph.from_atoms(a, cutoff, read_labels=False).as_dict())
            for a in (atoms, turned)
        ]
        energy = float((out[1]["energy"][0] - out[0]["energy"][0]).detach()) / len(atoms)
        forces = out[1]["forces"].detach().numpy() - out[0]["forces"].detach().numpy() @ rotation.T
        energy_sq += energy**2
        forces_sq += float((forces**2).sum())
        n_components += forces.size
    return {
        "equivariance_energy_meV_atom": 1000 * float(np.sqrt(energy_sq / len(frames))),
        "equivariance_forces_meV_A": 1000 * float(np.sqrt(forces_sq / n_components)),
        "equivariance_frames": len(frames),
    }


def time_mace(model_path: str, threads: int, repeats: int, venv: Path) -> dict:
    worker = Path(__file__).with_name("mace_worker.py")
    args = {
        "system": "acac_liquid",
        "n_atoms": LIQUID_ATOMS,
        "threads": threads,
        "repeats": repeats,
        "model_path": model_path,
    }
    result = subprocess.run(
        [str(venv / "bin/python"), str(worker), json.dumps(args)],
        env={**train_acac.thread_env(threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "parameters": row["parameters"],
        "time_us_per_atom": 1e6 * row["seconds"] / LIQUID_ATOMS,
        "timing_atoms": LIQUID_ATOMS,
        "timing_edges": row["n_edges"],
        "timing_structure": "AcAc liquid (pbc)",
    }


def run_one(label: str, args: argparse.Namespace, paths: dict[str, str]) -> dict:
    if label == "mace":
        row = train_acac.run_mace(
            paths, args.work_dir, args.minutes, args.threads, args.seed, args.mace_venv
        )
        model_path = str(args.work_dir / "mace" / "acac_mace.model")
        row.update(time_mace(model_path, args.threads, args.repeats, args.mace_venv))
        row["label"] = label
        return row
    overrides = RUNS[label]
    if not any(o.startswith("model.preset=") for o in overrides):
        overrides = ["model.preset=small", *overrides]
    if args.threads == 1:  # no DataLoader worker process competing for the run's core
        overrides = [*overrides, "data.num_workers=0"]
    row = train_acac.run_mlip(
        label, paths, args.work_dir, args.minutes, args.threads, args.seed, overrides
    )
    row["label"] = label
    torch.set_num_threads(args.threads)
    row.update(time_energy_forces(row["model_file"], label == "leftnet", args.repeats))
    if label.startswith("transip"):
        row.update(equivariance_error(row["model_file"], paths["test"], args.equivariance_frames))
        applied = label == "transip_augmentation" or trainer_applies_equivariance_loss()
        row["objective"] = (
            "rotation augmentation"
            if label == "transip_augmentation"
            else ("equivariance loss" if applied else "none (trainer hook missing)")
        )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument(
        "--runs", nargs="+", default=[*RUNS, "mace"], choices=[*RUNS, "mace"], metavar="RUN"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed E+F calls (median)")
    parser.add_argument("--equivariance-frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/architectures_acac"))
    parser.add_argument("--mace-venv", type=Path, default=Path("/work/venvs/mace"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/architectures.json")
    args = parser.parse_args(argv)
    if "mace" in args.runs and not (args.mace_venv / "bin/mace_run_train").exists():
        print(f"no MACE venv at {args.mace_venv}: skipping MACE", file=sys.stderr)
        args.runs = [r for r in args.runs if r != "mace"]

    paths = train_acac.write_split(args.work_dir, args.seed, n_valid=50)
    rows = []
    for label in args.runs:
        try:
            rows.append(run_one(label, args, paths))
        except Exception as exc:  # keep the other runs' results
            print(f"{label}: FAILED: {exc}", file=sys.stderr, flush=True)
            rows.append({"label": label, "error": str(exc)})

    header = (
        f"{'model':<22} {'E meV/at':>9} {'F meV/A':>8} {'params':>9} {'E+F us/at':>10} "
        f"{'epochs':>6} {'rot dE meV/at':>13} {'rot dF meV/A':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['label']:<22} FAILED: {r['error']}")
            continue
        rot_e = r.get("equivariance_energy_meV_atom")
        rot_f = r.get("equivariance_forces_meV_A")
        print(
            f"{r['label']:<22} {r['energy_rmse_meV_atom']:>9.2f} {r['forces_rmse_meV_A']:>8.1f} "
            f"{r['parameters']:>9,d} {r['time_us_per_atom']:>10.1f} {r['epochs']:>6d} "
            f"{'exact' if rot_e is None else f'{rot_e:.3f}':>13} "
            f"{'exact' if rot_f is None else f'{rot_f:.2f}':>12}"
        )
    measure.write_record(
        args.out,
        {
            "benchmark": "AcAc architectures: train 450 / valid 50 of train_300K.xyz, "
            "test_MD_300K.xyz (650); E+F time on 960-atom AcAc liquid",
            "minutes": args.minutes,
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "seed": args.seed,
            "command": " ".join(sys.argv),
            "units": {
                "energy": "meV/atom (RMSE of E/N)",
                "forces": "meV/A (per component)",
                "time": "microseconds per atom, energy + forces, median",
            },
        },
        rows,
    )


if __name__ == "__main__":
    main()
