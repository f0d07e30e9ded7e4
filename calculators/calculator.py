"""ASE calculator for exported (or in-memory) mlip models."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from mlip import AtomicGraph, keys
from mlip.allocator import keep_freed_memory
from mlip.chunked import ChunkedEvaluator, num_hops
from mlip.electronic import charge_and_spin
from mlip.export import build_metadata, load
from mlip.neighbors import check_min_distance, neighbor_list

__all__ = ["MLIPCalculator"]


class _SkinNeighborList:
    """Verlet-skin neighbour list: built at ``cutoff + skin``, reused while valid.

    The list is reused while the cell, pbc and atomic numbers are unchanged and no atom moved
    more than half the skin since it was built; each call returns exactly the pairs within the
    cutoff (the skin pairs are filtered by distance), so reuse never changes results.
    """

    def __init__(self, cutoff: float, skin: float) -> None:
        self.cutoff = cutoff
        self.skin = skin
        self.rebuilds = 0
        self._reference: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pairs = torch.zeros((2, 0), dtype=torch.int64)
        self._shifts = torch.zeros((0, 3), dtype=torch.int64)

    def _valid(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers) -> bool:
        if self._reference is None or self.skin <= 0:
            return False
        old_positions, old_cell, old_pbc, old_numbers = self._reference
        if old_positions.shape != positions.shape or not np.array_equal(old_numbers, numbers):
            return False
        if not (np.array_equal(old_cell, cell) and np.array_equal(old_pbc, pbc)):
            return False
        displacement = np.einsum("ij,ij->i", positions - old_positions, positions - old_positions)
        return bool(displacement.max(initial=0.0) < (0.5 * self.skin) ** 2)

    def __call__(
        self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges within the cutoff: ``edge_index`` (2, E) and ``cell_shifts`` (E, 3), int64."""
        if not self._valid(positions, cell, pbc, numbers):
            self._pairs, self._shifts = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._reference = (positions.copy(), cell.copy(), pbc.copy(), numbers.copy())
            self.rebuilds += 1
        pairs, shifts = self._pairs, self._shifts
        if self.skin <= 0:
            return pairs, shifts
        # In torch, not numpy: a large numpy matmul wakes OpenBLAS's own threads, which then
        # spin and take the cores from torch's threads during the model call (+40 % step time
        # at 1k atoms on 2 cores).
        points = torch.from_numpy(positions)
        vectors = (
            points.index_select(0, pairs[1])
            - points.index_select(0, pairs[0])
            + shifts.to(torch.float64) @ torch.from_numpy(cell)
        )
        squared_distances = (vectors * vectors).sum(dim=1)
        check_min_distance(pairs, squared_distances, shifts)  # atoms may have moved closer
        keep = squared_distances <= self.cutoff**2
        return pairs[:, keep], shifts[keep]


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip potential.

    Args:
        model: a path to a file written by :func:`mlip.export.save`, ``None`` for the built-in
            demo model (:func:`calculators.defaults.default_model_path`, EMT Cu-Au), a loaded
            ``(module, metadata)`` pair from :func:`mlip.export.load`, or an in-memory energy
            model from :func:`mlip.models.build_model` (scripted on the fly).
        device: torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: None to run in the model's own dtype, or ``torch.float32``/``torch.float64``
            (must match the model; a mismatch is an error rather than a silent cast).
        skin: Verlet skin in Å for neighbour-list reuse (0 disables reuse).
        head: level-of-theory head name for a model with heads (None: its first head).

    A model that needs the total charge and spin multiplicity (``metadata["inputs"]``) reads
    them from ``atoms.info["charge"]`` and ``atoms.info["spin"]`` (defaults 0 and 1, with a
    warning); a multiplicity impossible for the electron count is an error.
        memory_budget: bytes one energy + forces call may use; a structure that would need
            more is evaluated exactly in chunks of atoms, layer by layer for GMEP, else with
            their receptive-field halo (:mod:`mlip.chunked`). None: 60 % of the device's free
            memory at each call.
        chunk_atoms: always evaluate in chunks of this many atoms (overrides the budget).

    On the CPU the calculator calls :func:`mlip.allocator.keep_freed_memory` (process-wide:
    glibc keeps freed tensor memory for the next step instead of unmapping it; 2-5x faster from
    1k atoms up; ``MLIP_KEEP_FREED_MEMORY=0`` turns it off).

    Results (float64): ``energy`` and ``free_energy`` (eV), ``forces`` (N, 3) eV/Å,
    ``energies`` (N,) eV per atom, and ``stress`` (Voigt 6, eV/Å³, ASE sign) for cells periodic
    in all three directions.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str
        | os.PathLike
        | torch.nn.Module
        | tuple[torch.nn.Module, dict[str, Any]]
        | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        skin: float = 0.5,
        head: str | None = None,
        memory_budget: float | None = None,
        chunk_atoms: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()
        if model is None:
            from calculators.defaults import default_model_path

            model = default_model_path()
        if isinstance(model, (str, os.PathLike)):
            module, metadata = load(model, device=self.device)
        elif isinstance(model, tuple):
            module, metadata = model
        elif isinstance(model, torch.nn.Module):
            from mlip.export import script

            metadata = build_metadata(model)
            module = script(copy.deepcopy(model))  # leave the caller's model trainable
        else:
            raise TypeError(f"model must be a path or a torch module, got {type(model)}")
        # inference only: without parameter gradients autograd saves ~20 % less for the
        # force backward pass (nothing is kept for dE/dweights)
        self.model = module.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.metadata = metadata
        self.cutoff = float(metadata["cutoff"])
        self.atomic_numbers = [int(z) for z in metadata["atomic_numbers"]]
        model_dtype = getattr(torch, metadata["model_dtype"])
        if dtype is not None and dtype != model_dtype:
            raise ValueError(
                f"this model runs in {metadata['model_dtype']}; dtype={dtype} was requested "
                "(export the model in that dtype instead)"
            )
        self.dtype = model_dtype
        self._neighbors = _SkinNeighborList(self.cutoff, skin)
        self.inputs = [str(name) for name in metadata.get("inputs", [])]
        # charges and multiplicities of the training frames: others get an untrained embedding
        self.trained_states: dict[str, list[int]] = (metadata.get("info") or {}).get(
            "trained_states"
        ) or {}
        self._warned_states: set[tuple[str, int]] = set()
        self.heads = [str(name) for name in metadata.get("heads", [])]
        if head is not None and head not in self.heads:
            raise ValueError(
                f"unknown head {head!r}; this model's heads are {self.heads}"
                if self.heads
                else f"head={head!r} given, but this model has no heads"
            )
        self.head = head if head is not None else (self.heads[0] if self.heads else None)
        self.chunked = (  # a non-local model (receptive_field null) is always evaluated whole
            None
            if "receptive_field" in metadata and metadata["receptive_field"] is None
            else ChunkedEvaluator(self.model, num_hops(metadata), memory_budget, chunk_atoms)
        )

    # ------------------------------------------------------------------ helpers
    @property
    def species(self) -> list[str]:
        """Element symbols the model knows."""
        return [chemical_symbols[z] for z in self.atomic_numbers]

    def _check_elements(self, atoms: Atoms) -> None:
        if len(atoms) == 0:  # the model's reshapes would fail with a TorchScript error
            raise ValueError("the structure has no atoms")
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.atomic_numbers))
        if unknown:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            raise ValueError(
                f"element(s) {names} not known to this model; it knows {', '.join(self.species)}"
            )

    def _state_inputs(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        """Charge, spin and head fields (B = 1) for the inputs this model requires."""
        fields: dict[str, torch.Tensor] = {}
        if keys.CHARGE in self.inputs or keys.SPIN in self.inputs:
            periodic = bool(atoms.pbc.all())
            charge, spin = charge_and_spin(atoms.numbers, atoms.info, periodic=periodic)
            self._warn_untrained_state(charge, spin)
            fields[keys.CHARGE] = torch.tensor([float(charge)], dtype=torch.float64)
            fields[keys.SPIN] = torch.tensor([float(spin)], dtype=torch.float64)
        if self.head is not None:
            fields[keys.HEAD] = torch.tensor([self.heads.index(self.head)], dtype=torch.int64)
        return fields

    def _warn_untrained_state(self, charge: int, spin: int) -> None:
        """Warn once per value when a total charge or multiplicity is none of the training
        frames' (metadata info ``trained_states``): its embedding row was never trained."""
        for name, value in (("charge", charge), ("spin", spin)):
            seen = self.trained_states.get(name)
            if seen is None or value in seen or (name, value) in self._warned_states:
                continue
            self._warned_states.add((name, value))
            what = "total charge" if name == "charge" else "spin multiplicity"
            warnings.warn(
                f"{what} {value} was never seen in training (seen: "
                f"{', '.join(str(v) for v in seen)}); the model's {name} embedding for it is "
                "untrained and its predictions are not to be trusted",
                stacklevel=4,
            )

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's checks, plus a change of ``info["charge"]``/``["spin"]`` for models using them."""
        changes = super().check_state(atoms, tol)
        if self.inputs and self.atoms is not None and "info" not in changes:
            before = [self.atoms.info.get(k) for k in (keys.CHARGE, keys.SPIN)]
            if before != [atoms.info.get(k) for k in (keys.CHARGE, keys.SPIN)]:
                changes.append("info")
        return changes

    @staticmethod
    def _fully_periodic(atoms: Atoms) -> bool:
        return bool(np.all(atoms.pbc)) and atoms.cell.rank == 3

    def _run(self, graph: AtomicGraph, stress: bool) -> dict[str, torch.Tensor]:
        self.model.compute_stress = stress
        outputs = self.model(graph.to(self.device).as_dict())
        return {name: value.detach().to("cpu", torch.float64) for name, value in outputs.items()}

    # ------------------------------------------------------------------ ASE interface
    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self._check_elements(atoms)
        periodic = self._fully_periodic(atoms)
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress is only defined for cells periodic in all three directions "
                f"(this structure has pbc={atoms.pbc.tolist()})"
            )
        positions = np.ascontiguousarray(atoms.positions, dtype=np.float64)
        cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        edge_index, cell_shifts = self._neighbors(positions, cell, pbc, atoms.numbers)
        n_atoms = len(atoms)
        graph = AtomicGraph(
            positions=torch.from_numpy(positions),
            atomic_numbers=torch.from_numpy(atoms.numbers.astype(np.int64)),
            cell=torch.from_numpy(cell).reshape(1, 3, 3),
            pbc=torch.from_numpy(pbc.copy()).reshape(1, 3),
            edge_index=edge_index,
            cell_shifts=cell_shifts,
            batch=torch.zeros(n_atoms, dtype=torch.int64),
            num_atoms=torch.tensor([n_atoms]),
            **self._state_inputs(atoms),
        )
        if self.chunked is not None and self.chunked.needs_chunks(graph, self.device):
            outputs = self.chunked(graph, self.device, stress=periodic)
        else:
            outputs = self._run(graph, stress=periodic)
        self.results = self._results_of(outputs, 0, slice(0, n_atoms), periodic)

    @staticmethod
    def _results_of(
        outputs: dict[str, torch.Tensor], index: int, atoms_slice: slice, periodic: bool
    ) -> dict[str, Any]:
        energy = float(outputs[keys.ENERGY][index])
        results: dict[str, Any] = {
            "energy": energy,
            "free_energy": energy,
            "forces": outputs[keys.FORCES][atoms_slice].numpy().copy(),
            "energies": outputs[keys.ATOMIC_ENERGIES][atoms_slice].numpy().copy(),
        }
        if periodic and keys.STRESS in outputs:
            results["stress"] = full_3x3_to_voigt_6_stress(outputs[keys.STRESS][index].numpy())
        return results

    def calculate_batch(
        self, structures: Sequence[Atoms], batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Evaluate many structures, ``batch_size`` at a time, on the calculator's device.

        Returns one dict per structure with ``energy``, ``free_energy``, ``forces``,
        ``energies`` and, for 3-D periodic structures, ``stress`` (Voigt 6, eV/Å³).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        states = []
        for index, atoms in enumerate(structures):
            try:
                self._check_elements(atoms)
                states.append(self._state_inputs(atoms))
            except ValueError as exc:
                raise ValueError(f"structure {index}: {exc}") from None
        periodic = [self._fully_periodic(atoms) for atoms in structures]
        results: list[dict[str, Any] | None] = [None] * len(structures)
        # periodic and non-periodic structures go in separate batches: stress only for the first
        for want_periodic in (True, False):
            indices = [i for i, p in enumerate(periodic) if p == want_periodic]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                graphs = []
                for i in chunk:
                    try:
                        graph = AtomicGraph.from_atoms(structures[i], self.cutoff, False)
                    except ValueError as exc:  # e.g. overlapping atoms: say which structure
                        raise ValueError(f"structure {i}: {exc}") from None
                    graphs.append(graph.with_labels(**states[i]))
                outputs = self._run(AtomicGraph.batch(graphs), stress=want_periodic)
                first_atom = 0
                for position, i in enumerate(chunk):
                    atoms_slice = slice(first_atom, first_atom + len(structures[i]))
                    results[i] = self._results_of(outputs, position, atoms_slice, want_periodic)
                    first_atom += len(structures[i])
        return results  # type: ignore[return-value]
