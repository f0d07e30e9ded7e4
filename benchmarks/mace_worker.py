"""MACE side of the scaling benchmark: run by the python of a venv with mace-torch.

One structure per process, so the peak memory is that structure's. Prints one JSON line.
The model is ``benchmarks/mace_model.py``'s (MACE-MP "small"-like) with r_max = 6 Å.

    /tmp/mace-venv/bin/python benchmarks/mace_worker.py '{"system": "copper", "n_atoms": 1372}'
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
    z_table = tools.AtomicNumberTable(species)
    config = data.config_from_atoms(atoms)
    atomic = data.AtomicData.from_config(config, z_table=z_table, cutoff=6.0)
    loader = torch_geometric.dataloader.DataLoader([atomic], batch_size=1, shuffle=False)
    batch = next(iter(loader)).to_dict()
    n_edges = int(batch["edge_index"].shape[1])
    model = build_mace(species, 6.0, n_edges / len(atoms)).eval()
    model.requires_grad_(False)  # inference, as in MACECalculator

    def call() -> None:
        model(batch, training=False, compute_force=True)["forces"].sum().item()

    row = {
        "code": "mace",
        "model": "MACE 128x0e L3 nu3",
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
