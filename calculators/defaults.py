"""Location of the built-in default model shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEFAULT_MODEL_RESOURCE", "default_model_path"]

DEFAULT_MODEL_RESOURCE = "data/model.pt"
"""The built-in model, relative to the ``calculators`` package (listed as package data in
``pyproject.toml``, so a normal, non-editable install has it)."""


def default_model_path() -> Path:
    """Return the path of the built-in demo model ``calculators/data/model.pt``.

    The model is a small potential trained on the EMT Cu–Au demo set (see
    ``data/demo/README.md``); it is only meaningful for Cu–Au fcc-type structures.

    Returns:
        Absolute path of the exported TorchScript file.

    Raises:
        FileNotFoundError: If the file is missing (e.g. the package was installed from an
            archive that dropped its data).
    """
    resource = resources.files("calculators").joinpath(DEFAULT_MODEL_RESOURCE)
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(
            f"built-in default model not found at {path}; pass --model PATH to an "
            "exported model (mlip-export) or reinstall the package"
        )
    return path.resolve()
