"""Location of the built-in default model shipped with the package."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_model_path"]


def default_model_path() -> Path:
    """Return the path of the built-in demo model ``data/demo/model.pt``.

    The model is a small potential trained on the EMT Cu–Au demo set (see
    ``data/demo/README.md``); it is only meaningful for Cu–Au fcc-type structures.

    Returns:
        Absolute path of the exported TorchScript file.

    Raises:
        FileNotFoundError: If the file is missing (e.g. not trained yet, or the
            package was installed without data).
    """
    path = Path(__file__).resolve().parents[1] / "data" / "demo" / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"built-in default model not found at {path}; pass --model PATH to an "
            "exported model (mlip-export) or train the demo model first"
        )
    return path
