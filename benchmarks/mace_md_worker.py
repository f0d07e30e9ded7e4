"""MACE side of the MD benchmark: ``MACECalculator`` in NVE (run by a mace-torch venv's python).

/tmp/mace-venv/bin/python benchmarks/mace_md_worker.py '{"n_atoms": 1372, "steps": 5}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import md_run  # noqa: E402
import measure  # noqa: E402
import structures  # noqa: E402


def main() -> None:
    args = {"threads": 2, "steps": 5, "limit_gb": 22.0, **json.loads(sys.argv[1])}
    measure.limit_address_space(args["limit_gb"])
    measure.keep_freed_memory()
    import torch
    from mace.calculators import MACECalculator
    from mace_model import build_mace

    torch.set_num_threads(args["threads"])
    torch.set_default_dtype(torch.float32)  # MACE's own process only
    torch.manual_seed(0)
    atoms = structures.copper(args["n_atoms"])
    model = build_mace([29], args["cutoff"], args["avg_num_neighbors"]).eval()
    calculator = MACECalculator(models=model, device="cpu", default_dtype="float32")
    try:
        row = md_run.time_md(atoms, calculator, args["steps"])
    except RuntimeError as error:
        if "alloc" not in str(error).lower():
            raise
        row = {"oom": True}
    print(json.dumps({"code": "mace", "model": "MACE 128x0e L3 nu3", **row}), flush=True)


if __name__ == "__main__":
    main()
