"""Generate the EMT Cu–Au demo data set in ``data/demo/``.

Usage::

    python scripts/make_demo_data.py [--out data/demo] [--n-train 400] [--n-test 50] [--seed 0]

Every frame is an fcc-type Cu, Au or Cu–Au cell (4–32 atoms): pure fcc, Cu3Au (L1_2),
CuAu (L1_0) or a random substitutional alloy, perturbed by one of

* ``strain_iso``   isotropic strain of up to ±4 %,
* ``strain_shear`` random symmetric strain (shear up to ±3 %, normal up to ±2 %),
* ``rattle``       Gaussian displacements, σ = 0.03–0.12 Å,
* ``vacancy``      one atom removed (cells of ≥ 8 atoms) plus a 0.05 Å rattle,
* ``md``           a short Langevin run (300–1000 K, 2 fs, 20–60 steps), last snapshot kept.

Labels are ASE's EMT energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign convention),
stored through a ``SinglePointCalculator`` in extxyz; ``info["config_type"]`` names the
recipe. The output depends only on the seeds (one ``numpy.random.Generator`` per set).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

#: Lattice constants (Å) used for the unstrained cells; close to EMT's equilibrium values.
LATTICE_CONSTANT = {"Cu": 3.60, "Au": 4.07}
#: Supercells of the 4-atom conventional fcc cell: 4, 8, 16 and 32 atoms.
REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2))
TRAIN_SEED = 0
TEST_SEED = 1
EXAMPLE_SEED = 2


def _vegard(fraction_au: float) -> float:
    """Lattice constant (Å) of a Cu–Au alloy with Au fraction ``fraction_au``."""
    return (1 - fraction_au) * LATTICE_CONSTANT["Cu"] + fraction_au * LATTICE_CONSTANT["Au"]


def _repeat(rng: np.random.Generator, min_atoms: int = 4) -> tuple[int, int, int]:
    choices = [r for r in REPEATS if 4 * int(np.prod(r)) >= min_atoms]
    return choices[rng.integers(len(choices))]


def _fcc(element: str, rng: np.random.Generator, min_atoms: int) -> Atoms:
    atoms = bulk(element, "fcc", a=LATTICE_CONSTANT[element], cubic=True)
    return atoms.repeat(_repeat(rng, min_atoms))


def _l12_cu3au(rng: np.random.Generator, min_atoms: int) -> Atoms:
    a = _vegard(0.25)
    scaled = [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    atoms = Atoms("AuCu3", scaled_positions=scaled, cell=[a, a, a], pbc=True)
    return atoms.repeat(_repeat(rng, min_atoms))


def _l10_cuau(rng: np.random.Generator, min_atoms: int) -> Atoms:
    a = _vegard(0.5)
    scaled = [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    # Au and Cu layers alternate along c; the real alloy is slightly tetragonal (c/a < 1).
    atoms = Atoms("Au2Cu2", scaled_positions=scaled, cell=[a, a, 0.95 * a], pbc=True)
    return atoms.repeat(_repeat(rng, min_atoms))


def _random_alloy(rng: np.random.Generator, min_atoms: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=1.0, cubic=True).repeat(_repeat(rng, max(min_atoms, 8)))
    n_atoms = len(atoms)
    n_au = int(rng.integers(1, n_atoms))
    symbols = np.array(["Cu"] * n_atoms)
    symbols[rng.choice(n_atoms, size=n_au, replace=False)] = "Au"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.set_cell(atoms.cell * _vegard(n_au / n_atoms), scale_atoms=True)
    return atoms


BASES: dict[str, Callable[[np.random.Generator, int], Atoms]] = {
    "Cu_fcc": lambda rng, n: _fcc("Cu", rng, n),
    "Au_fcc": lambda rng, n: _fcc("Au", rng, n),
    "Cu3Au_L12": _l12_cu3au,
    "CuAu_L10": _l10_cuau,
    "CuAu_random": _random_alloy,
}


def _rattle(atoms: Atoms, rng: np.random.Generator, sigma: float) -> None:
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)


def _strain(atoms: Atoms, strain: np.ndarray) -> None:
    """Apply a symmetric (3, 3) strain to cell and positions."""
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)


def _strain_iso(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    _strain(atoms, np.eye(3) * rng.uniform(-0.04, 0.04))
    _rattle(atoms, rng, 0.01)
    return atoms


def _strain_shear(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    strain = np.diag(rng.uniform(-0.02, 0.02, size=3))
    off_diagonal = rng.uniform(-0.03, 0.03, size=3)
    for value, (i, j) in zip(off_diagonal, ((0, 1), (0, 2), (1, 2)), strict=True):
        strain[i, j] = strain[j, i] = value
    _strain(atoms, strain)
    _rattle(atoms, rng, 0.01)
    return atoms


def _rattled(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    _rattle(atoms, rng, rng.uniform(0.03, 0.12))
    return atoms


def _vacancy(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    del atoms[int(rng.integers(len(atoms)))]
    _rattle(atoms, rng, 0.05)
    return atoms


def _md(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    from ase.md import velocitydistribution
    from ase.md.langevin import Langevin

    # thermalize_momenta (ASE >= 3.29) replaces MaxwellBoltzmannDistribution.
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None)
    if thermalize is None:
        thermalize = velocitydistribution.MaxwellBoltzmannDistribution
    temperature = rng.uniform(300.0, 1000.0)
    atoms.calc = EMT()
    thermalize(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(
        atoms,
        timestep=2.0 * units.fs,
        temperature_K=temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(int(rng.integers(20, 61)))
    atoms.info["md_temperature_K"] = round(float(temperature), 1)
    return atoms


#: name -> (perturbation, minimum number of atoms of the base cell)
PERTURBATIONS: dict[str, tuple[Callable[[Atoms, np.random.Generator], Atoms], int]] = {
    "strain_iso": (_strain_iso, 4),
    "strain_shear": (_strain_shear, 4),
    "rattle": (_rattled, 4),
    "vacancy": (_vacancy, 8),
    "md": (_md, 4),
}


def label_with_emt(atoms: Atoms) -> Atoms:
    """Fresh copy of ``atoms`` (no velocities) carrying EMT energy, forces and stress."""
    labelled = Atoms(
        atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
    )
    labelled.info.update(atoms.info)
    labelled.calc = EMT()
    results = {
        "energy": labelled.get_potential_energy(),
        "forces": labelled.get_forces(),
        "stress": labelled.get_stress(),
    }
    labelled.calc = SinglePointCalculator(labelled, **results)
    return labelled


def generate_frames(n_frames: int, seed: int) -> list[Atoms]:
    """Generate ``n_frames`` labelled frames, cycling over structure types and perturbations.

    Args:
        n_frames: Number of frames.
        seed: Seed of the single random generator; equal seeds give identical frames.

    Returns:
        Frames with EMT labels (energy eV, forces (n_atoms, 3) eV/Å, stress Voigt eV/Å³)
        and ``info["config_type"] = "<structure>/<perturbation>"``.
    """
    rng = np.random.default_rng(seed)
    base_names = list(BASES)
    perturbation_names = list(PERTURBATIONS)
    frames = []
    for k in range(n_frames):
        base_name = base_names[k % len(base_names)]
        perturbation_name = perturbation_names[(k // len(base_names)) % len(perturbation_names)]
        perturb, min_atoms = PERTURBATIONS[perturbation_name]
        atoms = perturb(BASES[base_name](rng, min_atoms), rng)
        atoms.info["config_type"] = f"{base_name}/{perturbation_name}"
        frames.append(label_with_emt(atoms))
    return frames


def example_structure(seed: int = EXAMPLE_SEED) -> Atoms:
    """A rattled (σ = 0.05 Å), 1.5 % strained 2x2x1 CuAu L1_0 supercell (16 atoms)."""
    rng = np.random.default_rng(seed)
    a = _vegard(0.5)
    scaled = [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    atoms = Atoms("Au2Cu2", scaled_positions=scaled, cell=[a, a, 0.95 * a], pbc=True)
    atoms = atoms.repeat((2, 2, 1))
    _strain(atoms, np.diag([0.015, 0.015, -0.01]))
    _rattle(atoms, rng, 0.05)
    return atoms


def write_demo_data(out_dir: Path, n_train: int, n_test: int, seed: int = TRAIN_SEED) -> None:
    """Write ``demo_train.extxyz``, ``demo_test.extxyz`` and ``CuAu_rattled.cif`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "demo_train.extxyz", generate_frames(n_train, seed), format="extxyz")
    write(out_dir / "demo_test.extxyz", generate_frames(n_test, seed + TEST_SEED), format="extxyz")
    write(out_dir / "CuAu_rattled.cif", example_structure(), format="cif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data" / "demo")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    args = parser.parse_args()
    write_demo_data(args.out, args.n_train, args.n_test, args.seed)
    for name in ("demo_train.extxyz", "demo_test.extxyz", "CuAu_rattled.cif"):
        path = args.out / name
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
