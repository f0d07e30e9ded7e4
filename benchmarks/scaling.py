"""Scaling and memory: energy + forces from 1k to 100k atoms, GMEP and MACE, in one invocation.

Systems (``benchmarks/structures.py``): rattled fcc Cu and liquid water, cutoff 6 Å. Every point
runs in a fresh process (ours in this venv, MACE's with ``--mace-python``), so its peak memory is
its own: ``peak`` is the peak RSS during the energy + forces calls minus the RSS just before them
(model, graph and neighbour list already built). Each process limits its address space to
``--limit-gb`` so that a system that does not fit fails with an allocation error instead of
waking the OOM killer. Time is the median of ``--repeats`` calls after one warm-up call.

Both codes run with the same allocator setting (``mlip.allocator.keep_freed_memory``;
``--allocator default`` for glibc's defaults). Writes JSON and a PNG of time per atom.

    python benchmarks/scaling.py --mace-python /tmp/mace-venv/bin/python
    python benchmarks/scaling.py --systems copper --sizes 1372 4000 --runs medium:float32
    python benchmarks/scaling.py --systems copper --sizes 4000 97556 \
        --runs medium:float32:chunked --chunk-budget-gb 8 --repeats 1 --warmup 0 --limit-gb 12

A ``:chunked`` run evaluates through :class:`mlip.chunked.ChunkedEvaluator` with a memory budget
of ``--chunk-budget-gb`` (or ``--chunk-atoms`` atoms per chunk), layer by layer for GMEP; a
``:halo`` run does the same with the receptive-field halo method. Their rows add ``chunks`` and
the evaluator's whole-structure memory estimate ``estimated_bytes_per_atom``. Every row has
``cpu_seconds`` and ``sys_seconds``: user + system and system CPU time per timed call (mean;
system time is mostly page faults), next to the wall-clock ``seconds`` (median).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import structures  # noqa: E402

CUTOFF = 6.0


def gmep_worker(args: dict) -> dict:
    """One GMEP point in this process: time and peak memory of energy + forces."""
    measure.limit_address_space(args["limit_gb"])
    from mlip.allocator import keep_freed_memory

    tuned = keep_freed_memory() if args["allocator"] == "tuned" else False
    import torch

    from mlip import AtomicGraph
    from mlip.chunked import ChunkedEvaluator
    from mlip.derivatives import ForceStress
    from mlip.models import build_model

    torch.set_num_threads(args["threads"])
    build, _, species = structures.SYSTEMS[args["system"]]
    atoms = build(args["n_atoms"])
    start = time.perf_counter()
    graph = AtomicGraph.from_atoms(atoms, CUTOFF)
    neighbor_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    model = build_model(species=species, cutoff=CUTOFF, preset=args["preset"], dtype=args["dtype"])
    model.set_statistics(avg_num_neighbors=graph.num_edges / len(atoms))
    model.eval().requires_grad_(False)  # inference, as in the calculator
    wrapper = ForceStress(model, compute_forces=True)
    data = graph.as_dict()
    if args["chunked"]:
        evaluator = ChunkedEvaluator(
            wrapper,
            model.config["num_layers"],
            memory_budget=args["chunk_budget_gb"] * 2**30,
            chunk_atoms=args["chunk_atoms"],
        )
        evaluator.layerwise = evaluator.layerwise and not args["halo"]

        def call() -> None:
            evaluator(graph, "cpu", stress=False)["forces"].sum().item()

    else:

        def call() -> None:
            wrapper(data)["forces"].sum().item()

    row = {
        "code": "gmep",
        "model": f"GMEP {args['preset']}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "n_edges": graph.num_edges,
        "neighbor_seconds": neighbor_seconds,
        "allocator": "tuned" if tuned else "default",
    }
    rss_before = measure.rss_bytes()
    try:
        for _ in range(args["warmup"]):
            call()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        seconds = measure.median_seconds(call, args["repeats"], warmup=0)
    except RuntimeError as error:
        if "alloc" not in str(error).lower() and "memory" not in str(error).lower():
            raise
        return {**row, "oom": True, "error": str(error)[:200]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row["sys_seconds"] = (usage.ru_stime - usage_before.ru_stime) / args["repeats"]
    row["cpu_seconds"] = (usage.ru_utime - usage_before.ru_utime) / args["repeats"]
    row["cpu_seconds"] += row["sys_seconds"]
    if args["chunked"]:
        row["method"] = "layerwise" if evaluator.layerwise else "halo"
        row["chunks"] = evaluator.last_chunks
        # layer by layer: layer graphs kept for their backward, and rebuilt for lack of budget
        row["kept_graphs"] = getattr(evaluator, "last_kept", None)
        row["recomputed_graphs"] = getattr(evaluator, "last_recomputed", None)
        if evaluator.bytes_per_atom_layer is not None:  # None: --chunk-atoms, no probe
            row["estimated_bytes_per_atom"] = evaluator.bytes_per_atom_layer * evaluator.hops
    return {**row, "seconds": seconds, "peak_bytes": measure.peak_rss_bytes() - rss_before}


def run_point(command: list[str], payload: dict, timeout: float, env: dict | None) -> dict:
    """Run one worker process; return its JSON row (or a row saying why there is none)."""
    try:
        proc = subprocess.run(
            [*command, json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"timeout after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        killed = proc.returncode < 0 or "MemoryError" in proc.stderr
        return {"failed": ("out of memory: " if killed else "") + tail[0][:200]}
    return json.loads(lines[-1])


def describe(row: dict) -> str:
    if "failed" in row:
        return f"failed ({row['failed']})"
    if row.get("oom"):
        return "does not fit"
    cpu = row.get("cpu_seconds")
    cpu_text = (
        ""
        if cpu is None
        else f"(CPU {cpu / row['n_atoms'] * 1e6:.1f}, sys {row['sys_seconds']:.1f} s)  "
    )
    return (
        f"{row['seconds'] * 1e3:10.1f} ms  {row['seconds'] / row['n_atoms'] * 1e6:8.1f} µs/atom  "
        + cpu_text
        + f"{row['peak_bytes'] / 2**20:8.0f} MiB  {row['peak_bytes'] / row['n_atoms'] / 1024:6.1f} "
        "KiB/atom"
        + (f"  {row['chunks']} chunks" if row.get("chunks") else "")
        + (
            f" (layer graphs kept {row['kept_graphs']}, rebuilt {row['recomputed_graphs']})"
            if row.get("kept_graphs") is not None and row.get("chunks")
            else ""
        )
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({row["system"] for row in rows})
    figure, axes = plt.subplots(1, len(systems), figsize=(5.5 * len(systems), 4), squeeze=False)
    for axis, system in zip(axes[0], systems):
        labels = sorted({row["label"] for row in rows if row["system"] == system})
        for label in labels:
            points = sorted(
                (row["n_atoms"], row["seconds"] / row["n_atoms"] * 1e6)
                for row in rows
                if row["system"] == system and row["label"] == label and "seconds" in row
            )
            if points:
                x, y = zip(*points)
                axis.plot(x, y, "o-" if label.startswith("GMEP") else "s--", label=label)
        axis.set(xscale="log", yscale="log", xlabel="atoms", ylabel="µs per atom (E + F)")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(f"{system}, cutoff {CUTOFF} Å, CPU")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(gmep_worker(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=["copper", "water"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default: all")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["small:float32", "medium:float32", "medium:float64"],
        help="GMEP PRESET:DTYPE pairs; PRESET:DTYPE:chunked evaluates in chunks (mlip.chunked), "
        "PRESET:DTYPE:halo in chunks with the receptive-field halo method",
    )
    parser.add_argument(
        "--chunk-budget-gb", type=float, default=6.0, help="memory budget of chunked runs"
    )
    parser.add_argument(
        "--chunk-atoms", type=int, default=None, help="atoms per chunk (overrides the budget)"
    )
    parser.add_argument("--mace-python", default=None)
    parser.add_argument("--mace-dtypes", nargs="+", default=["float32"])
    parser.add_argument("--mace-max-atoms", type=int, default=32000)
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    parser.add_argument(
        "--preload",
        default=None,
        help="malloc library to LD_PRELOAD into every worker, e.g. libtcmalloc_minimal.so.4 "
        "(implies --allocator default)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--limit-gb", type=float, default=22.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per point")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.json"))
    parser.add_argument("--replot", type=Path, default=None, help="redraw the PNG of a JSON")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text())["rows"], args.replot.with_suffix(".png"))
        return

    if args.preload:
        args.allocator = "default"
        os.environ["LD_PRELOAD"] = args.preload  # inherited by every worker, ours and MACE's
    common = {
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "allocator": args.allocator,
        "limit_gb": args.limit_gb,
        "chunk_budget_gb": args.chunk_budget_gb,
        "chunk_atoms": args.chunk_atoms,
    }
    mace_env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # e3nn 0.4 constants
    jobs = []
    for system in args.systems:
        sizes = sorted(structures.SYSTEMS[system][1])
        if args.sizes:
            sizes = [n for n in sizes if n in args.sizes]
        for run in args.runs:
            preset, dtype, *mode = run.split(":")
            chunked = mode in (["chunked"], ["halo"])
            jobs.append(
                (
                    system,
                    sizes,
                    f"GMEP {preset} {dtype}" + (f" {mode[0]}" if chunked else ""),
                    [sys.executable, __file__, "--worker"],
                    {
                        "preset": preset,
                        "dtype": dtype,
                        "chunked": chunked,
                        "halo": mode == ["halo"],
                    },
                    None,
                )
            )
        if args.mace_python:
            for dtype in args.mace_dtypes:
                mace_sizes = [n for n in sizes if n <= args.mace_max_atoms]
                worker = [args.mace_python, str(Path(__file__).parent / "mace_worker.py")]
                jobs.append(
                    (system, mace_sizes, f"MACE {dtype}", worker, {"dtype": dtype}, mace_env)
                )

    import torch

    meta = {
        "benchmark": "scaling",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cutoff": CUTOFF,
        "preload": args.preload,
        **common,
    }
    rows = []
    allocator = args.preload or f"glibc ({args.allocator})"
    print(f"{args.threads} threads, allocator {allocator}, limit {args.limit_gb} GB")
    for system, sizes, label, command, extra, env in jobs:
        for n in sizes:
            payload = {**common, **extra, "system": system, "n_atoms": n}
            row = {**run_point(command, payload, args.timeout, env), **payload, "label": label}
            rows.append(row)
            print(f"{system:7s} {label:22s} {n:7d}  {describe(row)}", flush=True)
            measure.write_record(args.out, meta, rows)  # after every point: a crash keeps them
            if "failed" in row or row.get("oom"):
                break  # larger systems of this run will not fit either
    png = args.out.with_suffix(".png")
    plot(rows, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
