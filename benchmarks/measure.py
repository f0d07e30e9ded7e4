"""Timing and memory helpers shared by benchmark workers (ours and MACE's venv: stdlib only)."""

from __future__ import annotations

import importlib.util
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def limit_address_space(gigabytes: float) -> None:
    """Make allocations beyond ``gigabytes`` of address space fail instead of OOM-killing."""
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keep_freed_memory() -> bool:
    """``mlip.allocator.keep_freed_memory``, loaded by path (MACE's venv has no mlip)."""
    spec = importlib.util.spec_from_file_location("_mlip_allocator", ROOT / "mlip/allocator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.keep_freed_memory()


def write_record(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write ``{"meta": meta + machine and Python, "rows": rows}`` as JSON to ``path``."""
    meta = {"machine": platform.platform(), "python": platform.python_version(), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")
