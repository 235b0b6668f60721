"""Noise-level grids: descending tensors of sigma-space levels ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0``.

A grid is separate from a solver (Karras et al. 2022, Sec. 3): any sampler runs on any grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes import GaussianProcess

__all__ = ["karras_grid", "uniform_t_grid", "append_zero"]


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_grid(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Karras et al. 2022, eq. 5: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..n-1``, then 0. ``n`` steps (``n + 1`` levels)."""
    ramp = torch.linspace(0, 1, n, dtype=dtype)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def uniform_t_grid(process: GaussianProcess, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``n`` steps uniform in the process's time from ``t_max`` to ``t_min``, mapped to sigma-space, then 0."""
    t = torch.linspace(process.t_max_sampling, process.t_min, n, dtype=dtype)
    return append_zero(process.sigma_of_t(t))
