"""Adaptive Dormand–Prince 5(4) sampler with one step size per sample.

:func:`unidm.integrate.solve_ivp` controls one step size for the whole batch, so a sample's path there depends on
its batch mates. A sampler must not (a sample drawn with seed s is the same in any batch), so this solver runs
``B`` independent integrations side by side: each sample has its own ``log sigma``, step and accept/reject
decision, and a batched call to the denoiser evaluates the samples still running at their own noise levels
(the contract takes ``sigma`` of shape ``(B,)``). NFE counts batched calls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..integrate.tableaus import DOPRI5_A, DOPRI5_C, DOPRI5_E
from .base import Callback, Generator, denoise, report, sigma_list

__all__ = ["sample_adaptive"]

_C, _A, _E = DOPRI5_C, DOPRI5_A, DOPRI5_E  # Dormand–Prince 5(4)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


def sample_adaptive(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, rtol: float = 1e-4, atol: float = 1e-4, first_step: float | None = None,
    max_steps: int = 10_000,
) -> Tensor:
    """Adaptive Dormand–Prince 5(4) (Dormand & Prince 1980) on the probability-flow ODE written in
    ``u = log sigma``, ``dx/du = x - D(x, e^u)`` (Karras et al. 2022, eq. 4), from ``grid[0]`` to the smallest
    positive level of ``grid``; the levels in between are ignored. If the grid ends at 0 the last step is
    ``x <- D(x, sigma_end)``, accurate to ``O(sigma_end^2)``, so use a small last level for a reference solution.

    Error control per sample as in scipy's RK45: RMS of ``err / (atol + rtol max(|x|, |x_new|))`` <= 1,
    step factor ``clip(0.9 err^(-1/5), 0.2, 10)``, no growth right after a rejection. ``first_step`` (in
    ``log sigma``) defaults to Hairer's starting-step heuristic ("Solving ODEs I", Sec. II.4), per sample.
    The NFE it spent is in :class:`~unidm.samplers.SampleResult` when called through ``solve``.
    """
    sigmas = sigma_list(grid)
    positive = [s for s in sigmas if s > 0]
    u0, u1 = math.log(positive[0]), math.log(positive[-1])
    B = x.shape[0]
    u = torch.full((B,), u0, dtype=torch.float64, device=x.device)

    def f(xa: Tensor, ua: Tensor, rows: Tensor | None = None) -> Tensor:
        # per-sample conditioning (class labels) follows the samples still running
        c = cond if rows is None or not cond else {
            k: v[rows] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == B else v for k, v in cond.items()}
        return xa - denoise(denoiser, xa, ua.exp(), c)

    k1 = f(x, u)
    if u1 < u0:
        if first_step is None:  # Hairer's heuristic, on each sample
            scale = atol + rtol * x.abs()
            d0, d1 = _rms(x / scale), _rms(k1 / scale)
            h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).double()
            h0 = torch.minimum(h0, torch.full_like(h0, u0 - u1))
            x_try = x - _bcast(h0, x).to(x.dtype) * k1
            d2 = _rms((f(x_try, u - h0) - k1) / scale) / h0
            h1 = torch.where(torch.maximum(d1, d2) <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                             (0.01 / torch.maximum(d1, d2)) ** (1 / 5)).double()
            h = -torch.minimum(100 * h0, h1)
        else:
            h = torch.full((B,), -abs(first_step), dtype=torch.float64, device=x.device)
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        grew = torch.ones(B, dtype=torch.bool, device=x.device)
        steps = 0
        while bool(active.any()):
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"adaptive sampler: more than {max_steps} steps (rtol={rtol}, atol={atol})")
            idx = active.nonzero().squeeze(1)
            xa, ua, ha = x[idx], u[idx], torch.maximum(h[idx], u1 - u[idx])
            hx = _bcast(ha, xa).to(x.dtype)
            ks = [k1[idx]]
            for j in range(1, 7):
                xj = xa + hx * sum(a * k for a, k in zip(_A[j], ks) if a != 0.0)
                ks.append(f(xj, ua + _C[j] * ha, idx))
            x_new = xj  # stage 7 sits at the 5th-order solution (FSAL)
            err = hx * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
            err = _rms(err / (atol + rtol * torch.maximum(xa.abs(), x_new.abs()))).double()
            ok = err <= 1.0
            factor = torch.clamp(0.9 * err.clamp_min(1e-10) ** -0.2, 0.2, 10.0)
            factor = torch.where(ok, torch.where(grew[idx], factor, factor.clamp(max=1.0)), factor.clamp(max=1.0))
            acc = idx[ok]
            x, k1, u = x.clone(), k1.clone(), u.clone()
            x[acc], k1[acc], u[acc] = x_new[ok], ks[6][ok], (ua + ha)[ok]
            grew[idx] = ok
            h[idx] = ha * factor
            active = u > u1 + 1e-12 * max(1.0, abs(u1))
            report(callback, steps - 1, x, float(u.max().exp()), float(math.exp(u1)), x - k1)
    if sigmas[-1] == 0:
        x = x - k1  # = D(x, sigma_end), already evaluated (first stage of the next step)
    return x
