"""Make glibc keep freed memory for reuse, so large CPU tensors stop page-faulting on every call.

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB, rising dynamically to at most 32 MiB) with a fresh ``mmap`` and gives them back with
``munmap`` when freed. An energy + forces call allocates and frees the same multi-megabyte
tensors every time, so every call pays page faults and kernel zeroing for its whole working set.
On the 2-core CPU machine this made the ``medium`` model 2x slower at 1.4k atoms and 5x slower
at 8.8k atoms, and time per atom grew 4x from 500 to 8.8k atoms (``BENCHMARKS.md``).

:func:`keep_freed_memory` raises the mmap and trim thresholds with ``mallopt`` so that blocks up
to ``limit_bytes`` come from the heap and freed blocks stay there for the next call. The cost:
the process keeps its peak heap size until it exits. Blocks larger than ``limit_bytes`` (at most
2 GiB, ``mallopt`` takes an ``int``) are still mmapped; for those, starting Python with
``THP_MEM_ALLOC_ENABLE=1`` makes PyTorch ask for transparent huge pages.

The setting is process-wide and only exists for glibc (Linux); elsewhere the call is a no-op.
``MLIP_KEEP_FREED_MEMORY=0`` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_INT = 2**31 - 1
_applied_limit: int | None = None


def keep_freed_memory(limit_bytes: int = _MAX_INT) -> bool:
    """Serve and keep blocks up to ``limit_bytes`` in the malloc heap (glibc only).

    Args:
        limit_bytes: largest block, in bytes, taken from the heap rather than mmapped
            (1 MiB to 2 GiB - 1).

    Returns:
        True when the thresholds are set (now or by an earlier call), False where it does not
        apply: not Linux/glibc, or ``MLIP_KEEP_FREED_MEMORY=0``.
    """
    global _applied_limit
    if not 2**20 <= int(limit_bytes) <= _MAX_INT:
        raise ValueError(f"limit_bytes must be in [1 MiB, 2 GiB - 1], got {limit_bytes}")
    if os.environ.get("MLIP_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no"):
        return False
    if _applied_limit is not None and _applied_limit >= int(limit_bytes):
        return True
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit_bytes)) == 1
    ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, _MAX_INT) == 1
    if ok:
        _applied_limit = int(limit_bytes)
    return ok


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent in musl
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
