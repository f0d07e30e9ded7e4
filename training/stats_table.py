"""``mlip-data stats`` as a readable table, and the under-determined reference-energy warning.

Least-squares reference energies (one per element) are only determined when the training set
has at least as many frames (of linearly independent compositions) as elements; with fewer, the
fit is a minimum-norm guess and the model has to learn the rest.
"""

from __future__ import annotations

from ase.data import chemical_symbols

from training.data.statistics import Statistics

__all__ = ["format_statistics", "reference_fit_warning"]


def reference_fit_warning(n_frames: int, n_elements: int, n_independent: int | None = None) -> str:
    """A warning when ``n_elements`` references are fitted to too few frames, else "".

    Args:
        n_frames: frames with an energy.
        n_elements: elements present.
        n_independent: rank of the frames' composition matrix, when known.
    """
    rank = n_frames if n_independent is None else n_independent
    if rank >= n_elements:
        return ""
    what = f"{n_frames} frame(s)"
    if n_independent is not None and n_independent < n_frames:
        what += f" ({n_independent} independent composition(s))"
    return (
        f"reference energies of {n_elements} elements are fitted to {what}: under-determined, "
        "the split between elements is arbitrary; give data.reference_energies as a mapping "
        "or use isolated-atom energies (data.reference_energies=isolated)"
    )


def format_statistics(stats: Statistics, name: str) -> str:
    """The statistics of store ``name`` as aligned text lines (units in the labels)."""
    lines = [
        f"{name}: {stats.n_frames} frames, {stats.n_atoms} atoms, "
        f"{len(stats.element_counts)} elements",
        "",
        f"{'element':<8} {'Z':>4} {'atoms':>10} {'reference energy (eV)':>22}",
    ]
    for z in sorted(stats.element_counts):
        reference = stats.reference_energies.get(z)
        text = f"{reference:.4f}" if reference is not None else "-"
        lines.append(f"{chemical_symbols[z]:<8} {z:>4} {stats.element_counts[z]:>10} {text:>22}")
    rows = [
        ("mean energy per atom", f"{stats.mean_energy_per_atom:.4f} eV/atom"),
        ("energy RMS after references", f"{stats.energy_residual_rms * 1e3:.1f} meV/atom"),
        ("force component RMS", f"{stats.force_rms:.4f} eV/Å"),
    ]
    if stats.mean_neighbors is not None:
        rows.append((f"mean neighbours within {stats.cutoff:g} Å", f"{stats.mean_neighbors:.1f}"))
    lines.append("")
    lines += [f"{label:<34} {value}" for label, value in rows]
    warning = reference_fit_warning(
        stats.n_energy_frames, len(stats.element_counts), stats.composition_rank
    )
    if warning:
        lines += ["", f"warning: {warning}"]
    return "\n".join(lines)
