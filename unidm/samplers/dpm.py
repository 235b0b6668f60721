"""Exponential-integrator solvers in ``lambda = -log sigma`` (half the log-SNR): DPM-Solver (noise prediction,
single-step), DPM-Solver++ (data prediction, multistep, with an SDE variant) and UniPC.

In sigma-space (``alpha = 1``) the probability-flow ODE is ``dx/dlambda = D - x``; its linear part is integrated
exactly, ``x(lambda') = (sigma'/sigma) x + int e^{-(lambda' - l)} D dl``, and only ``D`` (or the noise prediction
``(x - D)/sigma``) is approximated by a polynomial. Every first-order member is Euler in sigma (DDIM). A step to
``sigma = 0`` (``h = inf``) is that first-order step, ``x <- D``.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback, Generator, denoise, randn_like, report, sigma_list, to_d

__all__ = ["sample_dpm_solver", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
           "sample_dpmpp_multistep", "sample_unipc"]


# ---- DPM-Solver (single-step, noise prediction) -----------------------------------------------------------------
def sample_dpm_solver(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, order: int = 2,
) -> Tensor:
    """DPM-Solver-1/2/3 (Lu et al. 2022, "DPM-Solver", Algorithms 1 and 2 with ``r1 = 1/2`` for order 2 and
    ``r1 = 1/3, r2 = 2/3`` for order 3, eqs. 3.7-3.9 with ``alpha = 1``). Each step takes ``order``
    evaluations at levels placed uniformly in lambda between ``sigma_i`` and ``sigma_{i+1}``; a step to 0 is
    first order. NFE = order * N (minus ``order - 1`` on a grid ending at 0). Order 2 is k-diffusion's ``dpm_2``."""
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3, got {order}")
    sigmas = sigma_list(grid)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        eps = to_d(x, s, denoised)
        if s_next == 0 or order == 1:
            x = x + (s_next - s) * eps
        elif order == 2:
            s1 = math.sqrt(s * s_next)  # lambda midpoint
            u1 = x + (s1 - s) * eps
            x = x + (s_next - s) * to_d(u1, s1, denoise(denoiser, u1, s1, cond))
        else:
            h = math.log(s / s_next)
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
            u1 = x + (s1 - s) * eps
            d1 = to_d(u1, s1, denoise(denoiser, u1, s1, cond)) - eps
            u2 = x + (s2 - s) * eps - (r2 / r1) * ((s - s2) / (r2 * h) - s2) * d1
            d2 = to_d(u2, s2, denoise(denoiser, u2, s2, cond)) - eps
            x = x + (s_next - s) * eps - ((s - s_next) / h - s_next) / r2 * d2
        report(callback, i, x, s, s_next, denoised)
    return x


# ---- DPM-Solver++ (multistep, data prediction) -------------------------------------------------------------------
def sample_dpmpp_multistep(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, order: int = 2, eta: float = 0.0, s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(kM) (Lu et al. 2022b, "DPM-Solver++", Algorithm 2 for k = 2, App. B for k = 3), with the
    past denoised values ``D_{i-1}, D_{i-2}`` as local variables, in the phi-function form
    ``x' = e^{-h} x - phi_1 D + phi_2 D^(1) - phi_3 D^(2)``, ``phi_1 = expm1(-h)``, ``phi_2 = phi_1/h + 1``,
    ``phi_3 = phi_2/h - 1/2``. With ``eta > 0`` it is the SDE variant (Lu et al. 2022b, Sec. 5 / Gonzalez et al.
    2023 "SEEDS", eq. 9): the linear part decays as ``e^{-(1+eta) h}`` and fresh noise of std
    ``sigma' sqrt(1 - e^{-2 eta h})`` is added; ``eta = 1`` discretizes the reverse SDE. NFE = N."""
    if order not in (1, 2, 3):
        raise ValueError(f"dpmpp order must be 1, 2 or 3, got {order}")
    sigmas = sigma_list(grid)
    hist: list[tuple[Tensor, float]] = []  # (denoised, h of the step that followed it), newest first
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            he = h * (1 + eta)
            x = (s_next / s) * math.exp(-eta * h) * x - math.expm1(-he) * denoised
            phi2 = math.expm1(-he) / he + 1
            if order >= 3 and len(hist) >= 2:
                (d_1, h_1), (d_2, h_2) = hist[0], hist[1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi2 * d1 - 2 * (phi2 / he - 0.5) * d2
            elif order >= 2 and len(hist) >= 1:
                d_1, h_1 = hist[0]
                x = x + phi2 * (denoised - d_1) / (h_1 / h)
            if eta > 0:
                x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise * randn_like(x, generator)
            hist = [(denoised, h)] + hist[:1]
        report(callback, i, x, s, s_next, denoised)
    return x


def sample_dpmpp_2m(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None,
                    callback: Callback = None, cond: dict | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2); see :func:`sample_dpmpp_multistep`. NFE = N."""
    return sample_dpmpp_multistep(denoiser, x, grid, generator=generator, callback=callback, cond=cond, order=2)


def sample_dpmpp_3m(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None,
                    callback: Callback = None, cond: dict | None = None) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b, App. B); see :func:`sample_dpmpp_multistep`. NFE = N."""
    return sample_dpmpp_multistep(denoiser, x, grid, generator=generator, callback=callback, cond=cond, order=3)


def sample_dpmpp_2m_sde(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None,
                        callback: Callback = None, cond: dict | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 5): :func:`sample_dpmpp_multistep` with ``eta = 1``."""
    return sample_dpmpp_multistep(denoiser, x, grid, generator=generator, callback=callback, cond=cond, order=2,
                                  eta=eta, s_noise=s_noise)


def sample_dpmpp_3m_sde(denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None,
                        callback: Callback = None, cond: dict | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(3M): :func:`sample_dpmpp_multistep` with ``order = 3, eta = 1``."""
    return sample_dpmpp_multistep(denoiser, x, grid, generator=generator, callback=callback, cond=cond, order=3,
                                  eta=eta, s_noise=s_noise)


# ---- UniPC (unified predictor-corrector, data prediction) --------------------------------------------------------
def _unipc_update(x: Tensor, s: float, s_next: float, ds: list[Tensor], lams: list[float], order: int,
                  variant: str, d_new: Tensor | None = None) -> Tensor:
    """One UniP-``order`` predictor step (``d_new is None``) or UniC corrector (``d_new = D(x_pred, s_next)``)
    from ``(x, s)`` to ``s_next`` (Zhao et al. 2023, "UniPC", Algorithms 1-2, data prediction).
    ``ds[j]`` is ``D`` at ``lambda = lams[j]``, newest (at ``s``) first."""
    lam, h = lams[0], math.log(s / s_next)
    hh = -h
    phi1 = math.expm1(hh)
    x_base = (s_next / s) * x - phi1 * ds[0]
    if order == 1 and d_new is None:
        return x_base
    rks = [(lams[j] - lam) / h for j in range(1, order)] + [1.0]
    d1s = [(ds[j] - ds[0]) / rks[j - 1] for j in range(1, order)]
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k, fact = phi1 / hh - 1, 1
    R, b = [], []
    for k in range(1, order + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = np.array(R), np.array(b)
    if d_new is None:  # predictor: order - 1 differences
        rhos = [0.5] if order == 2 else list(np.linalg.solve(R[:-1, :-1], b[:-1]))
        return x_base - b_h * sum(float(r) * d for r, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else list(np.linalg.solve(R, b))
    corr = sum(float(r) * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0.0
    return x_base - b_h * (corr + float(rhos[-1]) * (d_new - ds[0]))


def sample_unipc(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, order: int = 3, variant: str = "bh2", corrector: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", Algorithms 1-3): the multistep
    predictor UniP-``order`` and the corrector UniC, which reuses the evaluation at the new point, so the
    corrected method has order ``order + 1`` at NFE = N. ``variant`` is ``B(h)``: ``bh1`` (``B = h``) or
    ``bh2`` (``B = e^h - 1``). Without ``corrector`` it is UniP alone."""
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    sigmas = sigma_list(grid)
    ds: list[Tensor] = []
    lams: list[float] = []
    last = None  # (x, s, s_next, ds, lams, order) of the previous predictor step, for the corrector
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        if corrector and last is not None:
            x = _unipc_update(*last[:5], last[5], variant, d_new=denoised)
        ds, lams = [denoised] + ds[:2], [-math.log(s)] + lams[:2]
        if s_next == 0:
            x, last = denoised, None
        else:
            p = min(order, len(ds))
            last = (x, s, s_next, ds[:p], lams[:p], p)
            x = _unipc_update(x, s, s_next, ds[:p], lams[:p], p, variant)
        report(callback, i, x, s, s_next, denoised)
    return x
