"""mlip: machine-learned interatomic potentials (core: data, neighbour lists, models, export).

This package never imports ``calculators`` or ``training``.
"""

from mlip import keys
from mlip.graph import AtomicGraph
from mlip.neighbors import neighbor_list

__version__ = "0.1.0"

__all__ = ["AtomicGraph", "keys", "neighbor_list", "__version__"]
