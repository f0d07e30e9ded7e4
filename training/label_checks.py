"""Checks on a training set before training: labels the loss weights, reference-energy fit.

Rule (documented in docs/CONFIG.md): with ``loss.forces_weight > 0`` (or the switch weight)
every structure should carry forces; with ``loss.stress_weight > 0`` every 3D-periodic structure
should carry a stress. When *no* structure has the label, training would silently ignore the
weight: :class:`~training.errors.DataError`. When only some lack it, those structures train
without that term: a warning with the count. Least-squares reference energies fitted to fewer
independent compositions than elements get a warning (:func:`warn_reference_fit`, from the
training statistics, so raw files and stores alike).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mlip import AtomicGraph
from training.config import Config
from training.data.statistics import Statistics
from training.errors import DataError

__all__ = ["check_training_set", "check_weighted_labels", "warn_reference_fit"]

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
    if loss.switch_epoch is not None:
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
