"""Moved to :mod:`unidm.likelihood.elbo` (the layer the families may import); these names stay importable from
here."""

from ..likelihood.elbo import (VARIANCES, DiscreteSchedule, ElboResult, discretized_gaussian_log_likelihood, elbo,
                               prior_kl, reverse_kl)

__all__ = [
    "ElboResult", "elbo", "DiscreteSchedule", "prior_kl", "reverse_kl", "discretized_gaussian_log_likelihood",
    "VARIANCES",
]
