"""Time NVE molecular dynamics with any ASE calculator (ASE + stdlib only: both venvs use it)."""

from __future__ import annotations

import time

from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

TIMESTEP_FS = 1.0
TEMPERATURE_K = 300.0


def time_md(atoms, calculator, steps: int, warmup: int = 2) -> dict:
    """Run ``warmup`` then ``steps`` velocity-Verlet steps (1 fs, 300 K start); rates and drift.

    Returns seconds per step, ns/day at 1 fs, and the total-energy change per atom (eV) over
    the timed steps.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=_rng())
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    dynamics.run(warmup)
    energy_start = atoms.get_total_energy()
    start = time.perf_counter()
    dynamics.run(steps)
    seconds = (time.perf_counter() - start) / steps
    drift = (atoms.get_total_energy() - energy_start) / len(atoms)
    return {
        "seconds_per_step": seconds,
        "ns_per_day": TIMESTEP_FS * 1e-6 * 86400.0 / seconds,
        "energy_change_ev_per_atom": drift,
    }


def _rng():
    import numpy as np

    return np.random.default_rng(0)
