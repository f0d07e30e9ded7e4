"""MACE side of the training-throughput benchmark (run by the python of a mace-torch venv).

Times optimiser steps of an untrained ``ScaleShiftMACE`` (128x0e, max_ell 3, correlation 3,
2 interactions) on prebuilt batches: forward with ``training=True`` (forces by a
double-differentiable gradient), MACE's own weighted E/F(/S) loss, backward, Adam step. Prints
one JSON line.

    /tmp/mace-venv/bin/python benchmarks/mace_train_worker.py '{"dataset": "acac"}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import training_frames  # noqa: E402


def main() -> None:
    args = {"batch_size": 16, "steps": 20, "threads": 2, **json.loads(sys.argv[1])}
    measure.keep_freed_memory()
    import torch
    from mace import data, tools
    from mace.data.utils import KeySpecification
    from mace.modules.loss import WeightedEnergyForcesLoss, WeightedEnergyForcesStressLoss
    from mace.tools import torch_geometric
    from mace_model import build_mace

    torch.set_num_threads(args["threads"])
    torch.set_default_dtype(torch.float32)  # MACE's own process only
    torch.manual_seed(0)
    frames, cutoff, use_stress = training_frames.load(args["dataset"])
    species = training_frames.species(frames)
    keys = KeySpecification(
        info_keys={"energy": "REF_energy", **({"stress": "REF_stress"} if use_stress else {})},
        arrays_keys={"forces": "REF_forces"},
    )
    z_table = tools.AtomicNumberTable(species)
    items = []
    for original in frames:
        atoms = original.copy()  # the copy has no calculator: labels come from the original
        atoms.info["REF_energy"] = original.get_potential_energy()
        atoms.arrays["REF_forces"] = original.get_forces()
        if use_stress:
            atoms.info["REF_stress"] = original.get_stress(voigt=False)
        config = data.config_from_atoms(atoms, key_specification=keys)
        items.append(data.AtomicData.from_config(config, z_table=z_table, cutoff=cutoff))
    loader = torch_geometric.dataloader.DataLoader(
        items, batch_size=args["batch_size"], shuffle=False, drop_last=True
    )
    batches = list(loader)
    n_edges = sum(int(b.edge_index.shape[1]) for b in batches)
    n_atoms = sum(int(b.num_nodes) for b in batches)
    model = build_mace(species, cutoff, n_edges / n_atoms)
    if use_stress:
        loss_fn = WeightedEnergyForcesStressLoss(1.0, 10.0, 10.0)
    else:
        loss_fn = WeightedEnergyForcesLoss(1.0, 10.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch.to_dict(), training=True, compute_force=True, compute_stress=use_stress)
        loss = loss_fn(ref=batch, pred=out)
        loss.backward()
        optimizer.step()

    for batch in batches[:2]:
        step(batch)
    start = time.perf_counter()
    for i in range(args["steps"]):
        step(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    structures = args["steps"] * args["batch_size"]
    print(
        json.dumps(
            {
                "code": "mace",
                "model": "MACE 128x0e L3 nu3",
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds_per_step": seconds / args["steps"],
                "structures_per_second": structures / seconds,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
