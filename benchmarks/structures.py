"""Benchmark structures, built the same way in every process (ours and MACE's venv).

Only ASE and numpy are used, so MACE's venv can import this file as well.

* :func:`copper`: rattled fcc Cu, a = 3.61 Å, a cubic ``k x k x k`` supercell (4 k³ atoms).
* :func:`water`: liquid water at 1 g/cm³: ``m³`` randomly oriented H2O molecules on a simple
  cubic lattice of spacing 3.104 Å (29.9 Å³ per molecule), rattled (3 m³ atoms).
* :func:`acac_liquid`: liquid acetylacetone at 0.975 g/cm³: ``m³`` randomly oriented copies of
  the first AcAc frame of ``../shared/data/acac/train_300K.xyz`` on a simple cubic lattice of
  spacing 5.546 Å (170.5 Å³ per molecule), 15 m³ atoms, periodic (``molecular=True``: the same
  positions without cell or pbc, a droplet for molecule-only models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

# supercell repeats k (copper) or m (water) giving about 1k, 4k, 16k, 20k, 32k and 100k atoms
COPPER_REPEATS = {256: 4, 1372: 7, 4000: 10, 16384: 16, 19652: 17, 32000: 20, 97556: 29}
WATER_REPEATS = {1536: 8, 3993: 11, 17496: 18, 20577: 19, 31944: 22, 98304: 32}
WATER_SPACING = 3.104  # Å: (18.015 g/mol / N_A / 1 g/cm³)^(1/3)
ACAC_REPEATS = {960: 4, 3240: 6}
ACAC_SPACING = 5.546  # Å: (100.12 g/mol / N_A / 0.975 g/cm³)^(1/3)
ACAC_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac" / "train_300K.xyz"


def copper(n_atoms: int, seed: int = 0) -> Atoms:
    """Rattled (0.05 Å) fcc Cu with ``n_atoms = 4 k³`` atoms (k x k x k cubic cells)."""
    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k**3 != n_atoms:
        raise ValueError(f"copper needs n_atoms = 4 k^3, got {n_atoms}")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((k, k, k))
    atoms.rattle(0.05, seed=seed)
    return atoms


def water(n_atoms: int, seed: int = 0) -> Atoms:
    """Liquid-density water box with ``n_atoms`` atoms, a key of :data:`WATER_REPEATS`."""
    m = WATER_REPEATS[n_atoms]
    rng = np.random.default_rng(seed)
    template = molecule("H2O")
    template.positions -= template.get_center_of_mass()
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = []
    for site in grid:
        rotation = _random_rotation(rng)
        positions.append(template.positions @ rotation.T + (site + 0.5) * WATER_SPACING)
    atoms = Atoms(
        "OH2" * len(grid),
        positions=np.concatenate(positions),
        cell=np.eye(3) * m * WATER_SPACING,
        pbc=True,
    )
    atoms.rattle(0.05, seed=seed)
    return atoms


def acac_liquid(n_atoms: int, seed: int = 0, molecular: bool = False) -> Atoms:
    """Liquid-density acetylacetone, ``n_atoms`` a key of :data:`ACAC_REPEATS`."""
    from ase.io import read

    m = ACAC_REPEATS[n_atoms]
    rng = np.random.default_rng(seed)
    template = read(ACAC_FILE, index=0)
    template.positions -= template.get_center_of_mass()
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = [
        template.positions @ _random_rotation(rng).T + (site + 0.5) * ACAC_SPACING for site in grid
    ]
    atoms = Atoms(
        numbers=np.tile(template.numbers, len(grid)),
        positions=np.concatenate(positions),
        cell=None if molecular else np.eye(3) * m * ACAC_SPACING,
        pbc=not molecular,
    )
    return atoms


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


SYSTEMS = {
    "copper": (copper, COPPER_REPEATS, [29]),
    "water": (water, WATER_REPEATS, [1, 8]),
    "acac_liquid": (acac_liquid, ACAC_REPEATS, [1, 6, 8]),
}
