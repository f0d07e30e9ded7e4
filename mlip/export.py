"""Export a model as one TorchScript file with its metadata, and load it back.

The file is a TorchScript archive whose ``_extra_files`` hold ``mlip.json``: the format version,
package versions, cutoff (Å), number of interactions and receptive field (interactions x
cutoff, Å: the ghost-atom shell LAMMPS needs), species, model dtype, units, outputs, stress
convention, the per-structure inputs the model requires (``inputs``, e.g. ``["charge",
"spin"]``), its level-of-theory ``heads`` (names; the ``head`` input is an index into them), the
model's hyperparameters and training information. The scripted module is a
:class:`mlip.derivatives.ForceStress` around the energy model, computing energy, per-atom
energies, forces and (for 3-D periodic structures, when its ``compute_stress`` attribute is
True) stress. It runs with ``torch`` alone: neither ``mlip`` nor ``e3nn`` is needed to load it.

TorchScript is confined to this module, so a move to ``torch.export`` is a one-file change.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from ase.data import chemical_symbols

import mlip
from mlip.derivatives import ForceStress

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ModelFileError", "load", "save", "script"]

FORMAT_NAME = "mlip-potential"
FORMAT_VERSION = 1
METADATA_FILE = "mlip.json"


class ModelFileError(ValueError):
    """A file that is not a readable mlip model (foreign, corrupt or too new)."""


def _energy_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.energy_model if isinstance(model, ForceStress) else model


def script(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script ``ForceStress(model, forces=True, stress=True)`` in eval mode.

    Args:
        model: an energy model from :func:`mlip.models.build_model`, or a ``ForceStress``.
    """
    energy_model = _energy_model(model)
    wrapper = ForceStress(energy_model, compute_forces=True, compute_stress=True).eval()
    try:
        from e3nn.util.jit import script as e3nn_script
    except ImportError:  # pragma: no cover - e3nn is a dependency
        e3nn_script = torch.jit.script
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
        return e3nn_script(wrapper)


def _versions() -> dict[str, str]:
    versions = {"mlip": mlip.__version__, "torch": torch.__version__}
    try:
        import e3nn

        versions["e3nn"] = e3nn.__version__
    except ImportError:  # pragma: no cover
        versions["e3nn"] = "not installed"
    return versions


def _interactions(energy_model: torch.nn.Module) -> int | None:
    """Message-passing steps of a local model (``config["num_layers"]``, else 1); None for a
    model whose energies depend on the whole structure (``local = False``, e.g. LEFTNet's
    molecular frame), which can be neither chunked nor split over LAMMPS domains."""
    if not getattr(energy_model, "local", True):
        return None
    return int(getattr(energy_model, "config", {}).get("num_layers", 1))


def _input_ranges(energy_model: torch.nn.Module) -> dict[str, list[int]]:
    """``{"charge": [low, high], "spin": [1, high]}``: the integer states the model's tables
    cover (a value outside is refused), for a model with charge/spin inputs; else empty."""
    state = getattr(energy_model, "graph_state", None)
    if state is None or not getattr(state, "charge_spin", False):
        return {}
    return {
        "charge": [-int(state.max_charge), int(state.max_charge)],
        "spin": [1, int(state.max_multiplicity)],
    }


def build_metadata(model: torch.nn.Module, **info: Any) -> dict[str, Any]:
    """The JSON record stored beside the scripted model."""
    energy_model = _energy_model(model)
    numbers = [int(z) for z in energy_model.species]
    interactions = _interactions(energy_model)
    cutoff = float(energy_model.cutoff)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "cutoff": float(energy_model.cutoff),
        # message-passing steps: an atom's energy depends on atoms up to this many cutoffs away;
        # LAMMPS (ghost shell) and chunked evaluation (halo) need it. None: not local.
        "num_interactions": interactions,
        "receptive_field": None if interactions is None else interactions * cutoff,
        "atomic_numbers": numbers,
        "species": [chemical_symbols[z] for z in numbers],
        "model_dtype": str(energy_model.model_dtype).replace("torch.", ""),
        "units": {
            "energy": "eV",
            "length": "Å",
            "forces": "eV/Å",
            "stress": "eV/Å^3",
        },
        "outputs": ["energy", "energies", "forces", "stress"],
        "inputs": [str(name) for name in getattr(energy_model, "required_inputs", [])],
        "input_ranges": _input_ranges(energy_model),
        "heads": [str(name) for name in getattr(energy_model, "heads", [])],
        "stress_convention": (
            "stress = (1/V) dE/d(strain), ASE sign (positive = tensile); "
            "only for structures periodic in all three directions"
        ),
        "model_config": energy_model.config,
        "info": info,
    }


def save(model: torch.nn.Module, path: str | os.PathLike, **info: Any) -> Path:
    """Write ``model`` as one TorchScript file (atomically: temp file, then rename).

    Args:
        model: an energy model (or a ``ForceStress`` around one).
        path: the output file.
        **info: JSON-serialisable training information (dataset, metrics, ...).

    Returns:
        The path written.
    """
    path = Path(path)
    metadata = build_metadata(model, **info)
    try:
        encoded = json.dumps(metadata, indent=2)
    except TypeError as exc:
        raise TypeError(f"export info must be JSON-serialisable: {exc}") from None
    scripted = script(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
            torch.jit.save(scripted, temporary, _extra_files={METADATA_FILE: encoded})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata record of an exported file, validated, without loading the model."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not an mlip model file (not a TorchScript archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"extra/{METADATA_FILE}")]
            if not names:
                raise ModelFileError(
                    f"{path}: not an mlip model file (TorchScript archive without {METADATA_FILE})"
                )
            raw = archive.read(names[0])
            damaged = archive.testzip()  # CRC-checks every member: catches flipped bytes
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ModelFileError(f"{path}: corrupt model file ({exc})") from None
    if damaged is not None:
        raise ModelFileError(f"{path}: corrupt model file (checksum mismatch in {damaged})")
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt metadata in {METADATA_FILE} ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: not an mlip model file (metadata format is not {FORMAT_NAME})"
        )
    version = metadata.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: corrupt metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version} is newer than this mlip "
            f"({mlip.__version__}) can read (version {FORMAT_VERSION}); upgrade mlip"
        )
    for key in ("cutoff", "atomic_numbers", "model_dtype"):
        if key not in metadata:
            raise ModelFileError(f"{path}: corrupt metadata (missing {key!r})")
    for key in ("inputs", "heads"):  # files written before these were recorded need neither
        metadata.setdefault(key, [])
        if not isinstance(metadata[key], list):
            raise ModelFileError(f"{path}: corrupt metadata ({key!r} is not a list)")
    return metadata


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an exported model and its metadata.

    Args:
        path: a file written by :func:`save`.
        device: where to put the model (explicit; no hidden CUDA default).

    Returns:
        ``(scripted_module, metadata)``; the module is in eval mode. ``metadata["inputs"]``
        lists the per-structure inputs the module requires (``"charge"``, ``"spin"``) and
        ``metadata["heads"]`` its head names (empty for a model without heads).

    Raises:
        ModelFileError: a missing, foreign, corrupt or too-new file, with the path in the message.
    """
    metadata = read_metadata(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
            module = torch.jit.load(str(path), map_location=torch.device(device))
    except Exception as exc:  # torch raises RuntimeError/ValueError of many shapes here
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: corrupt model file ({first_line})") from None
    module.eval()
    return module, metadata
