"""Plain multilayer perceptrons with SiLU, as used by the invariant-message models."""

from __future__ import annotations

from torch import nn

__all__ = ["mlp"]


def mlp(widths: list[int], bias: bool = True, final_activation: bool = False) -> nn.Sequential:
    """``Linear -> SiLU -> ... -> Linear`` through ``widths`` (input, hidden..., output).

    Args:
        widths: layer widths, at least two.
        bias: biases on every linear layer. Without them ``mlp(0) = 0``, which keeps an atom
            without neighbours at zero learned energy.
        final_activation: end with a SiLU as well.
    """
    if len(widths) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {widths}")
    layers: list[nn.Module] = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1], bias=bias))
        if k < len(widths) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)
