"""Stochastic samplers in sigma-space: each draws its noise through :func:`~unidm.samplers.base.randn_like`, so
per-sample generators make a sample independent of its batch. A step that ends at ``sigma = 0`` is the
deterministic ``x <- D(x, sigma)`` (no noise is added at the data end)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import Callback, Generator, denoise, randn_like, report, sigma_list, to_d
from .ode import sample_heun
from .variance import (DIAGONAL_VARIANCES, GammaFn, HeadFn, check_variance, diagonal_posterior_variance,
                       reverse_kernel)

__all__ = ["sample_ddim", "sample_ddpm", "sample_edm", "sample_euler_maruyama", "sample_pc", "ancestral_step",
           "variance_step", "diagonal_variance_step"]


def ancestral_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, eta: float,
                   generator: Generator, s_noise: float = 1.0) -> Tensor:
    """Draw ``x(sigma_next)`` given ``x(sigma)`` and ``x0 ~ D``: the DDIM family (Song et al. 2021, eq. 12 and 16)
    in sigma-space, ``x' = D + (sigma_down / sigma)(x - D) + sigma_up z`` with
    ``sigma_up = eta sigma' sqrt(1 - sigma'^2/sigma^2)`` and ``sigma_down^2 = sigma'^2 - sigma_up^2``.
    ``eta = 0`` is DDIM (Euler), ``eta = 1`` the DDPM posterior ``q(x_{sigma'} | x_sigma, x0 = D)``."""
    if sigma_next == 0:
        return denoised
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - (sigma_next / sigma) ** 2)))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    x = denoised + (sigma_down / sigma) * (x - denoised)
    if sigma_up > 0:
        x = x + s_noise * sigma_up * randn_like(x, generator)
    return x


def variance_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, eta: float, variance: str,
                  gamma: GammaFn | None, data_range: float | None, generator: Generator, s_noise: float = 1.0,
                  max_std: float | None = None) -> Tensor:
    """:func:`ancestral_step` with the reverse variance of :func:`unidm.samplers.variance.reverse_kernel`
    (``beta-tilde``, ``beta`` or Analytic-DPM's ``analytic``): the same mean ``D + (sigma_down / sigma)(x - D)``,
    noise of standard deviation ``sqrt(v)`` (at most ``max_std`` when given). A step to ``sigma_next = 0`` is
    ``D``."""
    if sigma_next == 0:
        return denoised
    kernel = reverse_kernel(sigma, sigma_next, eta, variance, gamma, data_range)
    x = denoised + (kernel.sigma_down / sigma) * (x - denoised)
    std = math.sqrt(kernel.variance)
    if max_std is not None:
        std = min(std, max_std)
    if std > 0:
        x = x + s_noise * std * randn_like(x, generator)
    return x


def diagonal_variance_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, eta: float, variance: str,
                           head: HeadFn, data_range: float | None, generator: Generator, s_noise: float = 1.0,
                           max_std: float | None = None, cond: dict | None = None) -> Tensor:
    """:func:`variance_step` with Extended-Analytic-DPM's state-dependent diagonal variance (Bao et al. 2022b):
    the same mean, noise of standard deviation ``sqrt(u^2 + c^2 m(x))`` per dimension, where ``m(x)`` comes from
    the head's output at ``(x, sigma)`` (:func:`unidm.samplers.variance.diagonal_posterior_variance`; ``npr`` or
    ``sn``), each at most ``max_std`` when given. A step to ``sigma_next = 0`` is ``D`` (the head is not called)."""
    if sigma_next == 0:
        return denoised
    kernel = reverse_kernel(sigma, sigma_next, eta, "beta-tilde")
    m = diagonal_posterior_variance(variance, denoise(head, x, sigma, cond), x, denoised, sigma, data_range)
    std = torch.sqrt(kernel.q_variance + kernel.x0_coef**2 * m)
    if max_std is not None:
        std = std.clamp(max=max_std)
    return denoised + (kernel.sigma_down / sigma) * (x - denoised) + s_noise * std * randn_like(x, generator)


def _check_variance_option(denoiser: DenoiserFn, variance: str, gamma: GammaFn | None,
                           head: HeadFn | None = None) -> str:
    from . import process_of  # the package's helper (same layer; imported late to avoid a cycle)

    return check_variance(variance, process_of(denoiser), gamma, head, diagonal=True)


def sample_ddim(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, eta: float = 0.0, s_noise: float = 1.0, variance: str = "beta-tilde",
    gamma: GammaFn | None = None, data_range: float | None = None, clip_last: float | None = None,
    head: HeadFn | None = None,
) -> Tensor:
    """DDIM with stochasticity ``eta`` (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with
    ``sigma_t(eta)`` of eq. 16), written in sigma-space: see :func:`ancestral_step`. Parameterization-free: on a
    VP model's own grid it is exactly DDIM's update. NFE = N.

    ``variance`` (:mod:`unidm.samplers.variance`): ``"beta-tilde"`` (the default: the forward posterior's
    ``eta^2 beta~``, so ``eta = 0`` is deterministic), ``"beta"`` (``eta^2 beta`` of each skipped step) or
    ``"analytic"``, Analytic-DDIM (Bao et al. 2022, Thm 1), which needs ``gamma`` (a
    :class:`~unidm.samplers.variance.GammaStats` or any callable ``sigma -> Gamma``) and adds the propagated
    uncertainty of ``x0`` even at ``eta = 0``; ``data_range`` (2 for data in [-1, 1]) tightens its clipping.
    ``clip_last`` caps the noise standard deviation of the step that lands on the smallest nonzero level
    (Bao et al.'s released samplers; :func:`~unidm.samplers.variance.pixel_noise_clip`). The last step, to 0,
    is ``D`` whatever the variance.

    ``variance="npr"`` or ``"sn"`` is Extended-Analytic-DPM's state-dependent diagonal variance (Bao et al. 2022b,
    NPR-DPM / SN-DPM) from ``head(x, sigma [B], **cond) -> [B, ...]``, a learned head in eps units (a
    ``variance-head`` run's ``predict``; :func:`diagonal_variance_step`); one more network call per step but the
    last, which the NFE count does not include."""
    sigmas = sigma_list(grid)
    default = variance == "beta-tilde" and clip_last is None
    if not default:
        variance = _check_variance_option(denoiser, variance, gamma, head)
    diagonal = variance in DIAGONAL_VARIANCES
    for i in range(len(sigmas) - 1):
        denoised = denoise(denoiser, x, sigmas[i], cond)
        if default:
            x = ancestral_step(x, denoised, sigmas[i], sigmas[i + 1], eta, generator, s_noise)
        else:
            last = i + 2 == len(sigmas) - 1 and sigmas[-1] == 0
            if diagonal:
                x = diagonal_variance_step(x, denoised, sigmas[i], sigmas[i + 1], eta, variance, head, data_range,
                                           generator, s_noise, clip_last if last else None, cond)
            else:
                x = variance_step(x, denoised, sigmas[i], sigmas[i + 1], eta, variance, gamma, data_range,
                                  generator, s_noise, clip_last if last else None)
        report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


def sample_ddpm(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, s_noise: float = 1.0, variance: str = "beta-tilde", gamma: GammaFn | None = None,
    data_range: float | None = None, clip_last: float | None = None, head: HeadFn | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) in sigma-space: draw ``x_{i+1}`` from the Gaussian
    posterior ``q(x_{sigma_{i+1}} | x_{sigma_i}, x0 = D)``, mean ``D + (s'^2/s^2)(x - D)``, variance
    ``s'^2 (1 - s'^2/s^2)``; on DDPM's own grid this is DDPM's reverse step with the posterior variance
    beta-tilde. It equals DDIM with ``eta = 1`` and k-diffusion's ``euler_ancestral``. NFE = N.

    ``variance="beta"`` is DDPM's other fixed choice (``beta`` of each skipped step), ``variance="analytic"``
    Analytic-DPM's optimal variance (Bao et al. 2022, Thm 1; needs ``gamma``), ``"npr"`` / ``"sn"`` the learned
    diagonal ones (needs ``head``); see :func:`sample_ddim` for ``gamma``, ``head``, ``data_range`` and
    ``clip_last``."""
    return sample_ddim(denoiser, x, grid, generator=generator, callback=callback, cond=cond, eta=1.0,
                       s_noise=s_noise, variance=variance, gamma=gamma, data_range=data_range, clip_last=clip_last,
                       head=head)


def sample_edm(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0,
    s_noise: float = 1.0,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): churn (noise raised to
    ``sigma_hat = (1 + gamma) sigma`` for ``sigma`` in ``[S_tmin, S_tmax]``) then a Heun step to the next level.
    Defaults are EDM's ImageNet-64 values except ``S_noise = 1`` (EDM uses 1.003, which biases the
    distribution slightly). NFE = 2 N - 1."""
    return sample_heun(denoiser, x, grid, generator=generator, callback=callback, cond=cond, s_churn=s_churn,
                       s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_euler_maruyama(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, langevin: float = 1.0,
) -> Tensor:
    """Euler–Maruyama on the family of reverse SDEs of Karras et al. 2022, eq. 6,
    ``dx = -sigma score dsigma - beta sigma^2 score dt + sqrt(2 beta) sigma dW`` with ``sigma = t`` and
    ``beta = langevin / sigma``: ``langevin = 0`` is the probability-flow ODE (Euler), ``langevin = 1`` the
    reverse-time SDE of Song et al. 2021 (eq. 6) for the VE process, larger values add Langevin-like
    exploration. Step: ``x' = x + (1 + langevin)(sigma' - sigma)(x - D)/sigma + sqrt(2 langevin sigma
    (sigma - sigma')) z``; first order (weak), needs many small steps. NFE = N."""
    if langevin < 0:
        raise ValueError(f"langevin must be >= 0, got {langevin}")
    sigmas = sigma_list(grid)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            x = x + (1 + langevin) * (s_next - s) * to_d(x, s, denoised)
            if langevin > 0:
                x = x + math.sqrt(2 * langevin * s * (s - s_next)) * randn_like(x, generator)
        report(callback, i, x, s, s_next, denoised)
    return x


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


def sample_pc(
    denoiser: DenoiserFn, x: Tensor, grid: Tensor, *, generator: Generator = None, callback: Callback = None,
    cond: dict | None = None, snr: float = 0.16, n_corrector: int = 1, step_rule: str = "sigma",
) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
    Algorithms 2 and 4, VE): at each level ``n_corrector`` Langevin steps ``x <- x + e score + sqrt(2 e) z``,
    then the reverse-diffusion predictor ``x' = x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z``.
    NFE = (1 + n_corrector) N.

    ``step_rule="song"`` is Song's ``e = 2 (snr |z| / |score|)^2`` with norms per sample (so a sample does not
    depend on its batch); in high dimension ``|z| / |score|`` concentrates at ``sigma``, so the default
    ``step_rule="sigma"``, ``e = 2 (snr sigma)^2``, takes the same steps without the blow-ups Song's ratio has in
    low dimension, where ``|score|`` of a sample at a mode is near 0."""
    if step_rule not in ("sigma", "song"):
        raise ValueError(f"step_rule must be 'sigma' or 'song', got {step_rule!r}")
    sigmas = sigma_list(grid)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        for _ in range(n_corrector):
            score = (denoise(denoiser, x, s, cond) - x) / s**2
            z = randn_like(x, generator)
            if step_rule == "song":
                step = 2 * (snr * _per_sample_norm(z) / _per_sample_norm(score).clamp_min(1e-30)) ** 2
            else:
                step = torch.full_like(_per_sample_norm(z), 2 * (snr * s) ** 2)
            x = x + step * score + torch.sqrt(2 * step) * z
        denoised = denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            x = x + (1 - (s_next / s) ** 2) * (denoised - x) + math.sqrt(s**2 - s_next**2) * randn_like(x, generator)
        report(callback, i, x, s, s_next, denoised)
    return x
