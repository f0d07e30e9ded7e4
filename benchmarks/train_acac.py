"""Training benchmark on AcAc (acetylacetone, 300 K MD): mlip ``small``/``medium`` vs MACE.

All three models are trained on the same 450/50 train/valid split of ``train_300K.xyz``
(seeded permutation, written to explicit files in the work dir), with the E0s of
``isolated_atoms.xyz``, on the CPU, in float32, under the same wall-clock budget
(``--minutes``), one run at a time. They are then evaluated on ``test_MD_300K.xyz`` (650
frames): energy RMSE per atom (meV/atom) and force RMSE per Cartesian component (meV/Å).

- mlip: ``mlip-train training/configs/acac.yaml`` with ``train.max_time=<minutes>``; the
  trainer stops by itself, validates, exports the best EMA model and writes the test metrics
  to ``<output_dir>/summary.json``.
- MACE: ``mace_run_train`` (own venv, ``--mace-venv``) has no wall-clock limit, so it runs as
  a subprocess with an unbounded epoch count and is killed at the budget. MACE checkpoints the
  (EMA) weights whenever the validation loss improves, so a second ``mace_run_train`` call with
  ``--restart_latest --max_num_epochs 0`` loads that best checkpoint without training and
  exports ``<name>.model``; a small script in the MACE venv then computes the test errors with
  the same definitions as ours.

Usage::

    python benchmarks/train_acac.py --minutes 5 --threads 2
    python benchmarks/train_acac.py --minutes 1 --runs mace --work-dir /tmp/acac_bench

Writes ``benchmarks/results/train_acac.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read, write

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "acac"

# MACE model comparable to the MACE reference on AcAc (invariant 128-channel messages).
MACE_MODEL_ARGS = [
    "--model=MACE",
    "--hidden_irreps=128x0e",
    "--max_L=0",
    "--r_max=5.0",
    "--correlation=3",
    "--max_ell=3",
    "--num_interactions=2",
    "--num_radial_basis=8",
]
MACE_TRAIN_ARGS = [
    "--loss=weighted",
    "--energy_weight=10.0",
    "--forces_weight=100.0",
    "--batch_size=5",
    "--valid_batch_size=10",
    "--lr=0.01",
    "--amsgrad",
    "--ema",
    "--ema_decay=0.99",
    "--scheduler_patience=5",
    "--patience=1000000",
    "--eval_interval=1",
    "--error_table=PerAtomRMSE",
    "--default_dtype=float32",
    "--device=cpu",
    "--num_workers=0",
    "--pin_memory=False",
    "--save_cpu",
    "--plot=False",
    "--seed=0",
]

# Runs in the MACE venv: test errors of an exported MACE model, same definitions as
# training.metrics (energy per atom; forces per Cartesian component).
MACE_EVAL_SNIPPET = r"""
import json, sys
import numpy as np
import torch
from ase.io import read
from mace.calculators import MACECalculator

model_path, test_path, out_path, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
calc = MACECalculator(model_paths=model_path, device="cpu", default_dtype="float32")
de, df = [], []
for atoms in read(test_path, ":"):
    e_ref = atoms.info["REF_energy"]
    f_ref = atoms.arrays["REF_forces"]
    atoms.calc = calc
    de.append((atoms.get_potential_energy() - e_ref) / len(atoms))
    df.append((atoms.get_forces() - f_ref).ravel())
de = np.asarray(de); df = np.concatenate(df)
out = {"energy_rmse": float(np.sqrt(np.mean(de**2))), "energy_mae": float(np.mean(np.abs(de))),
       "forces_rmse": float(np.sqrt(np.mean(df**2))), "forces_mae": float(np.mean(np.abs(df))),
       "num_structures": int(len(de))}
json.dump(out, open(out_path, "w"), indent=2)
print(json.dumps(out))
"""


def write_split(work: Path, seed: int, n_valid: int) -> dict[str, str]:
    """Seeded train/valid split of train_300K.xyz plus a copy of the test file, all with the
    labels stored as ``REF_energy`` / ``REF_forces`` (read identically by both codes)."""
    work.mkdir(parents=True, exist_ok=True)

    def relabel(frames):
        out = []
        for atoms in frames:
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
            atoms.calc = None
            atoms.info.pop("energy", None)
            atoms.arrays.pop("forces", None)
            atoms.info["REF_energy"] = float(energy)
            atoms.arrays["REF_forces"] = np.asarray(forces, dtype=float)
            out.append(atoms)
        return out

    frames = relabel(read(DATA / "train_300K.xyz", ":"))
    order = np.random.default_rng(seed).permutation(len(frames))
    valid_idx, train_idx = sorted(order[:n_valid]), sorted(order[n_valid:])
    paths = {
        "train": work / "train.xyz",
        "valid": work / "valid.xyz",
        "test": work / "test.xyz",
    }
    write(paths["train"], [frames[i] for i in train_idx], format="extxyz")
    write(paths["valid"], [frames[i] for i in valid_idx], format="extxyz")
    write(paths["test"], relabel(read(DATA / "test_MD_300K.xyz", ":")), format="extxyz")
    (work / "split.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "train": [int(i) for i in train_idx],
                "valid": [int(i) for i in valid_idx],
            }
        )
    )
    return {k: str(v) for k, v in paths.items()}


def isolated_e0s() -> dict[int, float]:
    return {
        int(a.numbers[0]): float(a.get_potential_energy())
        for a in read(DATA / "isolated_atoms.xyz", ":")
    }


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_mlip(
    preset: str,
    paths: dict[str, str],
    work: Path,
    minutes: float,
    threads: int,
    seed: int,
    overrides: list[str] | None = None,
    config: Path = REPO / "training/configs/acac.yaml",
    data_overrides: list[str] | None = None,
) -> dict:
    """Train ``config`` with ``model.preset=<preset>`` and ``overrides`` (e.g.
    ``model.name=egnn``) in ``<work>/mlip_<preset>``; ``preset`` also labels the run.
    ``data_overrides`` replace AcAc's label keys and isolated-atom E0s."""
    out_dir = work / f"mlip_{preset}"
    extra = list(overrides or [])
    if not any(o.startswith("model.preset=") for o in extra):
        extra.insert(0, f"model.preset={preset}")
    if data_overrides is None:
        data_overrides = [
            "data.energy_key=REF_energy",
            "data.forces_key=REF_forces",
            "data.reference_energies=isolated",
            f"data.isolated_atoms={DATA / 'isolated_atoms.xyz'}",
        ]
    cmd = [
        "mlip-train",
        str(config),
        *extra,
        f"data.train={paths['train']}",
        f"data.valid={paths['valid']}",
        f"data.test={paths['test']}",
        *data_overrides,
        "train.max_epochs=100000",
        "train.patience=null",
        f"train.max_time={minutes}",
        f"train.num_threads={threads}",
        f"train.seed={seed}",
        "train.progress_bar=false",
        f"output_dir={out_dir}",
    ]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    with open(work / f"mlip_{preset}.log", "w") as log:
        proc = subprocess.run(
            cmd, cwd=REPO, env=thread_env(threads), stdout=log, stderr=subprocess.STDOUT
        )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mlip-train {preset} failed, see {work}/mlip_{preset}.log")
    summary = json.loads((out_dir / "summary.json").read_text())
    epochs = 0  # no metrics.csv when the budget ends inside the first epoch
    if (out_dir / "metrics.csv").exists():
        with open(out_dir / "metrics.csv") as handle:
            epochs = sum(1 for _ in csv.DictReader(handle))
    test = summary["test"]
    return {
        "code": "mlip",
        "model": preset,
        "command": cmd,
        "energy_rmse_meV_atom": 1000 * test["energy_rmse"],
        "forces_rmse_meV_A": 1000 * test["forces_rmse"],
        "energy_mae_meV_atom": 1000 * test["energy_mae"],
        "forces_mae_meV_A": 1000 * test["forces_mae"],
        "epochs": epochs,
        "best_epoch": summary.get("best_epoch"),
        "stop_reason": summary.get("stop_reason"),
        "train_wall_s": summary.get("wall_time_s"),  # training + final valid/test evaluation
        "total_wall_s": wall,
        "model_file": str(out_dir / "model.pt"),
        "metrics_csv": str(out_dir / "metrics.csv"),
    }


def run_mace(
    paths: dict[str, str],
    work: Path,
    minutes: float,
    threads: int,
    seed: int,
    venv: Path,
    e0s: str | None = None,
    extra_args: list[str] | None = None,
) -> dict:
    """Train MACE for ``minutes`` (killed at the budget), export its best EMA checkpoint and
    test it. ``e0s`` is MACE's ``--E0s`` value (default: AcAc's isolated atoms);
    ``extra_args`` replace or add ``mace_run_train`` options (e.g. a stress key and weight)."""
    mace_dir = work / "mace"
    mace_dir.mkdir(parents=True, exist_ok=True)
    env = thread_env(threads)
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    if e0s is None:
        e0s = "{" + ", ".join(f"{z}: {e!r}" for z, e in isolated_e0s().items()) + "}"
    extra = list(extra_args or [])
    replaced = {a.split("=")[0] for a in extra} | {"--seed"}
    common = [
        str(venv / "bin/mace_run_train"),
        "--name=acac_mace",
        f"--work_dir={mace_dir}",
        f"--train_file={paths['train']}",
        f"--valid_file={paths['valid']}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        f"--E0s={e0s}",
        *MACE_MODEL_ARGS,
        *[a for a in MACE_TRAIN_ARGS if a.split("=")[0] not in replaced],
        *extra,
        f"--seed={seed}",
    ]
    cmd = [*common, "--max_num_epochs=100000"]
    print("$", " ".join(cmd), flush=True)
    budget = 60.0 * minutes
    started_unix = time.time()
    t0 = time.monotonic()
    with open(work / "mace_train.log", "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=budget)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            killed = True
    train_wall = time.monotonic() - t0

    # epochs completed (one validation line per epoch with --eval_interval=1)
    log_text = (work / "mace_train.log").read_text()
    epoch_numbers = [int(m) for m in re.findall(r"Epoch (\d+):", log_text)]
    epochs = max(epoch_numbers) + 1 if epoch_numbers else 0
    checkpoints = sorted((mace_dir / "checkpoints").glob("*.pt"))
    if not checkpoints:
        raise RuntimeError(f"MACE saved no checkpoint in {train_wall:.0f} s; see mace_train.log")
    best = re.search(r"epoch-(\d+)", checkpoints[-1].name)

    # export the best (EMA) checkpoint without training
    export = [*common, "--restart_latest", "--max_num_epochs=0"]
    t1 = time.monotonic()
    with open(work / "mace_export.log", "w") as log:
        result = subprocess.run(export, env=env, stdout=log, stderr=subprocess.STDOUT)
    model_path = mace_dir / "acac_mace.model"
    if result.returncode != 0 or not model_path.exists():
        raise RuntimeError("MACE export failed; see mace_export.log")
    metrics_path = work / "mace_test.json"
    subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            MACE_EVAL_SNIPPET,
            str(model_path),
            paths["test"],
            str(metrics_path),
            str(threads),
        ],
        env=env,
        check=True,
    )
    eval_wall = time.monotonic() - t1
    test = json.loads(metrics_path.read_text())
    return {
        "code": "mace",
        "model": "MACE 128x0e L=0 corr3 ell3 2 layers",
        "command": cmd,
        "energy_rmse_meV_atom": 1000 * test["energy_rmse"],
        "forces_rmse_meV_A": 1000 * test["forces_rmse"],
        "energy_mae_meV_atom": 1000 * test["energy_mae"],
        "forces_mae_meV_A": 1000 * test["forces_mae"],
        "epochs": epochs,
        "best_epoch": int(best.group(1)) if best else None,
        "stop_reason": "killed_at_budget" if killed else f"exit {proc.returncode}",
        "train_wall_s": train_wall,  # process start to kill, imports and setup included
        "started_unix": started_unix,
        "train_log": str(work / "mace_train.log"),
        "total_wall_s": train_wall + eval_wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument(
        "--runs", nargs="+", default=["small", "medium", "mace"], help="mlip presets and/or 'mace'"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/train_acac"))
    parser.add_argument("--mace-venv", type=Path, default=Path("/tmp/mace-venv"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train_acac.json")
    args = parser.parse_args(argv)

    paths = write_split(args.work_dir, args.seed, n_valid=50)
    rows = []
    for run in args.runs:
        try:
            if run == "mace":
                rows.append(
                    run_mace(
                        paths, args.work_dir, args.minutes, args.threads, args.seed, args.mace_venv
                    )
                )
            else:
                rows.append(
                    run_mlip(run, paths, args.work_dir, args.minutes, args.threads, args.seed)
                )
        except Exception as exc:  # keep the other runs' results
            print(f"{run}: FAILED: {exc}", file=sys.stderr, flush=True)
            rows.append(
                {"code": "mace" if run == "mace" else "mlip", "model": run, "error": str(exc)}
            )

    header = (
        f"{'run':<40} {'E RMSE meV/at':>14} {'F RMSE meV/A':>13} {'epochs':>7} "
        f"{'train s':>8} {'total s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['code'] + ' ' + r['model']:<40} FAILED: {r['error']}")
            continue
        print(
            f"{r['code'] + ' ' + r['model']:<40} {r['energy_rmse_meV_atom']:>14.3f} "
            f"{r['forces_rmse_meV_A']:>13.2f} {r['epochs']:>7d} {r['train_wall_s']:>8.0f} "
            f"{r['total_wall_s']:>8.0f}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": (
                    "AcAc 300K: train 450 / valid 50 of train_300K.xyz, test_MD_300K.xyz (650)"
                ),
                "minutes": args.minutes,
                "threads": args.threads,
                "seed": args.seed,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "mace_settings": MACE_MODEL_ARGS + MACE_TRAIN_ARGS,
                "units": {"energy": "meV/atom (RMSE of E/N)", "forces": "meV/A (per component)"},
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
