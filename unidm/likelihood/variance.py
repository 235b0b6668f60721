"""Analytic-DPM below the families (Bao et al. 2022, "Analytic-DPM", ICLR): the Gamma statistics of any Gaussian
model through the denoiser contract, the variational bound of any K-step trajectory with any reverse variance
(``beta``, ``beta-tilde``, ``analytic``), and the trajectories ``even``, ``quadratic`` and the ELBO-optimal ``dp``.

The step mathematics (the optimal variance, its clipping, the per-step KL and the dynamic programme) is in
:mod:`unidm.samplers.variance`, which the ``ddpm`` and ``ddim`` samplers use; this module adds what needs data:
Monte Carlo over a data tensor. Derivations: ``docs/variance.md``.

The K-step bound, in sigma-space (``x_k = x0 + sigma_k eps`` at the trajectory's levels
``sigma_1 < ... < sigma_K``):

    -log p(x0) <= L = KL(q(x_K | x0) || p(x_K))
                      + sum_{k=2}^K E_q KL(q_lambda(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))
                      - E_q log p(x0 | x_1),

every term a KL between Gaussians (invariant under the rescaling ``x_t = alpha_t x``, so equal to the process-space
terms of Ho et al. 2020, eq. 5, and Bao et al. 2022, eq. 4). The prior ``p(x_K)`` is DDPM's ``N(0, I)`` in process
space, ``N(0, (sigma_K^2 + 1) I)`` in sigma-space (``prior_variance=1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..processes import VPDiscrete
from ..samplers.variance import (GammaFn, GammaStats, canonical_variance, check_variance, dp_trajectory,
                                 posterior_variance_bound, reverse_kernel, step_costs)
from .elbo import DiscreteSchedule, ElboResult, _decoder_nll, _sum

__all__ = [
    "GammaStats", "gamma_statistics", "statistics_sigmas", "TRAJECTORIES", "trajectory_timesteps", "kstep_elbo",
    "trajectory_elbo", "ELBO_STEP_OPTIONS",
]

#: trajectories of the K-step ELBO (and of sampling, through :func:`trajectory_timesteps`)
TRAJECTORIES = ("even", "quadratic", "dp")
#: the options that select the K-step ELBO (the family's ``likelihood(method="elbo", ...)``)
ELBO_STEP_OPTIONS = ("steps", "trajectory", "gamma", "eta", "data_range")


# ---- Gamma ---------------------------------------------------------------------------------------------------------
def statistics_sigmas(process, n: int = 256) -> Tensor:
    """Ascending noise levels to compute Gamma on: a ``vp-discrete`` process's own ``T`` timesteps, else ``n`` levels
    log-uniform over ``[sigma_min, sigma_max]`` of the process."""
    if isinstance(process, VPDiscrete):
        sched = DiscreteSchedule.from_process(process)
        return torch.sqrt(torch.expm1(-sched.log_abar[1:]))
    return torch.exp(torch.linspace(math.log(process.sigma_min), math.log(process.sigma_max), n,
                                    dtype=torch.float64))


@torch.no_grad()
def gamma_statistics(
    denoiser: DenoiserFn, x0: Tensor, sigmas: Tensor | Sequence[float], *, n_mc: int = 1, batch_size: int = 1000,
    generator: torch.Generator | None = None, progress: bool | None = None, cond: dict | None = None,
    estimator: str = "mse", partial: tuple[Tensor, Tensor, Tensor] | None = None,
    on_progress: Callable[[Tensor, Tensor, Tensor], None] | None = None, every: int = 50,
) -> GammaStats:
    """``Gamma(sigma) = E||(x - D(x, sigma)) / sigma||^2 / d`` over ``x0 [n, ...]`` and ``n_mc`` noise draws per
    example at each of ``sigmas`` (Bao et al. 2022, Thm 1: their ``E||eps_hat_n(x_n)||^2 / d``), with the standard
    error over examples. ``1 - Gamma`` estimates the mean posterior variance ``E||x0 - E[x0 | x]||^2 / (d sigma^2)``.

    Two estimators, equal in expectation for the exact denoiser ``D = E[x0 | x]`` (``docs/variance.md``):

    - ``"score"``: the mean of ``||(x - D) / sigma||^2 / d``, Bao et al.'s recipe. At high noise ``1 - Gamma`` is
      a tiny difference (``~ Var(x0) / sigma^2``) under a Monte Carlo error of order ``sqrt(2 / d) / sqrt(n)``,
      so there the clipped variance falls back to ``beta-tilde`` (their code drops such levels from the DP);
    - ``"mse"`` (default): ``1 - E||x0 - D||^2 / (d sigma^2)``, whose error is relative to ``1 - Gamma`` itself.
      For an imperfect ``D`` it is the model's own mean squared error, which makes ``u^2 + c^2 m`` the ELBO-optimal
      isotropic variance *for that mean* (the expected KL of a step is minimized there; Bao et al. 2022b,
      "Estimating the Optimal Covariance with Imperfect Mean").

    Deterministic: the noise at level ``i`` comes from a generator seeded with the ``i``-th of ``len(sigmas)`` seeds
    drawn from ``generator`` first, so a level's value does not depend on the batch size, and a computation cut
    short can be resumed level by level: ``partial = (gamma, stderr, done)`` holds what an earlier call computed
    (``done`` a boolean mask over the sorted levels), and ``on_progress(gamma, stderr, done)`` is called every
    ``every`` levels and at the end, e.g. to save them. ``progress`` (default: more than 50 levels) shows a tqdm bar.

    Returns:
        :class:`~unidm.samplers.variance.GammaStats` on ``sigmas`` sorted ascending.
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).sort().values
    if estimator not in ("mse", "score"):
        raise ValueError(f"unknown estimator {estimator!r}; valid: mse, score")
    if n_mc < 1 or batch_size < 1:
        raise ValueError(f"need n_mc >= 1 and batch_size >= 1, got {n_mc}, {batch_size}")
    n = x0.shape[0]
    d = x0[0].numel()
    seeds = torch.randint(0, 2**62, (len(sig),), generator=generator)
    show = len(sig) > 50 if progress is None else progress
    levels = range(len(sig))
    if show:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="Gamma", dynamic_ncols=True, leave=False)
    gamma, stderr = torch.empty(len(sig), dtype=torch.float64), torch.empty(len(sig), dtype=torch.float64)
    done = torch.zeros(len(sig), dtype=torch.bool)
    if partial is not None:
        if not all(len(t) == len(sig) for t in partial):
            raise ValueError(f"partial Gamma statistics hold {len(partial[0])} levels, this call {len(sig)}")
        done = partial[2].clone().bool()
        gamma[done], stderr[done] = partial[0][done].double(), partial[1][done].double()
    for i in levels:
        if done[i]:
            continue
        s = float(sig[i])
        g = torch.Generator().manual_seed(int(seeds[i]))
        per_example = torch.zeros(n, dtype=torch.float64)
        for _ in range(n_mc):
            noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # the whole split's: batch-size free
            for start in range(0, n, batch_size):
                xb = x0[start:start + batch_size]
                x = xb + s * noise[start:start + batch_size].to(xb.device)
                D = denoiser(x, torch.full((xb.shape[0],), s, dtype=xb.dtype, device=xb.device), **(cond or {}))
                err = (x - D) / s if estimator == "score" else (xb - D) / s
                per_example[start:start + len(xb)] += _sum(err**2).double().cpu() / (d * n_mc)
        if estimator == "mse":
            per_example = 1.0 - per_example
        gamma[i] = per_example.mean()
        stderr[i] = per_example.std() / math.sqrt(n) if n > 1 else math.inf
        done[i] = True
        if on_progress is not None and int(done.sum()) % every == 0:
            on_progress(gamma, stderr, done)
    if on_progress is not None:
        on_progress(gamma, stderr, done)
    return GammaStats(sig, gamma, stderr, n=n, n_mc=n_mc)


# ---- trajectories --------------------------------------------------------------------------------------------------
def _dedup(k: Tensor, n: int) -> list[int]:
    out: list[int] = []
    for v in k.tolist():
        v = int(v)
        out.append(v if not out or v > out[-1] else out[-1] + 1)
    if out[-1] > n:
        raise ValueError("internal: trajectory overflow")
    return out


def trajectory_timesteps(trajectory: str, steps: int, num_steps: int, gamma: GammaFn | None = None,
                         sigmas: Tensor | None = None, eta: float = 1.0, variance: str = "analytic",
                         data_range: float | None = None) -> list[int]:
    """``steps`` ascending timesteps ``1 <= tau_1 < ... < tau_K = N`` of ``N = num_steps``:

    - ``even``: ``round(linspace)`` from 1 to N, the timesteps of the ``ddpm-linspace`` grid (Bao et al.'s
      "linear");
    - ``quadratic``: ``1 + (N - 1)((k - 1)/(K - 1))^2`` rounded and made strictly increasing (DDIM's quadratic
      spacing, here reaching N so the prior term is the same as for the others);
    - ``dp``: the ELBO-optimal one (Bao et al. 2022, Sec. 4) by :func:`unidm.samplers.variance.dp_trajectory` over
      :func:`~unidm.samplers.variance.step_costs` of ``gamma`` at ``sigmas`` (the ``N`` levels, ascending), for the
      reverse ``variance`` and ``eta``; ``tau_1 = 1`` and ``tau_K = N`` are fixed.

    ``K = 1`` is ``[N]``. Raises ``ValueError`` (one line) for ``K > N`` or an unknown trajectory."""
    if trajectory not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {trajectory!r}; valid: {', '.join(TRAJECTORIES)}")
    N = int(num_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= N:
        raise ValueError(f"trajectory {trajectory!r} needs 1 <= steps <= {N} (the process's timesteps), "
                         f"got steps={steps}")
    if steps == 1:
        return [N]
    if trajectory == "even":
        return [int(k) + 1 for k in torch.round(torch.linspace(N - 1, 0, steps, dtype=torch.float64)).flip(0)]
    if trajectory == "quadratic":
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64) ** 2
        return _dedup(torch.round(1 + (N - 1) * ramp), N)
    if gamma is None or sigmas is None:
        raise ValueError("trajectory 'dp' needs the Gamma statistics (gamma=...) at the process's levels")
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    g = torch.tensor([float(gamma(float(s))) for s in sig], dtype=torch.float64)
    return [i + 1 for i in dp_trajectory(step_costs(sig, g, eta, variance, data_range), steps)]


# ---- the K-step bound ----------------------------------------------------------------------------------------------
def _denoise(denoiser, x0: Tensor, sigma: float, generator, cond) -> tuple[Tensor, Tensor]:
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x = x0 + sigma * eps
    return x, denoiser(x, torch.full((x0.shape[0],), sigma, dtype=x0.dtype, device=x0.device), **cond)


@torch.no_grad()
def trajectory_prior(x0: Tensor, sigmas, prior_mean: float, prior_variance: float) -> tuple[list[float], Tensor]:
    """The checked ascending levels of a trajectory and its prior term ``KL(q(x_T | x0) || N(mu, sigma_T^2 + v))``
    per example (nats): the start of every K-step bound (Ho et al. 2020, eq. 5, ``L_T``), in sigma-space."""
    sig = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    if not sig or sig[0] <= 0 or any(b <= a for a, b in zip(sig, sig[1:])):
        raise ValueError("the trajectory's levels must be positive and strictly ascending")
    top = sig[-1]
    pm = torch.as_tensor(prior_mean, dtype=x0.dtype, device=x0.device)
    var_p = top**2 + prior_variance
    return sig, 0.5 * _sum((top**2 + (x0 - pm) ** 2) / var_p - 1.0 + math.log(var_p / top**2))


def trajectory_elbo(
    denoiser: DenoiserFn,
    x0: Tensor,
    sigmas: Sequence[float] | Tensor,
    *,
    variance: str = "analytic",
    eta: float = 1.0,
    gamma: GammaFn | None = None,
    data_range: float | None = None,
    num_levels: int | None = 256,
    decoder_variance: float | None = None,
    prior_mean: float | Tensor = 0.0,
    prior_variance: float = 1.0,
    generator: torch.Generator | None = None,
    **cond,
) -> ElboResult:
    """The variational bound of ``x0 [B, ...]`` for the reverse chain on the ascending levels
    ``sigmas = (sigma_1, ..., sigma_K)`` (module docstring), per example.

    Args:
        denoiser: ``D(x, sigma [B], **cond)`` in sigma-space.
        x0: data; on the ``num_levels`` grid in [-1, 1] when ``num_levels`` is set.
        sigmas: ``K >= 1`` ascending positive levels (a trajectory's).
        variance: ``beta-tilde``, ``beta`` or ``analytic`` (:func:`unidm.samplers.variance.reverse_kernel`);
            ``eta > 0`` the forward ``q_lambda`` of DDIM (1: DDPM's Markov chain).
        gamma: the Gamma statistics (for ``analytic``); ``data_range``: width of the data's interval, for clipping.
        num_levels: the discretized decoder's levels (Ho et al. 2020, eq. 13), or ``None`` for a Gaussian density.
        decoder_variance: ``p(x0 | x_1)``'s variance; default: ``1 - abar_1 = sigma_1^2 / (1 + sigma_1^2)`` for
            ``beta``; for ``beta-tilde``, and for ``analytic`` with discrete data (Bao et al.'s treatment of the last
            step), the posterior variance ``beta~`` of the step ``sigma_1 -> 0`` taken from ``sigma_2`` (see
            :func:`kstep_elbo`, which passes the process's ``beta~_2``); for ``analytic`` with continuous data, the
            ELBO-optimal ``m(sigma_1) = sigma_1^2 (1 - Gamma(sigma_1))``, clipped.
        prior_mean, prior_variance: ``p(x_K) = N(prior_mean, (sigma_K^2 + prior_variance) I)`` in sigma-space
            (DDPM: 0 and 1; the data's mean and variance give the exact prior of Gaussian data).
        generator: for the noise draws (one per reverse step from ``sigma_2`` up, then the decoder's: the order of
            :func:`unidm.likelihood.elbo`, so ``K = T`` reproduces its draws).

    Returns:
        :class:`~unidm.likelihood.ElboResult` (nats and bits/dim; ``nfe = K``).
    """
    name = canonical_variance(variance)
    if eta <= 0:
        raise ValueError(f"the ELBO needs eta > 0 (DDIM's q_lambda is deterministic at eta = 0), got {eta}")
    from ..samplers import process_of

    check_variance(name, process_of(denoiser), gamma)
    sig, prior = trajectory_prior(x0, sigmas, prior_mean, prior_variance)
    d = x0[0].numel()
    diffusion = torch.zeros_like(prior)
    for k in range(1, len(sig)):  # in the order elbo() draws: t = 2..T, then the decoder
        r, s = sig[k], sig[k - 1]
        kern = reverse_kernel(r, s, eta, name, gamma, data_range)
        _, x0_hat = _denoise(denoiser, x0, r, generator, cond)
        const = 0.5 * d * (kern.q_variance / kern.variance - 1.0 + math.log(kern.variance / kern.q_variance))
        diffusion = diffusion + const + 0.5 * kern.x0_coef**2 * _sum((x0 - x0_hat) ** 2) / kern.variance
    _, x0_hat = _denoise(denoiser, x0, sig[0], generator, cond)
    var0 = decoder_variance
    if var0 is None:
        var0 = _decoder_variance(sig, name, gamma, data_range, num_levels)
    decoder = _decoder_nll(x0, x0_hat, var0, num_levels)
    total = prior + diffusion + decoder
    return ElboResult(elbo=-total, bits_per_dim=total / (d * math.log(2)), prior_term=prior,
                      diffusion_term=diffusion, decoder_term=decoder, nfe=len(sig))


def _decoder_variance(sig: list[float], variance: str, gamma, data_range, num_levels) -> float:
    s1 = sig[0]
    if variance == "beta":
        return s1**2 / (1 + s1**2)
    if variance == "analytic" and num_levels is None:
        m = min(max(s1**2 * (1.0 - float(gamma(s1))), 0.0), posterior_variance_bound(s1, data_range))
        return max(m, 1e-12 * s1**2)
    if len(sig) < 2:
        raise ValueError("the beta-tilde decoder variance needs two levels (or pass decoder_variance=)")
    # beta~ of sigma_2 -> sigma_1, in process space at x0 (abar_0 = 1): abar_1 * u^2
    u2 = s1**2 * (1 - (s1 / sig[1]) ** 2)
    return u2 / (1 + s1**2)


@torch.no_grad()
def kstep_elbo(
    denoiser: DenoiserFn,
    x0: Tensor,
    process: VPDiscrete | None = None,
    *,
    steps: int | None = None,
    trajectory: str = "even",
    variance: str = "analytic",
    eta: float = 1.0,
    gamma: GammaFn | None = None,
    data_range: float | None = None,
    num_levels: int | None = 256,
    generator: torch.Generator | None = None,
    **cond,
) -> ElboResult:
    """The K-step ELBO of a ``vp-discrete`` model: :func:`trajectory_elbo` on the timesteps of ``trajectory``
    (:func:`trajectory_timesteps`; ``steps`` defaults to all ``T``), DDPM's prior ``N(0, I)``, and for the
    ``beta-tilde`` decoder (and the ``analytic`` one on discrete data) the process's ``beta~`` of the step after
    ``tau_1`` (``beta~_2`` for ``tau_1 = 1``, as Ho et al.'s and Bao et al.'s code). With ``steps = T``, ``even`` and
    ``beta`` or ``beta-tilde`` it is :func:`unidm.likelihood.elbo` (up to rounding)."""
    process = process if process is not None else getattr(denoiser, "process", None)
    if not isinstance(process, VPDiscrete):
        raise TypeError("the K-step ELBO needs a VPDiscrete process (pass process=...)")
    name = canonical_variance(variance)
    sched = DiscreteSchedule.from_process(process)
    T = sched.num_steps
    levels = torch.sqrt(torch.expm1(-sched.log_abar[1:]))
    if trajectory == "dp" and name == "analytic":
        check_variance(name, process, gamma)
    taus = trajectory_timesteps(trajectory, T if steps is None else steps, T, gamma, levels, eta, name, data_range)
    sig = levels[[t - 1 for t in taus]]
    dec = None
    if name == "beta-tilde" or (name == "analytic" and num_levels is not None):
        dec = float(sched.beta_tilde[min(taus[0] + 1, T)])
    return trajectory_elbo(denoiser, x0, sig, variance=name, eta=eta, gamma=gamma, data_range=data_range,
                           num_levels=num_levels, decoder_variance=dec, generator=generator, **cond)
