"""Inference benchmark: energy + forces per call and per atom, GMEP presets (and MACE).

Rattled fcc Cu (``benchmarks/structures.py``: a = 3.61 Å, 0.05 Å rattle) with 108, 256, 1372
and 4000 atoms, cutoff 6 Å (78 neighbours per atom), float32, forces through
:class:`mlip.derivatives.ForceStress` (one backward pass), parameters frozen as in the
calculator. The neighbour list is built once, outside the timed region. CPU runs use
``torch.set_num_threads(--threads)`` (default 2); ``--device cuda`` times on a GPU with
synchronisation. Parameter counts and matmul FLOPs per atom (``FlopCounterMode``, forward and
forward+backward) are recorded for each preset.

Usage::

    python benchmarks/inference.py                       # all presets, grid + grid_mlp
    python benchmarks/inference.py --presets small --sizes 108 256 --out /tmp/bench.json
    python benchmarks/inference.py --mace-python /tmp/mace-venv/bin/python

MACE comparison (own venv, so its e3nn 0.4 does not clash with ours)::

    python3 -m venv /tmp/mace-venv
    /tmp/mace-venv/bin/pip install torch==2.13.0 mace-torch

With ``--mace-python`` each size runs ``benchmarks/mace_worker.py`` in that venv (one process per
size; the model is ``benchmarks/mace_model.py``'s, MACE-MP "small"-like) on the same structure.
Both codes use the same allocator setting (:func:`mlip.allocator.keep_freed_memory`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structures  # noqa: E402

from mlip.allocator import keep_freed_memory  # noqa: E402

SIZES = (108, 256, 1372, 4000)
CUTOFF = 6.0


def _time(
    fn, device: str, min_time: float, max_repeats: int, min_repeats: int = 3
) -> tuple[float, int]:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < min_repeats or time.perf_counter() - start < min_time
    ):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def count_flops(model: torch.nn.Module, data: dict) -> tuple[float, float]:
    """Matmul-type FLOPs of one energy call and of one energy + forces call."""
    from torch.utils.flop_counter import FlopCounterMode

    from mlip.derivatives import ForceStress

    with FlopCounterMode(display=False) as counter:
        model(data)  # not under no_grad: the module tracker needs grad_fns on views of params
    forward = counter.get_total_flops()
    # FlopCounterMode cannot run autograd.grad w.r.t. a leaf: pass non-leaf positions.
    positions = data["positions"].detach().requires_grad_(True) * 1.0
    with FlopCounterMode(display=False) as counter:
        ForceStress(model, True, False).eval()({**data, "positions": positions})
    return float(forward), float(counter.get_total_flops())


def bench_gmep(args: argparse.Namespace) -> list[dict]:
    from mlip.derivatives import ForceStress
    from mlip.graph import AtomicGraph
    from mlip.models import build_model
    from mlip.nn.harmonics import num_sh

    rows = []
    graphs = {}
    for n in args.sizes:
        graphs[n] = AtomicGraph.from_atoms(structures.copper(n), CUTOFF).to(args.device)
    for preset in args.presets:
        for mixer in args.mixers:
            torch.manual_seed(0)
            model = build_model(species=[29], cutoff=CUTOFF, preset=preset, mixer=mixer)
            model.set_statistics(avg_num_neighbors=78.0)
            model = model.to(args.device).eval()
            params = sum(p.numel() for p in model.parameters())
            flop_graph = graphs.get(256) or graphs[args.sizes[0]]
            fwd, ef = count_flops(model, flop_graph.as_dict())
            n_flop = flop_graph.positions.shape[0]
            model.requires_grad_(False)  # inference, as in the calculator
            wrapper = ForceStress(model, True, False).eval()
            cfg = model.config
            for n, graph in graphs.items():
                # The (E, D, C) message tensor dominates memory; skip what would not fit.
                floats = graph.num_edges * num_sh(cfg["lmax"]) * cfg["channels"] * 4
                if floats * 4 > args.max_gb * 1e9:
                    print(f"skip {preset}/{mixer}/{n}: ~{floats * 16 / 1e9:.1f} GB")
                    continue
                data = graph.as_dict()
                seconds, repeats = _time(
                    functools.partial(wrapper, data),
                    args.device,
                    args.min_time,
                    20,
                    args.min_repeats,
                )
                row = {
                    "model": "gmep",
                    "preset": preset,
                    "mixer": mixer,
                    "n_atoms": n,
                    "n_edges": graph.num_edges,
                    "parameters": params,
                    "fwd_mflop_per_atom": fwd / n_flop / 1e6,
                    "ef_mflop_per_atom": ef / n_flop / 1e6,
                    "seconds_per_call": seconds,
                    "us_per_atom": seconds / n * 1e6,
                    "repeats": repeats,
                }
                rows.append(row)
                print(_format(row), flush=True)
    return rows


def bench_mace(args: argparse.Namespace) -> list[dict]:
    """MACE on the same structures, one ``mace_worker.py`` process per size."""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # e3nn 0.4 constants
    worker = Path(__file__).with_name("mace_worker.py")
    rows = []
    for n in [n for n in args.sizes if n <= args.mace_max_atoms]:
        payload = {"system": "copper", "n_atoms": n, "threads": args.threads, "repeats": 3}
        proc = subprocess.run(
            [args.mace_python, str(worker), json.dumps(payload)],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines or "seconds" not in json.loads(lines[-1]):
            print(f"MACE at {n} atoms failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(lines[-1])
        row = {
            "model": "mace",
            "preset": "128x0e-L3-nu3",
            "mixer": "-",
            "n_atoms": n,
            "n_edges": result["n_edges"],
            "parameters": result["parameters"],
            "seconds_per_call": result["seconds"],
            "us_per_atom": result["seconds"] / n * 1e6,
            "repeats": 3,
        }
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _format(row: dict) -> str:
    flops = f"{row['ef_mflop_per_atom']:8.2f}" if "ef_mflop_per_atom" in row else "       -"
    return (
        f"{row['model']:5s} {row['preset']:13s} {row['mixer']:8s} {row['n_atoms']:5d} "
        f"{row['parameters']:9d} {flops} {row['seconds_per_call'] * 1e3:10.2f} "
        f"{row['us_per_atom']:9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="4 k^3 atoms")
    parser.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--mixers", nargs="+", default=["grid", "grid_mlp"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip larger message tensors")
    parser.add_argument("--mace-python", default=None, help="python of a venv with mace-torch")
    parser.add_argument("--mace-max-atoms", type=int, default=4000)
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print(f"torch {torch.__version__}, {args.device}, {args.threads} threads")
    print(
        f"{'model':5s} {'preset':13s} {'mixer':8s} {'atoms':>5s} {'params':>9s} "
        f"{'EF MFLOP/at':>8s} {'ms/call':>10s} {'us/atom':>9s}"
    )
    rows = bench_gmep(args)
    if args.mace_python:
        rows += bench_mace(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "cutoff": CUTOFF,
        "dtype": "float32",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
