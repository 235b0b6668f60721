"""Linear multistep (Adams–Bashforth) solvers of the probability-flow ODE in sigma: one network evaluation per
step, the previous derivatives ``d_j = (x_j - D_j) / sigma_j`` kept in a local list. The first steps of a
multistep method run at the orders its history allows (1, 2, ...)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback, Generator, denoise, report, sigma_list, to_d

__all__ = ["sample_lms", "sample_ipndm", "adams_bashforth_weights"]

# fixed-step Adams–Bashforth weights, newest derivative first (Hairer et al., "Solving ODEs I", Table III.1.1)
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def adams_bashforth_weights(nodes: list[float], s_next: float) -> list[float]:
    """Weights ``w_j`` with ``int_{nodes[0]}^{s_next} p(s) ds = sum_j w_j p(nodes[j])`` for every polynomial of
    degree ``< len(nodes)``: the integrals of the Lagrange basis on ``nodes`` (newest first), computed exactly
    in the local variable ``u = (s - nodes[0]) / h`` with ``h = s_next - nodes[0]``."""
    h = s_next - nodes[0]
    u = [(s - nodes[0]) / h for s in nodes]
    weights = []
    for j, uj in enumerate(u):
        poly = np.polynomial.Polynomial([1.0])
        for m, um in enumerate(u):
            if m != j:
                poly = poly * np.polynomial.Polynomial([-um, 1.0]) / (uj - um)
        antider = poly.integ()
        weights.append(h * float(antider(1.0) - antider(0.0)))
    return weights


def sample_lms(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, order: int = 4,
) -> Tensor:
    """Linear multistep method (variable-step Adams–Bashforth of ``order`` <= 4 in sigma; k-diffusion's ``lms``).
    In sigma-space this is also rho-AB-DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
    Exponential Integrator", eq. 15 with ``rho = sigma``): the noise prediction ``(x - D)/sigma`` is extrapolated
    by a polynomial in sigma and integrated exactly. NFE = N."""
    if order not in _AB:
        raise ValueError(f"lms order must be 1..4, got {order}")
    sigmas = sigma_list(grid)
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        ds = [to_d(x, s, denoised)] + ds[: order - 1]
        w = adams_bashforth_weights([sigmas[i - j] for j in range(len(ds))], s_next)
        x = x + sum(wj * dj for wj, dj in zip(w, ds))
        report(callback, i, x, s, s_next, denoised)
    return x


def sample_ipndm(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, order: int = 4,
) -> Tensor:
    """Improved pseudo-numerical method iPNDM (Zhang & Chen 2023, "DEIS", App. B; Liu et al. 2022, "PNDM", eq. 12
    with its Runge–Kutta warm-up replaced by lower-order Adams–Bashforth): the fixed-step Adams–Bashforth weights
    applied to ``d = (x - D)/sigma`` whatever the step sizes. Order ``order`` on a uniform grid; on the strongly
    graded grids used in practice it is a well-tuned heuristic (:func:`sample_lms` is the variable-step form).
    NFE = N."""
    if order not in _AB:
        raise ValueError(f"ipndm order must be 1..4, got {order}")
    sigmas = sigma_list(grid)
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        ds = [to_d(x, s, denoised)] + ds[: order - 1]
        x = x + (s_next - s) * sum(w * d for w, d in zip(_AB[len(ds)], ds))
        report(callback, i, x, s, s_next, denoised)
    return x
