"""``mlip-md``: molecular dynamics (NVE, NVT, NPT) with a model, using ASE integrators.

Example::

    mlip-md data/demo/CuAu_rattled.cif --ensemble nvt --temperature 600 \\
        --timestep 2 --steps 1000 --interval 10 -o md.extxyz --log md.csv

Integrators:

* ``nve``: ``VelocityVerlet``.
* ``nvt``: ``Langevin`` (``--friction``) or ``NoseHooverChainNVT`` (damping 100 time steps).
* ``npt``: ``--thermostat langevin`` uses ``LangevinBAOAB`` (Langevin-Hoover barostat);
  ``--thermostat nose-hoover`` uses ``IsotropicMTKNPT`` (``--barostat iso``) or ``MTKNPT``
  (``--barostat full``), with thermostat/barostat damping of 100/1000 time steps.

Every ``--interval`` steps a row is added to the CSV log and a frame to the trajectory
(both flushed); a PNG of the log (same name as the log, ``.png``) is written at the end.
When the output is not a terminal, about 20 plain progress lines are printed instead of a bar.

Every step is checked for a blown-up simulation (:class:`StabilityGuard`): non-finite
values, a total-energy drift in NVE beyond :data:`MAX_NVE_DRIFT_EV_PER_ATOM`, a temperature
beyond :func:`temperature_limit`, or (NPT) a volume change beyond a factor
:data:`MAX_VOLUME_FACTOR`. The run then stops with exit status 1 and a message; what was
written so far is kept.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics
from tqdm import tqdm

from calculators import cli_common
from calculators.cli_common import CLIError

__all__ = ["StabilityGuard", "build_parser", "make_dynamics", "main", "plot_log"]

PROG = "mlip-md"
DEFAULT_FRICTION_PER_FS = 0.01
THERMOSTAT_DAMPING_STEPS = 100
BAROSTAT_DAMPING_STEPS = 1000
PROGRESS_LINES = 20

MAX_NVE_DRIFT_EV_PER_ATOM = 0.2
"""eV/atom. Total-energy change in NVE that counts as a blown-up run: the kinetic energy
3/2 kB T of ~1500 K per atom. A usable time step drifts by 1e-4 to 1e-2 eV/atom."""

MAX_VOLUME_FACTOR = 3.0
"""NPT: a cell that grew or shrank by more than this factor has exploded or collapsed."""


def temperature_limit(temperature_K: float) -> float:
    """Temperature (K) beyond which a run counts as blown up: 5x the target plus 2000 K.

    Far outside thermal fluctuations even for a few atoms (a 6-degree-of-freedom kinetic
    energy exceeds 5x its mean with probability ~1e-5), yet finite for a 0 K start.
    """
    return 5.0 * temperature_K + 2000.0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlip-md``."""
    parser = cli_common.ArgumentParser(
        prog=PROG,
        description="Run molecular dynamics with an mlip model (ASE integrators).",
        epilog="Exit status: 0 success, 1 bad input or unstable simulation (non-finite values, "
        f"NVE energy drift > {MAX_NVE_DRIFT_EV_PER_ATOM} eV/atom, temperature > 5 x target + "
        "2000 K; frames written so far are kept), 130 interrupted.",
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="one structure file readable by ASE; pick a frame of a multi-frame file "
        "with FILE@INDEX (e.g. traj.extxyz@-1)",
    )
    parser.add_argument("--ensemble", choices=("nve", "nvt", "npt"), required=True)
    parser.add_argument(
        "--temperature",
        type=float,
        required=True,
        metavar="K",
        help="target temperature (NVT/NPT) and temperature of the initial "
        "Maxwell-Boltzmann velocities, K",
    )
    parser.add_argument("--timestep", type=float, required=True, metavar="FS", help="fs")
    parser.add_argument("--steps", type=int, required=True, metavar="N")
    parser.add_argument(
        "--pressure", type=float, default=None, metavar="GPA", help="NPT pressure, GPa (default 0)"
    )
    parser.add_argument(
        "--friction",
        type=float,
        default=None,
        metavar="1/FS",
        help=f"Langevin friction, 1/fs (default {DEFAULT_FRICTION_PER_FS})",
    )
    parser.add_argument(
        "--thermostat",
        choices=("langevin", "nose-hoover"),
        default=None,
        help="NVT/NPT thermostat (default: langevin)",
    )
    parser.add_argument(
        "--barostat",
        choices=("iso", "full"),
        default=None,
        help="NPT cell fluctuations: iso (shape kept) or full (default: iso)",
    )
    parser.add_argument(
        "--interval", type=int, default=10, metavar="N", help="log/save every N steps"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of velocities and Langevin noise (default 0)"
    )
    parser.add_argument(
        "-o",
        "--output",
        default="md.extxyz",
        metavar="TRAJ",
        help="trajectory, .extxyz or .xyz (default: md.extxyz)",
    )
    parser.add_argument(
        "--log",
        default="md.csv",
        metavar="CSV",
        help="CSV log; its plot goes next to it as .png (default: md.csv)",
    )
    cli_common.add_common_arguments(parser)
    return parser


def _validate(args: argparse.Namespace, atoms: Atoms) -> None:
    if not (args.timestep > 0 and math.isfinite(args.timestep)):
        raise CLIError(f"--timestep must be positive, got {args.timestep}")
    if args.steps < 0:
        raise CLIError(f"--steps must be >= 0, got {args.steps}")
    if args.interval < 1:
        raise CLIError(f"--interval must be >= 1, got {args.interval}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise CLIError(f"--temperature must be >= 0 K, got {args.temperature}")
    if args.ensemble in ("nvt", "npt") and args.temperature == 0:
        raise CLIError(f"--ensemble {args.ensemble} needs a positive --temperature")
    if args.ensemble == "nve":
        for option in ("thermostat", "friction"):
            if getattr(args, option) is not None:
                raise CLIError(f"--{option} has no effect with --ensemble nve")
    if args.ensemble != "npt":
        for option in ("pressure", "barostat"):
            if getattr(args, option) is not None:
                raise CLIError(f"--{option} needs --ensemble npt")
    if args.friction is not None:
        if not args.friction > 0:
            raise CLIError(f"--friction must be positive, got {args.friction}")
        if args.thermostat == "nose-hoover":
            raise CLIError("--friction applies to the Langevin thermostat only")
    if args.ensemble == "npt" and not cli_common.is_bulk(atoms):
        raise CLIError(f"{args.input} is not 3-D periodic; --ensemble npt needs a periodic cell")


def make_dynamics(
    atoms: Atoms,
    *,
    ensemble: str,
    temperature_K: float,
    timestep_fs: float,
    thermostat: str = "langevin",
    friction_per_fs: float = DEFAULT_FRICTION_PER_FS,
    pressure_gpa: float = 0.0,
    barostat: str = "iso",
    rng: np.random.Generator | None = None,
) -> MolecularDynamics:
    """Build the ASE integrator for an ensemble.

    Args:
        atoms: Structure with calculator and initial velocities.
        ensemble: ``"nve"``, ``"nvt"`` or ``"npt"``.
        temperature_K: Target temperature, K (NVT/NPT).
        timestep_fs: Time step, fs.
        thermostat: ``"langevin"`` or ``"nose-hoover"`` (NVT/NPT).
        friction_per_fs: Langevin friction, 1/fs.
        pressure_gpa: External pressure, GPa (NPT).
        barostat: ``"iso"`` (volume only) or ``"full"`` (all cell degrees of freedom).
        rng: Random generator of the Langevin noise.

    Returns:
        The dynamics object; ``run(steps)`` advances it.
    """
    dt = timestep_fs * units.fs
    tdamp = THERMOSTAT_DAMPING_STEPS * dt
    pdamp = BAROSTAT_DAMPING_STEPS * dt
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt" and thermostat == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature_K,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )
    if ensemble == "nvt":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=temperature_K, tdamp=tdamp)
    if thermostat == "langevin":
        from ase.md.langevinbaoab import LangevinBAOAB

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using heuristic P_mass")
            # ASE stress convention: external stress = -pressure.
            return LangevinBAOAB(
                atoms,
                timestep=dt,
                temperature_K=temperature_K,
                externalstress=-pressure_gpa * units.GPa,
                hydrostatic=barostat == "iso",
                T_tau=units.fs / friction_per_fs,
                P_tau=pdamp,
                rng=rng,
            )
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT

    integrator = IsotropicMTKNPT if barostat == "iso" else MTKNPT
    return integrator(
        atoms,
        timestep=dt,
        temperature_K=temperature_K,
        pressure_au=pressure_gpa * units.GPa,
        tdamp=tdamp,
        pdamp=pdamp,
    )


class _Recorder:
    """Observer that logs thermodynamic quantities, saves frames and updates the progress bar."""

    def __init__(
        self,
        dyn: MolecularDynamics,
        atoms: Atoms,
        log: IO[str],
        trajectory: IO[str],
        bar: tqdm,
        timestep_fs: float,
    ) -> None:
        self.dyn, self.atoms, self.bar, self.timestep_fs = dyn, atoms, bar, timestep_fs
        self.periodic = cli_common.is_bulk(atoms)
        self.columns = ["step", "time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]
        if self.periodic:
            self.columns += ["pressure_GPa", "volume_A3"]
        self.trajectory = trajectory
        self.log = log
        self.writer = csv.writer(log)
        self.writer.writerow(self.columns)
        self.rows: list[list[float]] = []
        self.start = time.perf_counter()
        self.last_step = 0
        self.frames_written = 0
        self.total_steps = int(bar.total or 0)
        self.line_every = max(1, math.ceil(self.total_steps / PROGRESS_LINES))
        self.next_line = 0

    def ns_per_day(self) -> float:
        elapsed = time.perf_counter() - self.start
        simulated_ns = self.dyn.nsteps * self.timestep_fs * 1e-6
        return simulated_ns * 86400.0 / elapsed if elapsed > 0 else float("nan")

    def __call__(self) -> None:
        from ase.io import write

        atoms, step = self.atoms, self.dyn.nsteps
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        row = [step, step * self.timestep_fs, epot, ekin, epot + ekin, atoms.get_temperature()]
        if self.periodic:
            stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
            row += [-np.trace(stress) / 3.0 / units.GPa, atoms.get_volume()]
        self.rows.append(row)
        self.writer.writerow([row[0], *(f"{value:.10g}" for value in row[1:])])
        self.log.flush()
        frame = cli_common.labelled_copy(atoms)
        frame.info.update(step=step, time_fs=row[1])
        write(self.trajectory, frame, format="extxyz")
        self.trajectory.flush()
        self.frames_written += 1
        self.bar.update(step - self.last_step)
        self.last_step = step
        self.bar.set_postfix_str(f"T={row[5]:.0f} K, {self.ns_per_day():.3g} ns/day")
        if self.bar.disable and step >= self.next_line:  # not a terminal: plain lines
            self.next_line = step + self.line_every
            pressure = f"  P = {row[6]:.3f} GPa" if self.periodic else ""
            print(
                f"{PROG}: step {step}/{self.total_steps}  t = {row[1]:g} fs  T = {row[5]:.1f} K  "
                f"E_pot = {epot:.6f} eV  E_tot = {row[4]:.6f} eV{pressure}  "
                f"{self.ns_per_day():.3g} ns/day",
                flush=True,
            )


class StabilityGuard:
    """Observer (every step) that raises :class:`CLIError` when the simulation blows up.

    Args:
        dyn: The integrator (for the step count).
        atoms: The simulated structure.
        ensemble: ``"nve"``, ``"nvt"`` or ``"npt"``.
        temperature_K: Target (or initial, NVE) temperature, K.
        timestep_fs: Time step, fs (quoted in the message).
    """

    def __init__(
        self,
        dyn: MolecularDynamics,
        atoms: Atoms,
        ensemble: str,
        temperature_K: float,
        timestep_fs: float,
    ) -> None:
        self.dyn, self.atoms, self.ensemble = dyn, atoms, ensemble
        self.timestep_fs = timestep_fs
        self.max_temperature = temperature_limit(temperature_K)
        self.initial_energy: float | None = None
        self.initial_volume = atoms.get_volume() if cli_common.is_bulk(atoms) else None

    def problem(self) -> str | None:
        """What is wrong at the current step, or None."""
        atoms = self.atoms
        if not np.all(np.isfinite(atoms.positions)):
            return "non-finite positions"
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        if not (np.isfinite(epot) and np.isfinite(ekin)):
            return f"non-finite energy (E_pot = {epot}, E_kin = {ekin})"
        if self.initial_energy is None:
            self.initial_energy = epot + ekin
        drift = abs(epot + ekin - self.initial_energy) / len(atoms)
        if self.ensemble == "nve" and drift > MAX_NVE_DRIFT_EV_PER_ATOM:
            return (
                f"the total energy drifted by {drift:.3g} eV/atom "
                f"(NVE limit {MAX_NVE_DRIFT_EV_PER_ATOM} eV/atom)"
            )
        temperature = float(atoms.get_temperature())
        if temperature > self.max_temperature:
            return f"T = {temperature:.4g} K (limit {self.max_temperature:.0f} K)"
        if self.ensemble == "npt" and self.initial_volume is not None:
            ratio = atoms.get_volume() / self.initial_volume
            if not 1 / MAX_VOLUME_FACTOR < ratio < MAX_VOLUME_FACTOR:
                return f"the volume changed by a factor {ratio:.3g}"
        return None

    def __call__(self) -> None:
        problem = self.problem()
        if problem is not None:
            step = self.dyn.nsteps
            raise CLIError(
                f"simulation blew up at step {step} (t = {step * self.timestep_fs:g} fs): {problem}"
            )


def plot_log(columns: Sequence[str], rows: Sequence[Sequence[float]], path: str | Path) -> None:
    """Plot energies, temperature, pressure and volume against time into a PNG.

    Args:
        columns: Column names as in the CSV log (``time_fs`` first after ``step``).
        rows: Logged values, one row per record.
        path: Output PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.asarray(rows, dtype=float).reshape(len(rows), len(columns))
    col = {name: data[:, k] for k, name in enumerate(columns)}
    panels: list[tuple[str, list[str]]] = [
        ("energy / eV", ["epot_eV", "ekin_eV", "etot_eV"]),
        ("temperature / K", ["temperature_K"]),
    ]
    if "pressure_GPa" in col:
        panels += [("pressure / GPa", ["pressure_GPa"]), ("volume / Å³", ["volume_A3"])]
    fig = Figure(figsize=(7, 2.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, names) in zip(axes, panels, strict=True):
        for name in names:
            ax.plot(col["time_fs"], col[name], label=name.rsplit("_", 1)[0])
        ax.set_ylabel(label)
        if len(names) > 1:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("time / fs")
    fig.savefig(path, dpi=100)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {cli_common.one_line(message)}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    cli_common.structure_format(args.output, allowed=(".extxyz", ".xyz"))
    log_path = Path(args.log)
    if log_path.suffix.lower() != ".csv":
        raise CLIError(f"--log {args.log!r}: use a .csv file")
    png_path = log_path.with_suffix(".png")

    structures = cli_common.read_structures([args.input])
    if len(structures) != 1:
        raise CLIError(
            f"{args.input} holds {len(structures)} structures; choose one with "
            f"{args.input}@INDEX (e.g. @0 or @-1)"
        )
    atoms = structures[0].atoms
    atoms.set_velocities(np.zeros((len(atoms), 3)))
    _validate(args, atoms)
    label = f"{structures[0].path} (frame {structures[0].frame})"
    problem = cli_common.structure_problem(atoms)
    if problem is not None:
        raise CLIError(f"{label}: {problem}")
    outputs = [args.output, log_path, png_path]
    cli_common.check_not_inputs(outputs, [structures[0].path])
    cli_common.check_outputs(outputs, args.overwrite)

    atoms.calc = cli_common.make_calculator(args.model, args.device, args.head, args.memory_budget)
    cli_common.apply_state_flags(args, structures, atoms.calc, _warn)
    cli_common.evaluate_energy(atoms, label)

    rng = np.random.default_rng(args.seed)
    if args.temperature > 0:
        from ase.md import velocitydistribution

        # Maxwell-Boltzmann velocities; thermalize_momenta is the ASE >= 3.29 name.
        thermalize = getattr(velocitydistribution, "thermalize_momenta", None)
        if thermalize is None:
            thermalize = velocitydistribution.MaxwellBoltzmannDistribution
        thermalize(atoms, temperature_K=args.temperature, rng=rng)
        velocitydistribution.Stationary(atoms)
    dyn = make_dynamics(
        atoms,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        thermostat=args.thermostat or "langevin",
        friction_per_fs=args.friction or DEFAULT_FRICTION_PER_FS,
        pressure_gpa=args.pressure or 0.0,
        barostat=args.barostat or "iso",
        rng=rng,
    )

    recorder: _Recorder | None = None
    try:
        with (
            open(log_path, "w", newline="") as log,
            open(args.output, "w") as trajectory,
            tqdm(total=args.steps, desc=PROG, unit="step", disable=None) as bar,
        ):
            recorder = _Recorder(dyn, atoms, log, trajectory, bar, args.timestep)
            guard = StabilityGuard(dyn, atoms, args.ensemble, args.temperature, args.timestep)
            dyn.attach(guard, interval=1)  # first: a broken step is never recorded
            dyn.attach(recorder, interval=args.interval)
            dyn.run(args.steps)
            if dyn.nsteps % args.interval:  # always record the last step
                recorder()
    except (CLIError, KeyboardInterrupt) as exc:
        if recorder is None:
            raise
        if recorder.rows:
            plot_log(recorder.columns, recorder.rows, png_path)
        kept = (
            f"the {recorder.frames_written} frame(s) written before are kept in {args.output} "
            f"and {log_path}"
        )
        if isinstance(exc, KeyboardInterrupt):
            raise CLIError(
                f"interrupted at step {dyn.nsteps}; {kept}", exit_code=cli_common.EXIT_INTERRUPTED
            ) from None
        raise CLIError(
            f"{exc}; {kept}; try a smaller --timestep (now {args.timestep:g} fs)"
        ) from None
    plot_log(recorder.columns, recorder.rows, png_path)

    final = recorder.rows[-1]
    print(
        f"{args.ensemble.upper()} {atoms.get_chemical_formula()}: {dyn.nsteps} steps of "
        f"{args.timestep:g} fs, {recorder.ns_per_day():.3g} ns/day; final T = {final[5]:.1f} K, "
        f"E_tot = {final[4]:.6f} eV"
    )
    print(f"trajectory: {args.output}  log: {log_path}  plot: {png_path}")
    return cli_common.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlip-md``; returns the exit status."""
    return cli_common.run_cli(PROG, _run, argv)
