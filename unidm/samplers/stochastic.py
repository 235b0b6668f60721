"""Stochastic samplers in sigma-space."""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback, Generator, randn_like

__all__ = ["sample_ddpm"]


def sample_ddpm(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None,
                callback: Callback = None, **cond) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) written in sigma-space: draw ``x_{i+1}`` from the Gaussian
    posterior ``q(x_{sigma_{i+1}} | x_{sigma_i}, x0 = D)``, which for ``x = x0 + sigma eps`` has mean
    ``x0 + (s'^2/s^2)(x - x0)`` and variance ``s'^2 (s^2 - s'^2) / s^2``. On DDPM's own grid this is exactly
    DDPM's reverse step with its posterior variance beta-tilde."""
    for i in range(len(grid) - 1):
        s, s_next = grid[i].to(x.dtype), grid[i + 1].to(x.dtype)
        denoised = denoiser(x, s.expand(x.shape[0]), **cond)
        r2 = (s_next / s) ** 2
        x = denoised + r2 * (x - denoised)
        if s_next > 0:
            std = s_next * torch.sqrt(1 - r2)
            x = x + std * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x
