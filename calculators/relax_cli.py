"""``mlip-relax``: relax structures (positions and, for bulk inputs, the cell) with a model.

Example::

    mlip-relax data/demo/CuAu_rattled.cif "more/*.extxyz" --fmax 0.02 \\
        -o relaxed.extxyz --summary relax.csv --summary relax.json

Exit status: 0 when every structure converged, 2 when at least one did not
(its result is still written and marked ``converged = False``), 1 for bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ase import Atoms, units
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from tqdm import tqdm

from calculators import cli_common
from calculators.cli_common import CLIError, InputStructure

__all__ = ["EXIT_NOT_CONVERGED", "RelaxResult", "build_parser", "main"]

PROG = "mlip-relax"
EXIT_NOT_CONVERGED = 2
OPTIMIZERS = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS}


@dataclass
class RelaxResult:
    """One row of the summary table (energies in eV, volume change in %)."""

    file: str
    frame: int
    formula: str
    n_atoms: int
    energy_initial_eV: float
    energy_final_eV: float
    energy_per_atom_eV: float
    volume_change_percent: float | None
    max_force_eV_per_A: float
    steps: int
    converged: bool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlip-relax``."""
    parser = cli_common.ArgumentParser(
        prog=PROG,
        description="Relax atomic structures with an mlip model (ASE optimisers). Bulk "
        "(3-D periodic) inputs also get their cell relaxed with FrechetCellFilter.",
        epilog="Exit status: 0 all converged, 2 some structure did not converge, 1 bad input.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="structure files readable by ASE (CIF, extxyz, POSCAR, ...); globs and "
        "multi-frame files are allowed",
    )
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="fire")
    parser.add_argument(
        "--fmax",
        type=float,
        default=0.05,
        help="convergence threshold on the largest force, eV/Å (default: 0.05)",
    )
    parser.add_argument(
        "--steps", type=int, default=500, help="maximum optimiser steps (default: 500)"
    )
    parser.add_argument(
        "--cell",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="relax the cell too (default: yes for 3-D periodic inputs, no otherwise)",
    )
    parser.add_argument(
        "--pressure",
        type=float,
        default=None,
        metavar="GPA",
        help="external hydrostatic pressure for the cell relaxation, GPa (default: 0)",
    )
    parser.add_argument(
        "--fix-symmetry",
        action="store_true",
        help="keep the space group of each input (ase.constraints.FixSymmetry)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="relaxed.extxyz",
        metavar="OUT",
        help="relaxed structures, .extxyz/.xyz (with energy, forces, stress) or .cif "
        "(default: relaxed.extxyz)",
    )
    parser.add_argument(
        "--trajectory",
        metavar="DIR",
        default=None,
        help="write each optimisation trajectory to DIR/NNNN_<input>_<frame>.extxyz",
    )
    parser.add_argument(
        "--summary",
        action="append",
        default=[],
        metavar="FILE",
        help="write the summary table as .csv or .json (may be given twice for both)",
    )
    cli_common.add_common_arguments(parser)
    return parser


def _validate(args: argparse.Namespace, structures: Sequence[InputStructure]) -> list[bool]:
    """Check options against the inputs; return, per structure, whether its cell is relaxed."""
    if not args.fmax > 0:
        raise CLIError(f"--fmax must be positive, got {args.fmax}")
    if args.steps < 0:
        raise CLIError(f"--steps must be >= 0, got {args.steps}")
    if args.pressure is not None and not math.isfinite(args.pressure):
        raise CLIError(f"--pressure must be a finite number, got {args.pressure}")
    if args.pressure is not None and args.cell is False:
        raise CLIError("--pressure needs cell relaxation; drop --no-cell")
    relax_cell = []
    for item in structures:
        label = f"{item.path} (frame {item.frame})"
        bulk = cli_common.is_bulk(item.atoms)
        if args.cell and not bulk:
            raise CLIError(f"{label} is not 3-D periodic; --cell needs a periodic cell")
        if args.pressure is not None and not bulk:
            raise CLIError(f"{label} is not 3-D periodic; --pressure needs a periodic cell")
        if args.fix_symmetry and not bulk:
            raise CLIError(f"{label} is not 3-D periodic; --fix-symmetry needs a periodic cell")
        if cli_common.structure_format(args.output) == "cif" and not bulk:
            raise CLIError(f"{label} is not 3-D periodic and cannot be written to CIF")
        relax_cell.append(bulk if args.cell is None else bool(args.cell))
    return relax_cell


def _trajectory_paths(directory: str, structures: Sequence[InputStructure]) -> list[Path]:
    return [
        Path(directory) / f"{k:04d}_{Path(item.path).stem}_{item.frame}.extxyz"
        for k, item in enumerate(structures)
    ]


def relax_structure(
    atoms: Atoms,
    *,
    optimizer: str,
    fmax: float,
    steps: int,
    relax_cell: bool,
    pressure_gpa: float,
    fix_symmetry: bool,
    trajectory: list[Atoms] | None = None,
) -> tuple[bool, int]:
    """Relax ``atoms`` in place (calculator already attached).

    Args:
        atoms: Structure to relax; positions Å, cell Å.
        optimizer: Key of :data:`OPTIMIZERS`.
        fmax: Force threshold, eV/Å (applies to the cell filter's generalised forces too).
        steps: Maximum number of optimiser steps.
        relax_cell: Relax the cell with ``FrechetCellFilter``.
        pressure_gpa: External hydrostatic pressure, GPa (cell relaxation only).
        fix_symmetry: Add a ``FixSymmetry`` constraint.
        trajectory: If given, a labelled copy of every step is appended to it.

    Returns:
        ``(converged, n_steps)``.
    """
    if fix_symmetry:
        atoms.set_constraint([*atoms.constraints, FixSymmetry(atoms)])
    target = (
        FrechetCellFilter(atoms, scalar_pressure=pressure_gpa * units.GPa) if relax_cell else atoms
    )
    opt = OPTIMIZERS[optimizer](target, logfile=None)
    if trajectory is not None:
        opt.attach(lambda: trajectory.append(cli_common.labelled_copy(atoms)), interval=1)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return converged, int(opt.nsteps)


def _max_force(atoms: Atoms) -> float:
    forces = atoms.get_forces()
    return float((forces**2).sum(axis=1).max() ** 0.5) if len(atoms) else 0.0


def format_table(rows: Sequence[RelaxResult]) -> str:
    """Human-readable summary table."""
    header = ("file", "frame", "formula", "E_init/eV", "E_final/eV", "E/atom/eV", "dV/%")
    header += ("steps", "converged")
    lines = [
        (
            r.file,
            str(r.frame),
            r.formula,
            f"{r.energy_initial_eV:.4f}",
            f"{r.energy_final_eV:.4f}",
            f"{r.energy_per_atom_eV:.4f}",
            "-" if r.volume_change_percent is None else f"{r.volume_change_percent:+.2f}",
            str(r.steps),
            "yes" if r.converged else "NO",
        )
        for r in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *lines]
    )


def write_summary(path: str | Path, rows: Sequence[RelaxResult], settings: dict) -> None:
    """Write the summary as CSV (one row per structure) or JSON (``settings`` + ``structures``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [asdict(row) for row in rows]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({"settings": settings, "structures": records}, indent=2) + "\n")
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RelaxResult.__dataclass_fields__))
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    out_format = cli_common.structure_format(args.output)
    for summary in args.summary:
        if Path(summary).suffix.lower() not in (".csv", ".json"):
            raise CLIError(f"--summary {summary!r}: use a .csv or .json file")

    structures = cli_common.read_structures(args.inputs)
    relax_cell = _validate(args, structures)
    trajectories = _trajectory_paths(args.trajectory, structures) if args.trajectory else []
    cli_common.check_outputs([args.output, *args.summary, *trajectories], args.overwrite)

    calc = cli_common.make_calculator(args.model, args.device)
    initial_energies = []
    for item in structures:  # fail fast (e.g. unknown element) before any relaxation
        item.atoms.calc = calc
        initial_energies.append(
            cli_common.evaluate_energy(item.atoms, f"{item.path} (frame {item.frame})")
        )

    pressure = 0.0 if args.pressure is None else args.pressure
    rows: list[RelaxResult] = []
    relaxed: list[Atoms] = []
    bar = tqdm(structures, desc=PROG, unit="structure", disable=None)
    for k, item in enumerate(bar):
        atoms = item.atoms
        bar.set_postfix_str(atoms.get_chemical_formula())
        volume_initial = atoms.get_volume() if cli_common.is_bulk(atoms) else None
        frames: list[Atoms] | None = [] if trajectories else None
        converged, n_steps = relax_structure(
            atoms,
            optimizer=args.optimizer,
            fmax=args.fmax,
            steps=args.steps,
            relax_cell=relax_cell[k],
            pressure_gpa=pressure,
            fix_symmetry=args.fix_symmetry,
            trajectory=frames,
        )
        if frames is not None:
            cli_common.write_structures(trajectories[k], frames, "extxyz")
        energy = float(atoms.get_potential_energy())
        rows.append(
            RelaxResult(
                file=item.path,
                frame=item.frame,
                formula=atoms.get_chemical_formula(),
                n_atoms=len(atoms),
                energy_initial_eV=initial_energies[k],
                energy_final_eV=energy,
                energy_per_atom_eV=energy / len(atoms),
                volume_change_percent=None
                if volume_initial is None
                else 100.0 * (atoms.get_volume() / volume_initial - 1.0),
                max_force_eV_per_A=_max_force(atoms),
                steps=n_steps,
                converged=converged,
            )
        )
        result = cli_common.labelled_copy(atoms)
        result.info.update(
            source_file=item.path, source_frame=item.frame, converged=converged, steps=n_steps
        )
        relaxed.append(result)
    bar.close()

    cli_common.write_structures(args.output, relaxed, out_format)
    settings = {
        "optimizer": args.optimizer,
        "fmax_eV_per_A": args.fmax,
        "max_steps": args.steps,
        "cell": args.cell,
        "pressure_GPa": pressure,
        "fix_symmetry": args.fix_symmetry,
        "model": args.model,
        "output": args.output,
    }
    for summary in args.summary:
        write_summary(summary, rows, settings)

    print(format_table(rows))
    n_failed = sum(not row.converged for row in rows)
    print(
        f"{len(rows) - n_failed}/{len(rows)} converged; relaxed structures written to {args.output}"
    )
    if n_failed:
        print(
            f"{PROG}: warning: {n_failed} structure(s) did not converge within "
            f"{args.steps} steps (fmax {args.fmax} eV/Å)",
            file=sys.stderr,
        )
        return EXIT_NOT_CONVERGED
    return cli_common.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlip-relax``; returns the exit status."""
    return cli_common.run_cli(PROG, _run, argv)
