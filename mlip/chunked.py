"""Exact energy, forces and stress of one large structure, evaluated chunk by chunk.

Two exact methods; :class:`ChunkedEvaluator` picks the first when the model has its pieces.

**Layer by layer** (models exporting ``initial_features``, ``layer_forward`` and
``atom_energies``, e.g. :class:`mlip.models.GMEP`). Layer t of receiver i needs only the layer-t
input features h_t of i's senders. Each chunk of receivers has one subgraph: its receivers, their
senders, the edges into the receivers (no halo is recomputed). The forward of layer t of a chunk
computes h_{t+1} of its receivers; its backward takes one gradient of

    sum_{i in chunk} s_i c_t,i + <g_{t+1}[chunk], h_{t+1}[chunk]>

where c_t,i is receiver i's layer-t energy contribution, s_i = dE/de_i the model's energy scale
and g_{t+1} = dE/dh_{t+1}, summed from the backwards of layer t + 1. Its position and strain parts
add to forces and virial, its h_t part (index-added over the senders) to g_t. Layer 0's input
(embedding, graph state) does not depend on positions.

The tasks run in the order of :func:`wavefront_schedule`: a forward as soon as the chunks it
reads hold their h_t, a backward as soon as g_{t+1} of its receivers is complete, backwards
first. The sweep moves along the structure as a wavefront, and layer t of a chunk waits for its
backward only until the chunks around it have passed. Its forward graph is kept for that
backward while the kept graphs fit in the memory budget (less the stored h_t and g_t and one
chunk's layer being built); beyond it the forward runs without autograd and the backward builds
the layer again. Work: that of one whole-structure call (plus per-chunk edge geometry) when every
graph is kept, at most the first T - 1 layers forward once more when none is; memory: the kept
graphs, one layer of one chunk, and h_t and g_t of all atoms, each freed when its layer is done.

**Receptive-field halo** (any local model). A message-passing model with ``T`` interaction
layers gives atom i an energy that depends only on atoms within ``T`` hops of i in the neighbour
graph (the receptive field, ``T x cutoff`` Å). So the atoms are split into chunks of *owned*
atoms, each chunk is evaluated on the subgraph of its ``T``-hop closure (owned atoms plus a
halo, periodic images included because the closure follows the edges and their cell shifts),
and only the owned atoms' energies are summed:

    E = sum_c E_c,   E_c = sum_{i owned by c} e_i(subgraph c)

``e_i`` on the subgraph equals ``e_i`` on the whole graph: the subgraph keeps every edge whose
receiver lies within ``T - 1`` hops of the chunk, which is everything the owned atoms' features
see. Forces ``-dE_c/dx`` land on owned and halo atoms and are summed over chunks; the stress is
the sum of each chunk's strain derivative (same symmetric-strain convention as
:class:`mlip.derivatives.ForceStress`), divided by the volume. One chunk's autograd graph is
alive at a time, so peak memory is that of the largest chunk, not of the structure.

Chunks are contiguous runs of atoms in an order of their positions. Halo method: Morton (Z-curve)
order, so each chunk is a compact blob and its halo is small relative to it. Layer by layer:
slabs along the axis of largest extent (:func:`slab_order`), so a chunk's senders lie in it and
its neighbouring slabs and few graphs wait for their backward at once (a compact blob borders many
more chunks). The chunk size comes from a memory budget.
Halo method: a chunk's memory is taken as proportional to the atoms its layers compute, summed
over layers (a halo atom two hops out costs only positions, one hop out only the first layer),
with bytes per atom-layer measured once by a probe forward on a small chunk (bytes of tensors
autograd saves, times :data:`PEAK_OVER_SAVED`); chunks grow until the largest would exceed the
budget. Layer by layer: bytes per receiver of the costliest layer, probed the same way layer by
layer; a chunk has as many receivers as the budget, less the stored h_t and g_t, allows (on the
CPU at most :data:`CPU_MAX_RECEIVERS`, beyond which chunks only get slower).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mlip import AtomicGraph, keys
from mlip.derivatives import strained

__all__ = [
    "ChunkedEvaluator",
    "LAYERWISE_METHODS",
    "PEAK_OVER_SAVED",
    "free_memory_bytes",
    "morton_order",
    "num_hops",
    "slab_order",
    "wavefront_schedule",
]

# peak memory of an energy + forces call over the bytes autograd saves in its forward
# (measured: medium 2.37, small 1.86 on 4k Cu atoms, float32, CPU), with a margin
PEAK_OVER_SAVED = 2.5
# share of the device's free memory the default budget uses
DEFAULT_BUDGET_FRACTION = 0.6
PROBE_ATOMS = 64
# layer by layer on the CPU: most receivers per chunk whatever the budget. Larger chunks are no
# faster and, from ~8k atoms (`medium`, 16k-atom Cu, one thread), page-fault their multi-GB
# tensors on every call: 1.3x the CPU time of 1k-4k-atom chunks (97,556 atoms, 10 GB budget:
# 6 chunks of 16k atoms, 895 against 637 µs/atom with 1k-atom chunks)
CPU_MAX_RECEIVERS = 2048
# exported methods of an energy model that the layer-by-layer method needs (mlip.models.GMEP)
LAYERWISE_METHODS = ("initial_features", "layer_forward", "atom_energies")


def num_hops(metadata: dict[str, Any]) -> int:
    """Interaction layers T of an exported model: ``receptive_field / cutoff`` from metadata.

    Falls back to ``model_config["num_layers"]`` for files written before ``receptive_field``
    was recorded.
    """
    cutoff = float(metadata["cutoff"])
    field = metadata.get("receptive_field")
    if field is not None:
        return max(1, math.ceil(float(field) / cutoff - 1e-6))
    layers = (metadata.get("model_config") or {}).get("num_layers")
    if layers is None:
        raise ValueError(
            "the model metadata has neither 'receptive_field' nor model_config['num_layers']; "
            "chunked evaluation needs the number of interaction layers"
        )
    return int(layers)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: ``MemAvailable`` of /proc/meminfo on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # no /proc (not Linux): assume 8 GiB


def _spread_bits(values: np.ndarray) -> np.ndarray:
    """Insert two zero bits after each of the low 10 bits (for 3-D Morton codes)."""
    x = values.astype(np.uint64) & np.uint64(0x3FF)
    x = (x | (x << np.uint64(16))) & np.uint64(0x030000FF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x0300F00F)
    x = (x | (x << np.uint64(4))) & np.uint64(0x030C30C3)
    x = (x | (x << np.uint64(2))) & np.uint64(0x09249249)
    return x


def morton_order(positions: np.ndarray) -> np.ndarray:
    """Permutation (N,) sorting atoms along a Z-curve through their bounding box (1024³ grid)."""
    low = positions.min(axis=0)
    extent = np.maximum(positions.max(axis=0) - low, 1e-12)
    grid = np.minimum(((positions - low) / extent * 1024).astype(np.int64), 1023)
    codes = _spread_bits(grid[:, 0]) | (_spread_bits(grid[:, 1]) << np.uint64(1))
    codes |= _spread_bits(grid[:, 2]) << np.uint64(2)
    return np.argsort(codes, kind="stable")


def slab_order(positions: np.ndarray) -> np.ndarray:
    """Permutation (N,) sorting atoms along the Cartesian axis of their largest extent.

    Contiguous runs are slabs: a slab's neighbours lie in the few slabs beside it (and, through
    a periodic boundary, in the last few), so the layer-by-layer schedule
    (:func:`wavefront_schedule`) keeps each layer's graph alive only for a short window.
    Z-curve chunks of 2k atoms border ~30 others in a 100k-atom cell against ~6 for slabs.
    """
    axis = int(np.argmax(np.ptp(positions, axis=0))) if len(positions) else 0
    return np.argsort(positions[:, axis], kind="stable")


@dataclass
class _Adjacency:
    """Edges grouped by receiver: atom i has edges ``order[start[i] : start[i] + count[i]]``."""

    order: Tensor
    start: Tensor
    count: Tensor

    @classmethod
    def of(cls, receiver: Tensor, n_atoms: int) -> _Adjacency:
        count = torch.bincount(receiver, minlength=n_atoms)
        return cls(torch.argsort(receiver, stable=True), torch.cumsum(count, 0) - count, count)

    def edges_of(self, atoms: Tensor) -> Tensor:
        """Ids of all edges whose receiver is in ``atoms``, grouped by receiver."""
        counts = self.count.index_select(0, atoms)
        total = int(counts.sum())
        starts = torch.repeat_interleave(self.start.index_select(0, atoms), counts)
        offsets = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = starts + torch.arange(total, dtype=starts.dtype) - offsets
        return self.order.index_select(0, positions)


def _closure(
    owned: Tensor, adjacency: _Adjacency, sender: Tensor, hops: int, seen: Tensor
) -> tuple[Tensor, Tensor, list[int]]:
    """Atoms within ``hops`` of ``owned``, ordered by hop, the edges kept, and layer sizes.

    The edges are those whose receiver lies within ``hops - 1`` of ``owned``. The sizes are
    ``layer_receivers`` of :meth:`mlip.models.GMEP.forward`: layer t needs features of the atoms
    within ``hops - 1 - t`` hops. ``seen`` is an all-False (N,) bool scratch buffer; it is all
    False again on return. (Masks, not ``unique``/``sort``: those were 90 % of the time.)
    """
    frontier = owned
    levels = [owned]
    edge_sets = []
    seen[owned] = True
    for _ in range(hops):
        edges = adjacency.edges_of(frontier)
        edge_sets.append(edges)
        reached = torch.zeros_like(seen)
        reached[sender.index_select(0, edges)] = True
        frontier = torch.nonzero(reached & ~seen).squeeze(1)
        seen[frontier] = True
        levels.append(frontier)
    atoms = torch.cat(levels)
    seen[atoms] = False
    sizes = [sum(level.numel() for level in levels[: hops - t]) for t in range(hops)]
    return atoms, torch.cat(edge_sets), sizes


class ChunkedEvaluator:
    """Energy, per-atom energies, forces and stress of one structure, chunk by chunk.

    Layer by layer when the model exports :data:`LAYERWISE_METHODS` (scripted modules
    included), else over receptive-field halos (module docstring).

    Args:
        module: an exported model (``ForceStress`` around an energy model, scripted or not);
            its ``energy_model`` is called on each chunk.
        hops: interaction layers T (:func:`num_hops` of the metadata).
        memory_budget: bytes one chunk's energy + forces call may use; None: a share
            (:data:`DEFAULT_BUDGET_FRACTION`) of the device's free memory at each call.
        chunk_atoms: owned atoms (receivers, layer by layer) per chunk, overriding the budget
            (mainly for tests).

    Attributes:
        layerwise: whether the layer-by-layer method is used.
        bytes_per_atom_layer: peak bytes per atom per interaction layer it passes through
            (layer by layer: per receiver of the costliest layer), measured by the first probe
            (None before); a whole structure of N atoms needs about
            ``bytes_per_atom_layer * hops * N``.
        last_chunks: number of chunks of the last call of this evaluator (0 before any).
        last_kept: layer by layer, forward graphs of the last call kept for their backward.
        last_recomputed: layer by layer, layers of the last call built again for their
            backward (their graphs did not fit in the budget).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        hops: int,
        memory_budget: float | None = None,
        chunk_atoms: int | None = None,
    ) -> None:
        if hops < 1:
            raise ValueError(f"hops must be >= 1, got {hops}")
        if chunk_atoms is not None and chunk_atoms < 1:
            raise ValueError(f"chunk_atoms must be >= 1, got {chunk_atoms}")
        if memory_budget is not None and not memory_budget > 0:
            raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget}")
        self.energy_model = getattr(module, "energy_model", module)
        self.layerwise = all(hasattr(self.energy_model, name) for name in LAYERWISE_METHODS)
        self.hops = int(hops)
        self.memory_budget = memory_budget
        self.chunk_atoms = chunk_atoms
        self.bytes_per_atom_layer: float | None = None
        # layer by layer: bytes per atom of the stored layer inputs h_t and their gradients g_t
        self._stored_bytes_per_atom = 0.0
        # layer by layer: bytes autograd saves per receiver of each layer (a kept graph)
        self._saved_bytes_per_receiver: list[float] = []
        self.last_chunks = 0
        self.last_kept = self.last_recomputed = 0
        # (atoms, atoms allowed per subgraph, owned atoms per chunk) of the last plan: MD steps
        # reuse it instead of searching again (the halo changes little from step to step)
        self._last_plan = (0, 0.0, 0)

    # ------------------------------------------------------------------ planning
    def budget(self, device: torch.device) -> float:
        """Bytes one chunk may use on ``device``."""
        if self.memory_budget is not None:
            return float(self.memory_budget)
        return DEFAULT_BUDGET_FRACTION * free_memory_bytes(device)

    def _measure_bytes_per_atom_layer(
        self, graph: AtomicGraph, adjacency: _Adjacency, order: Tensor, device: torch.device
    ) -> float:
        """Peak bytes per atom-layer, from the tensors autograd saves on a small chunk."""
        seen = torch.zeros(graph.positions.shape[0], dtype=torch.bool)
        hops = 1 if self.layerwise else self.hops
        owned = order[:PROBE_ATOMS]
        atoms, edges, sizes = _closure(owned, adjacency, graph.edge_index[1], hops, seen)
        if self.layerwise:
            data, _, _ = self._subgraph(graph, atoms, edges, None, device, stress=False)
            return self._measure_layers(data, owned.numel())
        data, positions, _ = self._subgraph(graph, atoms, edges, sizes, device, stress=False)
        with torch.autograd.graph.saved_tensors_hooks(*_saved_bytes_hooks(storages := {})):
            self.energy_model(data)
        del positions
        return PEAK_OVER_SAVED * max(sum(storages.values()), 1) / sum(sizes)

    def _measure_layers(self, data: dict[str, Tensor], n_owned: int) -> float:
        """Peak bytes per receiver of the costliest layer of one chunk's subgraph ``data``
        (its first ``n_owned`` atoms receive); sets :attr:`_stored_bytes_per_atom`."""
        model = self.energy_model
        n_local = data[keys.ATOMIC_NUMBERS].shape[0]
        inputs = model.initial_features(data)
        worst, stored = 1, 0
        self._saved_bytes_per_receiver = []
        for t in range(self.hops):
            leaf = inputs.detach().requires_grad_(t > 0)
            with torch.autograd.graph.saved_tensors_hooks(*_saved_bytes_hooks(storages := {})):
                model.layer_forward(t, leaf, data, n_owned)
            worst = max(worst, sum(storages.values()))
            self._saved_bytes_per_receiver.append(sum(storages.values()) / n_owned)
            if t + 1 < self.hops:
                with torch.no_grad():  # every local atom as receiver: input of layer t + 1
                    inputs = model.layer_forward(t, inputs, data, n_local)[0]
                stored += inputs[:, 0].numel() * inputs.element_size()
        self._stored_bytes_per_atom = 2.0 * stored
        return PEAK_OVER_SAVED * worst / n_owned

    def needs_chunks(self, graph: AtomicGraph, device: torch.device) -> bool:
        """Whether ``graph`` would exceed the budget as a whole (or has more than chunk_atoms).

        The first call measures :attr:`bytes_per_atom_layer` with one probe forward.
        """
        if self.chunk_atoms is not None:
            return self.chunk_atoms < graph.positions.shape[0]
        if self.bytes_per_atom_layer is None:
            adjacency = _Adjacency.of(graph.edge_index[0], graph.positions.shape[0])
            order = torch.from_numpy(morton_order(graph.positions.numpy()))
            self.bytes_per_atom_layer = self._measure_bytes_per_atom_layer(
                graph, adjacency, order, device
            )
        needed = self.bytes_per_atom_layer * self.hops * graph.positions.shape[0]
        return needed > self.budget(device)

    def _plan(
        self, graph: AtomicGraph, adjacency: _Adjacency, order: Tensor, device: torch.device
    ) -> int:
        """Owned atoms per chunk: the largest whose biggest subgraph fits the budget."""
        n_atoms = graph.positions.shape[0]
        if self.chunk_atoms is not None:
            return self.chunk_atoms
        if self.bytes_per_atom_layer is None:
            self.bytes_per_atom_layer = self._measure_bytes_per_atom_layer(
                graph, adjacency, order, device
            )
        if self.layerwise:  # one layer of one chunk, next to the stored h_t and g_t
            free = self.budget(device) - self._stored_bytes_per_atom * n_atoms
            size = min(n_atoms, int(free / self.bytes_per_atom_layer))
            if device.type == "cpu":
                size = min(size, CPU_MAX_RECEIVERS)
            if size < 1:
                raise MemoryError(
                    f"memory budget {self.budget(device) / 2**30:.2f} GiB is too small: the "
                    f"layer features of {n_atoms} atoms and one atom's layer need more at "
                    f"{self.bytes_per_atom_layer / 1024:.0f} KiB per atom and layer"
                )
            return size
        # atom-layers one chunk may compute
        max_atoms = self.budget(device) / self.bytes_per_atom_layer
        if max_atoms >= self.hops * n_atoms:
            return n_atoms
        planned_atoms, planned_max, planned_size = self._last_plan
        if planned_atoms == n_atoms and 0.9 < max_atoms / planned_max < 1.1:
            return planned_size
        seen = torch.zeros(n_atoms, dtype=torch.bool)
        sender = graph.edge_index[1]

        def largest(size: int) -> int:
            return max(
                sum(_closure(order[s : s + size], adjacency, sender, self.hops, seen)[2])
                for s in range(0, n_atoms, size)
            )

        size, best = max(1, int(max_atoms / 8)), 0
        for _ in range(8):
            biggest = largest(size)
            if biggest <= max_atoms:
                best = max(best, size)
                if biggest > 0.85 * max_atoms:
                    break
                # subgraph atoms grow slower than owned atoms (halo ~ surface): step up boldly
                size = min(n_atoms, int(size * (max_atoms / biggest) ** 1.5) + 1)
            else:
                size = max(1, int(size * 0.9 * max_atoms / biggest))
            if size <= best:
                break
        if best == 0:
            raise MemoryError(
                f"memory budget {self.budget(device) / 2**30:.2f} GiB is too small: one atom's "
                f"receptive field ({self.hops} hops) alone needs more at "
                f"{self.bytes_per_atom_layer / 1024:.0f} KiB per atom and layer"
            )
        self._last_plan = (n_atoms, max_atoms, best)
        return best

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _subgraph(
        graph: AtomicGraph,
        atoms: Tensor,
        edges: Tensor,
        sizes: list[int] | None,
        device: torch.device,
        stress: bool,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """Model input of a chunk (strained when ``stress``), its positions leaf and strain.

        ``sizes``: ``layer_receivers`` of the halo method (None: not given).
        """
        n_atoms = graph.positions.shape[0]
        local = torch.full((n_atoms,), -1, dtype=torch.int64)
        local[atoms] = torch.arange(atoms.numel())
        positions = graph.positions.index_select(0, atoms).to(device).requires_grad_(True)
        cell = graph.cell.to(device)
        batch = torch.zeros(atoms.numel(), dtype=torch.int64, device=device)
        strain = None
        strained_positions, strained_cell = positions, cell
        if stress:
            strain = torch.zeros((1, 3, 3), dtype=positions.dtype, device=device)
            strain.requires_grad_(True)
            strained_positions, strained_cell = strained(positions, cell, batch, strain)
        data = {
            keys.POSITIONS: strained_positions,
            keys.ATOMIC_NUMBERS: graph.atomic_numbers.index_select(0, atoms).to(device),
            keys.CELL: strained_cell,
            keys.PBC: graph.pbc.to(device),
            keys.EDGE_INDEX: local[graph.edge_index.index_select(1, edges)].to(device),
            keys.CELL_SHIFTS: graph.cell_shifts.index_select(0, edges).to(device),
            keys.BATCH: batch,
            keys.NUM_ATOMS: torch.tensor([atoms.numel()], device=device),
        }
        if sizes is not None:
            # models that know it skip the halo atoms' unneeded layers; others ignore it
            data[keys.LAYER_RECEIVERS] = torch.tensor(sizes, dtype=torch.int64, device=device)
        data.update(_graph_inputs(graph, device))
        return data, positions, strain

    def __call__(
        self, graph: AtomicGraph, device: torch.device | str, stress: bool
    ) -> dict[str, Tensor]:
        """Evaluate one structure (``graph`` on the CPU) chunk by chunk on ``device``.

        Returns float64 CPU tensors: ``energy`` (1,) eV, ``energies`` (N,) eV, ``forces``
        (N, 3) eV/Å and, when ``stress``, ``stress`` (1, 3, 3) eV/Å³ (ASE sign).
        """
        if graph.num_graphs != 1:
            raise ValueError(f"chunked evaluation takes one structure, got {graph.num_graphs}")
        device = torch.device(device)
        n_atoms = graph.positions.shape[0]
        adjacency = _Adjacency.of(graph.edge_index[0], n_atoms)
        sort = slab_order if self.layerwise else morton_order
        order = torch.from_numpy(sort(graph.positions.numpy()))
        size = self._plan(graph, adjacency, order, device)
        chunks = [order[first : first + size] for first in range(0, n_atoms, size)]
        self.last_chunks = 0
        if self.layerwise:
            energies, forces, virial = self._layer_by_layer(
                graph, adjacency, chunks, device, stress
            )
        else:
            energies, forces, virial = self._over_halos(graph, adjacency, chunks, device, stress)
        result = {
            keys.ENERGY: energies.sum().reshape(1),
            keys.ATOMIC_ENERGIES: energies,
            keys.FORCES: forces,
        }
        if stress:
            volume = torch.abs(torch.linalg.det(graph.cell))
            result[keys.STRESS] = virial / volume.view(-1, 1, 1)
        return result

    def _over_halos(
        self,
        graph: AtomicGraph,
        adjacency: _Adjacency,
        chunks: list[Tensor],
        device: torch.device,
        stress: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-atom energies (N,), forces (N, 3) and virial (1, 3, 3), float64 CPU, each chunk
        of owned atoms evaluated on its ``hops``-hop closure."""
        n_atoms = graph.positions.shape[0]
        sender = graph.edge_index[1]
        seen = torch.zeros(n_atoms, dtype=torch.bool)
        energies = torch.zeros(n_atoms, dtype=torch.float64)
        forces = torch.zeros((n_atoms, 3), dtype=torch.float64)
        virial = torch.zeros((1, 3, 3), dtype=torch.float64)
        for owned in chunks:
            atoms, edges, sizes = _closure(owned, adjacency, sender, self.hops, seen)
            data, positions, strain = self._subgraph(graph, atoms, edges, sizes, device, stress)
            owned_energies = self.energy_model(data)[keys.ATOMIC_ENERGIES][: owned.numel()]
            wrt = [positions] if strain is None else [positions, strain]
            grads = torch.autograd.grad([owned_energies.sum()], wrt, allow_unused=True)
            energies[owned] = owned_energies.detach().to("cpu", torch.float64)
            if grads[0] is not None:
                forces.index_add_(0, atoms, -grads[0].to("cpu", torch.float64))
            if strain is not None and grads[1] is not None:
                virial += grads[1].to("cpu", torch.float64)
            del data, positions, strain, owned_energies, grads
            self.last_chunks += 1
        return energies, forces, virial

    def _layer_by_layer(
        self,
        graph: AtomicGraph,
        adjacency: _Adjacency,
        chunks: list[Tensor],
        device: torch.device,
        stress: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-atom energies (N,), forces (N, 3) and virial (1, 3, 3), float64 CPU, layer by
        layer over chunks of receivers, in the order of :func:`wavefront_schedule` (module
        docstring)."""
        model = self.energy_model
        n_atoms = graph.positions.shape[0]
        hops = self.hops
        seen = torch.zeros(n_atoms, dtype=torch.bool)
        # each chunk's subgraph: receivers first, then their other senders; edges into them
        chunk_of = torch.empty(n_atoms, dtype=torch.int64)
        for c, owned in enumerate(chunks):
            chunk_of[owned] = c
        subgraphs, needs = [], []
        for owned in chunks:
            atoms, edges, _ = _closure(owned, adjacency, graph.edge_index[1], 1, seen)
            subgraphs.append((owned.numel(), atoms, atoms.to(device), edges))
            needs.append(torch.unique(chunk_of.index_select(0, atoms)).tolist())
        if self.bytes_per_atom_layer is None:  # chunk_atoms given: probe for the kept graphs
            order = torch.cat(chunks)
            self.bytes_per_atom_layer = self._measure_bytes_per_atom_layer(
                graph, adjacency, order, device
            )
        # bytes the kept graphs may use: the budget less the stored features and one chunk's
        # layer being built
        largest = max(sub[0] for sub in subgraphs)
        allowance = (
            self.budget(device)
            - self._stored_bytes_per_atom * n_atoms
            - self.bytes_per_atom_layer * largest
        )
        whole = {
            keys.ATOMIC_NUMBERS: graph.atomic_numbers.to(device),
            keys.BATCH: graph.batch.to(device),
            keys.NUM_ATOMS: graph.num_atoms.to(device),
            **_graph_inputs(graph, device),
        }
        # s_i = dE/de_i: the model's energy scale of each atom (per head)
        atomic = torch.zeros(n_atoms, dtype=torch.float64, device=device, requires_grad=True)
        energy = model.atom_energies(atomic, whole)[keys.ENERGY]
        (scale,) = torch.autograd.grad([energy.sum()], [atomic])

        # inputs[t] (D_t, N, C), t >= 1: layer-t input features of every atom; grads[t]: dE/dh_t
        inputs: list[Tensor | None] = [None] * hops
        grads_in: list[Tensor | None] = [None] * hops
        contributions: list[Tensor | None] = [None] * hops
        forces = torch.zeros((n_atoms, 3), dtype=torch.float64, device=device)
        virial = torch.zeros((1, 3, 3), dtype=torch.float64, device=device)
        kept: dict[tuple[int, int], tuple] = {}
        kept_bytes = 0.0
        self.last_kept = self.last_recomputed = 0

        def build(t: int, c: int, with_grad: bool) -> tuple:
            """Layer t of chunk c: (positions, strain, layer input, output, contribution)."""
            n_owned, atoms, local_atoms, edges = subgraphs[c]
            with torch.set_grad_enabled(with_grad):
                data, positions, strain = self._subgraph(
                    graph, atoms, edges, None, device, stress and with_grad
                )
                source = inputs[t]
                if source is None:
                    layer_in = model.initial_features(data)  # no position dependence
                else:
                    layer_in = source.index_select(1, local_atoms).requires_grad_(with_grad)
                out, contribution = model.layer_forward(t, layer_in, data, n_owned)
            return positions, strain, layer_in, out, contribution

        def record(t: int, c: int, out: Tensor, contribution: Tensor) -> None:
            receivers = subgraphs[c][2][: subgraphs[c][0]]
            if contributions[t] is None:
                contributions[t] = contribution.new_zeros(n_atoms)
            contributions[t].index_copy_(0, receivers, contribution.detach())
            if t + 1 < hops:
                if inputs[t + 1] is None:
                    shape = (out.shape[0], n_atoms, out.shape[2])
                    inputs[t + 1] = out.new_zeros(shape)
                    grads_in[t + 1] = out.new_zeros(shape)
                inputs[t + 1].index_copy_(1, receivers, out.detach())

        schedule = wavefront_schedule(needs, hops)
        remaining = [sum(1 for task in schedule if task[1] == t) for t in range(hops)]
        for kind, t, c in schedule:
            n_owned, atoms, local_atoms, edges = subgraphs[c]
            receivers = local_atoms[:n_owned]
            if kind == FORWARD:
                cost = self._saved_bytes_per_receiver[t] * n_owned
                keep = kept_bytes + cost <= allowance
                built = build(t, c, with_grad=keep)
                record(t, c, built[3], built[4])
                if keep:
                    kept[(t, c)] = built
                    kept_bytes += cost
                    self.last_kept += 1
                remaining[t] -= 1
                continue
            if (t, c) in kept:
                built = kept.pop((t, c))
                kept_bytes -= self._saved_bytes_per_receiver[t] * n_owned
            else:
                built = build(t, c, with_grad=True)
                if kind == BACKWARD:
                    self.last_recomputed += 1
                else:
                    record(t, c, built[3], built[4])
            positions, strain, layer_in, out, chunk_contribution = built
            outputs = [chunk_contribution]
            grad_outputs = [scale.index_select(0, receivers).to(chunk_contribution.dtype)]
            grad_out = grads_in[t + 1] if t + 1 < hops else None
            if grad_out is not None:
                outputs.append(out)
                grad_outputs.append(grad_out.index_select(1, receivers))
            wrt = [positions] + ([] if strain is None else [strain])
            wrt += [] if inputs[t] is None else [layer_in]
            grads = torch.autograd.grad(outputs, wrt, grad_outputs, allow_unused=True)
            if grads[0] is not None:
                forces.index_add_(0, local_atoms, grads[0], alpha=-1)
            if strain is not None and grads[1] is not None:
                virial += grads[1]
            if inputs[t] is not None and grads[-1] is not None:
                grads_in[t].index_add_(1, local_atoms, grads[-1])
            del built, positions, strain, layer_in, out, outputs, grad_outputs, grads
            remaining[t] -= 1
            if remaining[t] == 0:  # layer t is done: its inputs and dE/dh_{t+1} are not needed
                inputs[t] = None
                if t + 1 < hops:
                    grads_in[t + 1] = None
        self.last_chunks = len(subgraphs)
        atomic = contributions[0]
        for contribution in contributions[1:]:  # summed in layer order, as GMEP.forward does
            atomic = atomic + contribution
        with torch.no_grad():
            energies = model.atom_energies(atomic, whole)[keys.ATOMIC_ENERGIES]
        return (
            energies.to("cpu", torch.float64),
            forces.to("cpu", torch.float64),
            virial.to("cpu", torch.float64),
        )


FORWARD, BACKWARD, LAST = 0, 1, 2


def wavefront_schedule(needs: list[list[int]], hops: int) -> list[tuple[int, int, int]]:
    """Order of the layer-by-layer tasks ``(kind, layer t, chunk c)``, each as early as its
    inputs allow.

    ``needs[c]``: the chunks owning the atoms of chunk c's subgraph (its receivers and their
    senders; c included). ``FORWARD`` (t < T - 1) computes h_{t+1} of c's receivers: it needs
    ``FORWARD`` t - 1 of every chunk in ``needs[c]``. ``LAST`` (t = T - 1) is the last layer's
    forward and backward at once. ``BACKWARD`` (t < T - 1) needs dE/dh_{t+1} of c's receivers
    complete: the backward of layer t + 1 of every chunk whose subgraph holds them (the chunks
    j with c in ``needs[j]``). Ready backwards go first (they release their graphs), then
    forwards of the highest layer; a new chunk's layer 0 starts only when nothing else is
    ready, so that a layer's graph lives only until its users have passed.
    """
    n_chunks = len(needs)
    users: list[list[int]] = [[] for _ in range(n_chunks)]
    for c, sources in enumerate(needs):
        for j in sources:
            users[j].append(c)
    forward_wait = [[len(needs[c]) for c in range(n_chunks)] for _ in range(hops)]
    backward_wait = [[len(users[c]) for c in range(n_chunks)] for _ in range(hops)]
    tasks: list[tuple[int, int, int]] = []
    ready: list[tuple[int, int, int]] = []  # heap of (0 backward | 1 forward, -t, c)

    def forward(t: int, c: int) -> None:
        if t == hops - 1:
            tasks.append((LAST, t, c))
            backward_done(t, c)
            return
        tasks.append((FORWARD, t, c))
        for user in users[c]:
            forward_wait[t + 1][user] -= 1
            if forward_wait[t + 1][user] == 0:
                heapq.heappush(ready, (1, -(t + 1), user))

    def backward_done(t: int, c: int) -> None:
        if t == 0:
            return
        for source in needs[c]:
            backward_wait[t - 1][source] -= 1
            if backward_wait[t - 1][source] == 0:
                heapq.heappush(ready, (0, -(t - 1), source))

    next_chunk = 0
    while len(tasks) < (2 * hops - 1) * n_chunks:
        if not ready:
            forward(0, next_chunk)
            next_chunk += 1
            continue
        kind, minus_t, c = heapq.heappop(ready)
        if kind == 1:
            forward(-minus_t, c)
        else:
            tasks.append((BACKWARD, -minus_t, c))
            backward_done(-minus_t, c)
    return tasks


def _saved_bytes_hooks(storages: dict[int, int]) -> tuple[Any, Any]:
    """``saved_tensors_hooks`` pack/unpack pair recording the bytes of each saved storage."""

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    return pack, lambda tensor: tensor


def _graph_inputs(graph: AtomicGraph, device: torch.device) -> dict[str, Tensor]:
    """Per-structure model inputs of ``graph`` present (charge, spin, head), on ``device``."""
    fields = {}
    for name in (keys.CHARGE, keys.SPIN, keys.HEAD):
        value = getattr(graph, name)
        if value is not None:
            fields[name] = value.to(device)
    return fields
