"""Deterministic solvers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, eq. 4 in sigma-space with ``s(t) = 1``)."""

from __future__ import annotations

from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback

__all__ = ["sample_euler", "sample_heun", "to_d"]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """ODE derivative ``(x - D) / sigma`` with ``sigma`` a scalar tensor."""
    return (x - denoised) / sigma


def _sig(x: Tensor, s: Tensor) -> Tensor:
    return s.to(x.dtype).expand(x.shape[0])


def sample_euler(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator=None, callback: Callback = None,
                 **cond) -> Tensor:
    """Euler's method on the probability-flow ODE (first order; with a final step to sigma = 0 it is DDIM with
    eta = 0, Song et al. 2021 "Denoising Diffusion Implicit Models", eq. 13)."""
    for i in range(len(grid) - 1):
        s, s_next = grid[i], grid[i + 1]
        denoised = denoiser(x, _sig(x, s), **cond)
        x = x + (s_next - s).to(x.dtype) * to_d(x, s.to(x.dtype), denoised)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x


def sample_heun(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator=None, callback: Callback = None,
                **cond) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1 with S_churn = 0); the last step to
    sigma = 0 is an Euler step. NFE = 2 N - 1."""
    for i in range(len(grid) - 1):
        s, s_next = grid[i].to(x.dtype), grid[i + 1].to(x.dtype)
        denoised = denoiser(x, _sig(x, s), **cond)
        d = to_d(x, s, denoised)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = to_d(x_next, s_next, denoiser(x_next, _sig(x, s_next), **cond))
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "denoised": denoised})
    return x
