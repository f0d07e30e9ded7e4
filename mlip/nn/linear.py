"""Per-degree linear maps on degree-major equivariant features.

Node features inside a layer are stored degree-major, ``(D, N, C)`` with ``D = (lmax + 1)^2``
spherical-harmonic components, so a per-degree linear map is one batched GEMM (``torch.bmm``)
and a move to a sphere grid is one plain GEMM.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DegreeLinear", "degree_index"]


def degree_index(lmax: int) -> torch.Tensor:
    """(D,) int64: the degree l of each of the (lmax + 1)^2 components."""
    return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.int64)


class DegreeLinear(nn.Module):
    """``out[lm] = in[lm] @ W_l`` (+ bias on l = 0): equivariant, mixes channels only.

    Args:
        lmax: maximum degree of input and output.
        in_channels: C_in.
        out_channels: C_out.
        bias: add a bias to the l = 0 component.

    Shapes:
        forward(features (D, N, C_in)) -> (D, N, C_out) with D = (lmax + 1)^2.
    """

    def __init__(self, lmax: int, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(
            torch.randn(lmax + 1, in_channels, out_channels) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("degrees", degree_index(lmax), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        if self.lmax == 0:
            out = features @ self.weight[0]
        else:
            out = torch.bmm(features, self.weight[self.degrees])
        bias = self.bias
        if bias is not None:
            out = torch.cat([out[:1] + bias, out[1:]], dim=0)
        return out
