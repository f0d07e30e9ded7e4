"""One seeded split rule for in-memory frames and stores; splits saved in stores.

:func:`split_by_groups` is the rule: whole groups (a frame, an MPTrj ``mp_id``, a source file)
are permuted with the seed and assigned to parts by frame count. A split is a function of the
seed and the frames only, so every rank computes the same one; :func:`training_split` saves
it in a store once (only the caller allowed to write, i.e. rank 0) for ``mlip-data stats``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from training.data.frames import Frame
from training.data.store import Store
from training.errors import DataError

__all__ = ["load_split", "make_split", "save_split", "split_by_groups", "training_split"]

Source = Store | Sequence[Frame]


def split_by_groups(
    group_of: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Assign whole groups to parts at random, sized by ``fractions``.

    Args:
        group_of: (n_frames,) int group index of each frame (0..n_groups-1).
        fractions: part name -> fraction (normalised).
        seed: permutation seed.

    Returns:
        part name -> sorted int64 frame indices.
    """
    group_of = np.asarray(group_of, dtype=np.int64)
    n_frames = len(group_of)
    total = float(sum(fractions.values()))
    n_groups = int(group_of.max()) + 1 if n_frames else 0
    group_sizes = np.bincount(group_of, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    bounds = np.cumsum([f / total for f in fractions.values()]) * n_frames
    # Each group goes to the part whose frame range holds the midpoint of the group.
    midpoints = np.cumsum(group_sizes[order]) - group_sizes[order] / 2.0
    part_of_group = np.empty(n_groups, dtype=np.int64)
    part_of_group[order] = np.minimum(
        np.searchsorted(bounds, midpoints, side="right"), len(fractions) - 1
    )
    part_of_frame = part_of_group[group_of]
    return {
        part: np.nonzero(part_of_frame == i)[0].astype(np.int64) for i, part in enumerate(fractions)
    }


def _groups(source: Source, group_by: str | None) -> np.ndarray:
    n_frames = len(source)
    if group_by is None:
        return np.arange(n_frames)
    if group_by not in ("group_id", "source"):
        raise ValueError(f"group_by must be None, 'group_id' or 'source', got {group_by!r}")
    if isinstance(source, Store):
        if group_by == "source":
            return source.file["source_index"][:].astype(np.int64)
        labels = source.strings("group_id")
    else:
        labels = np.array([getattr(f, group_by) for f in source], dtype=object)
    if group_by == "group_id":  # frames with an empty group id are their own groups
        empty = labels == ""
        labels[empty] = np.array([f"\0{i}" for i in np.nonzero(empty)[0]], dtype=object)
    return np.unique(labels.astype(str), return_inverse=True)[1]


def make_split(
    source: Source | str | os.PathLike,
    fractions: dict[str, float] | None = None,
    *,
    group_by: str | None = None,
    seed: int = 0,
    name: str | None = "default",
) -> dict[str, np.ndarray]:
    """Split frames at random (or by group); save it in a store as ``/splits/<name>``.

    Args:
        source: a :class:`Store`, its path, or frames.
        fractions: part name -> fraction, e.g. ``{"train": 0.9, "valid": 0.1}`` (normalised).
        group_by: None for frame-level random; ``"group_id"`` (e.g. mp_id) or ``"source"`` keeps
            every group in one part. Frames with an empty group id are their own groups.
        seed: the split is a function of the seed and the frames only.
        name: for a store, save under this name (overwriting); None: do not save.

    Returns:
        part name -> sorted int64 frame indices.
    """
    if isinstance(source, (str, os.PathLike)):
        source = Store(source)
    fractions = fractions or {"train": 0.9, "valid": 0.1}
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {fractions}")
    split = split_by_groups(_groups(source, group_by), fractions, seed)
    if isinstance(source, Store) and name is not None:
        save_split(source, name, split, fractions, group_by, seed)
    return split


def save_split(
    store: Store,
    name: str,
    split: dict[str, np.ndarray],
    fractions: dict[str, float],
    group_by: str | None,
    seed: int,
) -> None:
    """Write ``split`` as ``/splits/<name>/<part>`` (one process only; see ``Store.writable``)."""
    with store.writable() as file:
        group_name = f"splits/{name}"
        if group_name in file:
            del file[group_name]
        group = file.create_group(group_name)
        group.attrs["seed"] = seed
        group.attrs["group_by"] = group_by or ""
        group.attrs["fractions"] = json.dumps(fractions)
        for part, indices in split.items():
            group.create_dataset(part, data=indices)


def load_split(store: Store | str | os.PathLike, name: str = "default") -> dict[str, np.ndarray]:
    """A split saved by :func:`make_split`: part name -> int64 frame indices."""
    store = store if isinstance(store, Store) else Store(store)
    group = store.file.get(f"splits/{name}")
    if group is None:
        available = list(store.file.get("splits", {}).keys())
        raise KeyError(f"{store.path} has no split {name!r}; available: {available}")
    fractions = json.loads(group.attrs["fractions"])
    parts = [p for p in fractions if p in group] + [p for p in group if p not in fractions]
    return {part: group[part][:] for part in parts}


def training_split(
    source: Source, n_frames: int, valid: float, seed: int, *, write: bool
) -> dict[str, np.ndarray]:
    """The train/valid split of ``mlip-train`` for a fractional ``data.valid``.

    Frame-level random split of the first ``n_frames`` frames with ``seed``. For a store it is
    saved once as ``/splits/mlip-train-seed<seed>-valid<valid>-n<n_frames>`` when ``write``
    (rank 0); a saved split of that name is read back instead of recomputed.

    Raises:
        ValueError: a part would be empty.
    """
    name = f"mlip-train-seed{seed}-valid{valid!r}-n{n_frames}"
    split = None
    if isinstance(source, Store) and f"splits/{name}" in source.file:
        split = load_split(source, name)
    if split is None:
        fractions = {"train": 1.0 - valid, "valid": valid}
        split = split_by_groups(np.arange(n_frames), fractions, seed)
        if isinstance(source, Store) and write:
            save_split(source, name, split, fractions, None, seed)
    if not len(split["valid"]) or not len(split["train"]):
        emptied = "none to train on" if not len(split["train"]) else "no validation structure"
        raise DataError(
            f"data.train has {n_frames} structure(s); holding out data.valid={valid} of them "
            f"leaves {emptied}. Give a separate validation file as data.valid, or more "
            "training structures"
        )
    return split
