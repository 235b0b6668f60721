"""Forward processes and training-time noise-level distributions."""

from .gaussian import EDM, PROCESSES, VE, GaussianProcess, RectifiedFlow, SubVP, VPCosine, VPDiscrete, VPLinear
from .noise_levels import NOISE_LEVELS, DiscreteT, LogitNormalT, LogNormalSigma, NoiseLevels, UniformT

__all__ = [
    "GaussianProcess", "VPLinear", "VPDiscrete", "VPCosine", "VE", "SubVP", "EDM", "RectifiedFlow", "PROCESSES",
    "NoiseLevels", "UniformT", "LogNormalSigma", "LogitNormalT", "DiscreteT", "NOISE_LEVELS",
]
