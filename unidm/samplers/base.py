"""Shared pieces of every sampler: per-sample random numbers, NFE counting, the result type, the churn of EDM's
stochastic sampler, and the small helpers that keep each sampler a short pure function."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..processes import gaussian_prior_sample

__all__ = [
    "Generator", "Callback", "randn_like", "prior_noise", "CountingDenoiser", "SampleResult", "denoise",
    "sigma_list", "churn", "to_d", "report",
]

#: one generator for the whole batch, or one per sample (so a sample's randomness does not depend on its batch).
Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like ``x``; with a list of generators, row ``i`` comes from generator ``i``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device) for g in generator]
    )


def prior_noise(
    shape: Sequence[int], sigma_max: float, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> Tensor:
    """Initial noise ``sigma_max * eps`` of the Gaussian kernel. With ``seeds`` (one per row, ``len(seeds) ==
    shape[0]``), sample ``i`` depends only on ``seeds[i]``. The same draw as
    :meth:`~unidm.processes.GaussianProcess.prior_sample` of every Gaussian process (one implementation,
    :func:`~unidm.processes.gaussian_prior_sample`); a family with a non-Gaussian process draws through its
    process's ``prior_sample`` instead."""
    return gaussian_prior_sample(shape, sigma_max, seeds, generator, dtype, device)


class CountingDenoiser:
    """Wraps a denoiser and counts network function evaluations (one per batched call)."""

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)


@dataclass
class SampleResult:
    """``x``: final samples; ``nfe``: denoiser calls; ``trajectory``: ``x`` after each step (if asked)."""

    x: Tensor
    nfe: int
    trajectory: list[Tensor] = field(default_factory=list)


# ---- helpers used inside the samplers ---------------------------------------------------------------------------
def sigma_list(grid: Tensor) -> list[float]:
    """The grid as python floats (step coefficients are computed in float64 whatever the dtype of ``x``), checked
    to be descending and non-negative."""
    sigmas = [float(s) for s in torch.as_tensor(grid).reshape(-1)]
    if len(sigmas) < 2:
        raise ValueError("a grid needs at least two levels")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] < 0:
        raise ValueError("a grid must be strictly descending and end at a level >= 0")
    return sigmas


def denoise(denoiser: DenoiserFn, x: Tensor, sigma: float | Tensor, cond: dict | None) -> Tensor:
    """``D(x, sigma)`` with a python-float (or per-sample ``[B]``) noise level broadcast to ``[B]``."""
    if isinstance(sigma, Tensor):
        s = sigma.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
    else:
        s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    return denoiser(x, s, **(cond or {}))


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative ``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, eq. 4 with s = 1)."""
    return (x - denoised) / sigma


def report(callback: Callback, i: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def churn(
    x: Tensor, sigma: float, num_steps: int, *, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
    generator: Generator,
) -> tuple[Tensor, float]:
    """EDM's noise injection (Karras et al. 2022, Algorithm 2, lines 5-7): raise the noise level to
    ``sigma_hat = sigma (1 + gamma)`` with ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]``
    (else 0) by adding fresh noise of std ``S_noise sqrt(sigma_hat^2 - sigma^2)``. Returns ``(x_hat, sigma_hat)``;
    with ``S_churn = 0`` it returns its input and draws nothing."""
    gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + s_noise * math.sqrt(sigma_hat**2 - sigma**2) * randn_like(x, generator), sigma_hat
