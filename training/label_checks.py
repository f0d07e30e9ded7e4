"""Checks on a training set before training: labels the loss weights, reference-energy fit.

Rule (documented in docs/CONFIG.md): with ``loss.forces_weight > 0`` (or the switch weight)
every structure should carry forces; with ``loss.stress_weight > 0`` every 3D-periodic structure
should carry a stress. When *no* structure has the label, training would silently ignore the
weight: :class:`~training.errors.DataError`. When only some lack it, those structures train
without that term: a warning with the count. Least-squares reference energies fitted to fewer
independent compositions than elements get a warning (:func:`warn_reference_fit`, from the
training statistics, so raw files and stores alike). A model with ``model.hyper.charge_spin``
needs a possible total charge and spin multiplicity on every frame it sees
(:func:`check_charge_spin`). With ``data.head_key`` every frame needs a head of the model, named
in the file or given by ``data.head`` (:func:`frame_heads`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from mlip import AtomicGraph
from mlip.electronic import check_multiplicity
from training.config import Config, DataConfig
from training.data.datasets import GraphDataset
from training.data.frames import Frame, InvalidFrameError
from training.data.statistics import Statistics
from training.data.store import Store
from training.errors import DataError

__all__ = [
    "check_charge_spin",
    "check_training_set",
    "check_weighted_labels",
    "frame_heads",
    "warn_reference_fit",
]

log = logging.getLogger(__name__)

_HINTS = {
    "forces": "set data.forces_key to the name of the forces array in the file, or "
    "loss.forces_weight=0",
    "stress": "set data.stress_key (with data.stress_units / data.stress_convention) or "
    "data.virial_key to the label in the file, or loss.stress_weight=0",
}


def _weight(config: Config, name: str) -> float:
    loss = config.loss
    weight = getattr(loss, f"{name}_weight")
    if loss.switch_epoch is not None or loss.switch_fraction is not None:
        weight = max(weight, getattr(loss, f"switch_{name}_weight"))
    return weight


def check_weighted_labels(graphs: Sequence[AtomicGraph], config: Config, source: str) -> None:
    """Raise or warn (see the module docstring) for the training structures ``graphs``."""
    for name in ("forces", "stress"):
        weight = _weight(config, name)
        if weight <= 0:
            continue
        if name == "stress":
            candidates = [g for g in graphs if bool(g.pbc.all())]
        else:
            candidates = list(graphs)
        missing = sum(getattr(g, name) is None for g in candidates)
        if not candidates or not missing:
            continue
        kind = "3D-periodic structures" if name == "stress" else "structures"
        what = f"{missing} of {len(candidates)} {kind} in {source} have no {name}"
        if missing == len(candidates):
            raise DataError(
                f"{source}: no {name} label found but loss.{name}_weight={weight:g}; {_HINTS[name]}"
            )
        log.warning("%s; they train without the %s term", what, name)


def check_training_set(graphs: Sequence[AtomicGraph], config: Config, source: str) -> None:
    """All checks of this module on the training structures ``graphs``."""
    check_weighted_labels(graphs, config, source)


def warn_reference_fit(statistics: Statistics, config: Config, source: str) -> None:
    """Warn when ``least_squares`` reference energies are under-determined by the training set."""
    from training.stats_table import reference_fit_warning

    if config.data.reference_energies != "least_squares" or not statistics.n_energy_frames:
        return
    warning = reference_fit_warning(
        statistics.n_energy_frames, len(statistics.species), statistics.composition_rank
    )
    if warning:
        log.warning("%s: %s", source, warning)


def _state_columns(dataset: GraphDataset) -> tuple[np.ndarray, ...]:
    """(charge, spin, sum of Z, periodic in 3-D) of the dataset's frames; NaN where a value
    is missing."""
    source, indices = dataset.source, dataset.indices
    if isinstance(source, Store):
        file, n_frames = source.file, len(source)
        columns = [
            file[name][:].astype(np.float64) if name in file else np.full(n_frames, np.nan)
            for name in ("charge", "spin")
        ]
        numbers = file["atomic_numbers"][:].astype(np.int64)
        z_sum = np.add.reduceat(numbers, source.offsets) if n_frames else np.zeros(0, np.int64)
        periodic = file["pbc"][:].astype(bool).all(axis=1)
        return columns[0][indices], columns[1][indices], z_sum[indices], periodic[indices]
    frames = [source[int(i)] for i in indices]
    charge = np.array([np.nan if f.charge is None else f.charge for f in frames], np.float64)
    spin = np.array([np.nan if f.spin is None else f.spin for f in frames], np.float64)
    z_sum = np.array([int(f.atomic_numbers.sum()) for f in frames], np.int64)
    periodic = np.array([bool(np.all(f.pbc)) for f in frames], dtype=bool)
    return charge, spin, z_sum, periodic


def _frame_error(
    dataset: GraphDataset, position: int, field: str, reason: str, detail: str
) -> InvalidFrameError:
    """The :class:`InvalidFrameError` of the dataset's frame ``position``."""
    index = int(dataset.indices[position])
    return _source_frame_error(dataset.source, index, field, reason, detail)


def _source_frame_error(
    source: Store | Sequence[Frame], index: int, field: str, reason: str, detail: str
) -> InvalidFrameError:
    """The :class:`InvalidFrameError` of frame ``index`` of ``source``: a store names itself
    and its frame index, a file its frame id (its index in the file)."""
    frame = source[index]
    if isinstance(source, Store):
        return InvalidFrameError(str(source.path), index, frame.frame_id, field, reason, detail)
    # an ASE file's frames are identified by their index in it (unless data.frame_id_key)
    from training.data.readers import detect_format

    by_index = frame.frame_id.isdigit() and detect_format(frame.source) == "ase"
    in_file = int(frame.frame_id) if by_index else None
    frame_id = "" if by_index else frame.frame_id
    return InvalidFrameError(frame.source, in_file, frame_id, field, reason, detail)


def frame_heads(
    source: Store | Sequence[Frame], n_frames: int, data: DataConfig, heads: Sequence[str]
) -> np.ndarray:
    """(n_frames,) int64 index in ``heads`` of the head of each of the first ``n_frames``
    frames of ``source``: the head its file names (``data.head_key``, kept by a store as its
    ``head_name`` column), else ``data.head``.

    Raises:
        InvalidFrameError: naming the file, the frame and the key, for a frame without a head
            name when ``data.head`` is None, or with a name not in ``heads`` (also listed).
    """
    if isinstance(source, Store):
        names = source.strings("head_name")[:n_frames]
    else:
        names = [source[i].head_name for i in range(n_frames)]
    lookup = {name: i for i, name in enumerate(heads)}
    missing, unknown = -1, -2
    default = missing if data.head is None else lookup[data.head]
    found = np.array(
        [lookup.get(str(name), unknown) if name else default for name in names], dtype=np.int64
    )
    bad = found < 0
    if not bad.any():
        return found
    index = int(np.argmax(bad))
    if found[index] == unknown:
        detail = f"the model's heads are {', '.join(heads)}; model.hyper.heads"
        reason = f"unknown head {str(names[index])!r}"
        raise _source_frame_error(source, index, data.head_key, reason, detail)
    if isinstance(source, Store):
        where = (
            "the store keeps no head name for it (`mlip-data convert --head-key KEY` keeps "
            "the names under info key KEY, default 'head')"
        )
    else:
        where = f"the frame has no {data.head_key!r} in its info"
    detail = f"{where}; set data.head to give such frames a head"
    raise _source_frame_error(source, index, data.head_key, "missing head", detail)


def check_charge_spin(dataset: GraphDataset, data: DataConfig) -> dict[str, list[int]]:
    """Refuse a frame of ``dataset`` without a total charge or multiplicity (unless
    ``data.default_charge``/``default_spin`` fill it in) or with an impossible multiplicity.

    Returns:
        The states the frames hold, defaults applied: ``{"charge": [...], "spin": [...]}``,
        sorted distinct integers (e, multiplicity).

    Raises:
        InvalidFrameError: naming the file, the frame and the field (for an impossible
            multiplicity also the charge and the multiplicity).

    The electron-count parity rule applies to molecules and clusters only: for a 3-D periodic
    cell (e.g. MPtrj with ``default_spin: 1``) the multiplicity labels the level of theory, and
    an odd electron count per cell is no contradiction.
    """
    charge, spin, z_sum, periodic = _state_columns(dataset)
    for values, key, name, default, option in (
        (charge, data.charge_key, "charge", data.default_charge, "default_charge"),
        (spin, data.spin_key, "spin", data.default_spin, "default_spin"),
    ):
        missing = np.isnan(values)
        if default is not None:
            values[missing] = default
        elif missing.any():
            detail = (
                f"the model has model.hyper.charge_spin; the file has no {key!r} "
                f"(set data.{name}_key to its key, or data.{option})"
            )
            raise _frame_error(dataset, int(np.argmax(missing)), name, f"missing {name}", detail)
    electrons = z_sum - charge
    unpaired = spin - 1
    bad = (charge != np.round(charge)) | (spin != np.round(spin)) | (spin < 1) | (electrons < 0)
    bad |= ~periodic & ((np.mod(electrons - unpaired, 2) != 0) | (unpaired > electrons))
    if bad.any():
        position = int(np.argmax(bad))
        try:
            numbers = dataset.source[int(dataset.indices[position])].atomic_numbers
            check_multiplicity(numbers, charge[position], spin[position], periodic[position])
            detail = f"charge {charge[position]:g}, multiplicity {spin[position]:g}"
        except ValueError as error:
            detail = str(error)
        raise _frame_error(dataset, position, "spin", "impossible multiplicity", detail)
    return {
        "charge": sorted({int(value) for value in charge}),
        "spin": sorted({int(value) for value in spin}),
    }
