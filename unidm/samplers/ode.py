"""Single-step Runge–Kutta solvers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, eq. 4 in sigma-space with ``s(t) = 1``), stepping in sigma over the grid.

The derivative is undefined at ``sigma = 0``; a step that ends at 0 uses only stages at ``sigma > 0`` (Euler for
Heun and RK4, which is ``x <- D(x, sigma)``; the midpoint rule needs none at 0). Euler and Heun take EDM's churn
options (``s_churn`` etc., see :func:`~unidm.samplers.base.churn`); with ``s_churn > 0`` Heun is EDM's
Algorithm 2 (:func:`~unidm.samplers.stochastic.sample_edm`).
"""

from __future__ import annotations

from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback, Generator, churn, denoise, report, sigma_list, to_d

__all__ = ["sample_euler", "sample_heun", "sample_midpoint", "sample_rk4"]


def sample_euler(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler's method on the probability-flow ODE, first order, NFE = N. With the final step to sigma = 0 it is
    DDIM with eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 13) and DPM-Solver-1
    (Lu et al. 2022, eq. 3.7). With ``s_churn > 0``: EDM's churn (Karras et al. 2022, Alg. 2, lines 5-7)."""
    sigmas = sigma_list(grid)
    n = len(sigmas) - 1
    for i in range(n):
        x, s = churn(x, sigmas[i], n, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                     generator=generator)
        denoised = denoise(denoiser, x, s, cond)
        x = x + (sigmas[i + 1] - s) * to_d(x, s, denoised)
        report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


def sample_heun(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1; Algorithm 2 with ``s_churn > 0``); the
    last step to sigma = 0 is an Euler step. NFE = 2 N - 1 on a grid ending at 0, else 2 N."""
    sigmas = sigma_list(grid)
    n = len(sigmas) - 1
    for i in range(n):
        x, s = churn(x, sigmas[i], n, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                     generator=generator)
        s_next = sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        d = to_d(x, s, denoised)
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = to_d(x_next, s_next, denoise(denoiser, x_next, s_next, cond))
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        report(callback, i, x, sigmas[i], s_next, denoised)
    return x


def sample_midpoint(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None,
) -> Tensor:
    """Explicit midpoint rule (Runge 1895; Hairer, Norsett & Wanner, "Solving ODEs I", eq. II.1.3): second order,
    ``x' = x + h f(x + h/2 f(x, sigma), sigma + h/2)``. NFE = 2 N (its second stage is at ``sigma_i / 2`` on the
    final step, so it needs no evaluation at 0)."""
    sigmas = sigma_list(grid)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        h = s_next - s
        denoised = denoise(denoiser, x, s, cond)
        x_mid = x + 0.5 * h * to_d(x, s, denoised)
        s_mid = s + 0.5 * h
        x = x + h * to_d(x_mid, s_mid, denoise(denoiser, x_mid, s_mid, cond))
        report(callback, i, x, s, s_next, denoised)
    return x


def sample_rk4(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None,
) -> Tensor:
    """Classical fourth-order Runge–Kutta (Kutta 1901; Hairer et al., "Solving ODEs I", Table II.1.2, left).
    NFE = 4 N; a final step to sigma = 0 is an Euler step (its last stage would sit at 0)."""
    sigmas = sigma_list(grid)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        h = s_next - s
        denoised = denoise(denoiser, x, s, cond)
        k1 = to_d(x, s, denoised)
        if s_next == 0:
            x = x + h * k1
        else:
            s_mid = s + 0.5 * h
            x2 = x + 0.5 * h * k1
            k2 = to_d(x2, s_mid, denoise(denoiser, x2, s_mid, cond))
            x3 = x + 0.5 * h * k2
            k3 = to_d(x3, s_mid, denoise(denoiser, x3, s_mid, cond))
            x4 = x + h * k3
            k4 = to_d(x4, s_next, denoise(denoiser, x4, s_next, cond))
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        report(callback, i, x, s, s_next, denoised)
    return x
