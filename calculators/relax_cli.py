"""``mlip-relax``: relax structures (positions and, for bulk inputs, the cell) with a model.

Example::

    mlip-relax data/demo/CuAu_rattled.cif "more/*.extxyz" --fmax 0.02 \\
        -o relaxed.extxyz --summary relax.csv --summary relax.json

Each finished structure is appended to the output and its row to the summaries at once
(flushed; the JSON summary is rewritten atomically), so an interrupted run keeps its finished
work. A structure the model cannot take (unknown element, overlapping atoms, NaN) is reported
on stderr and skipped; the others are relaxed. A bulk structure converges when the largest
force is below ``--fmax`` and, with the cell relaxed, the largest stress component (relative
to ``--pressure``) is below ``--smax``.

Exit status: 0 when every structure converged, 2 when at least one did not
(its result is still written and marked ``converged = False``), 3 when some structures were
skipped (the others are done), 1 for bad input (nothing done), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixSymmetry
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS

from calculators import cli_common
from calculators.cli_common import CLIError, InputStructure

__all__ = ["EXIT_NOT_CONVERGED", "EXIT_SKIPPED", "RelaxResult", "build_parser", "main"]

PROG = "mlip-relax"
EXIT_NOT_CONVERGED = 2
EXIT_SKIPPED = 3
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
    max_stress_GPa: float | None
    steps: int
    converged: bool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlip-relax``."""
    parser = cli_common.ArgumentParser(
        prog=PROG,
        description="Relax atomic structures with an mlip model (ASE optimisers). Bulk "
        "(3-D periodic) inputs also get their cell relaxed with FrechetCellFilter.",
        epilog="Exit status: 0 all converged, 2 some structure did not converge, 3 some "
        "structures skipped (reported on stderr), 1 bad input, 130 interrupted (finished "
        "structures are kept).",
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
        "--smax",
        type=float,
        default=0.1,
        metavar="GPA",
        help="convergence threshold on the largest stress component (minus the --pressure "
        "target) when the cell is relaxed, GPa (default: 0.1)",
    )
    parser.add_argument(
        "--steps", type=int, default=500, help="maximum optimiser steps (default: 500)"
    )
    parser.add_argument(
        "--progress-every",
        type=int,
        default=20,
        metavar="N",
        help="print a progress line (step, energy, fmax, smax) every N optimiser steps; "
        "0: one line per structure (default: 20)",
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
    if not args.smax > 0:
        raise CLIError(f"--smax must be positive, got {args.smax}")
    if args.progress_every < 0:
        raise CLIError(f"--progress-every must be >= 0, got {args.progress_every}")
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


def max_stress_gpa(atoms: Atoms, pressure_gpa: float) -> float:
    """Largest component of the stress minus the target ``-pressure``, GPa (0 = converged)."""
    residual = atoms.get_stress(voigt=True) + pressure_gpa * units.GPa * np.array(
        [1, 1, 1, 0, 0, 0]
    )
    return float(np.abs(residual).max() / units.GPa)


def _max_force(atoms: Atoms) -> float:
    forces = atoms.get_forces()
    return float((forces**2).sum(axis=1).max() ** 0.5) if len(atoms) else 0.0


def relax_structure(
    atoms: Atoms,
    *,
    optimizer: str,
    fmax: float,
    steps: int,
    relax_cell: bool,
    pressure_gpa: float,
    fix_symmetry: bool,
    smax_gpa: float = 0.1,
    trajectory: list[Atoms] | None = None,
    progress: Callable[[int, float, float, float | None], None] | None = None,
) -> tuple[bool, int]:
    """Relax ``atoms`` in place (calculator already attached).

    Converged means: largest atomic force below ``fmax`` and, when the cell is relaxed, the
    largest stress component (relative to the pressure target) below ``smax_gpa``. The cell
    filter's own criterion scales the stress by volume per atom and would accept -0.5 GPa.

    Args:
        atoms: Structure to relax; positions Å, cell Å.
        optimizer: Key of :data:`OPTIMIZERS`.
        fmax: Force threshold, eV/Å.
        steps: Maximum number of optimiser steps.
        relax_cell: Relax the cell with ``FrechetCellFilter``.
        pressure_gpa: External hydrostatic pressure, GPa (cell relaxation only).
        fix_symmetry: Add a ``FixSymmetry`` constraint.
        smax_gpa: Stress threshold, GPa (cell relaxation only).
        trajectory: If given, a labelled copy of every step is appended to it.
        progress: Called after every step as ``progress(step, energy_eV, fmax_eV_per_A,
            smax_GPa or None)``.

    Returns:
        ``(converged, n_steps)``.
    """
    if fix_symmetry:
        atoms.set_constraint([*atoms.constraints, FixSymmetry(atoms)])
    target = (
        FrechetCellFilter(atoms, scalar_pressure=pressure_gpa * units.GPa) if relax_cell else atoms
    )
    opt = OPTIMIZERS[optimizer](target, logfile=None)
    converged = False
    # fmax=0: the optimiser never stops on its own criterion; ours (forces and stress) decides
    for _ in opt.irun(fmax=0.0, steps=steps):
        if trajectory is not None:
            trajectory.append(cli_common.labelled_copy(atoms))
        force = _max_force(atoms)
        stress = max_stress_gpa(atoms, pressure_gpa) if relax_cell else None
        if progress is not None:
            progress(int(opt.nsteps), float(atoms.get_potential_energy()), force, stress)
        if force < fmax and (stress is None or stress < smax_gpa):
            converged = True
            break
    return converged, int(opt.nsteps)


def format_table(rows: Sequence[RelaxResult]) -> str:
    """Human-readable summary table."""
    header = ("file", "frame", "formula", "E_init/eV", "E_final/eV", "E/atom/eV", "dV/%")
    header += ("fmax/(eV/Å)", "smax/GPa", "steps", "converged")
    lines = [
        (
            r.file,
            str(r.frame),
            r.formula,
            f"{r.energy_initial_eV:.4f}",
            f"{r.energy_final_eV:.4f}",
            f"{r.energy_per_atom_eV:.4f}",
            "-" if r.volume_change_percent is None else f"{r.volume_change_percent:+.2f}",
            f"{r.max_force_eV_per_A:.4f}",
            "-" if r.max_stress_GPa is None else f"{r.max_stress_GPa:.3f}",
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


class _ResultWriter:
    """Appends each finished structure to the output and its row to every summary, flushed.

    Files are created (emptied) by the constructor; CSV rows are appended, the JSON summary is
    rewritten atomically after each of the first 100 rows, then whenever the row count has
    grown by 10 % (linear total cost for long screens), and by :meth:`close`, so every file is
    valid whenever the run stops.
    """

    def __init__(self, output: str, out_format: str, summaries: Sequence[str], settings: dict):
        self.out_format, self.settings = out_format, settings
        self.rows: list[RelaxResult] = []
        # ASE's CIF writer wants a binary file, its extxyz writer a text file
        self.structures = open(output, "wb" if out_format == "cif" else "w")
        self.csv_handles = [open(p, "w", newline="") for p in summaries if _is_csv(p)]
        self.csv_writers = []
        for handle in self.csv_handles:
            writer = csv.DictWriter(handle, fieldnames=list(RelaxResult.__dataclass_fields__))
            writer.writeheader()
            handle.flush()
            self.csv_writers.append(writer)
        self.json_paths = [Path(p) for p in summaries if not _is_csv(p)]
        self._write_all_json()

    def _write_all_json(self) -> None:
        for path in self.json_paths:
            self._write_json(path)
        self.json_rows = len(self.rows)

    def _write_json(self, path: Path) -> None:
        records = [asdict(row) for row in self.rows]
        text = json.dumps({"settings": self.settings, "structures": records}, indent=2) + "\n"
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)

    def add(self, structure: Atoms, row: RelaxResult) -> None:
        """Append one finished structure (with labels) and its summary row."""
        from ase.io import write

        write(self.structures, structure, format=self.out_format)
        self.structures.flush()
        self.rows.append(row)
        record = {k: "" if v is None else v for k, v in asdict(row).items()}
        for handle, writer in zip(self.csv_handles, self.csv_writers):
            writer.writerow(record)
            handle.flush()
        if len(self.rows) <= 100 or len(self.rows) >= 1.1 * self.json_rows:
            self._write_all_json()

    def close(self) -> None:
        """Close the files and write the JSON summaries with every row (idempotent)."""
        if self.structures.closed:
            return
        for handle in [self.structures, *self.csv_handles]:
            handle.close()
        if self.json_rows != len(self.rows):
            self._write_all_json()


def _is_csv(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".csv"


def _initial_energies(
    structures: Sequence[InputStructure], calc
) -> tuple[list[tuple[int, float]], list[str]]:
    """Attach ``calc`` and evaluate each structure once; split into usable and skipped.

    Returns:
        ``[(index, energy_eV)]`` of the usable structures and one message per skipped one.
    """
    usable: list[tuple[int, float]] = []
    skipped: list[str] = []
    for k, item in enumerate(structures):
        label = f"{item.path} (frame {item.frame})"
        problem = cli_common.structure_problem(item.atoms)
        if problem is not None:
            skipped.append(f"{label}: {problem}")
            continue
        item.atoms.calc = calc
        try:
            usable.append((k, cli_common.evaluate_energy(item.atoms, label)))
        except CLIError as exc:
            skipped.append(str(exc))
    return usable, skipped


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {cli_common.one_line(message)}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    out_format = cli_common.structure_format(args.output)
    for summary in args.summary:
        if Path(summary).suffix.lower() not in (".csv", ".json"):
            raise CLIError(f"--summary {summary!r}: use a .csv or .json file")

    structures = cli_common.read_structures(args.inputs)
    relax_cell = _validate(args, structures)
    trajectories = _trajectory_paths(args.trajectory, structures) if args.trajectory else []
    outputs = [args.output, *args.summary, *trajectories]
    cli_common.check_not_inputs(outputs, [item.path for item in structures])
    cli_common.check_outputs(outputs, args.overwrite)

    calc = cli_common.make_calculator(args.model, args.device, args.head, args.memory_budget)
    cli_common.apply_state_flags(args, structures, calc, _warn)
    usable, skipped = _initial_energies(structures, calc)  # before any relaxation
    if not usable:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise CLIError(f"{skipped[0]}{more}; nothing to relax")
    for message in skipped:
        _warn(f"{message}; skipped")

    pressure = 0.0 if args.pressure is None else args.pressure
    settings = {
        "optimizer": args.optimizer,
        "fmax_eV_per_A": args.fmax,
        "smax_GPa": args.smax,
        "max_steps": args.steps,
        "cell": args.cell,
        "pressure_GPa": pressure,
        "fix_symmetry": args.fix_symmetry,
        "model": args.model,
        "charge": args.charge,
        "spin": args.spin,
        "head": getattr(calc, "head", None),
        "output": args.output,
    }
    writer = _ResultWriter(args.output, out_format, args.summary, settings)
    try:
        for n, (k, energy_initial) in enumerate(usable, start=1):
            item = structures[k]
            label = f"[{n}/{len(usable)}] {item.path} (frame {item.frame})"
            try:
                _relax_one(
                    args, item, k, energy_initial, relax_cell[k], trajectories, writer, label
                )
            except (CLIError, ValueError) as exc:  # e.g. atoms pushed onto each other
                skipped.append(f"{item.path} (frame {item.frame}): {exc}")
                _warn(f"{skipped[-1]}; skipped")
    except KeyboardInterrupt:
        writer.close()
        done = len(writer.rows)
        kept = ", ".join([args.output, *args.summary])
        raise CLIError(
            f"interrupted after {done} of {len(usable)} structures; the finished ones are in "
            f"{kept}",
            exit_code=cli_common.EXIT_INTERRUPTED,
        ) from None
    finally:
        writer.close()  # also on any other error: the files hold every finished structure
    rows = writer.rows

    print(format_table(rows))
    n_failed = sum(not row.converged for row in rows)
    print(
        f"{len(rows) - n_failed}/{len(rows)} converged; relaxed structures written to {args.output}"
    )
    if n_failed:
        criterion = f"fmax {args.fmax} eV/Å"
        if any(relax_cell):
            criterion += f", smax {args.smax} GPa"
        _warn(f"{n_failed} structure(s) did not converge within {args.steps} steps ({criterion})")
    if skipped:
        _warn(f"{len(skipped)} of {len(structures)} structure(s) skipped (see above)")
        return EXIT_SKIPPED
    return EXIT_NOT_CONVERGED if n_failed else cli_common.EXIT_OK


def _relax_one(
    args: argparse.Namespace,
    item: InputStructure,
    k: int,
    energy_initial: float,
    relax_cell: bool,
    trajectories: Sequence[Path],
    writer: _ResultWriter,
    label: str,
) -> None:
    """Relax structure ``k``, write its trajectory, result and summary row, print progress."""
    atoms = item.atoms
    formula = atoms.get_chemical_formula()
    pressure = 0.0 if args.pressure is None else args.pressure
    volume_initial = atoms.get_volume() if cli_common.is_bulk(atoms) else None
    frames: list[Atoms] | None = [] if trajectories else None

    def describe(energy: float, force: float, stress: float | None) -> str:
        text = f"E = {energy:.6f} eV  fmax = {force:.4f} eV/Å"
        return text if stress is None else f"{text}  smax = {stress:.3f} GPa"

    def progress(step: int, energy: float, force: float, stress: float | None) -> None:
        if args.progress_every and step % args.progress_every == 0:
            print(f"{label} {formula}: step {step}  {describe(energy, force, stress)}", flush=True)

    converged, n_steps = relax_structure(
        atoms,
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        relax_cell=relax_cell,
        pressure_gpa=pressure,
        fix_symmetry=args.fix_symmetry,
        smax_gpa=args.smax,
        trajectory=frames,
        progress=progress,
    )
    if frames is not None:
        cli_common.write_structures(trajectories[k], frames, "extxyz")
    energy = float(atoms.get_potential_energy())
    force = _max_force(atoms)
    stress = max_stress_gpa(atoms, pressure) if relax_cell else None
    state = f"converged in {n_steps} steps" if converged else f"NOT converged after {n_steps} steps"
    print(f"{label} {formula}: {state}  {describe(energy, force, stress)}", flush=True)
    row = RelaxResult(
        file=item.path,
        frame=item.frame,
        formula=formula,
        n_atoms=len(atoms),
        energy_initial_eV=energy_initial,
        energy_final_eV=energy,
        energy_per_atom_eV=energy / len(atoms),
        volume_change_percent=None
        if volume_initial is None
        else 100.0 * (atoms.get_volume() / volume_initial - 1.0),
        max_force_eV_per_A=force,
        max_stress_GPa=stress,
        steps=n_steps,
        converged=converged,
    )
    result = cli_common.labelled_copy(atoms)
    result.info.update(
        source_file=item.path, source_frame=item.frame, converged=converged, steps=n_steps
    )
    writer.add(result, row)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlip-relax``; returns the exit status."""
    return cli_common.run_cli(PROG, _run, argv)
