"""GMEP: Grid-Mixing Equivariant Potential (DESIGN_NOTES §8), the default energy model.

Per interaction layer t (features ``h`` stored degree-major, ``(D, N, C)``)::

    h_up   = W_up h                                    per-degree linear (layers >= 1)
    A_i    = sum_j m(h_up_j, Y(r_ij), R_t(|r_ij|)) / avg_num_neighbors     channelwise uvu message
    B_i    = mixer(A_i, Z_i)                           grid products | grid MLP | linear
    B_i    = gate(B_i)                                 SiLU on l = 0, sigmoid gates on l > 0
    h_i    = W_skip h_i + B_i                          residual (layers >= 1)
    e_i   += readout_t(h_i[l = 0])

Nothing on the node side has a bias and the first layer has no skip, so an atom without
neighbours has ``e_i = 0`` and energy ``E0(Z) + shift`` exactly.

and ``E = sum_i [E0(Z_i) + scale * e_i + shift]``. With ``charge_spin`` (total charge and
spin multiplicity as inputs) or several ``heads`` (levels of theory), a per-structure state
vector (:class:`~mlip.nn.graph_state.GraphStateEmbedding`) is added to the initial node features;
with ``heads``, ``E0``, ``scale`` and ``shift`` are per head, selected by the ``head`` input
(the state vector never reaches an atom without neighbours, which keeps ``E0 + shift``).
Radial weights are, by default, linear in a uniform cubic B-spline basis whose last three
control points are zero (C^2 cutoff, no radial MLP). Node features carry degrees
``<= lmax_hidden`` between layers; edge harmonics and the atomic basis A go up to ``lmax``.

How A is computed (same result, different memory and FLOPs): with the spline radial, the first
layer sums ``B_k(r_ij) Y(r_ij)`` per receiver and sender species (the features are a species
table), and every later layer, scalar or l > 0 inputs, forms per-receiver moments
``T_i = sum_j B_k(r_ij) Y(r_ij) h_j`` with one batched GEMM over zero-padded neighbour tables,
then contracts them with the control points (and, for l > 0 inputs, the path couplings of
:class:`~mlip.nn.message.EdgeMessage`); no (E, D, C) message tensor is formed. With the
``"mlp"`` radial every layer uses per-edge messages (:meth:`_Interaction._atomic_basis_edges`).

Presets (measured with ``torch.utils.flop_counter.FlopCounterMode`` on rattled fcc Cu,
a = 3.61 Å, cutoff 6 Å, 78 neighbours per atom, 256 atoms; "FLOPs" counts matmul-type ops only,
i.e. GEMM/BMM, which dominate):

=========  =====  ===========  ====  ====  ===  ======  ====  ==========  ==============
preset     L      lmax_hidden  C     H     nu   layers  K     parameters  fwd MFLOP/atom
=========  =====  ===========  ====  ====  ===  ======  ====  ==========  ==============
small      2      0            64    96    2    2       8     109,712     1.18
medium     3      0            64    128   3    2       12    386,832     5.82
large      3      1            128   256   3    3       16    2,582,800   see README
=========  =====  ===========  ====  ====  ===  ======  ====  ==========  ==============

(Parameters for one species; energy+forces FLOPs and timings are in ``mlip/models/README.md``
and ``BENCHMARKS.md``.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mlip import keys
from mlip.models.base import AtomicEnergyModel, build_from_preset
from mlip.nn.graph_state import GraphStateEmbedding
from mlip.nn.harmonics import SphericalHarmonics, num_sh
from mlip.nn.linear import DegreeLinear, degree_index
from mlip.nn.message import EdgeMessage, message_paths
from mlip.nn.mixers import build_mixer
from mlip.nn.neighbor_table import padded_slots
from mlip.nn.radial import BesselMLPRadial, SplineRadial

__all__ = ["GMEP", "GMEPConfig", "PRESETS", "build_gmep"]

RECEIVER_MIN_NEIGHBORS_VECTOR_INPUT = 30.0
"""Edges per atom from which layers with l > 0 inputs use the per-receiver GEMM form."""


@dataclass
class GMEPConfig:
    """Hyperparameters of :class:`GMEP` (all JSON-serialisable).

    Attributes:
        species: atomic numbers, in model order.
        cutoff: Å.
        num_layers: interaction layers.
        lmax: L, degree of edge harmonics and of the atomic basis A.
        lmax_hidden: degree of node features carried between layers (<= lmax).
        channels: C, channels per degree.
        mixer_channels: H, channels of each grid-product operand / grid-MLP width.
        correlation: nu, product order of the grid mixer (body order nu + 1).
        num_radial: K, radial basis size (spline: includes the 3 clamped functions).
        radial: ``"spline"`` (linear in cubic B-splines) or ``"mlp"`` (Bessel x envelope + MLP).
        radial_mlp_hidden: hidden widths of the ``"mlp"`` radial.
        mixer: ``"grid"`` | ``"grid_mlp"`` | ``"none"``.
        grid: ``"gl"`` or ``"lebedev"`` (grid mixer, exact to degree 3L).
        grid_mlp_hidden: hidden width of the grid MLP.
        readout_hidden: hidden width of the last layer's readout MLP.
        avg_num_neighbors: initial value of the normalisation buffer.
        charge_spin: total charge and spin multiplicity (``charge``, ``spin`` graph fields,
            integers) are required inputs, embedded into the initial node features.
        heads: names of the levels of theory (None: one unnamed head). Each head has its own
            reference energies, scale and shift; the ``head`` graph field (index into this
            list, 0 when absent) selects them, and with more than one head it is embedded too.
        head_readout: with ``heads``, every layer's readout ends in one output per head (the
            hidden layers stay shared), selected by the structure's head: per-head capacity for
            levels of theory whose energy surfaces differ in shape, not only in E0 and scale.
        max_charge: charges in ``[-max_charge, max_charge]`` are accepted (charge_spin).
        max_multiplicity: multiplicities in ``[1, max_multiplicity]`` are accepted.
    """

    species: list[int]
    cutoff: float
    num_layers: int = 2
    lmax: int = 2
    lmax_hidden: int = 0
    channels: int = 48
    mixer_channels: int = 96
    correlation: int = 2
    num_radial: int = 8
    radial: str = "spline"
    radial_mlp_hidden: list[int] = field(default_factory=lambda: [64, 64])
    mixer: str = "grid"
    grid: str = "gl"
    grid_mlp_hidden: int = 16
    readout_hidden: int = 16
    avg_num_neighbors: float = 30.0
    charge_spin: bool = False
    heads: list[str] | None = None
    head_readout: bool = False
    max_charge: int = 10
    max_multiplicity: int = 11


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        num_layers=2,
        lmax=2,
        lmax_hidden=0,
        channels=64,
        mixer_channels=96,
        correlation=2,
        num_radial=8,
    ),
    "medium": dict(
        num_layers=2,
        lmax=3,
        lmax_hidden=0,
        grid="lebedev",
        channels=64,
        mixer_channels=128,
        correlation=3,
        num_radial=12,
    ),
    "large": dict(
        num_layers=3,
        lmax=3,
        lmax_hidden=1,
        channels=128,
        mixer_channels=256,
        correlation=3,
        num_radial=16,
    ),
}


class _Gate(nn.Module):
    """SiLU on l = 0 channels; l > 0 channels times sigmoid(linear(l = 0 channels))."""

    def __init__(self, lmax: int, channels: int) -> None:
        super().__init__()
        self.lmax = lmax
        self.gates = nn.Linear(channels, lmax * channels) if lmax > 0 else None
        self.register_buffer("degrees", degree_index(lmax), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        scalars = features[0]
        gates = self.gates
        if gates is None:
            return torch.nn.functional.silu(features)
        n_nodes, channels = scalars.shape
        factors = torch.sigmoid(gates(scalars)).reshape(n_nodes, self.lmax, channels)
        factors = factors.transpose(0, 1)[self.degrees[1:] - 1]  # (D - 1, N, C)
        return torch.cat(
            [torch.nn.functional.silu(scalars).unsqueeze(0), features[1:] * factors], dim=0
        )


class _Interaction(nn.Module):
    """One GMEP layer: message, mixer, gate, residual, readout."""

    def __init__(
        self,
        cfg: GMEPConfig,
        lmax_in: int,
        lmax_out: int,
        last: bool,
        residual: bool,
        species_only_input: bool = True,
    ) -> None:
        super().__init__()
        channels = cfg.channels
        self.d_in = num_sh(lmax_in)
        self.d_out = num_sh(lmax_out)
        self.up = DegreeLinear(lmax_in, channels, channels)
        self.message = EdgeMessage(lmax_in, cfg.lmax)
        self.num_paths = len(message_paths(lmax_in, cfg.lmax))
        n_weights = self.num_paths * channels
        if cfg.radial == "spline":
            self.radial: nn.Module = SplineRadial(cfg.cutoff, cfg.num_radial, n_weights)
        elif cfg.radial == "mlp":
            self.radial = BesselMLPRadial(
                cfg.cutoff, cfg.num_radial, n_weights, tuple(cfg.radial_mlp_hidden)
            )
        else:
            raise ValueError(f"unknown radial {cfg.radial!r}; expected 'spline' or 'mlp'")
        self.mixer = build_mixer(
            cfg.mixer,
            lmax=cfg.lmax,
            lmax_out=lmax_out,
            channels=channels,
            hidden=cfg.mixer_channels,
            correlation=cfg.correlation,
            num_species=len(cfg.species),
            grid=cfg.grid,
            mlp_hidden=cfg.grid_mlp_hidden,
        )
        self.gate = _Gate(lmax_out, channels)
        lmax_skip = min(lmax_in, lmax_out)
        self.d_skip = num_sh(lmax_skip)
        self.skip = DegreeLinear(lmax_skip, channels, channels) if residual else None
        outputs = len(cfg.heads) if cfg.head_readout and cfg.heads else 1
        if last:
            self.readout: nn.Module = nn.Sequential(
                nn.Linear(channels, cfg.readout_hidden, bias=False),
                nn.SiLU(),
                nn.Linear(cfg.readout_hidden, outputs, bias=False),
            )
        else:
            self.readout = nn.Linear(channels, outputs, bias=False)
        self.channels = channels
        self.lmax_in = lmax_in
        self.num_degrees_edge = cfg.lmax + 1
        self.register_buffer("edge_degrees", degree_index(cfg.lmax), persistent=False)
        # Layer 0 sees species-only features and, with the linear spline radial, its atomic
        # basis factorises: A_i = sum_{s,k} [sum_{j in s} B_k(r_ij) Y(r_ij)] W_k u_s. The
        # per-edge tensor is then (K, D) instead of (D, C) and the rest is a node-side GEMM.
        self.species_factorised = (
            (not residual) and species_only_input and lmax_in == 0 and cfg.radial == "spline"
        )
        self.num_species = len(cfg.species)
        # Later layers with the spline radial: moments T_i = sum_j (B_k(r_ij) Y(r_ij)) h_j, one
        # GEMM per receiver over its padded neighbour list, then A_i = sum_k W_k T_i[k] (scalar
        # inputs) or the path couplings applied to T_i (l > 0 inputs), so no (E, D, C) message
        # tensor is formed. Setting it False forces the per-edge form (same result; the tests
        # compare both); it must stay False with the "mlp" radial.
        self.receiver_gemm = not self.species_factorised and cfg.radial == "spline"
        # With l > 0 inputs the per-receiver form costs a roughly fixed amount per atom and the
        # per-edge form a fixed amount per edge: it is used from this many edges per atom on
        # (benchmarks/receiver_forms.py, one CPU thread, `large`: x0.77 at 18 neighbours, x1.59
        # at 43, x1.96 at 78 against the per-edge form). Scalar inputs: always (0).
        self.receiver_min_neighbors: float = (
            0.0 if lmax_in == 0 else RECEIVER_MIN_NEIGHBORS_VECTOR_INPUT
        )

    def _atomic_basis_species(
        self, features: Tensor, n_nodes: int, outer_padded: Tensor, species_slot: Tensor
    ) -> Tensor:
        """Layer-0 atomic basis (D, N, C); ``features`` is the species table (1, S, C).

        ``outer_padded`` (N M, K' D) holds B_k(r) Y(r) of every neighbour-table row and
        ``species_slot`` (N M,) its receiver * S + sender species (padding rows add zeros).
        """
        n_species = self.num_species
        species_features = self.up(features)[0]  # (S, C)
        control = self.radial.linear_weights()  # (K', P C)
        n_basis = control.shape[0]
        d_edge = outer_padded.shape[1] // n_basis
        gathered = torch.zeros(
            (n_nodes * n_species, outer_padded.shape[1]),
            dtype=outer_padded.dtype,
            device=outer_padded.device,
        ).index_add_(0, species_slot, outer_padded)
        # (N, S, K', D) -> (D, N, S K')
        gathered = gathered.reshape(n_nodes, n_species * n_basis, d_edge).permute(2, 0, 1)
        control = control.reshape(n_basis, self.num_paths, self.channels)
        control = control.index_select(1, self.edge_degrees).transpose(0, 1)  # (D, K', C)
        weights = species_features.unsqueeze(1).unsqueeze(0) * control.unsqueeze(1)
        weights = weights.reshape(d_edge, n_species * n_basis, self.channels)
        return torch.bmm(gathered, weights)  # (D, N, C)

    def _atomic_basis_receiver_gemm(
        self,
        features: Tensor,
        outer_padded: Tensor,
        sender_padded: Tensor,
        max_neighbors: int,
        n_nodes: int,
        n_atoms: int,
    ) -> Tensor:
        """Atomic basis (D, n_nodes, C) of the first ``n_nodes`` receivers, as GEMMs.

        Row ``i * max_neighbors + m`` of ``outer_padded`` (R_table M, K' D) and
        ``sender_padded`` (R_table M,) is the m-th neighbour of receiver i; padding rows have
        zero basis and sender ``n_atoms`` (atoms of the graph). ``features`` (D_in, R, C) are
        the senders' features, R <= n_atoms.

        The moments ``T_i[k, b, s, c] = sum_j B_k(r_ij) Y_b(r_ij) h_up_j[s, c]`` are one batched
        GEMM (n_nodes, K' D, M) x (n_nodes, M, D_in C). Scalar inputs (D_in = 1, paths
        (0, l, l) with identity coupling) then give ``A_i[d, c] = sum_k W[k, l(d), c]
        T_i[k, d, 0, c]``. With l > 0 inputs, the control points and the path couplings of
        :class:`~mlip.nn.message.EdgeMessage` combine into one weight
        ``V[c, (k, b, s), d] = sum_p W[k, p, c] G_p[b, s, d]`` and ``A[:, :, c] = T[:, :, c]
        V[c]``, a GEMM per channel; it equals the edge form's sum of messages exactly.

        Memory (``large``, float32, one layer's forward + backward, torch.profiler peak): about
        1.4 MiB per receiver whatever its neighbour count (the moments, K' D D_in C = 832 C
        numbers, live 3-4 times over: the GEMM output, its channel-major copy and their
        gradients) plus a fixed ~13 MiB (V and its gradient), against about 77 KiB per edge
        for the per-edge form. This form is used whenever the radial is the spline: it needs
        less memory from ~20 neighbours per atom up (4x less at 78, fcc Cu at 6 Å) and more
        below, e.g. for one small molecule (15-atom AcAc at 5 Å, 12 neighbours: 26 against
        14 MiB). It also counts more matmul FLOPs (``large`` E+F 162 against 105 MFLOP per
        atom at 78 neighbours): the moment GEMM is dense over the K' spline functions, of
        which only 4 are non-zero at any r.
        """
        control = self.radial.linear_weights()  # (K', P C)
        n_basis = control.shape[0]
        d_edge = outer_padded.shape[1] // n_basis
        d_in = self.d_in
        # (R, D_in C), sender-major
        up = self.up(features).transpose(0, 1).reshape(features.shape[1], d_in * self.channels)
        # row n_atoms (the tables' padding sender) of the extended table is zero: padding rows
        # gather it (and index_select saves only the index for backward, unlike index_copy,
        # which keeps its source alive). Rows between R and n_atoms exist only when R is below
        # the graph's atom count (restricted layers, a layer of a chunk) and are never gathered.
        zero_rows = torch.zeros(
            (n_atoms + 1 - up.shape[0], up.shape[1]), dtype=up.dtype, device=up.device
        )
        extended = torch.cat([up, zero_rows], dim=0)
        rows = n_nodes * max_neighbors
        source_padded = extended.index_select(0, sender_padded[:rows])  # (N M, D_in C)
        moments = torch.bmm(
            outer_padded[:rows].reshape(n_nodes, max_neighbors, n_basis * d_edge).transpose(1, 2),
            source_padded.reshape(n_nodes, max_neighbors, d_in * self.channels),
        )  # (N, K' D, D_in C)
        control = control.reshape(n_basis, self.num_paths, self.channels)
        if d_in == 1:
            moments = moments.reshape(n_nodes, n_basis, d_edge, self.channels)
            control = control.index_select(1, self.edge_degrees)  # (K', D, C)
            return (moments * control.unsqueeze(0)).sum(1).transpose(0, 1)  # (D, N, C)
        # V[c, (k, b, s), d] = sum_p W[k, p, c] G_p[b, s, d]
        coupled = torch.matmul(control.permute(2, 0, 1), self.message.path_coupling)
        coupled = coupled.reshape(self.channels, n_basis * d_edge * d_in, d_edge)
        moments = moments.reshape(n_nodes, n_basis * d_edge * d_in, self.channels)
        moments = moments.permute(2, 0, 1).contiguous()  # (C, N, K' D D_in)
        return torch.bmm(moments, coupled).permute(2, 1, 0)  # (D, N, C)

    def _atomic_basis_edges(
        self,
        features: Tensor,
        edge_sh: Tensor,
        lengths: Tensor,
        sender: Tensor,
        receiver: Tensor,
        n_nodes: int,
    ) -> Tensor:
        """Atomic basis (D, n_nodes, C) of the first ``n_nodes`` receivers, by per-edge messages."""
        if n_nodes < features.shape[1]:  # restricted layer: keep the edges into its receivers
            keep = receiver < n_nodes
            edge_sh, lengths = edge_sh[keep], lengths[keep]
            sender, receiver = sender[keep], receiver[keep]
        radial = self.radial(lengths).reshape(-1, self.num_paths, self.channels)
        up = self.up(features)
        if self.lmax_in == 0:
            # paths (0, l, l): the coupling is the identity, m = Y_lm R_l h_j (outer product)
            weighted = radial * up[0].index_select(0, sender).unsqueeze(1)  # (E, P, C)
            messages = edge_sh.unsqueeze(2) * weighted.index_select(1, self.edge_degrees)
        else:
            messages = self.message(up.transpose(0, 1).index_select(0, sender), edge_sh, radial)
        atomic_basis = torch.zeros(
            (n_nodes, messages.shape[1], self.channels),
            dtype=messages.dtype,
            device=messages.device,
        ).index_add_(0, receiver, messages)
        return atomic_basis.transpose(0, 1)

    def forward(
        self,
        features: Tensor,
        species: Tensor,
        edge_sh: Tensor,
        lengths: Tensor,
        sender: Tensor,
        receiver: Tensor,
        inv_avg_neighbors: Tensor,
        tables: dict[str, Tensor],
        max_neighbors: int,
        n_nodes: int,
    ) -> tuple[Tensor, Tensor]:
        """features (D_in, R, C) -> (D_out, n_nodes, C) and energy contributions (n_nodes, O),
        O = 1, or one column per head with ``head_readout``.

        Outputs are for the first ``n_nodes`` atoms (receivers); ``features`` are those of the
        senders, R >= n_nodes; ``species`` (N,) covers all N >= R atoms of the graph. For a
        species-factorised first layer, ``features`` is the embedding table (1, S, C).
        ``tables`` holds the padded neighbour tables of :meth:`GMEP._neighbor_tables`.
        """
        n_atoms = species.shape[0]
        species = species[:n_nodes]
        if self.species_factorised:
            atomic_basis = self._atomic_basis_species(
                features, n_nodes, tables["outer"], tables["species_slot"]
            )
        elif self.receiver_gemm and (sender.shape[0] >= self.receiver_min_neighbors * n_nodes):
            atomic_basis = self._atomic_basis_receiver_gemm(
                features, tables["outer"], tables["sender"], max_neighbors, n_nodes, n_atoms
            )
        else:
            atomic_basis = self._atomic_basis_edges(
                features, edge_sh, lengths, sender, receiver, n_nodes
            )
        atomic_basis = (atomic_basis * inv_avg_neighbors).contiguous()
        mixed = self.gate(self.mixer(atomic_basis, species))  # (D_out, N, C)
        skip_linear = self.skip
        if skip_linear is not None:
            skip = skip_linear(features[: self.d_skip, :n_nodes])
            if self.d_skip < self.d_out:
                mixed = torch.cat([mixed[: self.d_skip] + skip, mixed[self.d_skip :]], dim=0)
            else:
                mixed = mixed + skip
        return mixed, self.readout(mixed[0])


class GMEP(AtomicEnergyModel):
    """Grid-Mixing Equivariant Potential: graph dict -> per-atom and total energy (float64).

    Args:
        config: :class:`GMEPConfig`.
        dtype: compute dtype (float32 or float64). Outputs are always float64.
        preset: name recorded in :attr:`config` (informational).

    Attributes:
        cutoff: Å.
        species: atomic numbers in model order.
        model_dtype: compute dtype.
        config: JSON-serialisable dict; ``mlip.models.build_model(**model.config)`` rebuilds
            the same architecture.

        heads: head names (empty for a model without ``heads``).
        required_inputs: graph fields beyond the geometry the model needs
            (``["charge", "spin"]`` with ``charge_spin``).

    Buffers (saved in the state dict):
        avg_num_neighbors: scalar, message normalisation; (H,) with ``heads``.
        reference_energies: (S,) float64 eV, E0 per species; (H, S) with ``heads``.
        scale, shift: float64 scalars, eV (shift is per atom); (H,) with ``heads``.
    """

    def __init__(
        self, config: GMEPConfig, dtype: torch.dtype = torch.float32, preset: str | None = None
    ) -> None:
        cfg = config
        if cfg.lmax_hidden > cfg.lmax:
            raise ValueError(f"lmax_hidden ({cfg.lmax_hidden}) must be <= lmax ({cfg.lmax})")
        if cfg.head_readout and not cfg.heads:
            raise ValueError("head_readout needs heads (the names of the levels of theory)")
        super().__init__(
            [int(z) for z in cfg.species],
            cfg.cutoff,
            dtype,
            {"name": "gmep", "preset": preset, **asdict(cfg)},
            cfg.avg_num_neighbors,
            heads=cfg.heads,
        )
        self.required_inputs = [keys.CHARGE, keys.SPIN] if cfg.charge_spin else []
        self.graph_state = (
            GraphStateEmbedding(
                cfg.channels,
                cfg.charge_spin,
                len(self.heads),
                max_charge=cfg.max_charge,
                max_multiplicity=cfg.max_multiplicity,
            )
            if cfg.charge_spin or len(self.heads) > 1
            else None
        )
        species_only_input = self.graph_state is None

        self.embedding = nn.Parameter(torch.randn(len(self.species), cfg.channels))
        self.edge_sh = SphericalHarmonics(cfg.lmax)
        layers = []
        lmax_in = 0
        for t in range(cfg.num_layers):
            last = t == cfg.num_layers - 1
            lmax_out = 0 if last else cfg.lmax_hidden
            layers.append(_Interaction(cfg, lmax_in, lmax_out, last, t > 0, species_only_input))
            lmax_in = lmax_out
        self.layers = nn.ModuleList(layers)
        self.first_layer_factorised: bool = layers[0].species_factorised
        # layers on padded per-receiver neighbour tables (spline radial): all share one table
        self.uses_tables: bool = any(
            layer.species_factorised or layer.receiver_gemm for layer in layers
        )
        self.finish_init()

    # ------------------------------------------------------------------ forward
    def _neighbor_tables(
        self,
        edge_sh: Tensor,
        lengths: Tensor,
        sender: Tensor,
        receiver: Tensor,
        species: Tensor,
        n_nodes: int,
    ) -> tuple[dict[str, Tensor], int]:
        """Zero-padded tables of the first ``n_nodes`` atoms (N M rows, M = most neighbours), M.

        Every receiver must be < ``n_nodes`` (all atoms unless ``layer_receivers`` is given).

        Row ``i * M + m`` is the m-th neighbour of atom i. Returns ``outer`` (N M, K' D): spline
        basis times edge harmonics (zero on padding rows); ``sender`` (N M,): sender atom, the
        graph's atom count ``species.shape[0]`` on padding rows; ``species_slot`` (N M,):
        ``i * S + species(sender)``. The spline basis is the same in every layer (same cutoff
        and size), so one table serves all of them.
        """
        tables: dict[str, Tensor] = {}
        if not self.uses_tables:
            return tables, 1
        device = receiver.device
        slot, max_neighbors = padded_slots(receiver, n_nodes)
        rows = n_nodes * max_neighbors
        basis = self.layers[0].radial.basis(lengths)  # (E, K')
        basis_padded = torch.zeros(
            (rows, basis.shape[1]), dtype=basis.dtype, device=device
        ).index_copy(0, slot, basis)
        sh_padded = torch.zeros(
            (rows, edge_sh.shape[1]), dtype=edge_sh.dtype, device=device
        ).index_copy(0, slot, edge_sh)
        tables["outer"] = (basis_padded.unsqueeze(2) * sh_padded.unsqueeze(1)).reshape(rows, -1)
        sender_padded = torch.full((rows,), species.shape[0], dtype=sender.dtype, device=device)
        sender_padded = sender_padded.index_copy(0, slot, sender)
        tables["sender"] = sender_padded
        extended_species = torch.cat([species, torch.zeros_like(species[:1])])
        row_receiver = torch.arange(rows, device=device) // max_neighbors
        tables["species_slot"] = row_receiver * len(self.species) + extended_species.index_select(
            0, sender_padded
        )
        return tables, max_neighbors

    def _geometry(
        self, data: dict[str, Tensor], species: Tensor, n_receivers: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], int]:
        """Edge harmonics (E, D) and lengths (E,) Å of ``data``'s edges, its neighbour tables
        (:meth:`_neighbor_tables` of the first ``n_receivers`` atoms) and their width M."""
        edge_index = data[keys.EDGE_INDEX]
        vectors = self.edge_vectors(data)
        lengths = torch.linalg.norm(vectors, dim=-1)
        edge_sh = self.edge_sh(vectors)
        tables, max_neighbors = self._neighbor_tables(
            edge_sh, lengths, edge_index[1], edge_index[0], species, n_receivers
        )
        return edge_sh, lengths, tables, max_neighbors

    def _initial_features(self, data: dict[str, Tensor], species: Tensor, heads: Tensor) -> Tensor:
        """Input of layer 0: (1, N, C), or the species table (1, S, C) when it is factorised.

        The embedding of each atom's species plus, with a graph state (charge/spin, several
        heads), its structure's state vector; no dependence on positions.
        """
        if self.first_layer_factorised:
            features = self.embedding.unsqueeze(0)  # (1, S, C): per-species table
        else:
            features = self.embedding.index_select(0, species).unsqueeze(0)  # (1, N, C)
        graph_state = self.graph_state
        if graph_state is not None:
            state = graph_state(data, heads)  # (B, C)
            features = features + state.index_select(0, data[keys.BATCH]).unsqueeze(0)
        return features

    def _layer(
        self,
        t: int,
        features: Tensor,
        species: Tensor,
        atom_heads: Tensor,
        edge_index: Tensor,
        geometry: tuple[Tensor, Tensor, dict[str, Tensor], int],
        n_receivers: int,
    ) -> tuple[Tensor, Tensor]:
        """Layer t: output features (D_out, n_receivers, C) and the receivers' learned energy
        contributions (n_receivers,), model dtype. The one place a layer's energy contribution
        is formed (with ``head_readout``: the column of each atom's head, ``atom_heads`` (N,)),
        for :meth:`forward` and :meth:`layer_forward` alike."""
        edge_sh, lengths, tables, max_neighbors = geometry
        inv_avg = self.inverse_neighbors(atom_heads)  # scalar, or (N, 1) with heads
        if inv_avg.dim() > 0:
            inv_avg = inv_avg[:n_receivers]
        out = features
        contribution = features.new_zeros(0)
        for i, layer in enumerate(self.layers):  # TorchScript: a ModuleList takes no int index
            if i == t:
                out, contribution = layer(
                    features,
                    species,
                    edge_sh,
                    lengths,
                    edge_index[1],
                    edge_index[0],
                    inv_avg,
                    tables,
                    max_neighbors,
                    n_receivers,
                )
        if contribution.shape[1] > 1:  # head_readout: the column of each atom's head
            contribution = contribution.gather(1, atom_heads[:n_receivers].unsqueeze(1))
        return out, contribution.squeeze(1)

    @torch.jit.export
    def initial_features(self, data: dict[str, Tensor]) -> Tensor:
        """Input features of layer 0 of ``data``'s atoms: (1, N, C), or (1, S, C) per species
        when :attr:`first_layer_factorised`; they do not depend on positions (layer-by-layer
        evaluation, :mod:`mlip.chunked`)."""
        species = self._species(data[keys.ATOMIC_NUMBERS])
        heads = self._heads(data, data[keys.NUM_ATOMS].shape[0])
        return self._initial_features(data, species, heads)

    @torch.jit.export
    def layer_forward(
        self, t: int, features: Tensor, data: dict[str, Tensor], n_receivers: int
    ) -> tuple[Tensor, Tensor]:
        """Interaction layer t alone, on ``data``'s graph, for its first ``n_receivers`` atoms.

        Args:
            t: layer index, 0 <= t < num_layers.
            features: (D_t, N, C) input features of layer t of all N atoms of ``data``
                (:meth:`initial_features` for t = 0), model dtype.
            data: graph dict as for :meth:`forward`; every edge's receiver must be one of the
                first ``n_receivers`` atoms (a chunk of receivers followed by their senders).
            n_receivers: atoms whose layer-t output is computed.

        Returns:
            output features (D_{t+1}, n_receivers, C) (the input of layer t + 1) and the
            receivers' energy contributions (n_receivers,) of layer t, model dtype, unscaled
            (``atomic`` of :meth:`atom_energies` is their sum over layers).
        """
        if t < 0 or t >= len(self.layers):
            raise ValueError(
                "layer index " + str(t) + " out of range for " + str(len(self.layers)) + " layers"
            )
        species = self._species(data[keys.ATOMIC_NUMBERS])
        heads = self._heads(data, data[keys.NUM_ATOMS].shape[0])
        atom_heads = heads.index_select(0, data[keys.BATCH])
        geometry = self._geometry(data, species, n_receivers)
        return self._layer(
            t, features, species, atom_heads, data[keys.EDGE_INDEX], geometry, n_receivers
        )

    @torch.jit.export
    def atom_energies(self, atomic: Tensor, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """``energy`` (B,) and ``energies`` (N,), float64 eV, from the learned per-atom energy
        ``atomic`` (N,) (the sum of :meth:`layer_forward` contributions over layers), as
        :meth:`forward` ends. ``data`` needs atomic_numbers, batch, num_atoms (and head)."""
        batch = data[keys.BATCH]
        n_graphs = data[keys.NUM_ATOMS].shape[0]
        species = self._species(data[keys.ATOMIC_NUMBERS])
        return self.total_energy(atomic, species, batch, n_graphs, self._heads(data, n_graphs))

    def forward(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Energies of a batch.

        Args:
            data: ``AtomicGraph.as_dict()``: positions (N, 3) Å, atomic_numbers (N,),
                cell (B, 3, 3) Å, edge_index (2, E), cell_shifts (E, 3), batch (N,),
                num_atoms (B,); with ``charge_spin`` also charge (B,) and spin (B,) (float64
                holding integers); optionally head (B,) int64. Optional ``layer_receivers``
                (T,) int64, non-increasing: layer t computes features only for the first
                ``layer_receivers[t]`` atoms (every edge's receiver must be below
                ``layer_receivers[0]``); used by :mod:`mlip.chunked`, where only the first
                ``layer_receivers[-1]`` atoms' energies are exact and the other atoms of the
                chunk only need to be seen.

        Returns:
            ``energy`` (B,) eV and ``energies`` (N,) eV, float64.
        """
        positions = data[keys.POSITIONS]
        batch = data[keys.BATCH]
        n_graphs = data[keys.NUM_ATOMS].shape[0]
        species = self._species(data[keys.ATOMIC_NUMBERS])
        n_atoms = positions.shape[0]
        receivers: list[int] = [n_atoms for _ in range(len(self.layers))]
        if keys.LAYER_RECEIVERS in data:
            counts = data[keys.LAYER_RECEIVERS]
            for t in range(len(receivers)):
                receivers[t] = int(counts[t])
        geometry = self._geometry(data, species, receivers[0])
        heads = self._heads(data, n_graphs)
        atom_heads = heads.index_select(0, batch)
        features = self._initial_features(data, species, heads)
        atomic = torch.zeros(n_atoms, dtype=self.embedding.dtype, device=positions.device)
        for t in range(len(self.layers)):
            features, contribution = self._layer(
                t, features, species, atom_heads, data[keys.EDGE_INDEX], geometry, receivers[t]
            )
            if receivers[t] < n_atoms:
                contribution = torch.nn.functional.pad(contribution, [0, n_atoms - receivers[t]])
            atomic = atomic + contribution
        return self.total_energy(atomic, species, batch, n_graphs, heads)


def build_gmep(
    *,
    species: list[int],
    cutoff: float,
    preset: str | None = "small",
    dtype: torch.dtype | str = torch.float32,
    **hyper: Any,
) -> GMEP:
    """Build a :class:`GMEP` from a preset plus overrides.

    Args:
        species: atomic numbers.
        cutoff: Å.
        preset: ``"small"`` | ``"medium"`` | ``"large"`` (or None: dataclass defaults).
        dtype: torch dtype or ``"float32"``/``"float64"``.
        **hyper: any :class:`GMEPConfig` field, overriding the preset.
    """
    return build_from_preset(
        GMEP, GMEPConfig, PRESETS, "GMEP", species, cutoff, preset, dtype, hyper
    )
