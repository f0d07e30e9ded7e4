"""Reusable conformance checks for energy models (STYLE.md §5).

Each ``check_*`` function runs one property on a model, raises ``AssertionError`` with the
measured error when it fails, and returns the measured error(s) so approximate architectures can
report them. :class:`EnergyModelTests` bundles them as a pytest mixin configured per model::

    class TestMyModel(mlip.testing.EnergyModelTests):
        model_name = "gmep"
        model_kwargs = {"preset": "small"}

Every test then runs for float32 and float64 (and CUDA when available) with dtype-dependent
tolerances. ``exact = False`` turns the equivariance assertion into a printed report.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from torch import nn

from mlip import keys
from mlip.derivatives import ForceStress
from mlip.graph import AtomicGraph

__all__ = [
    "EnergyModelTests",
    "TOLERANCES",
    "check_batch_consistency",
    "check_cutoff_continuity",
    "check_equivariance",
    "check_finite_differences",
    "check_graph_inputs",
    "check_isolated_atom",
    "check_molecule",
    "check_supercell",
    "check_torchscript",
    "graph_inputs",
    "perturb_parameters",
    "random_orthogonal",
    "rattled_crystal",
    "rattled_molecule",
    "relative_error",
]

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"equivariance": 1e-9, "fd": 1e-6, "consistency": 1e-10, "script": 1e-10},
    torch.float32: {"equivariance": 2e-4, "fd": float("nan"), "consistency": 2e-5, "script": 1e-5},
}


# ---------------------------------------------------------------------- helpers
def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, 1e-12)."""
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-12)
    if actual.numel() == 0:
        return 0.0
    return float((actual - expected).abs().max()) / scale


def perturb_parameters(model: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    """Add N(0, scale^2 * mean(p^2) + scale^2) noise to every parameter, in place.

    Makes sure no path is identically zero (e.g. zero-initialised residuals, unit species
    scales) so the checks exercise the whole architecture.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            rms = float(parameter.double().pow(2).mean().sqrt()) if parameter.numel() else 0.0
            parameter.add_((scale * (rms + 0.1) * noise).to(parameter.dtype))
    return model


def random_orthogonal(seed: int = 0, reflect: bool = True) -> np.ndarray:
    """A random 3x3 orthogonal matrix; with ``reflect`` its determinant is -1."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) == reflect:
        q[:, 0] = -q[:, 0]
    return q


def rattled_crystal(
    symbols: tuple[str, ...] = ("Cu", "Au"),
    repeat: tuple[int, int, int] = (2, 1, 1),
    rattle: float = 0.1,
    seed: int = 0,
    a: float = 3.8,
) -> Atoms:
    """Conventional fcc cell (4 atoms) repeated, species cycled from ``symbols``, rattled."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.set_chemical_symbols([symbols[i % len(symbols)] for i in range(len(atoms))])
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    # A slightly sheared cell so nothing relies on orthogonal axes.
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))), True)
    return atoms


def rattled_molecule(
    species: list[int], name: str = "CH3COCH3", rattle: float = 0.05, seed: int = 0
) -> Atoms:
    """An ASE molecule (no cell, no pbc) with atomic numbers cycled from ``species``, rattled."""
    atoms = molecule(name)
    atoms.set_atomic_numbers([species[i % len(species)] for i in range(len(atoms))])
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def _periodic(atoms: Atoms) -> bool:
    return bool(atoms.pbc.all())


#: values of the per-structure inputs used when a structure's ``info`` does not set them
TEST_STATE: dict[str, int] = {keys.CHARGE: 1, keys.SPIN: 2}


def graph_inputs(model: nn.Module, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-structure inputs ``model`` needs beyond the geometry, for one structure.

    ``charge`` and ``spin`` for a model listing them in ``required_inputs``, ``head`` for a
    model with more than one of ``heads`` (the last head, exercising a non-default one). Values
    come from ``info`` where it has them, else from :data:`TEST_STATE`.
    """
    info = info or {}
    inputs: dict[str, Any] = {}
    for name in getattr(model, "required_inputs", []):
        inputs[name] = info.get(name, TEST_STATE[name])
    heads = list(getattr(model, "heads", []))
    if len(heads) > 1:
        inputs[keys.HEAD] = info.get(keys.HEAD, len(heads) - 1)
    return inputs


def _graph(atoms: Atoms, cutoff: float, device: str, model: nn.Module) -> AtomicGraph:
    graph = AtomicGraph.from_atoms(atoms, cutoff, read_labels=False)
    inputs = graph_inputs(model, atoms.info)
    fields = {
        name: torch.tensor([value], dtype=keys.FIELDS[name].dtype) for name, value in inputs.items()
    }
    return graph.with_labels(**fields).to(device)


def _evaluate(
    model: nn.Module, graph: AtomicGraph, stress: bool = False
) -> dict[str, torch.Tensor]:
    wrapper = ForceStress(model, compute_forces=True, compute_stress=stress).eval()
    return {k: v.detach() for k, v in wrapper(graph.as_dict()).items()}


def _check(error: float, tolerance: float, what: str, exact: bool = True) -> None:
    if not np.isfinite(error):
        raise AssertionError(f"{what}: the error is not finite ({error})")
    if exact and not error <= tolerance:
        raise AssertionError(f"{what}: relative error {error:.3e} > {tolerance:.1e}")


# ---------------------------------------------------------------------- checks
def check_equivariance(
    model: nn.Module,
    atoms: Atoms,
    tolerance: float,
    device: str = "cpu",
    exact: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """O(3) rotation (with reflection) + translation + permutation of a structure.

    Energy must be invariant, forces rotate (``F' = F R^T`` for row vectors, permuted) and,
    for a periodic structure, stress rotates (``R s R^T``). Returns the relative errors;
    asserts them when ``exact``, otherwise only that they are finite.
    """
    cutoff = float(model.cutoff)
    periodic = _periodic(atoms)
    reference = _evaluate(model, _graph(atoms, cutoff, device, model), stress=periodic)
    rotation = random_orthogonal(seed, reflect=True)
    rng = np.random.default_rng(seed)
    permutation = rng.permutation(len(atoms))
    moved = atoms[permutation]
    moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    moved.positions = atoms.positions[permutation] @ rotation.T + rng.normal(size=3)
    result = _evaluate(model, _graph(moved, cutoff, device, model), stress=periodic)
    rot = torch.tensor(rotation, dtype=torch.float64, device=device)
    perm = torch.as_tensor(permutation, device=device)
    errors = {
        "energy": relative_error(result[keys.ENERGY], reference[keys.ENERGY]),
        "energies": relative_error(
            result[keys.ATOMIC_ENERGIES], reference[keys.ATOMIC_ENERGIES][perm]
        ),
        "forces": relative_error(result[keys.FORCES], reference[keys.FORCES][perm] @ rot.T),
    }
    if periodic:
        errors["stress"] = relative_error(
            result[keys.STRESS][0], rot @ reference[keys.STRESS][0] @ rot.T
        )
    for name, error in errors.items():
        _check(error, tolerance, f"equivariance ({name})", exact)
    return errors


def check_supercell(
    model: nn.Module, atoms: Atoms, tolerance: float, device: str = "cpu"
) -> dict[str, float]:
    """A 2x2x2 supercell has 8x the energy, the same per-atom forces and the same stress."""
    cutoff = float(model.cutoff)
    single = _evaluate(model, _graph(atoms, cutoff, device, model), stress=True)
    big = _evaluate(model, _graph(atoms.repeat((2, 2, 2)), cutoff, device, model), stress=True)
    n = len(atoms)
    errors = {
        "energy": relative_error(big[keys.ENERGY], 8 * single[keys.ENERGY]),
        "forces": relative_error(big[keys.FORCES], single[keys.FORCES].repeat(8, 1)),
        "energies": relative_error(
            big[keys.ATOMIC_ENERGIES], single[keys.ATOMIC_ENERGIES].repeat(8)
        ),
        "stress": relative_error(big[keys.STRESS], single[keys.STRESS]),
    }
    assert big[keys.FORCES].shape == (8 * n, 3)
    for name, error in errors.items():
        _check(error, tolerance, f"supercell ({name})")
    return errors


def check_finite_differences(
    model: nn.Module,
    atoms: Atoms,
    tolerance: float = 1e-6,
    delta: float = 1e-4,
    n_coordinates: int = 6,
    device: str = "cpu",
) -> dict[str, float]:
    """Forces and stress against central differences of the energy (use float64 models).

    ``n_coordinates`` random Cartesian components are checked, and, for a periodic structure,
    all 9 strain components (strain ``x -> x (1 + d)`` applied to cell and positions;
    stress = dE/dd / V).
    """
    cutoff = float(model.cutoff)
    periodic = _periodic(atoms)

    def energy(structure: Atoms) -> float:
        with torch.no_grad():
            return float(
                model(_graph(structure, cutoff, device, model).as_dict())[keys.ENERGY].sum()
            )

    analytic = _evaluate(model, _graph(atoms, cutoff, device, model), stress=periodic)
    forces = analytic[keys.FORCES].cpu().numpy()
    rng = np.random.default_rng(1)
    numeric_f, analytic_f = [], []
    for flat in rng.choice(3 * len(atoms), size=min(n_coordinates, 3 * len(atoms)), replace=False):
        i, k = divmod(int(flat), 3)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += delta
        minus.positions[i, k] -= delta
        numeric_f.append(-(energy(plus) - energy(minus)) / (2 * delta))
        analytic_f.append(forces[i, k])
    errors = {"forces": relative_error(torch.tensor(analytic_f), torch.tensor(numeric_f))}
    if periodic:
        errors["stress"] = _stress_error(model, atoms, energy, analytic, delta)
    for name, error in errors.items():
        _check(error, tolerance, f"finite differences ({name})")
    return errors


def _stress_error(
    model: nn.Module,
    atoms: Atoms,
    energy: Any,
    analytic: dict[str, torch.Tensor],
    delta: float,
) -> float:
    """Relative error of the analytic stress against central strain differences."""
    stress = analytic[keys.STRESS][0].cpu().numpy()
    numeric_s = np.zeros((3, 3))
    cell = atoms.cell.array
    for a in range(3):
        for b in range(3):
            values = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * delta
                strained = atoms.copy()
                strained.set_cell(cell @ strain, scale_atoms=False)
                strained.positions = atoms.positions @ strain
                values.append(energy(strained))
            numeric_s[a, b] = (values[0] - values[1]) / (2 * delta) / atoms.get_volume()
    numeric_s = 0.5 * (numeric_s + numeric_s.T)
    return relative_error(torch.tensor(stress), torch.tensor(numeric_s))


def check_batch_consistency(
    model: nn.Module, structures: list[Atoms], tolerance: float, device: str = "cpu"
) -> dict[str, float]:
    """A batch equals each structure alone; no gradient crosses structures; input unchanged."""
    cutoff = float(model.cutoff)
    structures = [s.copy() for s in structures]
    n_heads = max(len(getattr(model, "heads", [])), 1)
    for index, structure in enumerate(structures):  # a different state for each structure
        structure.info.setdefault(keys.CHARGE, index - 1)
        structure.info.setdefault(keys.SPIN, index + 1)
        structure.info.setdefault(keys.HEAD, index % n_heads)
    graphs = [_graph(s, cutoff, device, model) for s in structures]
    batch = AtomicGraph.batch(graphs)
    data = batch.as_dict()
    before = {k: v.clone() for k, v in data.items()}
    periodic = all(bool(s.pbc.all()) for s in structures)
    together = _evaluate(model, batch, stress=periodic)
    for name, value in data.items():
        if not torch.equal(value, before[name]) or value.requires_grad:
            raise AssertionError(f"input field {name!r} was modified by the model")
    if set(data) != set(before):
        raise AssertionError("the model added or removed keys of its input dict")
    alone = [_evaluate(model, g, stress=periodic) for g in graphs]
    errors: dict[str, float] = {}
    for key in (keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES) + (
        (keys.STRESS,) if periodic else ()
    ):
        expected = torch.cat([a[key] for a in alone])
        errors[key] = relative_error(together[key], expected)
        _check(errors[key], tolerance, f"batch consistency ({key})")
    # Gradient of structure 0's energy w.r.t. the positions of the others must be exactly zero.
    positions = data[keys.POSITIONS].detach().clone().requires_grad_(True)
    energy = model({**data, keys.POSITIONS: positions})[keys.ENERGY]
    (grad,) = torch.autograd.grad(energy[0], positions)
    n0 = len(structures[0])
    leak = float(grad[n0:].abs().max()) if grad.shape[0] > n0 else 0.0
    if leak != 0.0:
        raise AssertionError(f"gradient leaks across structures: {leak:.3e}")
    errors["leak"] = leak
    return errors


def check_cutoff_continuity(
    model: nn.Module, tolerance: float, delta: float = 1e-6, device: str = "cpu"
) -> dict[str, float]:
    """Energy and forces are continuous when a neighbour crosses the cutoff.

    A trimer in which atom 2 sits just inside and just outside the cutoff of atom 0.
    """
    cutoff = float(model.cutoff)
    species = list(model.species)
    numbers = [species[0], species[-1], species[0]]

    def structure(distance: float) -> Atoms:
        return Atoms(numbers=numbers, positions=[[0, 0, 0], [1.1, 0.9, 0.0], [distance, 0, 0]])

    inside = _graph(structure(cutoff - delta), cutoff, device, model)
    outside = _graph(structure(cutoff + delta), cutoff, device, model)
    if inside.num_edges <= outside.num_edges:
        raise AssertionError("test setup: the neighbour did not cross the cutoff")
    a, b = _evaluate(model, inside), _evaluate(model, outside)
    scale = max(float(a[keys.FORCES].abs().max()), float(a[keys.ENERGY].abs().max()), 1.0)
    errors = {
        "energy": float((a[keys.ENERGY] - b[keys.ENERGY]).abs().max()) / scale,
        "forces": float((a[keys.FORCES] - b[keys.FORCES]).abs().max()) / scale,
    }
    for name, error in errors.items():
        _check(error, tolerance, f"cutoff continuity ({name})")
    return errors


def check_isolated_atom(model: nn.Module, tolerance: float, device: str = "cpu") -> None:
    """An atom without neighbours (molecule, no cell) has energy E0(Z) + shift, zero force."""
    z = int(model.species[-1])
    reference = {int(s): -1.5 - 0.25 * i for i, s in enumerate(model.species)}
    model = copy.deepcopy(model)
    model.set_statistics(reference_energies=reference, scale=1.7, shift=0.0)
    graph = _graph(
        Atoms(numbers=[z], positions=[[0.1, 0.2, 0.3]]), float(model.cutoff), device, model
    )
    out = _evaluate(model, graph)
    error = relative_error(out[keys.ENERGY], torch.tensor([reference[z]], dtype=torch.float64))
    _check(error, tolerance, "isolated atom energy")
    if float(out[keys.FORCES].abs().max()) != 0.0:
        raise AssertionError(f"isolated atom force is not zero: {out[keys.FORCES]}")
    if out[keys.ENERGY].dtype != torch.float64 or out[keys.FORCES].dtype != torch.float64:
        raise AssertionError("outputs must be float64")


def check_molecule(
    model: nn.Module, tolerance: float, device: str = "cpu", seed: int = 0, exact: bool = True
) -> dict[str, float]:
    """A molecule without a cell works: finite outputs, zero net force, rotation invariance.

    With ``exact = False`` the rotation errors are only required to be finite (the net force,
    a consequence of translation invariance, is still asserted)."""
    species = list(model.species)
    mol = molecule("CH4")
    mol.set_atomic_numbers([species[i % len(species)] for i in range(len(mol))])
    mol.positions *= 1.4
    cutoff = float(model.cutoff)
    out = _evaluate(model, _graph(mol, cutoff, device, model))
    if not bool(torch.isfinite(out[keys.FORCES]).all()):
        raise AssertionError("non-finite forces for a molecule")
    if out[keys.ENERGY].shape != (1,) or out[keys.ATOMIC_ENERGIES].shape != (len(mol),):
        raise AssertionError("wrong output shapes for a molecule")
    net = float(out[keys.FORCES].sum(0).abs().max()) / max(
        float(out[keys.FORCES].abs().max()), 1e-12
    )
    rotation = random_orthogonal(seed)
    turned = mol.copy()
    turned.positions = mol.positions @ rotation.T
    out2 = _evaluate(model, _graph(turned, cutoff, device, model))
    rot = torch.tensor(rotation, device=device)
    errors = {
        "net_force": net,
        "energy": relative_error(out2[keys.ENERGY], out[keys.ENERGY]),
        "forces": relative_error(out2[keys.FORCES], out[keys.FORCES] @ rot.T),
    }
    for name, error in errors.items():
        _check(error, tolerance, f"molecule ({name})", exact or name == "net_force")
    return errors


def check_torchscript(
    model: nn.Module, atoms: Atoms, tolerance: float, device: str = "cpu"
) -> dict[str, float]:
    """``torch.jit.script(ForceStress(model, True, True))`` matches eager and survives save/load;
    toggling ``compute_stress`` on the scripted module works; unknown elements raise."""
    cutoff = float(model.cutoff)
    graph = _graph(atoms, cutoff, device, model)
    periodic = _periodic(atoms)
    eager = ForceStress(model, True, periodic).eval()
    scripted = torch.jit.script(ForceStress(model, True, periodic).eval())
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer, map_location=device)
    reference = {k: v.detach() for k, v in eager(graph.as_dict()).items()}
    errors: dict[str, float] = {}
    for label, module in (("scripted", scripted), ("loaded", loaded)):
        out = module(graph.as_dict())
        for key, value in reference.items():
            errors[f"{label}.{key}"] = relative_error(out[key].detach(), value)
            _check(errors[f"{label}.{key}"], tolerance, f"TorchScript {label} ({key})")
    loaded.compute_stress = False
    if keys.STRESS in loaded(graph.as_dict()):
        raise AssertionError("compute_stress = False is ignored by the scripted module")
    data = graph.as_dict()
    data[keys.ATOMIC_NUMBERS] = data[keys.ATOMIC_NUMBERS].clone()
    missing = next(z for z in (26, 1, 2, 3, 4, 5) if z not in model.species)
    data[keys.ATOMIC_NUMBERS][0] = missing
    for module in (eager, loaded):
        try:
            module(data)
        except Exception as exc:  # TorchScript re-raises as torch.jit.Error
            if f"(Z={missing})" not in str(exc):
                raise AssertionError(f"unclear unknown-element error: {exc}") from exc
        else:
            raise AssertionError("an element outside the model's species did not raise")
    return errors


def check_graph_inputs(model: nn.Module, atoms: Atoms, device: str = "cpu") -> dict[str, float]:
    """Per-structure inputs (charge, spin, head) change the energy and are validated.

    For a model with ``required_inputs`` ``charge``/``spin``: other states give other energies;
    a missing input, a non-integer charge and an unknown head each raise an error naming the
    field, in eager mode and scripted. Returns the energy changes (eV) per input. Empty for a
    model without such inputs.
    """
    cutoff = float(model.cutoff)
    required = list(getattr(model, "required_inputs", []))
    heads = list(getattr(model, "heads", []))
    if not required and len(heads) <= 1:
        return {}
    scripted = torch.jit.script(ForceStress(model, True, False).eval())
    base = dict(graph_inputs(model, {}))

    def energy(**changes: Any) -> float:
        structure = atoms.copy()
        structure.info.update({**base, **changes})
        with torch.no_grad():
            return float(model(_graph(structure, cutoff, device, model).as_dict())[keys.ENERGY])

    def expect_error(data: dict[str, torch.Tensor], needle: str, what: str) -> None:
        for module in (model, scripted):
            try:
                module(data)
            except Exception as exc:  # TorchScript re-raises as torch.jit.Error
                if needle not in str(exc):
                    raise AssertionError(f"{what}: unclear error {exc}") from exc
            else:
                raise AssertionError(f"{what}: no error")

    reference = energy()
    changes: dict[str, float] = {}
    data = _graph(atoms, cutoff, device, model).as_dict()
    if keys.CHARGE in required:
        changes[keys.CHARGE] = abs(energy(charge=base[keys.CHARGE] - 1) - reference)
        changes[keys.SPIN] = abs(energy(spin=base[keys.SPIN] + 2) - reference)
        for name in (keys.CHARGE, keys.SPIN):
            missing = {k: v for k, v in data.items() if k != name}
            expect_error(missing, f"'{name}'", f"missing {name}")
        fractional = {**data, keys.CHARGE: data[keys.CHARGE] + 0.5}
        expect_error(fractional, "charge must be an integer", "non-integer charge")
    if len(heads) > 1:
        changes[keys.HEAD] = abs(energy(head=0) - reference)
        unknown = {**data, keys.HEAD: torch.full_like(data[keys.HEAD], len(heads))}
        expect_error(unknown, str(heads), "unknown head")
    scale = max(abs(reference), 1.0)
    for name, change in changes.items():
        if not change > 1e-7 * scale:
            raise AssertionError(f"changing {name} does not change the energy ({change:.3e} eV)")
    return changes


# ---------------------------------------------------------------------- pytest mixin
_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class EnergyModelTests:
    """Conformance tests for one model configuration (pytest mixin).

    Subclasses set ``model_name``, ``model_kwargs`` (passed to ``mlip.models.build_model``
    together with ``species`` and ``cutoff``), and optionally ``exact = False`` for models that
    are only approximately equivariant (the error is then printed, not asserted), and
    ``periodic = False`` for molecule-only models (every check then runs on a rattled
    molecule; supercell and stress checks are skipped).
    """

    model_name: str | None = "gmep"
    model_kwargs: dict[str, Any] = {}
    species: list[int] = [29, 79]
    cutoff: float = 4.0
    exact: bool = True
    periodic: bool = True
    perturb: float = 0.2

    def structure(self, seed: int = 0) -> Atoms:
        """The test structure: a rattled crystal, or a molecule when not ``periodic``."""
        if self.periodic:
            return rattled_crystal(seed=seed)
        return rattled_molecule(self.species, seed=seed)

    @pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
    def dtype(self, request: Any) -> torch.dtype:
        return request.param

    @pytest.fixture(params=_DEVICES)
    def device(self, request: Any) -> str:
        return request.param

    @pytest.fixture
    def model(self, dtype: torch.dtype, device: str) -> nn.Module:
        from mlip.models import build_model

        torch.manual_seed(0)
        built = build_model(
            self.model_name,
            species=self.species,
            cutoff=self.cutoff,
            dtype=dtype,
            **self.model_kwargs,
        )
        built.set_statistics(avg_num_neighbors=20.0, scale=1.3, shift=0.1)
        return perturb_parameters(built, self.perturb).to(device)

    def test_equivariance(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        errors = check_equivariance(
            model,
            self.structure(),
            TOLERANCES[dtype]["equivariance"],
            device,
            exact=self.exact,
        )
        print(f"\n{type(self).__name__} {dtype} equivariance errors: {errors}")

    def test_supercell(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        if not self.periodic:
            pytest.skip("molecule-only model")
        check_supercell(model, rattled_crystal(repeat=(1, 1, 1)), 10 * _tol(dtype), device)

    def test_finite_differences(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        if dtype != torch.float64:
            pytest.skip("finite differences need float64")
        check_finite_differences(model, self.structure(), TOLERANCES[dtype]["fd"], device=device)

    def test_batch_consistency(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        if self.periodic:
            structures = [rattled_crystal(seed=1), rattled_crystal(repeat=(1, 1, 1), seed=2)]
            check_batch_consistency(model, structures, _tol(dtype), device)
        molecules = [molecule("H2O"), molecule("CH4")]
        for mol in molecules:
            mol.set_atomic_numbers([self.species[i % len(self.species)] for i in range(len(mol))])
            mol.positions *= 1.5
        check_batch_consistency(model, molecules, _tol(dtype), device)

    def test_cutoff_continuity(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        tolerance = 1e-6 if dtype == torch.float64 else 1e-3
        check_cutoff_continuity(model, tolerance, device=device)

    def test_isolated_atom(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        check_isolated_atom(model, 1e-12, device)

    def test_molecule(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        errors = check_molecule(model, TOLERANCES[dtype]["equivariance"], device, exact=self.exact)
        if not self.exact:
            print(f"\n{type(self).__name__} {dtype} molecule rotation errors: {errors}")

    def test_torchscript(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        check_torchscript(model, self.structure(), TOLERANCES[dtype]["script"], device)

    def test_graph_inputs(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        if not getattr(model, "required_inputs", []) and len(getattr(model, "heads", [])) <= 1:
            pytest.skip("the model takes no charge, spin or head inputs")
        check_graph_inputs(model, rattled_crystal(), device)

    def test_config_roundtrip(self, model: nn.Module, dtype: torch.dtype, device: str) -> None:
        import json

        from mlip.models import build_model

        config = json.loads(json.dumps(model.config))
        rebuilt = build_model(**config).to(device).eval()
        rebuilt.load_state_dict(model.state_dict())
        graph = _graph(self.structure(), float(model.cutoff), device, model)
        with torch.no_grad():  # eval mode: no training-time randomness (e.g. augmentation)
            a = model.eval()(graph.as_dict())[keys.ENERGY]
            b = rebuilt(graph.as_dict())[keys.ENERGY]
        assert torch.equal(a, b), (a, b)
        assert rebuilt.model_dtype == model.model_dtype == dtype
        assert a.dtype == torch.float64


def _tol(dtype: torch.dtype) -> float:
    return TOLERANCES[dtype]["consistency"]
