"""Labelled frames for the training-throughput benchmark (ASE only, so MACE's venv can use it).

* ``acac``: the first 400 frames of AcAc ``train_300K.xyz`` (15 atoms, molecules, E + F);
* ``mptrj``: the 11 real MPtrj frames (12-30 atoms, periodic, E + F + S), repeated to 400.

Both live in ``../shared/data`` (see its README for provenance and licences).
"""

from __future__ import annotations

from pathlib import Path

import ase.io
from ase import Atoms

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "acac": (SHARED / "acac" / "train_300K.xyz", 5.0, False),
    "mptrj": (SHARED / "tiny" / "mptrj_11frames.extxyz", 6.0, True),
}
N_FRAMES = 400


def load(name: str) -> tuple[list[Atoms], float, bool]:
    """Frames (labels in ``atoms.calc``), cutoff in Å, and whether stress is trained."""
    path, cutoff, stress = DATASETS[name]
    if not path.is_file():
        raise SystemExit(f"{path} not found: this benchmark needs ../shared/data")
    frames = ase.io.read(path, index=":")
    frames = [frames[i % len(frames)] for i in range(N_FRAMES)]
    return frames, cutoff, stress


def species(frames: list[Atoms]) -> list[int]:
    return sorted({int(z) for atoms in frames for z in atoms.numbers})
