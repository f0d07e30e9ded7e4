"""Accuracy per training time: GMEP presets against MACE on AcAc, rMD17 ethanol and mlearn Si.

Every run trains one model on one dataset for a wall-clock budget on the CPU, one run at a
time (check the load average first; it is recorded with each run), through
``benchmarks/train_acac.py``'s runners: ``mlip-train`` stopped by ``train.max_time``, MACE
(``mace_run_train`` in its own venv, ``--mace-venv``) killed at the budget and its best EMA
checkpoint tested. Both codes see the same files:

- ``acac``: ``train_300K.xyz`` split 450/50 (seeded), test ``test_MD_300K.xyz`` (650 frames),
  isolated-atom E0s, ``training/configs/acac.yaml``;
- ``ethanol``: rMD17 ethanol ``train.xyz`` split 800/50/150 (seeded) train/valid/test,
  isolated-atom E0s, the AcAc recipe;
- ``mlearn_si``: ``Si_training.extxyz`` split 193/21 (seeded) train/valid, test
  ``Si_test.extxyz`` (25 frames); energies, forces and stress (mlearn's kBar / VASP-order
  virial stress converted to ASE's eV/Å³ once, by ``training.units.stress_to_ase``);
  least-squares E0s for mlip, ``average`` for MACE; ``training/configs/mlearn_si.yaml``.

A run is ``dataset:model:minutes`` with model an mlip preset or ``mace``, optionally
``dataset:preset:minutes:recipe`` with a recipe of :data:`RECIPES` (mlip overrides on top of
the dataset's shipped config, for recipe screens). Results accumulate
in ``--out`` (one entry per run; a rerun replaces its entry), so the protocol can be spread
over sessions; every invocation rewrites the table and one PNG per dataset (validation force
RMSE against training wall clock, from mlip's ``metrics.csv`` and MACE's log) from all stored
runs. The 15-minute figure of a 60-minute run is read off its validation curve (best
validation force RMSE up to 15 minutes). Clocks: mlip's curve counts the trainer's elapsed
time (data preparation excluded), MACE's counts from process start (imports and data loading
included, a few seconds).

On 2 shared cores, a timed run next to other work is only clean with a core of its own: pin
it with ``taskset -c 0`` and ``--threads 1`` and keep everything else on CPU 1 (a 2-thread
torch job next to anything else slows down up to tenfold: OpenMP spin-waiting).

Usage::

    taskset -c 0 python benchmarks/accuracy.py --runs acac:medium:60 acac:mace:60 --threads 1
    python benchmarks/accuracy.py --runs acac:medium:60 acac:mace:60 --threads 2  # quiet machine
    python benchmarks/accuracy.py --runs ethanol:small:15 mlearn_si:small:15
    python benchmarks/accuracy.py --report     # table and PNGs from the stored runs only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from ase.io import read, write

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_acac  # noqa: E402

REPO = train_acac.REPO
DATA = REPO.parent / "shared" / "data"
SCREEN_MINUTES = 15.0

# Published reference points (not run here): test RMSE (AcAc) / MAE (ethanol, mlearn Si);
# energy meV/atom (AcAc: meV per structure / 15 atoms is not what the paper gives: the paper's
# AcAc energy RMSE is 0.9 meV per atom), forces meV/Å.
PUBLISHED = {
    "acac": [{"model": "MACE (published, RMSE)", "energy": 0.9, "forces": 5.1}],
    # rMD17 energies are per molecule: 0.4 meV / 9 atoms
    "ethanol": [
        {"model": "MACE (published, MAE, 0.4 meV/molecule)", "energy": 0.044, "forces": 2.1}
    ],
    "mlearn_si": [
        {"model": "GAP (Zuo et al. 2020, MAE)", "energy": 2.91, "forces": 70.0},
        {"model": "MTP (Zuo et al. 2020, MAE)", "energy": 2.21, "forces": 60.0},
    ],
}


def relabel(frames: list, stress: bool = False) -> list:
    """Labels as ``REF_energy`` / ``REF_forces`` (/ ``REF_stress``: ASE Voigt, eV/Å³)."""
    from ase.stress import full_3x3_to_voigt_6_stress

    from training.units import stress_to_ase

    out = []
    for atoms in frames:
        energy = float(atoms.info.pop("energy", None) or atoms.get_potential_energy())
        forces = np.asarray(
            atoms.arrays.pop("forces", None) if "forces" in atoms.arrays else atoms.get_forces(),
            dtype=float,
        )
        virial = atoms.info.pop("virial_stress_kbar_vasp_order", None)
        atoms.calc = None
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces
        if stress:
            full = stress_to_ase(virial, units="kbar", convention="vasp")
            atoms.info["REF_stress"] = full_3x3_to_voigt_6_stress(full)
        out.append(atoms)
    return out


def write_files(work: Path, files: dict[str, list], split: dict) -> dict[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frames in files.items():
        paths[name] = str(work / f"{name}.xyz")
        write(paths[name], frames, format="extxyz")
    (work / "split.json").write_text(json.dumps(split))
    return paths


def split_acac(work: Path, seed: int) -> dict[str, str]:
    return train_acac.write_split(work, seed, n_valid=50)


def split_ethanol(work: Path, seed: int) -> dict[str, str]:
    frames = relabel(read(DATA / "ethanol/train.xyz", ":"))
    order = np.random.default_rng(seed).permutation(len(frames))
    parts = {"train": order[:800], "valid": order[800:850], "test": order[850:1000]}
    return write_files(
        work,
        {k: [frames[i] for i in sorted(v)] for k, v in parts.items()},
        {"seed": seed, **{k: sorted(int(i) for i in v) for k, v in parts.items()}},
    )


def split_mlearn_si(work: Path, seed: int) -> dict[str, str]:
    frames = relabel(read(DATA / "mlearn_si/Si_training.extxyz", ":"), stress=True)
    order = np.random.default_rng(seed).permutation(len(frames))
    n_valid = round(0.1 * len(frames))
    parts = {"train": order[n_valid:], "valid": order[:n_valid]}
    files = {k: [frames[i] for i in sorted(v)] for k, v in parts.items()}
    files["test"] = relabel(read(DATA / "mlearn_si/Si_test.extxyz", ":"), stress=True)
    return write_files(
        work, files, {"seed": seed, **{k: sorted(int(i) for i in v) for k, v in parts.items()}}
    )


# recipe variants for screens: name -> mlip-train overrides on top of the shipped config
RECIPES: dict[str, list[str]] = {
    "wd": ["train.weight_decay=0.01"],  # AdamW weight decay against overfitting small sets
    # mlearn: validation forces bottom out early while the energy still improves; weight it more
    "ew": ["loss.energy_weight=100.0"],
    # per-atom energy errors of ~4 meV make a squared term ~400x below the forces' at weight 10
    "ew1000": ["loss.energy_weight=1000.0"],
    "eswitch": [
        "loss.switch_fraction=0.4",
        "loss.switch_energy_weight=1000.0",
        "loss.switch_forces_weight=10.0",
        "loss.switch_stress_weight=100.0",
    ],
    # AcAc: still falling at 60 minutes under the plateau schedule; decay to min_lr by the end
    "cosine": ["train.schedule=cosine"],
}


def isolated_e0s(path: Path, train_file: str) -> str:
    """MACE's ``--E0s`` from an isolated-atoms file, for the elements of ``train_file`` only:
    MACE sizes its E0 table from the training elements and fails on an extra one (rMD17's
    isolated-atoms file also holds N, which ethanol lacks)."""
    present = {int(z) for a in read(train_file, ":") for z in a.numbers}
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(path, ":")}
    missing = present - set(e0s)
    if missing:
        raise ValueError(f"{path}: no isolated-atom energy for Z = {sorted(missing)}")
    return "{" + ", ".join(f"{z}: {e!r}" for z, e in sorted(e0s.items()) if z in present) + "}"


@dataclass(frozen=True)
class Dataset:
    """How both codes train on one dataset."""

    split: object  # (work_dir, seed) -> {"train", "valid", "test"} file paths
    config: Path
    mlip_data: list[str]
    mace_e0s: Path | str  # an isolated-atoms file, or a MACE keyword such as "average"
    mace_extra: list[str] = field(default_factory=list)
    mae: bool = False  # the published figures are MAEs


LABELS = ["data.energy_key=REF_energy", "data.forces_key=REF_forces"]
DATASETS = {
    "acac": Dataset(
        split_acac,
        REPO / "training/configs/acac.yaml",
        [
            *LABELS,
            "data.reference_energies=isolated",
            f"data.isolated_atoms={DATA / 'acac/isolated_atoms.xyz'}",
        ],
        DATA / "acac/isolated_atoms.xyz",
    ),
    "ethanol": Dataset(
        split_ethanol,
        REPO / "training/configs/acac.yaml",
        [
            *LABELS,
            "data.reference_energies=isolated",
            f"data.isolated_atoms={DATA / 'ethanol/isolated_atoms.xyz'}",
        ],
        DATA / "ethanol/isolated_atoms.xyz",
        mae=True,
    ),
    "mlearn_si": Dataset(
        split_mlearn_si,
        REPO / "training/configs/mlearn_si.yaml",
        [
            *LABELS,
            "data.stress_key=REF_stress",
            "data.stress_units=eV/A^3",
            "data.stress_convention=ase",
        ],
        "average",
        [
            "--loss=stress",
            "--energy_weight=10.0",
            "--forces_weight=10.0",
            "--stress_weight=100.0",
            "--stress_key=REF_stress",
            "--batch_size=4",
            "--error_table=PerAtomRMSEstressvirials",
        ],
        mae=True,
    ),
}


def mlip_curve(metrics_csv: str) -> list[tuple[float, float]]:
    """(minutes, validation force RMSE meV/Å) per epoch from mlip's metrics.csv."""
    if not Path(metrics_csv).exists():
        return []
    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    return [
        (float(r["time_s"]) / 60.0, 1000.0 * float(r["valid_forces_rmse"]))
        for r in rows
        if r.get("valid_forces_rmse")
    ]


MACE_EPOCH = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) .*Epoch \d+:.*RMSE_F=\s*([0-9.]+) meV", re.M
)


def mace_curve(log_path: str, started_unix: float) -> list[tuple[float, float]]:
    """(minutes since process start, validation force RMSE meV/Å) per epoch from MACE's log."""
    text = Path(log_path).read_text()
    curve = []
    for stamp, rmse in MACE_EPOCH.findall(text):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        curve.append(((when - started_unix) / 60.0, float(rmse)))
    return curve


def best_until(curve: list[tuple[float, float]], minutes: float) -> float | None:
    values = [v for t, v in curve if t <= minutes]
    return min(values) if values else None


def first_time_below(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in curve if v <= target), None)


def run_one(key: str, work_root: Path, threads: int, seed: int, mace_venv: Path) -> dict:
    dataset_name, model, minutes_text, *recipe = key.split(":")
    dataset = DATASETS[dataset_name]
    minutes = float(minutes_text)
    suffix = f"_{recipe[0]}" if recipe else ""
    work = work_root / dataset_name / f"{model}_{minutes_text}min{suffix}"
    paths = dataset.split(work, seed)
    load_before = os.getloadavg()
    if model == "mace":
        e0s = dataset.mace_e0s
        if isinstance(e0s, Path):
            e0s = isolated_e0s(e0s, paths["train"])
        row = train_acac.run_mace(
            paths, work, minutes, threads, seed, mace_venv, e0s, dataset.mace_extra
        )
        row["curve"] = mace_curve(row["train_log"], row["started_unix"])
    else:
        row = train_acac.run_mlip(
            model,
            paths,
            work,
            minutes,
            threads,
            seed,
            RECIPES[recipe[0]] if recipe else None,
            config=dataset.config,
            # one thread: no DataLoader worker process competing for the run's core
            data_overrides=dataset.mlip_data + (["data.num_workers=0"] if threads == 1 else []),
        )
        row["curve"] = mlip_curve(row["metrics_csv"])
    row.update(
        key=key,
        dataset=dataset_name,
        run=model + (f"+{recipe[0]}" if recipe else ""),
        minutes=minutes,
        threads=threads,
        seed=seed,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        machine={"platform": platform.platform(), "cpus": os.cpu_count()},
    )
    return row


def report(rows: list[dict], png_dir: Path) -> str:
    """Markdown table of every stored run, plus one PNG per dataset."""
    lines = [
        "| dataset | run | budget (min) | test E RMSE (meV/atom) | test F RMSE (meV/Å) | "
        "test E MAE | test F MAE | best valid F RMSE at 15 min | epochs | "
        "min to MACE's 60-min valid F | load before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        runs = [r for r in rows if r["dataset"] == dataset and "error" not in r]
        if not runs:
            continue
        mace_long = [r for r in runs if r["run"] == "mace" and r["minutes"] >= 60]
        target = best_until(mace_long[0]["curve"], 1e9) if mace_long else None
        for r in sorted(runs, key=lambda r: (r["run"] == "mace", r["run"], r["minutes"])):
            at15 = best_until(r["curve"], SCREEN_MINUTES)
            reach = ""
            if target is not None and r["run"] != "mace":
                minutes = first_time_below(r["curve"], target)
                reach = "not reached" if minutes is None else f"{minutes:.1f}"
            lines.append(
                f"| {dataset} | {r['run']} | {r['minutes']:g} | {r['energy_rmse_meV_atom']:.2f} | "
                f"{r['forces_rmse_meV_A']:.1f} | {r['energy_mae_meV_atom']:.2f} | "
                f"{r['forces_mae_meV_A']:.1f} | {'' if at15 is None else f'{at15:.1f}'} | "
                f"{r['epochs']} | "
                f"{reach} | "
                f"{r['load_average_before'][0]:.2f} |"
            )
        for ref in PUBLISHED[dataset]:
            kind = "MAE" if DATASETS[dataset].mae else "RMSE"
            lines.append(
                f"| {dataset} | {ref['model']} | published | "
                + (
                    f"| | {ref['energy']} | {ref['forces']} |"
                    if kind == "MAE"
                    else f"{ref['energy']} | {ref['forces']} | | |"
                )
                + " | | | |"
            )
        plot_curves(dataset, runs, target, png_dir / f"accuracy_{dataset}.png")
    return "\n".join(lines)


def plot_curves(dataset: str, runs: list[dict], target: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        if r["curve"]:
            t, v = zip(*r["curve"], strict=True)
            axis.plot(t, v, label=f"{r['run']} ({r['minutes']:g} min)")
    if target is not None:
        axis.axhline(target, color="grey", linestyle=":", label="MACE 60-min best valid")
    axis.set_yscale("log")
    axis.set_xlabel("training wall clock (min)")
    axis.set_ylabel("validation force RMSE (meV/Å)")
    axis.set_title(f"{dataset}: validation force RMSE against training time")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="dataset:model:minutes entries")
    parser.add_argument("--report", action="store_true", help="only rewrite table and PNGs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/accuracy"))
    parser.add_argument("--mace-venv", type=Path, default=Path("/work/venvs/mace"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/accuracy.json")
    args = parser.parse_args(argv)
    for key in args.runs:
        parts = key.split(":")
        if len(parts) not in (3, 4) or parts[0] not in DATASETS:
            parser.error(
                f"run {key!r}: expected dataset:model:minutes[:recipe], dataset in {list(DATASETS)}"
            )
        if len(parts) == 4 and (parts[3] not in RECIPES or parts[1] == "mace"):
            parser.error(f"run {key!r}: recipe of an mlip preset, one of {list(RECIPES)}")

    stored = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    for key in [] if args.report else args.runs:
        print(f"== {key} (load average {os.getloadavg()[0]:.2f})", flush=True)
        try:
            row = run_one(key, args.work_dir, args.threads, args.seed, args.mace_venv)
        except Exception as exc:  # keep the other runs' results
            print(f"{key}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        # reread: another invocation (on the other core) may have stored a run meanwhile
        stored = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
        stored = [r for r in stored if r["key"] != key] + [row]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"benchmark": "accuracy per training time", "runs": stored}))
        tmp.replace(args.out)
    table = report(stored, REPO / "benchmarks")
    print(table)


if __name__ == "__main__":
    main()
