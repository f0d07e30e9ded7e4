"""Training checkpoints: tensors and plain containers only, written atomically.

A checkpoint is a dict that ``torch.load(..., weights_only=True)`` can read: model, EMA and
optimiser state dicts, the scheduler and loop state as numbers, the configuration as a plain
dict, and the Python / NumPy / torch RNG states converted to tensors and lists. Modules are
never pickled.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "changed_keys",
    "load_checkpoint",
    "read_for_resume",
    "restore_rng_state",
    "save_checkpoint",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then
    ``os.replace``), so a crash leaves either the old or the new checkpoint, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when initialised) RNG states as tensors/lists."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configuration dicts (resume warnings);
    ``model.hyper`` compares as one value."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("hyper",):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def read_for_resume(
    path: Path, config: dict[str, Any], may_change: Sequence[str], report: bool
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` to resume from (None if there is none yet); with ``report``,
    warns about missing checkpoints and configuration keys that changed (except
    ``may_change``)."""
    log = logging.getLogger("mlip.train")
    if not path.exists():
        if report:
            log.warning("--resume: no %s yet, starting from scratch", path)
        return None
    checkpoint = load_checkpoint(path)
    changed = [k for k in changed_keys(checkpoint["config"], config) if k not in may_change]
    if changed and report:
        log.warning("resuming with a changed configuration: %s", ", ".join(changed))
    return checkpoint
