"""`AtomicGraph`: one structure or a batch of structures, with their neighbour list.

Every field is described once in :data:`mlip.keys.FIELDS`; batching, splitting, moving and
validation read that table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlip import keys
from mlip.neighbors import neighbor_list

if TYPE_CHECKING:
    import ase

__all__ = ["AtomicGraph"]


def _scope_size(name: str, value: torch.Tensor) -> int:
    """Length of the scope dimension of a field (E for edge_index is dim 1)."""
    return int(value.shape[1] if name == keys.EDGE_INDEX else value.shape[0])


@dataclass(frozen=True)
class AtomicGraph:
    """A batch of B structures with N atoms and E directed edges in total.

    Attributes:
        positions: (N, 3) float64, Å.
        atomic_numbers: (N,) int64.
        cell: (B, 3, 3) float64, Å; rows are lattice vectors (ASE convention). Zeros for a
            molecule without a cell.
        pbc: (B, 3) bool.
        edge_index: (2, E) int64; row 0 the receiving atom i, row 1 the neighbour j (global
            atom indices within the batch).
        cell_shifts: (E, 3) int64 image shifts; ``r_ij = pos[j] - pos[i] + shift @ cell[b]``.
        batch: (N,) int64, index of the structure each atom belongs to.
        num_atoms: (B,) int64.
        energy: (B,) float64 eV, optional label.
        forces: (N, 3) float64 eV/Å, optional label.
        stress: (B, 3, 3) float64 eV/Å³ with ASE's sign (positive = tensile), optional label.
        charge: (B,) float64 total charge in e, optional (OMol25).
        spin: (B,) float64 spin multiplicity, optional (OMol25).
        head: (B,) int64 level-of-theory head index, optional model input (absent means 0).

    ``charge`` and ``spin`` are labels of the data and, for a model built with
    ``charge_spin=True``, also required model inputs (integers stored as float64).
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    cell_shifts: torch.Tensor
    batch: torch.Tensor
    num_atoms: torch.Tensor
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    charge: torch.Tensor | None = None
    spin: torch.Tensor | None = None
    head: torch.Tensor | None = None

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        if names != set(keys.FIELDS):
            raise RuntimeError("AtomicGraph fields and mlip.keys.FIELDS disagree")
        sizes = {
            "node": int(self.positions.shape[0]) if self.positions.ndim else -1,
            "graph": int(self.num_atoms.shape[0]) if self.num_atoms.ndim else -1,
            "edge": int(self.edge_index.shape[1]) if self.edge_index.ndim == 2 else -1,
        }
        for name, spec in keys.FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"AtomicGraph.{name} must be a torch.Tensor, got {type(value)}")
            if value.dtype != spec.dtype:
                raise TypeError(f"AtomicGraph.{name} must be {spec.dtype}, got {value.dtype}")
            if name == keys.EDGE_INDEX:
                expected = (2, sizes["edge"])
            else:
                expected = (sizes[spec.scope], *spec.trailing_shape)
            if tuple(value.shape) != expected:
                raise ValueError(
                    f"AtomicGraph.{name} has shape {tuple(value.shape)}, expected {expected}"
                )
        if int(self.num_atoms.sum()) != sizes["node"]:
            raise ValueError(
                f"num_atoms sums to {int(self.num_atoms.sum())} but there are "
                f"{sizes['node']} positions"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        positions: Any,
        atomic_numbers: Any,
        cutoff: float,
        cell: Any | None = None,
        pbc: Any = False,
        **labels: Any,
    ) -> AtomicGraph:
        """One structure from plain arrays, with its neighbour list at ``cutoff`` Å.

        Args:
            positions: (n_atoms, 3) Å.
            atomic_numbers: (n_atoms,).
            cutoff: neighbour-list radius in Å.
            cell: (3, 3) Å (rows are lattice vectors) or None for a molecule.
            pbc: (3,) bool or one bool.
            **labels: optional ``energy`` (eV), ``forces`` (n_atoms, 3) eV/Å, ``stress``
                (3, 3) eV/Å³ ASE sign, ``charge``, ``spin``, and the optional input ``head``.
        """
        positions_t = torch.as_tensor(np.asarray(positions, dtype=np.float64)).reshape(-1, 3)
        numbers_t = torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64)).reshape(-1)
        if numbers_t.shape[0] != positions_t.shape[0]:
            raise ValueError(
                f"{numbers_t.shape[0]} atomic numbers but {positions_t.shape[0]} positions"
            )
        cell_np = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        pbc_np = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        edge_index, cell_shifts = neighbor_list(positions_t, cell_np, pbc_np, cutoff)
        graph_labels: dict[str, torch.Tensor] = {}
        known = keys.LABEL_FIELDS + keys.OPTIONAL_INPUT_FIELDS
        for name, value in labels.items():
            if name not in known:
                raise ValueError(f"unknown label {name!r}; known: {list(known)}")
            if value is None:
                continue
            spec = keys.FIELDS[name]
            numpy_dtype = np.int64 if spec.dtype == torch.int64 else np.float64
            tensor = torch.as_tensor(np.asarray(value, dtype=numpy_dtype))
            if spec.scope == "graph":
                tensor = tensor.reshape(1, *spec.trailing_shape)
            graph_labels[name] = tensor
        n_atoms = positions_t.shape[0]
        return cls(
            positions=positions_t,
            atomic_numbers=numbers_t,
            cell=torch.tensor(cell_np, dtype=torch.float64).reshape(1, 3, 3),
            pbc=torch.as_tensor(pbc_np).reshape(1, 3),
            edge_index=edge_index,
            cell_shifts=cell_shifts,
            batch=torch.zeros(n_atoms, dtype=torch.int64),
            num_atoms=torch.tensor([n_atoms], dtype=torch.int64),
            **graph_labels,
        )

    @classmethod
    def from_atoms(cls, atoms: ase.Atoms, cutoff: float, read_labels: bool = True) -> AtomicGraph:
        """One structure from ASE ``Atoms``; labels come from ``atoms.calc`` when present.

        ``charge`` and ``spin`` are read from ``atoms.info`` when present (OMol25 convention).
        """
        labels: dict[str, Any] = {}
        if read_labels:
            results = getattr(atoms.calc, "results", None) or {}
            if "energy" in results:
                labels[keys.ENERGY] = results["energy"]
            if "forces" in results:
                labels[keys.FORCES] = results["forces"]
            if "stress" in results:
                labels[keys.STRESS] = _stress_to_3x3(results["stress"])
            for name in (keys.CHARGE, keys.SPIN):
                if name in atoms.info and atoms.info[name] is not None:
                    labels[name] = float(atoms.info[name])
        cell = atoms.cell.array if atoms.cell.rank > 0 else None
        return cls.from_arrays(
            atoms.positions, atoms.numbers, cutoff, cell=cell, pbc=atoms.pbc, **labels
        )

    @classmethod
    def from_pymatgen(cls, structure: Any, cutoff: float) -> AtomicGraph:
        """One structure from a pymatgen ``Structure`` (periodic) or ``Molecule`` (no cell)."""
        from pymatgen.core import Molecule, Structure

        numbers = [site.specie.Z for site in structure]
        if isinstance(structure, Structure):
            pbc = getattr(structure.lattice, "pbc", (True, True, True))
            return cls.from_arrays(
                structure.cart_coords, numbers, cutoff, cell=structure.lattice.matrix, pbc=pbc
            )
        if isinstance(structure, Molecule):
            return cls.from_arrays(structure.cart_coords, numbers, cutoff)
        raise TypeError(f"expected a pymatgen Structure or Molecule, got {type(structure)}")

    # ------------------------------------------------------------------ batching
    @property
    def num_graphs(self) -> int:
        """B, the number of structures."""
        return int(self.num_atoms.shape[0])

    @property
    def num_edges(self) -> int:
        """E, the number of directed edges."""
        return int(self.edge_index.shape[1])

    @staticmethod
    def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
        """Concatenate graphs into one batch (atom indices in ``edge_index`` are offset)."""
        if len(graphs) == 0:
            raise ValueError("cannot batch an empty list of graphs")
        fields: dict[str, torch.Tensor | None] = {}
        atom_offsets = np.cumsum([0] + [g.positions.shape[0] for g in graphs[:-1]])
        graph_offsets = np.cumsum([0] + [g.num_graphs for g in graphs[:-1]])
        for name in keys.FIELDS:
            values = [getattr(g, name) for g in graphs]
            present = [v is not None for v in values]
            if not any(present):
                fields[name] = None
                continue
            if not all(present) and keys.FIELDS[name].optional_input:
                spec = keys.FIELDS[name]
                like = values[present.index(True)]
                values = [
                    v
                    if v is not None
                    else like.new_zeros((_scope_size_of(g, spec.scope), *spec.trailing_shape))
                    for v, g in zip(values, graphs)
                ]
            elif not all(present):
                missing = present.index(False)
                raise ValueError(f"graph {missing} has no {name!r} but others do")
            if name == keys.EDGE_INDEX:
                values = [v + int(o) for v, o in zip(values, atom_offsets)]
                fields[name] = torch.cat(values, dim=1)
            elif name == keys.BATCH:
                fields[name] = torch.cat([v + int(o) for v, o in zip(values, graph_offsets)])
            else:
                fields[name] = torch.cat(values, dim=0)
        return AtomicGraph(**fields)

    def split(self) -> list[AtomicGraph]:
        """Undo :meth:`batch_graphs`: one graph per structure."""
        n_atoms = self.num_atoms.tolist()
        atom_starts = np.cumsum([0] + n_atoms)
        edge_graph = self.batch[self.edge_index[0]] if self.num_edges else self.batch[:0]
        edge_counts = torch.bincount(edge_graph, minlength=self.num_graphs).tolist()
        order = torch.argsort(edge_graph, stable=True)
        edge_starts = np.cumsum([0] + edge_counts)
        graphs = []
        for b in range(self.num_graphs):
            a0, a1 = int(atom_starts[b]), int(atom_starts[b + 1])
            edges = order[int(edge_starts[b]) : int(edge_starts[b + 1])]
            fields: dict[str, torch.Tensor | None] = {}
            for name, spec in keys.FIELDS.items():
                value = getattr(self, name)
                if value is None:
                    fields[name] = None
                elif name == keys.EDGE_INDEX:
                    fields[name] = value[:, edges] - a0
                elif name == keys.BATCH:
                    fields[name] = torch.zeros(a1 - a0, dtype=torch.int64, device=value.device)
                elif spec.scope == "node":
                    fields[name] = value[a0:a1]
                elif spec.scope == "edge":
                    fields[name] = value[edges]
                else:
                    fields[name] = value[b : b + 1]
            graphs.append(AtomicGraph(**fields))
        return graphs

    # ------------------------------------------------------------------ conversion
    def to(self, device: torch.device | str, non_blocking: bool = False) -> AtomicGraph:
        """A copy with every tensor on ``device`` (dtypes unchanged); ``non_blocking`` copies
        from pinned memory overlap with GPU work."""
        return dataclasses.replace(
            self,
            **{
                name: (
                    None
                    if getattr(self, name) is None
                    else getattr(self, name).to(device, non_blocking=non_blocking)
                )
                for name in keys.FIELDS
            },
        )

    def pin_memory(self) -> AtomicGraph:
        """A copy in page-locked host memory (DataLoader ``pin_memory=True`` calls this)."""
        return dataclasses.replace(
            self,
            **{
                name: None if getattr(self, name) is None else getattr(self, name).pin_memory()
                for name in keys.FIELDS
            },
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The TorchScript-friendly form models take: present fields only."""
        return {
            name: getattr(self, name) for name in keys.FIELDS if getattr(self, name) is not None
        }

    def with_labels(self, **labels: torch.Tensor | None) -> AtomicGraph:
        """A copy with the given label fields (or optional inputs such as ``head``) replaced."""
        unknown = set(labels) - set(keys.LABEL_FIELDS) - set(keys.OPTIONAL_INPUT_FIELDS)
        if unknown:
            raise ValueError(f"not label fields: {sorted(unknown)}")
        return dataclasses.replace(self, **labels)

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) Å: ``pos[j] - pos[i] + shift @ cell`` for every edge."""
        sender, receiver = self.edge_index[1], self.edge_index[0]
        cells = self.cell[self.batch[receiver]]
        shifts = torch.einsum("ek,ekl->el", self.cell_shifts.to(cells.dtype), cells)
        return self.positions[sender] - self.positions[receiver] + shifts


class _BatchOrField:
    """``AtomicGraph.batch([...])`` batches graphs; ``graph.batch`` is the (N,) field.

    A non-data descriptor: on an instance the field stored in ``__dict__`` wins, on the class
    the attribute is :meth:`AtomicGraph.batch_graphs`.
    """

    def __get__(self, instance: AtomicGraph | None, owner: type) -> Any:
        if instance is None:
            return owner.batch_graphs
        return instance.__dict__[keys.BATCH]


AtomicGraph.batch = _BatchOrField()  # type: ignore[assignment]


def _scope_size_of(graph: AtomicGraph, scope: str) -> int:
    """Length of a ``"node"``, ``"edge"`` or ``"graph"`` dimension of ``graph``."""
    if scope == "node":
        return int(graph.positions.shape[0])
    if scope == "edge":
        return graph.num_edges
    return graph.num_graphs


def _stress_to_3x3(stress: Any) -> np.ndarray:
    """ASE stress (Voigt 6 in xx, yy, zz, yz, xz, xy order, or 3x3) as a (3, 3) array."""
    array = np.asarray(stress, dtype=np.float64)
    if array.shape == (3, 3):
        return array
    if array.shape == (6,):
        from ase.stress import voigt_6_to_full_3x3_stress

        return voigt_6_to_full_3x3_stress(array)
    raise ValueError(f"stress must have shape (6,) or (3, 3), got {array.shape}")
