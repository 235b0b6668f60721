"""Evaluation: two-sample metrics with noise floors, likelihood, pictures."""

from .elbo import ElboResult, elbo
from .likelihood import LikelihoodResult, bits_per_dim, dequantize, log_likelihood
from .metrics import METRICS, compare, energy_distance, mmd_rbf, sliced_wasserstein

__all__ = ["compare", "sliced_wasserstein", "mmd_rbf", "energy_distance", "METRICS", "log_likelihood",
           "LikelihoodResult", "bits_per_dim", "dequantize", "elbo", "ElboResult"]
