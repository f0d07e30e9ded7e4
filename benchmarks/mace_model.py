"""The MACE model every benchmark compares against (imported only in a mace-torch venv).

An untrained ``ScaleShiftMACE`` like MACE-MP "small": hidden_irreps=128x0e, max_ell=3,
correlation=3, 2 residual interactions, 8 Bessel functions, polynomial cutoff p=5, radial MLP
[64, 64, 64], 16x0e readout MLP, in torch's default dtype (set by the calling worker).
"""

from __future__ import annotations

import numpy as np
import torch
from e3nn import o3
from mace import modules


def build_mace(species: list[int], cutoff: float, avg_num_neighbors: float) -> torch.nn.Module:
    """``ScaleShiftMACE`` for atomic numbers ``species`` with r_max = ``cutoff`` Å."""
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=cutoff,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=2,
        num_elements=len(species),
        hidden_irreps=o3.Irreps("128x0e"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(species)),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(species),
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
