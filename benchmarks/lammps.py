"""MD throughput in LAMMPS (pair_style mlip) on 1 and 2 MPI ranks against the ASE path of mlip-md.

Rattled fcc Cu (1372 and 10976 atoms), the built-in model (``calculators/data/model.pt``: small
preset, float32, cutoff 4.5 Å, 2 interactions), NVE, 1 fs, 300 K start. LAMMPS runs ``lmp`` from
the venv (``mpiexec -n 2`` for two ranks, one torch thread per rank); the time is LAMMPS' own
loop time of a second ``run`` (the first warms TorchScript up). ASE runs velocity Verlet through
``MLIPCalculator`` (what ``mlip-md`` does) with 1 and 2 torch threads. The ghost overhead is
the number of atoms the model evaluates per atom owned, as printed by the pair style.

    flock /work/wt/bench.lock python benchmarks/lammps.py --steps 20
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import md_run  # noqa: E402
import measure  # noqa: E402
import structures  # noqa: E402
import torch  # noqa: E402
from ase.io import write  # noqa: E402

from calculators import MLIPCalculator  # noqa: E402
from calculators.lammps_build import build_plugin  # noqa: E402

MODEL = measure.ROOT / "calculators" / "data" / "model.pt"
BIN = Path(sys.executable).parent


LOOP_TIME = re.compile(r"Loop time of ([0-9.eE+-]+) on \d+ procs for (\d+) steps")


def write_nve_input(
    folder: Path, atoms, plugin: Path, model: Path, warmup_steps: int, steps: int, pair_extra=""
) -> None:
    """Write ``cu.data`` and ``in.bench`` to ``folder``: NVE of ``atoms`` with pair_style mlip
    (``pair_extra``: its keywords), ``warmup_steps`` then ``steps`` (two ``run`` commands)."""
    write(folder / "cu.data", atoms, format="lammps-data", atom_style="atomic", masses=True)
    (folder / "in.bench").write_text(
        f"""units metal
atom_style atomic
boundary p p p
read_data cu.data
plugin load {plugin}
pair_style mlip {model} {pair_extra}
pair_coeff * * Cu
velocity all create {md_run.TEMPERATURE_K} 12345 loop geom mom yes
timestep {md_run.TIMESTEP_FS / 1000}
fix integrate all nve
thermo 1000
run {warmup_steps}
run {steps}
"""
    )


def lammps_md(plugin: Path, atoms, ranks: int, steps: int, folder: Path) -> dict:
    """ns/day of ``steps`` NVE steps after 5 warm-up steps, and the ghost overhead."""
    write_nve_input(folder, atoms, plugin, MODEL, 5, steps)
    command = [str(BIN / "lmp"), "-in", "in.bench", "-log", "none"]
    if ranks > 1:
        command = [str(BIN / "mpiexec"), "-n", str(ranks), *command]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    loops = LOOP_TIME.findall(result.stdout)
    overheads = re.findall(r"([0-9.]+) atoms evaluated per atom owned", result.stdout)
    seconds, timed_steps = float(loops[-1][0]), int(loops[-1][1])
    per_step = seconds / timed_steps
    return {
        "code": "LAMMPS",
        "ranks": ranks,
        "threads": ranks,
        "n_atoms": len(atoms),
        "seconds_per_step": per_step,
        "ns_per_day": md_run.TIMESTEP_FS * 1e-6 * 86400.0 / per_step,
        "evaluated_per_owned": float(overheads[-1]),
    }


def ase_md(atoms, threads: int, steps: int) -> dict:
    torch.set_num_threads(threads)
    calculator = MLIPCalculator(MODEL, skin=0.5)
    row = md_run.time_md(atoms, calculator, steps)
    return {
        "code": "ASE (mlip-md)",
        "ranks": 1,
        "threads": threads,
        "n_atoms": len(atoms),
        "seconds_per_step": row["seconds_per_step"],
        "ns_per_day": row["ns_per_day"],
        "evaluated_per_owned": 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1372, 10976])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (10k atoms: half)")
    parser.add_argument("--out", type=Path, default=measure.ROOT / "benchmarks/results/lammps.json")
    args = parser.parse_args()
    plugin = build_plugin(log=lambda text: None)
    print(f"NVE, 1 fs, Cu, built-in model ({MODEL.name}: small, float32, cutoff 4.5 Å)")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n_atoms in args.sizes:
            atoms = structures.copper(n_atoms)
            steps = args.steps if n_atoms < 5000 else max(3, args.steps // 2)
            for ranks in (1, 2):
                folder = Path(scratch) / f"{n_atoms}_{ranks}"
                folder.mkdir()
                rows.append(lammps_md(plugin, atoms, ranks, steps, folder))
                print(rows[-1], flush=True)
            for threads in (1, 2):
                rows.append(ase_md(atoms, threads, steps))
                print(rows[-1], flush=True)
    print(
        f"\n{'code':<14} {'atoms':>6} {'ranks':>5} {'threads':>7} {'s/step':>8} "
        f"{'ns/day':>7} {'evaluated/owned':>15}"
    )
    for row in rows:
        print(
            f"{row['code']:<14} {row['n_atoms']:>6} {row['ranks']:>5} {row['threads']:>7} "
            f"{row['seconds_per_step']:>8.3f} {row['ns_per_day']:>7.3f} "
            f"{row['evaluated_per_owned']:>15.2f}"
        )
    meta = {"model": str(MODEL.relative_to(measure.ROOT)), "timestep_fs": md_run.TIMESTEP_FS}
    measure.write_record(args.out, meta, rows)


if __name__ == "__main__":
    main()
