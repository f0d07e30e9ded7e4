"""Datasets, losses, trainer and checkpoints for mlip models. Imports ``mlip`` only."""
