"""Exact log-likelihood of any Gaussian diffusion / flow model through its probability-flow ODE.

In sigma-space (``x = x0 + sigma * eps``, DESIGN.md) the probability-flow ODE of the marginals ``p_sigma`` is
``dx/dsigma = (x - D(x, sigma)) / sigma`` (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
eq. 13; Karras et al. 2022, eq. 4). Along its solutions the instantaneous change of variables (Chen et al. 2018,
"Neural Ordinary Differential Equations", Thm. 1) gives ``d log p_sigma(x(sigma)) / dsigma = -div_x dx/dsigma``, so

    log p_{sigma_min}(x) = log p_{sigma_max}(z) + int div_x (dx/dsigma) dsigma,    z = x(sigma_max),

which :func:`log_likelihood` integrates jointly with ``x`` (Song et al. 2021, App. D.2; Grathwohl et al. 2019,
"FFJORD", eq. 4). Choices, and the error each brings:

- **Time variable.** We integrate in ``s = log sigma``: ``dx/ds = x - D(x, e^s)`` and
  ``d delta/ds = div_x (x - D) = dim - div_x D``. Noise levels spanning five decades then cost steps in proportion
  to how much the field changes, not to ``sigma_max / sigma_min``; near the prior ``x - D ~ x - E[x0]`` is almost
  linear and the solver takes long steps.
- **Divergence.** Exact (``dim`` vector-Jacobian products per evaluation) or Hutchinson's unbiased estimator
  ``v^T J v`` with ``k`` Rademacher or Gaussian probes held fixed along the solve (FFJORD, Sec. 3.1). The
  Hutchinson log-likelihood is unbiased for ``log p`` (the divergence enters linearly); bits/dim then carry the
  probe noise, which averages out over a data set.
- **Prior.** ``p_{sigma_max}`` is replaced by ``N(0, (sigma_max^2 + prior_variance) I)``. ``prior_variance`` is
  the data's per-dimension second moment that the Gaussian keeps: ``sigma_data^2`` when the denoiser has one (EDM
  preconditioning), else 0 (VE's ``N(0, sigma_max^2)``; VP's ``N(0, I)`` in ``x_t``-space is ``prior_variance = 1``
  in sigma-space). For data with per-dimension mean ``mu`` and variance ``v`` the expected error is
  ``KL(p_{sigma_max} || prior) ~ (mu^2 / (2 sigma^2) + (v - prior_variance)^2 / (4 sigma^4))`` nats per dimension
  with ``sigma = sigma_max``: 1e-4 nats/dim for unit data at ``sigma_max = 80``. The result also returns
  ``latent`` and ``delta_log_prob``, so any better prior can be applied afterwards.
- **Data end.** The ODE starts at the data point itself at ``sigma_min > 0`` and returns ``log p_{sigma_min}(x)``,
  the density of the data convolved with ``N(0, sigma_min^2 I)``. Per point
  ``log p_{sigma_min}(x) - log p_0(x) = sigma_min^2 / 2 * (lap p_0 / p_0)(x) + O(sigma_min^4)``, and the first term
  has mean zero under the data, so the NLL of a data set is biased by only ``KL(p_0 || p_{sigma_min}) =
  O(sigma_min^4)`` (always upwards). For a Gaussian of variance ``v``: ``(sigma_min^2 / v)^2 / 4`` nats/dim.
- **Discrete data** (``num_levels=K``): uniform dequantization (Theis et al. 2016; Ho et al. 2020, Sec. 3.3
  uses the same bins). Data on the grid ``-1 + 2 k / (K - 1)`` have bins of width ``Delta = 2 / (K - 1)`` centred on
  the grid points; with ``u ~ U(-Delta/2, Delta/2)^D``,
  ``log P(x) = log(Delta^D E_u p(x + u)) >= log p(x + u) + D log Delta`` (Jensen, in expectation over ``u``), so
  ``bits/dim = -(log p(x + u) + D log Delta) / (D ln 2)`` is an upper bound on the discrete data's bits/dim.
  For 8-bit images in [-1, 1] the offset is ``-log2(2/255) = +6.99`` bits/dim over the density's bits/dim.

Example:
    >>> import torch
    >>> from unidm.oracles import GaussianOracle
    >>> oracle = GaussianOracle(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> res = log_likelihood(oracle, x, sigma_min=1e-3, sigma_max=100.0, prior_variance=1.0)
    >>> bool(torch.allclose(res.log_prob, oracle.log_prob(x, 1e-3), atol=1e-4))
    True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..integrate import exact_divergence, hutchinson_divergence, sample_probes, solve_ivp

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "bits_per_dim",
    "gaussian_prior_log_prob",
    "dequantize",
    "bin_width",
    "latent_outliers",
]

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class LikelihoodResult:
    """Per-example log-likelihood from the probability-flow ODE.

    Attributes:
        log_prob: ``[B]`` nats: ``log p(x)`` of the density, or with ``num_levels`` the dequantization bound on
            the log-probability of the discrete data, ``log p(x + u) + D log Delta``.
        bits_per_dim: ``[B]`` ``-log_prob / (D ln 2)``.
        latent: ``[B, ...]`` the ODE's end point ``z = x(sigma_max)``.
        nfe: denoiser evaluations (each exact-divergence evaluation counts once, whatever its backward passes).
        prior_log_prob: ``[B]`` ``log N(z; 0, (sigma_max^2 + prior_variance) I)``.
        delta_log_prob: ``[B]`` the integrated divergence, ``log p_{sigma_min}(x) - log p_{sigma_max}(z)``.
        n_steps: accepted solver steps.
        sigma_min, sigma_max, prior_variance: the integration range and prior actually used.
        latent_scale: ``[B]`` ``|z| / sqrt(D (sigma_max^2 + prior_variance))``, the latent's RMS in units of the
            prior's standard deviation: ``1 +- 1/sqrt(2 D)`` for a latent the prior could have drawn. Far above
            that, the model's flow has run away from the data for this example and its ``log_prob`` is the prior
            penalty ``-D latent_scale^2 / 2`` (see :func:`latent_outliers`).
    """

    log_prob: Tensor
    bits_per_dim: Tensor
    latent: Tensor
    nfe: int
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    n_steps: int
    sigma_min: float
    sigma_max: float
    prior_variance: float
    latent_scale: Tensor


def latent_outliers(latent_scale: Tensor, dim: int, z: float = 8.0) -> Tensor:
    """``[B]`` bool: latents the prior would draw with probability below ~``1e-15`` (``z = 8``).

    Under the prior ``D latent_scale^2`` is chi-square with ``D`` degrees of freedom; by the Wilson–Hilferty
    approximation ``latent_scale^(2/3)`` is normal with mean ``1 - 2/(9D)`` and variance ``2/(9D)``, and an outlier
    lies more than ``z`` of its standard deviations above the mean. A forward PF-ODE that sends a held-out point
    there has run away (an unstable learned field, typically an eps-parameterized network at low SNR, where
    ``D = x - sigma eps_hat`` multiplies the network's error by ``sigma``); that example's NLL is then dominated by
    the prior term and swamps a data set's mean.
    """
    c = 2.0 / (9.0 * dim)
    return latent_scale.pow(2.0 / 3.0) > 1.0 - c + z * math.sqrt(c)


def bin_width(num_levels: int, low: float = -1.0, high: float = 1.0) -> float:
    """Width ``Delta = (high - low) / (K - 1)`` of the bins around a ``K``-level grid spanning ``[low, high]``."""
    return (high - low) / (num_levels - 1)


def dequantize(
    x: Tensor, num_levels: int, *, low: float = -1.0, high: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """``x + u`` with ``u ~ U(-Delta/2, Delta/2)`` per element, ``Delta = bin_width(num_levels, low, high)``."""
    width = bin_width(num_levels, low, high)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + width * u


def bits_per_dim(log_prob: Tensor, dim: int, bin_width: float | None = None) -> Tensor:
    """``-(log_prob + dim log Delta) / (dim ln 2)``: bits/dim of a density, or with ``bin_width`` of the
    discrete data whose bins have that width (the dequantization offset, module docstring)."""
    offset = 0.0 if bin_width is None else dim * math.log(bin_width)
    return -(log_prob + offset) / (dim * math.log(2))


def gaussian_prior_log_prob(z: Tensor, variance: float) -> Tensor:
    """``log N(z; 0, variance I)`` per example [B]."""
    flat = z.reshape(z.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat.pow(2).sum(1) / variance + d * (math.log(variance) + _LOG_2PI))


def _resolve_range(denoiser, sigma_min, sigma_max, prior_variance) -> tuple[float, float, float]:
    process = getattr(denoiser, "process", None)
    if sigma_min is None:
        sigma_min = process.sigma_min if process is not None else 1e-3
    if sigma_max is None:
        sigma_max = process.sigma_max if process is not None else 80.0
    if prior_variance is None:
        prior_variance = float(getattr(denoiser, "sigma_data", 0.0)) ** 2
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return float(sigma_min), float(sigma_max), float(prior_variance)


def _log_sigma_field(
    denoiser: DenoiserFn, probes: Tensor | None, cond: dict
) -> Callable[[Tensor, tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    """``f(s, (x, delta)) = (x - D(x, e^s), div_x (x - D))``: the PF-ODE and its divergence in ``s = log sigma``."""

    def f(s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        sigma = torch.exp(s).to(x.dtype).expand(x.shape[0])
        field = lambda y: y - denoiser(y, sigma, **cond)  # noqa: E731
        if probes is None:
            v, div = exact_divergence(field, x)
        else:
            v, div = hutchinson_divergence(field, x, probes)
        return v, div

    return f


def log_likelihood(
    denoiser: DenoiserFn,
    x: Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    prior_variance: float | None = None,
    hutchinson: int | None = None,
    probe: str = "rademacher",
    num_levels: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    **cond,
) -> LikelihoodResult:
    """Log-likelihood of ``x [B, ...]`` under the model whose denoiser is ``D(x, sigma)``, in nats and bits/dim.

    Integrates the probability-flow ODE with its divergence from ``sigma_min`` (the data) to ``sigma_max`` (the
    prior) in ``log sigma`` with adaptive Dormand–Prince (:func:`unidm.integrate.solve_ivp`); see the module
    docstring for the equations and the error of each choice.

    Args:
        denoiser: ``D(x, sigma [B], **cond) -> x0_hat``; a :class:`~unidm.denoiser.Denoiser` supplies the default
            range (its process's ``sigma_min``/``sigma_max``) and ``prior_variance = sigma_data^2``.
        x: data ``[B, ...]``; on a ``num_levels`` grid in [-1, 1] if ``num_levels`` is given.
        sigma_min, sigma_max: integration range (defaults: the process's, else ``1e-3`` and ``80``).
        prior_variance: added to ``sigma_max^2`` in the Gaussian prior (default ``sigma_data^2`` or 0).
        hutchinson: ``None`` for the exact divergence, or the number ``k`` of Hutchinson probes.
        probe: ``"rademacher"`` or ``"gaussian"``.
        num_levels: dequantize uniformly and report the bound on the discrete data (module docstring).
        rtol, atol: solver tolerances (on ``x`` and on the accumulated log-density alike).
        generator: for the dequantization noise and the probes.
        **cond: passed to the denoiser.

    Returns:
        :class:`LikelihoodResult`.
    """
    sigma_min, sigma_max, prior_variance = _resolve_range(denoiser, sigma_min, sigma_max, prior_variance)
    width = None if num_levels is None else bin_width(num_levels)
    x = x.detach()
    if num_levels is not None:
        x = dequantize(x, num_levels, generator=generator)
    probes = None if hutchinson is None else sample_probes(x, hutchinson, probe, generator=generator)
    f = _log_sigma_field(denoiser, probes, cond)
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    sol = solve_ivp(f, math.log(sigma_min), math.log(sigma_max), (x, delta0), rtol=rtol, atol=atol)
    z, delta = sol.y
    prior = gaussian_prior_log_prob(z, sigma_max**2 + prior_variance)
    log_density = prior + delta
    dim = x[0].numel()
    log_prob = log_density if width is None else log_density + dim * math.log(width)
    latent_scale = (z.reshape(z.shape[0], -1).pow(2).mean(1) / (sigma_max**2 + prior_variance)).sqrt()
    outliers = latent_outliers(latent_scale, dim)
    if bool(outliers.any()):
        warnings.warn(
            f"log_likelihood: {int(outliers.sum())} of {len(outliers)} latents lie far outside the prior (largest "
            f"latent_scale {float(latent_scale.max()):.3g}, expected 1 +- {1 / math.sqrt(2 * dim):.2g}): the model's "
            "probability-flow ODE runs away for them and their log_prob is mostly the prior term. Look at "
            "result.latent_scale; a lower sigma_max shows whether the field is unreliable at large sigma "
            "(docs/likelihood.md, 'Runaway latents').",
            RuntimeWarning,
            stacklevel=2,
        )
    return LikelihoodResult(
        log_prob=log_prob,
        bits_per_dim=bits_per_dim(log_prob, dim),
        latent=z,
        nfe=sol.nfe,
        prior_log_prob=prior,
        delta_log_prob=delta,
        n_steps=sol.n_steps,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        prior_variance=prior_variance,
        latent_scale=latent_scale,
    )
