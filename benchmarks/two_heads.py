"""One two-head model (MPtrj sample + PySCF charged set) against one-head models on each alone.

Issue 15: "each head's test error equals or beats a one-head model trained on its own data under
the same budget". Three ``mlip-train`` runs (``training.trainer.train``, the real pipeline) with
the same model size, seed and number of epochs:

- ``two_heads``: ``data.sources`` = MPtrj sample (head ``mptrj``, charge 0 / singlet by default)
  and the charged set (head ``omol``), ``model.hyper: {heads: [mptrj, omol], charge_spin: true}``
  (``--head-readout``: plus ``head_readout: true``, one readout output per head);
- ``mptrj_only``: the MPtrj sample alone, a plain model;
- ``omol_only``: the charged set alone, ``charge_spin: true``.

Test sets: the last 3 of the 11 MPtrj frames; every 5th geometry of the charged set (all its
states). Errors of the exported ``model.pt`` through :class:`calculators.MLIPCalculator` with
the head of the test set. The MPtrj sample is tiny (8 training frames, 10 of 11 from one
trajectory), so its figures are a smoke test of the mechanism, not a statement on MPtrj.

Usage::

    flock /work/wt/bench.lock python benchmarks/two_heads.py --epochs 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from ase.io import read, write

ROOT = Path(__file__).resolve().parents[1]
MPTRJ = ROOT.parent / "shared" / "data" / "mptrj" / "mptrj_11frames.extxyz"
CHARGED = ROOT / "data" / "charged" / "charged.extxyz"


def write_splits(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{head: (train file, test file)}`` written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    mptrj = read(MPTRJ, index=":")
    charged = read(CHARGED, index=":")
    held_out = [int(a.info["geometry"]) % 5 == 0 for a in charged]
    parts = {
        "mptrj": (mptrj[:8], mptrj[8:]),
        "omol": (
            [a for a, t in zip(charged, held_out) if not t],
            [a for a, t in zip(charged, held_out) if t],
        ),
    }
    paths = {}
    for head, (train, test) in parts.items():
        paths[head] = (folder / f"{head}_train.extxyz", folder / f"{head}_test.extxyz")
        write(paths[head][0], train)
        write(paths[head][1], test)
    return paths


def run_config(sources: list[dict], hyper: dict, output: Path, args: argparse.Namespace, seed: int):
    from training.config import config_from_dict

    return config_from_dict(
        {
            "data": {"sources": sources, "valid": 0.1, "num_workers": 0},
            "model": {
                "cutoff": 5.0,
                "hyper": {"channels": args.channels, "mixer_channels": args.channels, **hyper},
            },
            "train": {
                "max_epochs": args.epochs,
                "batch": {"size": args.batch},
                "lr": args.lr,
                "num_threads": args.threads,
                "progress_bar": False,
                "seed": seed,
            },
            "loss": {"energy_weight": 1.0, "forces_weight": 10.0},
            "output_dir": str(output),
        }
    )


def test_errors(model: str, test_file: Path, head: str | None) -> dict[str, float]:
    """Energy RMSE (meV/atom) and force RMSE (meV/Å) of ``model`` on ``test_file``."""
    from calculators import MLIPCalculator

    calc = MLIPCalculator(model, head=head)
    energy, forces = [], []
    for atoms in read(test_file, index=":"):
        reference_e, reference_f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.info.setdefault("charge", 0)
        atoms.info.setdefault("spin", 1)
        atoms.calc = calc
        energy.append((atoms.get_potential_energy() - reference_e) / len(atoms))
        forces.append((atoms.get_forces() - reference_f).ravel())
    return {
        "energy_rmse_meV_atom": 1000 * float(np.sqrt(np.mean(np.square(energy)))),
        "forces_rmse_meV_A": 1000 * float(np.sqrt(np.mean(np.square(np.concatenate(forces))))),
        "n_test": len(energy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--head-readout", action="store_true", help="the two-head model gets per-head readouts"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "two_heads")
    args = parser.parse_args()
    if not MPTRJ.is_file():
        raise SystemExit(f"needs the MPtrj sample at {MPTRJ} (../shared/data)")
    from training.trainer import train

    paths = write_splits(args.out / "data")
    mptrj = {"train": str(paths["mptrj"][0]), "default_charge": 0, "default_spin": 1}
    omol = {"train": str(paths["omol"][0])}
    runs = {
        "two_heads": (
            [{**mptrj, "head": "mptrj"}, {**omol, "head": "omol"}],
            {"heads": ["mptrj", "omol"], "charge_spin": True, "head_readout": args.head_readout},
            {"mptrj": "mptrj", "omol": "omol"},
        ),
        "mptrj_only": ([mptrj], {}, {"mptrj": None}),
        "omol_only": ([omol], {"charge_spin": True}, {"omol": None}),
    }
    rows = []
    for seed in args.seeds:
        for name, (sources, hyper, tested) in runs.items():
            output = args.out / f"{name}_seed{seed}"
            start = time.perf_counter()
            result = train(run_config(sources, hyper, output, args, seed))
            seconds = time.perf_counter() - start
            summary = json.loads((output / "summary.json").read_text())
            for test_set, head in tested.items():
                errors = test_errors(result["model"], paths[test_set][1], head)
                row = {"run": name, "test_set": test_set, "seed": seed, "train_s": seconds}
                rows.append({**row, **errors})
                rows[-1]["structures_seen"] = summary.get("throughput", {}).get("structures")
    print(
        f"{args.epochs} epochs, {args.channels} channels, batch {args.batch}, "
        f"head_readout {args.head_readout}, "
        f"{args.threads} thread(s), seeds {args.seeds}, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'run':<12} {'test set':<8} {'seed':>4} {'E RMSE meV/atom':>16} {'F RMSE meV/Å':>13} "
        f"{'train s':>8}"
    )
    for row in rows:
        print(
            f"{row['run']:<12} {row['test_set']:<8} {row['seed']:>4} "
            f"{row['energy_rmse_meV_atom']:>16.1f} {row['forces_rmse_meV_A']:>13.1f} "
            f"{row['train_s']:>8.1f}"
        )
    print("mean over seeds (min - max):")
    for name, (_, _, tested) in runs.items():
        for test_set in tested:
            chosen = [r for r in rows if r["run"] == name and r["test_set"] == test_set]
            parts = []
            for key in ("energy_rmse_meV_atom", "forces_rmse_meV_A"):
                values = [r[key] for r in chosen]
                parts.append(f"{np.mean(values):.1f} ({min(values):.1f} - {max(values):.1f})")
            print(f"{name:<12} {test_set:<8} E {parts[0]}  F {parts[1]}")
    output = args.out.parent / f"{args.out.name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "rows": rows}))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
