"""Generate a small DFT set of molecules in several charge and spin states (PySCF, PBE).

Every rattled geometry of a molecule is computed in each of its states, so the data hold
energy differences between states of the same geometry: H2O/H2O+, OH/OH-, NH3/NH3+,
CH3/CH3+/CH3-, O2 singlet/triplet/superoxide, CH2 singlet/triplet. Closed shells use RKS,
open shells UKS (PBE, def2-SVP by default). Frames are written to an extxyz file with
``info["charge"]`` (e), ``info["spin"]`` (multiplicity 2S+1), ``config_type`` (molecule),
``state`` (e.g. ``"+1/2"``) and ``geometry`` (an id shared by the states of one geometry);
energies in eV and forces in eV/Å as the frame's calculator results.

``--aselmdb OUT`` converts an existing extxyz to an ASE ``.aselmdb`` with charge and spin in
each row's ``data``, as OMol25 stores them (needs the ``omol`` extra).

Usage::

    OMP_NUM_THREADS=1 python scripts/make_charged_data.py --geometries 30 \
        --out data/charged/charged.extxyz
    python scripts/make_charged_data.py --from data/charged/charged.extxyz \
        --aselmdb /tmp/charged.aselmdb
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.units import Bohr, Hartree

# molecule name -> (ASE g2 name, [(charge, multiplicity), ...])
STATES: dict[str, tuple[str, list[tuple[int, int]]]] = {
    "H2O": ("H2O", [(0, 1), (1, 2)]),
    "OH": ("OH", [(0, 2), (-1, 1)]),
    "NH3": ("NH3", [(0, 1), (1, 2)]),
    "CH3": ("CH3", [(0, 2), (1, 1), (-1, 1)]),
    "O2": ("O2", [(0, 1), (0, 3), (-1, 2)]),
    "CH2": ("CH2_s3B1d", [(0, 1), (0, 3)]),
}


def rattled_geometry(name: str, rng: np.random.Generator, sigma: float) -> Atoms:
    """A g2 geometry, uniformly scaled by 0.92-1.10 and rattled by ``sigma`` Å per component."""
    atoms = molecule(STATES[name][0])
    atoms.positions -= atoms.get_center_of_mass()
    atoms.positions *= rng.uniform(0.92, 1.10)
    atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
    atoms.info.clear()
    return atoms


def compute_state(
    atoms: Atoms, charge: int, multiplicity: int, basis: str, xc: str
) -> tuple[float, np.ndarray] | None:
    """PBE energy (eV) and forces (eV/Å) of one state, or None if the SCF does not converge."""
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis=basis,
        charge=charge,
        spin=multiplicity - 1,
        verbose=0,
    )
    mf = dft.RKS(mol) if multiplicity == 1 else dft.UKS(mol)
    mf.xc = xc
    mf.max_cycle = 100
    mf.conv_tol = 1e-9
    energy = mf.kernel()
    if not mf.converged:
        mf = mf.newton()
        energy = mf.kernel()
        if not mf.converged:
            return None
    gradient = mf.nuc_grad_method().kernel()
    return float(energy) * Hartree, -np.asarray(gradient) * Hartree / Bohr


def check_multiplicity(atoms: Atoms, charge: int, multiplicity: int) -> None:
    electrons = int(atoms.numbers.sum()) - charge
    if electrons % 2 == multiplicity % 2:
        raise ValueError(f"multiplicity {multiplicity} impossible with {electrons} electrons")


def generate(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        partial.unlink()
    rng = np.random.default_rng(args.seed)
    names = list(STATES) if not args.molecules else args.molecules.split(",")
    geometry_id = 0
    n_done = n_failed = 0
    start = time.perf_counter()
    for index in range(args.geometries):
        for name in names:
            atoms = rattled_geometry(name, rng, args.rattle)
            for charge, multiplicity in STATES[name][1]:
                check_multiplicity(atoms, charge, multiplicity)
                result = compute_state(atoms, charge, multiplicity, args.basis, args.xc)
                if result is None:
                    n_failed += 1
                    print(f"SCF not converged: {name} {charge:+d}/{multiplicity}", flush=True)
                    continue
                energy, forces = result
                frame = atoms.copy()
                frame.info.update(
                    charge=charge,
                    spin=multiplicity,
                    config_type=name,
                    state=f"{charge:+d}/{multiplicity}",
                    geometry=geometry_id,
                )
                frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
                write(partial, frame, format="extxyz", append=True)
                n_done += 1
            geometry_id += 1
        elapsed = time.perf_counter() - start
        print(
            f"round {index + 1}/{args.geometries}: {n_done} frames, {n_failed} failed, "
            f"{elapsed:.0f} s",
            flush=True,
        )
    os.replace(partial, out)
    print(f"wrote {n_done} frames to {out} ({n_failed} SCF failures)")


def to_aselmdb(source: str | Path, target: str | Path) -> int:
    """Write the frames of an extxyz file to an ``.aselmdb`` (charge and spin in row ``data``).

    Returns the number of rows written. Needs the ``omol`` extra (``ase-db-backends``).
    """
    import ase.db

    frames = read(source, index=":")
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists; not overwriting")
    db = ase.db.connect(str(target), type="aselmdb")
    try:
        for atoms in frames:
            info = dict(atoms.info)
            data = {"charge": int(info.pop("charge")), "spin": int(info.pop("spin"))}
            key_value_pairs = {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in info.items()
                if isinstance(v, (int, float, str, np.generic))
            }
            db.write(atoms, key_value_pairs=key_value_pairs, data=data)
    finally:
        if hasattr(db, "close"):
            db.close()
    return len(frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/charged/charged.extxyz")
    parser.add_argument("--geometries", type=int, default=30, help="rattled geometries each")
    parser.add_argument("--molecules", default="", help="comma list (default: all)")
    parser.add_argument("--rattle", type=float, default=0.06, help="Å per component")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from", dest="source", help="extxyz to convert (with --aselmdb)")
    parser.add_argument("--aselmdb", help="write an .aselmdb instead of computing")
    args = parser.parse_args(argv)
    if args.aselmdb:
        n = to_aselmdb(args.source or args.out, args.aselmdb)
        print(f"wrote {n} rows to {args.aselmdb}")
        return
    generate(args)


if __name__ == "__main__":
    sys.exit(main())
