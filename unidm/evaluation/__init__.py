"""Evaluation: two-sample metrics with noise floors, likelihood, pictures."""

from .metrics import METRICS, compare, energy_distance, mmd_rbf, sliced_wasserstein

__all__ = ["compare", "sliced_wasserstein", "mmd_rbf", "energy_distance", "METRICS"]
