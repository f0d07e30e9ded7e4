"""Field registry: the one place that names every field of an :class:`~mlip.AtomicGraph`.

Batching, splitting, ``.to()`` and validation read :data:`FIELDS`; a key that is not here is an
error. Model inputs and outputs use the same string constants, so a typo is a NameError, not a
silent miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

POSITIONS: Final[str] = "positions"
ATOMIC_NUMBERS: Final[str] = "atomic_numbers"
CELL: Final[str] = "cell"
PBC: Final[str] = "pbc"
EDGE_INDEX: Final[str] = "edge_index"
CELL_SHIFTS: Final[str] = "cell_shifts"
BATCH: Final[str] = "batch"
NUM_ATOMS: Final[str] = "num_atoms"

ENERGY: Final[str] = "energy"
FORCES: Final[str] = "forces"
STRESS: Final[str] = "stress"
CHARGE: Final[str] = "charge"
SPIN: Final[str] = "spin"
HEAD: Final[str] = "head"

# Model outputs that are not graph fields.
ATOMIC_ENERGIES: Final[str] = "energies"
# Optional model input that is not a graph field: (T,) int64, atoms each interaction layer
# computes features for (chunked evaluation, see mlip.models.gmep.GMEP.forward).
LAYER_RECEIVERS: Final[str] = "layer_receivers"


@dataclass(frozen=True)
class FieldSpec:
    """How one field is laid out.

    Attributes:
        scope: ``"node"`` (leading dim N atoms), ``"edge"`` (leading dim E edges; for
            ``edge_index`` the *second* dim), or ``"graph"`` (leading dim B structures).
        dtype: the torch dtype the field is stored in.
        trailing_shape: shape after the scope dimension.
        label: True for optional training labels.
        optional_input: True for a model input that may be absent; absent means 0 (batching
            fills it with zeros for structures that lack it).
    """

    scope: str
    dtype: torch.dtype
    trailing_shape: tuple[int, ...]
    label: bool = False
    optional_input: bool = False


FIELDS: Final[dict[str, FieldSpec]] = {
    POSITIONS: FieldSpec("node", torch.float64, (3,)),
    ATOMIC_NUMBERS: FieldSpec("node", torch.int64, ()),
    CELL: FieldSpec("graph", torch.float64, (3, 3)),
    PBC: FieldSpec("graph", torch.bool, (3,)),
    EDGE_INDEX: FieldSpec("edge", torch.int64, (2,)),
    CELL_SHIFTS: FieldSpec("edge", torch.int64, (3,)),
    BATCH: FieldSpec("node", torch.int64, ()),
    NUM_ATOMS: FieldSpec("graph", torch.int64, ()),
    ENERGY: FieldSpec("graph", torch.float64, (), label=True),
    FORCES: FieldSpec("node", torch.float64, (3,), label=True),
    STRESS: FieldSpec("graph", torch.float64, (3, 3), label=True),
    CHARGE: FieldSpec("graph", torch.float64, (), label=True),
    SPIN: FieldSpec("graph", torch.float64, (), label=True),
    # index of the level-of-theory head of each structure (0 when absent)
    HEAD: FieldSpec("graph", torch.int64, (), optional_input=True),
}

REQUIRED_FIELDS: Final[tuple[str, ...]] = tuple(
    k for k, v in FIELDS.items() if not (v.label or v.optional_input)
)
LABEL_FIELDS: Final[tuple[str, ...]] = tuple(k for k, v in FIELDS.items() if v.label)
OPTIONAL_INPUT_FIELDS: Final[tuple[str, ...]] = tuple(
    k for k, v in FIELDS.items() if v.optional_input
)
