"""MACE side of the scaling benchmark: run by the python of a venv with mace-torch.

One structure per process, so the peak memory is that structure's. Prints one JSON line.
The model is ``benchmarks/mace_model.py``'s (MACE-MP "small"-like) with r_max = 6 Å.

    /tmp/mace-venv/bin/python benchmarks/mace_worker.py '{"system": "copper", "n_atoms": 1372}'

With ``"model_path"`` a trained MACE model file is timed instead (its own r_max).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import structures  # noqa: E402


def main() -> None:
    args = {
        "dtype": "float32",
        "threads": 2,
        "repeats": 2,
        "allocator": "tuned",
        "limit_gb": 22.0,
        "avg_num_neighbors": None,
        "model_path": None,
        **json.loads(sys.argv[1]),
    }
    measure.limit_address_space(args["limit_gb"])
    tuned = measure.keep_freed_memory() if args["allocator"] == "tuned" else False

    import torch
    from mace import data, tools
    from mace.tools import torch_geometric
    from mace_model import build_mace

    torch.set_num_threads(args["threads"])
    torch.set_default_dtype(getattr(torch, args["dtype"]))  # MACE's own process only
    build, _, species = structures.SYSTEMS[args["system"]]
    atoms = build(args["n_atoms"])
    trained = None
    cutoff = 6.0
    if args["model_path"] is not None:
        trained = torch.load(args["model_path"], map_location="cpu", weights_only=False)
        trained = trained.to(getattr(torch, args["dtype"]))
        cutoff = float(trained.r_max)
        species = [int(z) for z in trained.atomic_numbers]
    z_table = tools.AtomicNumberTable(species)
    config = data.config_from_atoms(atoms)
    atomic = data.AtomicData.from_config(config, z_table=z_table, cutoff=cutoff)
    loader = torch_geometric.dataloader.DataLoader([atomic], batch_size=1, shuffle=False)
    batch = next(iter(loader)).to_dict()
    n_edges = int(batch["edge_index"].shape[1])
    if trained is None:
        trained = build_mace(species, cutoff, n_edges / len(atoms))
        label = "MACE 128x0e L3 nu3"
    else:
        label = str(args["model_path"])
    model = trained.eval()
    model.requires_grad_(False)  # inference, as in MACECalculator

    def call() -> None:
        model(batch, training=False, compute_force=True)["forces"].sum().item()

    row = {
        "code": "mace",
        "model": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_edges": n_edges,
        "allocator": "tuned" if tuned else "default",
    }
    rss_before = measure.rss_bytes()
    try:
        seconds = measure.median_seconds(call, args["repeats"])
    except RuntimeError as error:  # allocation failure under the address-space limit
        if "alloc" not in str(error).lower() and "memory" not in str(error).lower():
            raise
        print(json.dumps({**row, "oom": True, "error": str(error)[:200]}), flush=True)
        return
    peak = measure.peak_rss_bytes() - rss_before
    print(json.dumps({**row, "seconds": seconds, "peak_bytes": peak}), flush=True)


if __name__ == "__main__":
    main()
