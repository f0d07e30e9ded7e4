"""mlip.allocator: large tensors come from (and return to) the malloc heap, not mmap."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from mlip.allocator import keep_freed_memory


def _has_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


# Allocates a 256 MiB tensor, frees it, allocates it again, and prints the bytes glibc had in
# mmapped blocks while the tensor was alive plus the bytes its heap keeps after the free.
_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from mlip.allocator import keep_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
    x = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB
    mmapped = libc.mallinfo2().hblkhd
    del x
    kept = libc.mallinfo2().fordblks
    print(applied, mmapped, kept)
    """
)


def _probe(mode: str) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_tensor_is_served_from_the_heap_and_kept() -> None:
    applied, mmapped, kept = _probe("tuned")
    assert applied
    assert mmapped < 2**27  # the 256 MiB tensor is not an mmapped block
    assert kept >= 2**28  # and its memory stays in the heap after it is freed


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_default_glibc_mmaps_large_tensors() -> None:
    """Control: without the call, the same tensor is mmapped (what the tuning removes)."""
    applied, mmapped, _ = _probe("default")
    assert not applied
    assert mmapped >= 2**28


def test_opt_out_and_bad_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLIP_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    with pytest.raises(ValueError, match="limit_bytes"):
        keep_freed_memory(10)
