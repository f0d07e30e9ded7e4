"""Per-structure state embedding: total charge, spin multiplicity and level-of-theory head.

In the spirit of fairchem's UMA: each integer input picks a row of its own learned table, the
rows are concatenated and mixed by ``SiLU(Linear(.))`` into one vector per structure, which the
model adds to the initial (scalar, l = 0) features of that structure's atoms. Scalars only, so
rotation equivariance is untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlip import keys

__all__ = ["GraphStateEmbedding"]


class GraphStateEmbedding(nn.Module):
    """(B, C) state vectors from ``charge`` (e), ``spin`` (2S + 1) and ``head`` of a batch.

    Args:
        channels: C.
        charge_spin: embed the total charge (integer in ``[-max_charge, max_charge]``) and the
            spin multiplicity (integer in ``[1, max_multiplicity]``); both become required
            inputs.
        num_heads: embed the head index too when > 1 (``head`` absent means head 0).
        max_charge: largest |total charge| the table covers.
        max_multiplicity: largest multiplicity the table covers.
    """

    def __init__(
        self,
        channels: int,
        charge_spin: bool,
        num_heads: int,
        max_charge: int = 10,
        max_multiplicity: int = 11,
    ) -> None:
        super().__init__()
        if max_charge < 0 or max_multiplicity < 1:
            raise ValueError(
                f"need max_charge >= 0 and max_multiplicity >= 1, got {max_charge}, "
                f"{max_multiplicity}"
            )
        self.charge_spin = bool(charge_spin)
        self.use_head = num_heads > 1
        self.max_charge = int(max_charge)
        self.max_multiplicity = int(max_multiplicity)
        n_charge = 2 * self.max_charge + 1 if self.charge_spin else 0
        n_spin = self.max_multiplicity if self.charge_spin else 0
        n_head = num_heads if self.use_head else 0
        # unused tables have zero rows, so TorchScript sees plain parameters either way
        self.charge_table = nn.Parameter(torch.randn(n_charge, channels))
        self.spin_table = nn.Parameter(torch.randn(n_spin, channels))
        self.head_table = nn.Parameter(torch.randn(n_head, channels))
        n_parts = (2 if self.charge_spin else 0) + (1 if self.use_head else 0)
        if n_parts == 0:
            raise ValueError("GraphStateEmbedding needs charge_spin or more than one head")
        self.mix = nn.Linear(n_parts * channels, channels)

    def _integer_rows(self, data: dict[str, Tensor], name: str, low: int, high: int) -> Tensor:
        """Row indices ``value - low`` of an integer-valued float field, range-checked."""
        if name not in data:
            raise ValueError(
                "this model needs the total charge and spin multiplicity of every structure, "
                + "but the input has no '"
                + name
                + "'"
            )
        value = data[name]
        rounded = torch.round(value)
        bad = (rounded != value) | (rounded < low) | (rounded > high)
        if bool(bad.any()):
            first = float(value[bad][0])
            raise ValueError(
                name
                + " must be an integer in ["
                + str(low)
                + ", "
                + str(high)
                + "] for this model, got "
                + str(first)
            )
        return rounded.to(torch.int64) - low

    def forward(self, data: dict[str, Tensor], heads: Tensor) -> Tensor:
        """State vectors (B, C) in the tables' dtype; ``heads`` (B,) int64 head indices."""
        parts: list[Tensor] = []
        if self.charge_spin:
            charge_rows = self._integer_rows(data, keys.CHARGE, -self.max_charge, self.max_charge)
            spin_rows = self._integer_rows(data, keys.SPIN, 1, self.max_multiplicity)
            parts.append(self.charge_table.index_select(0, charge_rows))
            parts.append(self.spin_table.index_select(0, spin_rows))
        if self.use_head:
            parts.append(self.head_table.index_select(0, heads))
        return torch.nn.functional.silu(self.mix(torch.cat(parts, dim=1)))
