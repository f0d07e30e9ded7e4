"""What every energy model shares: species mapping, statistics buffers, edge vectors, the sum.

:class:`AtomicEnergyModel` holds the parts of the model contract (STYLE.md §3) that do not
depend on the architecture, so each model module only writes its per-atom energy ``e_i``:

* ``species_index`` maps atomic numbers to model indices; unknown elements raise, naming them;
* statistics buffers ``avg_num_neighbors`` (model dtype), ``reference_energies`` (S,),
  ``scale`` and ``shift`` (float64, eV) with :meth:`set_statistics`; with ``heads`` (levels of
  theory) they are per head, (H,), (H, S), (H,) and (H,), selected by the graph's ``head``
  input (a head's neighbour count normalises its structures' messages:
  :meth:`inverse_neighbors`);
* :meth:`edge_vectors` computes ``r_ij = x_j - x_i + shift_ij @ cell`` inside the model, so
  autograd reaches positions and strain;
* :meth:`total_energy` returns ``E_i = E0(Z_i) + scale * e_i + shift`` and their per-structure
  sums, in float64.

Subclasses call ``super().__init__(...)``, build their layers, then :meth:`finish_init`, which
casts parameters to the model dtype and adds the float64 statistics buffers.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from ase.data import chemical_symbols
from torch import Tensor, nn

from mlip import keys

__all__ = ["DTYPES", "AtomicEnergyModel", "build_from_preset", "resolve_dtype", "select_hyper"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"float32"``/``"float64"`` or a torch dtype -> torch dtype (float32 or float64 only)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"model dtype must be float32 or float64, got {dtype}")
    return dtype


def select_hyper(
    model: str,
    known: set[str],
    presets: dict[str, dict[str, Any]],
    preset: str | None,
    cutoff: float,
    hyper: dict[str, Any],
) -> dict[str, Any]:
    """Preset values overridden by ``hyper``; unknown names and bad cutoffs raise.

    Args:
        model: model name for messages.
        known: accepted hyperparameter names.
        presets: ``name -> values``.
        preset: a key of ``presets`` or None (dataclass defaults).
        cutoff: Å, checked to be finite and > 0.
        hyper: user overrides.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown {model} preset {preset!r}; expected one of {list(presets)}")
        values.update(presets[preset])
    unknown = set(hyper) - known
    if unknown:
        raise TypeError(
            f"unknown {model} hyperparameters {sorted(unknown)}; known: {sorted(known)}"
        )
    values.update(hyper)
    if not (math.isfinite(float(cutoff)) and float(cutoff) > 0):
        raise ValueError(f"cutoff must be a finite number > 0 Å, got {cutoff}")
    return values


def build_from_preset(
    model_class: type,
    config_class: type,
    presets: dict[str, dict[str, Any]],
    name: str,
    species: list[int],
    cutoff: float,
    preset: str | None,
    dtype: torch.dtype | str,
    hyper: dict[str, Any],
) -> Any:
    """``model_class(config_class(species, cutoff, **preset values | hyper), dtype, preset)``.

    The one body of every ``build_<model>`` function: unknown hyperparameters and bad cutoffs
    raise (:func:`select_hyper`), ``dtype`` may be a name (:func:`resolve_dtype`).

    Args:
        model_class: the :class:`AtomicEnergyModel` subclass.
        config_class: its config dataclass (fields ``species``, ``cutoff`` and the rest).
        presets: ``preset name -> values``.
        name: model name for messages.
        species: atomic numbers.
        cutoff: Å.
        preset: a key of ``presets`` or None (dataclass defaults).
        dtype: torch dtype or ``"float32"``/``"float64"``.
        hyper: overrides of the preset.
    """
    known = {f.name for f in fields(config_class)} - {"species", "cutoff"}
    values = select_hyper(name, known, presets, preset, cutoff, hyper)
    config = config_class(species=[int(z) for z in species], cutoff=float(cutoff), **values)
    return model_class(config, dtype=resolve_dtype(dtype), preset=preset)


class AtomicEnergyModel(nn.Module):
    """Base class of the energy models: ``E = sum_i [E0(Z_i) + scale * e_i + shift]``.

    Args:
        species: atomic numbers in model order (distinct, non-empty).
        cutoff: Å.
        dtype: compute dtype (float32 or float64); outputs are float64.
        config: JSON-serialisable dict recorded as :attr:`config` (``name``, ``preset``,
            hyperparameters); ``species``, ``cutoff`` and ``dtype`` are filled in here.
        avg_num_neighbors: initial value of the normalisation buffer.
        heads: names of the levels of theory (None: one unnamed head); each has its own E0,
            scale and shift, selected by the ``head`` input (an index into this list).

    Attributes:
        cutoff: Å.
        species: atomic numbers in model order.
        model_dtype: compute dtype.
        config: ``mlip.models.build_model(**model.config)`` rebuilds the architecture.
        heads: head names (empty for a model without ``heads``).
        required_inputs: graph fields beyond the geometry the model needs (a subclass sets
            ``["charge", "spin"]`` when it embeds them).
        local: True when an atom's energy depends only on atoms within ``num_layers`` hops of
            the neighbour graph (chunked evaluation and LAMMPS domains rely on it); a model
            with a global frame sets False.
    """

    local: bool = True

    def __init__(
        self,
        species: list[int],
        cutoff: float,
        dtype: torch.dtype,
        config: dict[str, Any],
        avg_num_neighbors: float = 30.0,
        heads: list[str] | None = None,
    ) -> None:
        super().__init__()
        dtype = resolve_dtype(dtype)
        if len(set(species)) != len(species) or not species:
            raise ValueError(f"species must be a non-empty list of distinct Z, got {species}")
        for z in species:
            if not 0 < int(z) < len(chemical_symbols):
                raise ValueError(f"invalid atomic number {z}")
        self.cutoff = float(cutoff)
        self.species: list[int] = [int(z) for z in species]
        self.model_dtype = dtype
        self.config: dict[str, Any] = {
            **config,
            "dtype": "float32" if dtype == torch.float32 else "float64",
            "species": list(self.species),
            "cutoff": self.cutoff,
        }
        self.symbols: list[str] = list(chemical_symbols)
        self.species_text = str(self.species)
        index = torch.full((len(chemical_symbols),), -1, dtype=torch.int64)
        for i, z in enumerate(self.species):
            index[z] = i
        self.register_buffer("species_index", index, persistent=False)
        if heads is not None:
            if not heads or len(set(heads)) != len(heads):
                raise ValueError(f"heads must be a non-empty list of distinct names: {heads}")
            if not all(isinstance(h, str) and h for h in heads):
                raise ValueError(f"head names must be non-empty strings: {heads}")
        self.heads: list[str] = list(heads) if heads is not None else []
        self.heads_text = str(self.heads)
        self.num_heads: int = len(self.heads)
        self.multi_head: bool = heads is not None
        self.required_inputs: list[str] = []
        neighbors = torch.full((len(self.heads),) if self.multi_head else (), avg_num_neighbors)
        self.register_buffer("avg_num_neighbors", neighbors.to(torch.float64))  # then model dtype

    def finish_init(self) -> None:
        """Cast parameters and buffers to the model dtype; add the float64 statistics."""
        self.to(self.model_dtype)
        head_shape = (len(self.heads),) if self.multi_head else ()
        self.register_buffer(
            "reference_energies",
            torch.zeros((*head_shape, len(self.species)), dtype=torch.float64),
        )
        self.register_buffer("scale", torch.ones(head_shape, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(head_shape, dtype=torch.float64))

    # ------------------------------------------------------------------ statistics
    def set_statistics(
        self,
        *,
        avg_num_neighbors: float | None = None,
        reference_energies: dict[int, float] | None = None,
        scale: float | None = None,
        shift: float | None = None,
        head: str | int | None = None,
    ) -> None:
        """Set normalisation buffers.

        Args:
            avg_num_neighbors: mean neighbour count within the cutoff (per head with ``head``:
                molecules and crystals differ tenfold).
            reference_energies: eV per atom of each element, ``{Z: E0}``; elements not given
                keep their current value.
            scale: eV, multiplies the learned per-atom energy.
            shift: eV per atom.
            head: the head (name or index) whose neighbour count, reference energies, scale and
                shift are set; None sets every head. Only for a model with ``heads``.
        """
        rows = self._head_rows(head)
        with torch.no_grad():
            if avg_num_neighbors is not None:
                if not avg_num_neighbors > 0:
                    raise ValueError(f"avg_num_neighbors must be > 0, got {avg_num_neighbors}")
                self.avg_num_neighbors[rows] = float(avg_num_neighbors)
            if reference_energies is not None:
                for z, energy in reference_energies.items():
                    if int(z) not in self.species:
                        raise ValueError(
                            f"element {chemical_symbols[int(z)]} (Z={int(z)}) is not in this "
                            f"model's species {self.species}"
                        )
                    self.reference_energies[..., self.species.index(int(z))][rows] = float(energy)
            if scale is not None:
                self.scale[rows] = float(scale)
            if shift is not None:
                self.shift[rows] = float(shift)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Accept a state dict of a model with heads written before the neighbour count was
        per head (one scalar): every head gets it."""
        key = prefix + "avg_num_neighbors"
        value = state_dict.get(key)
        if isinstance(value, Tensor) and value.dim() == 0 and self.avg_num_neighbors.dim() == 1:
            state_dict[key] = value.expand_as(self.avg_num_neighbors).clone()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def inverse_neighbors(self, atom_heads: Tensor) -> Tensor:
        """``1 / avg_num_neighbors``: a scalar, or (N, 1) per atom (its structure's head's)
        for a model with heads; ``atom_heads`` (N,) int64 is only read then."""
        inverse = 1.0 / self.avg_num_neighbors
        if self.multi_head:
            return inverse.index_select(0, atom_heads).unsqueeze(1)
        return inverse

    def _head_rows(self, head: str | int | None) -> Any:
        """Index into the head dimension of the statistics buffers for ``head``."""
        if head is None:
            return ...
        if not self.multi_head:
            raise ValueError(f"this model has no heads; got head={head!r}")
        if isinstance(head, str):
            if head not in self.heads:
                raise ValueError(f"unknown head {head!r}; this model's heads are {self.heads}")
            return self.heads.index(head)
        if not 0 <= int(head) < len(self.heads):
            raise ValueError(f"head index {head} out of range; heads are {self.heads}")
        return int(head)

    # ------------------------------------------------------------------ forward helpers
    def _species(self, atomic_numbers: Tensor) -> Tensor:
        """(N,) atomic numbers -> (N,) model species indices; unknown elements raise."""
        clamped = torch.clamp(atomic_numbers, 0, len(self.symbols) - 1)
        species = self.species_index[clamped]
        bad = (species < 0) | (atomic_numbers != clamped)
        if bool(bad.any()):
            z = int(atomic_numbers[bad][0])
            name = self.symbols[z] if 0 <= z < len(self.symbols) else "?"
            raise ValueError(
                "element "
                + name
                + " (Z="
                + str(z)
                + ") is not in this model's species "
                + self.species_text
            )
        return species

    def _heads(self, data: dict[str, Tensor], n_graphs: int) -> Tensor:
        """(B,) int64 head index of each structure (0 when the ``head`` field is absent)."""
        if keys.HEAD not in data:
            return torch.zeros(n_graphs, dtype=torch.int64, device=data[keys.BATCH].device)
        heads = data[keys.HEAD]
        n_heads = max(self.num_heads, 1)
        bad = (heads < 0) | (heads >= n_heads)
        if bool(bad.any()):
            raise ValueError(
                "head index "
                + str(int(heads[bad][0]))
                + " out of range; this model's heads are "
                + self.heads_text
            )
        return heads

    def edge_vectors(self, data: dict[str, Tensor]) -> Tensor:
        """(E, 3) Å in the model dtype: ``r_ij = x_j - x_i + cell_shifts_ij @ cell``.

        Row e belongs to edge ``(i, j) = (edge_index[0, e], edge_index[1, e])``.
        """
        positions = data[keys.POSITIONS]
        cell = data[keys.CELL]
        edge_index = data[keys.EDGE_INDEX]
        receiver = edge_index[0]
        shifts = torch.einsum(
            "ek,ekl->el",
            data[keys.CELL_SHIFTS].to(cell.dtype),
            cell.index_select(0, data[keys.BATCH].index_select(0, receiver)),
        )
        vectors = positions.index_select(0, edge_index[1]) - positions.index_select(0, receiver)
        return (vectors + shifts).to(self.model_dtype)

    def total_energy(
        self,
        atomic: Tensor,
        species: Tensor,
        batch: Tensor,
        n_graphs: int,
        heads: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``energies`` (N,) = E0(Z) + scale * atomic + shift and ``energy`` (B,), float64 eV.

        Args:
            atomic: (N,) learned per-atom energy e_i (model dtype; 0 for an isolated atom).
            species: (N,) model species indices.
            batch: (N,) structure index of each atom.
            n_graphs: B.
            heads: (B,) head index of each structure (:meth:`_heads`); None means head 0.
                Only read by a model with ``heads``.
        """
        if self.multi_head:
            if heads is None:
                heads = torch.zeros(n_graphs, dtype=torch.int64, device=batch.device)
            atom_heads = heads.index_select(0, batch)
            reference = self.reference_energies.reshape(-1).index_select(
                0, atom_heads * len(self.species) + species
            )
            scale = self.scale.index_select(0, atom_heads)
            shift = self.shift.index_select(0, atom_heads)
        else:
            reference = self.reference_energies.index_select(0, species)
            scale = self.scale
            shift = self.shift
        energies = reference + scale * atomic.to(torch.float64) + shift
        energy = torch.zeros(n_graphs, dtype=torch.float64, device=energies.device)
        energy = energy.index_add(0, batch, energies)
        return {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: energies}
