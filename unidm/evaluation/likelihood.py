"""Moved to :mod:`unidm.likelihood` (the layer the families may import); these names stay importable from here."""

from ..likelihood.dequantize import bin_width, bits_per_dim, dequantize, dequantized_log_prob
from ..likelihood.ode import LikelihoodResult, gaussian_prior_log_prob, latent_outliers, log_likelihood
from ..likelihood.result import Likelihood

__all__ = [
    "LikelihoodResult", "log_likelihood", "bits_per_dim", "gaussian_prior_log_prob", "dequantize", "bin_width",
    "latent_outliers", "dequantized_log_prob", "Likelihood",
]
