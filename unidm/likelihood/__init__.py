"""Likelihood machinery below the families: the probability-flow ODE likelihood of any sigma-space denoiser
(:mod:`.ode`), DDPM's variational bound (:mod:`.elbo`), Analytic-DPM's Gamma statistics and the K-step bound with
any reverse variance and trajectory (:mod:`.variance`), the one uniform dequantization every density goes through
(:mod:`.dequantize`), and the typed result :class:`Likelihood` a family's likelihood returns.

Layer: above :mod:`unidm.samplers` (it uses :func:`unidm.samplers.process_of`) and :mod:`unidm.integrate`, below
:mod:`unidm.methods`, which may import it. :mod:`unidm.evaluation.likelihood` and :mod:`unidm.evaluation.elbo`
re-export these names for old imports. See ``docs/likelihood.md``.
"""

from .dequantize import bin_width, bits_per_dim, dequantize, dequantized_log_prob
from .elbo import (VARIANCES, DiscreteSchedule, ElboResult, discretized_gaussian_log_likelihood, elbo, prior_kl,
                   reverse_kl)
from .ode import LikelihoodResult, gaussian_prior_log_prob, latent_outliers, log_likelihood
from .result import KINDS, Likelihood
from .variance import (TRAJECTORIES, GammaStats, gamma_statistics, kstep_elbo, statistics_sigmas,
                       trajectory_elbo, trajectory_timesteps)

__all__ = [
    "Likelihood", "KINDS", "dequantized_log_prob", "dequantize", "bin_width", "bits_per_dim",
    "log_likelihood", "LikelihoodResult", "gaussian_prior_log_prob", "latent_outliers",
    "elbo", "ElboResult", "DiscreteSchedule", "prior_kl", "reverse_kl", "discretized_gaussian_log_likelihood",
    "VARIANCES", "GammaStats", "gamma_statistics", "statistics_sigmas", "kstep_elbo", "trajectory_elbo",
    "trajectory_timesteps", "TRAJECTORIES",
]
