"""ASE calculators for mlip models. Imports ``mlip`` only."""

from calculators.calculator import MLIPCalculator

__all__ = ["MLIPCalculator"]
