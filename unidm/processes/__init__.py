"""Forward processes and training-time noise-level distributions."""

from .gaussian import (EDM, PROCESSES, VE, GaussianProcess, RectifiedFlow, SubVP, VPCosine, VPDiscrete, VPLinear,
                       build_process, gaussian_log_prob, gaussian_prior_sample, takes_data_dim)
from .noise_levels import NOISE_LEVELS, DiscreteT, LogitNormalT, LogNormalSigma, NoiseLevels, UniformT

__all__ = [
    "GaussianProcess", "VPLinear", "VPDiscrete", "VPCosine", "VE", "SubVP", "EDM", "RectifiedFlow", "PROCESSES",
    "build_process", "takes_data_dim", "gaussian_prior_sample", "gaussian_log_prob",
    "NoiseLevels", "UniformT", "LogNormalSigma", "LogitNormalT", "DiscreteT", "NOISE_LEVELS",
]
