"""Forward processes and training-time noise-level distributions."""

from .gaussian import (EDM, PROCESSES, VE, GaussianProcess, RectifiedFlow, SubVP, VPCosine, VPDiscrete, VPLinear,
                       build_process, gaussian_log_prob, gaussian_prior_sample, takes_data_dim)
from .noise_levels import NOISE_LEVELS, DiscreteT, LogitNormalT, LogNormalSigma, NoiseLevels, UniformT
from .pfgm import PFGM_PROCESSES, PFGMPP, kernel_noise, kernel_noise_radial, sample_gamma

PROCESSES.update(PFGM_PROCESSES)  # PFGM++ (issue 19): one registry, so build_process and the families see it

__all__ = [
    "GaussianProcess", "VPLinear", "VPDiscrete", "VPCosine", "VE", "SubVP", "EDM", "RectifiedFlow", "PROCESSES",
    "build_process", "takes_data_dim", "gaussian_prior_sample", "gaussian_log_prob",
    "NoiseLevels", "UniformT", "LogNormalSigma", "LogitNormalT", "DiscreteT", "NOISE_LEVELS",
    "PFGMPP", "sample_gamma", "kernel_noise", "kernel_noise_radial",
]
