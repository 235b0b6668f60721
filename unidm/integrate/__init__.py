"""ODE integration and divergence (exact and Hutchinson), shared by samplers, likelihood and CNFs."""

from .divergence import PROBES, exact_divergence, hutchinson_divergence, sample_probes
from .ode import OdeSolution, solve_fixed, solve_ivp

__all__ = [
    "OdeSolution", "solve_ivp", "solve_fixed",
    "exact_divergence", "hutchinson_divergence", "sample_probes", "PROBES",
]
