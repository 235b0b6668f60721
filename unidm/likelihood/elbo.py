"""The discrete-time variational bound of DDPM-type models (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", eq. 5), in nats and bits/dim.

For the discrete VP process with ``beta_1..beta_T``, ``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s<=t} alpha_s``:

    -log p(x0) <= L = L_T + sum_{t=2}^T L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I)),           q(x_T | x0) = N(sqrt(abar_T) x0, (1 - abar_T) I)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),   x_t ~ q(x_t | x0)
    L_0     = -log p(x0 | x_1)

with the Gaussian posterior ``q(x_{t-1} | x_t, x0) = N(mu~_t(x_t, x0), beta~_t I)`` (Ho et al. eq. 6-7),
``mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t`` and
``beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``. The model's reverse step is the same formula with ``x0``
replaced by the denoiser's estimate, ``p(x_{t-1} | x_t) = N(mu~_t(x_t, D(x_t / sqrt(abar_t), sigma_t)), s_t^2 I)``
(sigma-space: ``sigma_t = sqrt((1 - abar_t) / abar_t)``), so

    L_{t-1} = 1/2 sum_dims [beta~_t / s_t^2 - 1 + log(s_t^2 / beta~_t)
                            + (sqrt(abar_{t-1}) beta_t / (1 - abar_t))^2 (x0 - x0_hat)^2 / s_t^2].

Fixed variance ``s_t^2`` (Ho et al. Sec. 3.2): ``"beta"`` (``s_t^2 = beta_t``, right for continuous data, where
``Var(x0 | x_t)`` keeps pace with the noise) or ``"beta_tilde"`` (``s_t^2 = beta~_t``, right when ``x0`` is
determined by ``x_t``, as for coarsely quantized data); with ``"beta_tilde"`` the decoder uses ``beta~_2``, since
``beta~_1 = 0`` (as Ho et al.'s released code clips it).

The decoder ``L_0`` is the discretized Gaussian of Ho et al. eq. 13 for data on a ``K``-level grid in [-1, 1]
(bins of half-width ``1 / (K - 1)`` around the grid points, the outer bins extended to infinity), so ``L`` bounds the
negative log-*probability* of the discrete data and ``bits/dim = L / (D ln 2)`` is directly comparable to
:func:`unidm.likelihood.log_likelihood` with ``num_levels=K``. With ``num_levels=None`` the decoder is
the Gaussian density ``N(x0; x0_hat, s_1^2)`` and ``L`` bounds ``-log p(x0)`` of continuous data (the
continuous-time limit is Kingma et al. 2021, "Variational Diffusion Models", eq. 17).

The sum over ``t`` is exact (``num_terms=None``, ``T`` denoiser evaluations) or a stratified Monte Carlo estimate:
``{2..T}`` is cut into ``num_terms`` contiguous strata, one ``t`` drawn uniformly in each and weighted by its
stratum's size, which is unbiased for the sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..processes import VPDiscrete
from .result import Likelihood

__all__ = [
    "ElboResult",
    "elbo",
    "DiscreteSchedule",
    "prior_kl",
    "reverse_kl",
    "discretized_gaussian_log_likelihood",
    "VARIANCES",
]

VARIANCES = ("beta", "beta_tilde")
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class ElboResult:
    """Per-example variational bound.

    Attributes:
        elbo: ``[B]`` nats, ``-L``, a lower bound on ``log P(x0)`` (discrete decoder) or ``log p(x0)``.
        bits_per_dim: ``[B]`` ``L / (D ln 2)``.
        prior_term: ``[B]`` ``L_T`` nats.
        diffusion_term: ``[B]`` ``sum_{t=2}^T L_{t-1}`` nats (or its stratified estimate).
        decoder_term: ``[B]`` ``L_0`` nats.
        nfe: denoiser evaluations.
    """

    elbo: Tensor
    bits_per_dim: Tensor
    prior_term: Tensor
    diffusion_term: Tensor
    decoder_term: Tensor
    nfe: int

    def to_likelihood(self) -> Likelihood:
        """This bound as the typed face's :class:`~unidm.likelihood.Likelihood` (``kind="bound"``, ``nll = L``)."""
        return Likelihood(
            nll=-self.elbo, bits_per_dim=self.bits_per_dim, kind="bound", nfe=float(self.nfe),
            extra={"prior_term": self.prior_term, "diffusion_term": self.diffusion_term,
                   "decoder_term": self.decoder_term},
        )


class DiscreteSchedule:
    """``beta_t, alpha_t, abar_t, beta~_t`` for ``t = 0..T`` (index 0 is ``abar_0 = 1``) in float64."""

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        self.num_steps = betas.numel()
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.log_abar = torch.cumsum(torch.log1p(-self.beta), 0)
        self.abar = torch.exp(self.log_abar)
        one_minus = -torch.expm1(self.log_abar)
        self.beta_tilde = torch.zeros_like(self.beta)
        self.beta_tilde[1:] = one_minus[:-1] / one_minus[1:] * self.beta[1:]
        self.one_minus_abar = one_minus

    @classmethod
    def from_process(cls, process: VPDiscrete) -> "DiscreteSchedule":
        return cls(process.betas)

    def sigma(self, t: int) -> float:
        """Sigma-space noise level of step ``t``: ``sqrt((1 - abar_t) / abar_t)``."""
        return math.sqrt(float(torch.expm1(-self.log_abar[t])))

    def variance(self, t: int, kind: str) -> float:
        """The reverse step's fixed variance ``s_t^2``."""
        if kind == "beta":
            return float(self.beta[t])
        if kind == "beta_tilde":
            return float(self.beta_tilde[max(t, 2)])
        raise ValueError(f"unknown variance {kind!r}; choose from {VARIANCES}")

    def x0_coef(self, t: int) -> float:
        """``sqrt(abar_{t-1}) beta_t / (1 - abar_t)``, the weight of ``x0`` in ``mu~_t``."""
        return math.sqrt(float(self.abar[t - 1])) * float(self.beta[t]) / float(self.one_minus_abar[t])


def _sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


def prior_kl(x0: Tensor, schedule: DiscreteSchedule) -> Tensor:
    """``L_T = KL(N(sqrt(abar_T) x0, (1 - abar_T) I) || N(0, I))`` per example [B] (nats)."""
    abar, var = float(schedule.abar[-1]), float(schedule.one_minus_abar[-1])
    return 0.5 * _sum(abar * x0**2 + var - 1.0 - math.log(var))


def reverse_kl(x0: Tensor, x0_hat: Tensor, t: int, schedule: DiscreteSchedule, variance: str = "beta") -> Tensor:
    """``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` for ``t >= 2`` per example [B] (nats).

    Both Gaussians share the ``x_t`` part of their means, so only ``x0 - x0_hat`` enters."""
    if t < 2:
        raise ValueError("reverse_kl is for t >= 2; t = 1 is the decoder")
    q_var, p_var = float(schedule.beta_tilde[t]), schedule.variance(t, variance)
    d = x0[0].numel()
    const = 0.5 * d * (q_var / p_var - 1.0 + math.log(p_var / q_var))
    return const + 0.5 * schedule.x0_coef(t) ** 2 * _sum((x0 - x0_hat) ** 2) / p_var


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: float, num_levels: int) -> Tensor:
    """``log P(x0)`` [B] of data on a ``num_levels`` grid in [-1, 1] under ``N(mean, std^2)`` integrated over each
    grid point's bin, the outer bins reaching to +-infinity (Ho et al. 2020, eq. 13)."""
    half = 1.0 / (num_levels - 1)
    upper = (x0 + half - mean) / std
    lower = (x0 - half - mean) / std
    # log(Phi(upper) - Phi(lower)), computed in whichever tail keeps precision
    flip = (upper + lower) > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    inner = log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-300))
    left = torch.special.log_ndtr(upper)  # x0 = -1: (-inf, -1 + half]
    right = torch.special.log_ndtr(-lower)  # x0 = 1: [1 - half, inf)
    logp = torch.where(x0 < -1 + half / 2, left, torch.where(x0 > 1 - half / 2, right, inner))
    return _sum(logp)


def _decoder_nll(x0: Tensor, x0_hat: Tensor, var: float, num_levels: int | None) -> Tensor:
    if num_levels is None:
        return 0.5 * _sum((x0 - x0_hat) ** 2 / var + math.log(var) + _LOG_2PI)
    return -discretized_gaussian_log_likelihood(x0, x0_hat, math.sqrt(var), num_levels)


def _denoise_at(denoiser, x0, t, schedule, generator, cond) -> Tensor:
    """Draw ``x_t ~ q(x_t | x0)`` and return the denoiser's ``x0_hat`` (evaluated in sigma-space)."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = schedule.sigma(t)
    x = x0 + sigma * eps  # = x_t / sqrt(abar_t)
    return denoiser(x, torch.full((x0.shape[0],), sigma, dtype=x0.dtype, device=x0.device), **cond)


def _times(num_steps: int, num_terms: int | None, generator) -> list[tuple[int, float]]:
    """``(t, weight)`` pairs over ``{2..T}``: all with weight 1, or one per stratum weighted by its size."""
    ts = torch.arange(2, num_steps + 1)
    if num_terms is None or num_terms >= len(ts):
        return [(int(t), 1.0) for t in ts]
    picks = []
    for stratum in torch.tensor_split(ts, num_terms):
        i = int(torch.randint(len(stratum), (1,), generator=generator))
        picks.append((int(stratum[i]), float(len(stratum))))
    return picks


@torch.no_grad()
def elbo(
    denoiser: DenoiserFn,
    x0: Tensor,
    process: VPDiscrete | None = None,
    *,
    num_levels: int | None = 256,
    variance: str = "beta",
    num_terms: int | None = None,
    generator: torch.Generator | None = None,
    **cond,
) -> ElboResult:
    """DDPM's variational bound (Ho et al. 2020, eq. 5) of ``x0 [B, ...]`` in [-1, 1], per example.

    Args:
        denoiser: ``D(x, sigma [B], **cond)`` in sigma-space.
        x0: data; on the ``num_levels`` grid in [-1, 1] if ``num_levels`` is set.
        process: the discrete VP process (default: ``denoiser.process``, which must be a :class:`VPDiscrete`).
        num_levels: levels of the discrete data (256 for 8-bit), or ``None`` for a continuous Gaussian decoder.
        variance: ``"beta"`` or ``"beta_tilde"`` (module docstring).
        num_terms: ``None`` for the full sum over ``t``, else the number of stratified Monte Carlo terms.
        generator: for ``x_t`` and the sampled ``t``.

    Returns:
        :class:`ElboResult` (nats and bits/dim).
    """
    process = process if process is not None else getattr(denoiser, "process", None)
    if not isinstance(process, VPDiscrete):
        raise TypeError("elbo needs a VPDiscrete process (pass process=...)")
    schedule = DiscreteSchedule.from_process(process)
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {VARIANCES}")
    prior = prior_kl(x0, schedule)
    diffusion = torch.zeros_like(prior)
    nfe = 0
    for t, weight in _times(schedule.num_steps, num_terms, generator):
        x0_hat = _denoise_at(denoiser, x0, t, schedule, generator, cond)
        diffusion = diffusion + weight * reverse_kl(x0, x0_hat, t, schedule, variance)
        nfe += 1
    x0_hat = _denoise_at(denoiser, x0, 1, schedule, generator, cond)
    decoder = _decoder_nll(x0, x0_hat, schedule.variance(1, variance), num_levels)
    nfe += 1
    total = prior + diffusion + decoder
    return ElboResult(
        elbo=-total,
        bits_per_dim=total / (x0[0].numel() * math.log(2)),
        prior_term=prior,
        diffusion_term=diffusion,
        decoder_term=decoder,
        nfe=nfe,
    )
