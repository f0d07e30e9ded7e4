"""ASE calculators for mlip models. Imports ``mlip`` only."""
