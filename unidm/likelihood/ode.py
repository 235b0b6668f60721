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
- **Prior.** ``p_{sigma_max}`` is replaced by the process's prior, ``process.prior_log_prob(z, sigma_max,
  prior_variance)`` when the denoiser (or the denoiser it wraps) has a process, else the Gaussian one; for a
  Gaussian process it is ``N(0, (sigma_max^2 + prior_variance) I)``. ``prior_variance`` is
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
- **Discrete data** (``num_levels=K``): uniform dequantization through
  :func:`unidm.likelihood.dequantized_log_prob` (Theis et al. 2016; the bins of Ho et al. 2020, eq. 13), which
  reports ``log p(x + u) + D log Delta``, a bound on the discrete data's log-probability (Jensen). For 8-bit images
  in [-1, 1] the offset is ``-log2(2/255) = +6.99`` bits/dim over the density's bits/dim.
- **Other kernels.** Any location-scale kernel ``x = x0 + sigma z`` keeps this ODE (``D = E[x0 | x]`` under that
  kernel); only the prior changes, and it comes from the process.

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
from ..processes import gaussian_log_prob
from ..samplers import process_of
from .dequantize import bin_width, bits_per_dim, dequantize, dequantized_log_prob
from .result import Likelihood

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "bits_per_dim",
    "gaussian_prior_log_prob",
    "dequantize",
    "bin_width",
    "latent_outliers",
]


@dataclass
class LikelihoodResult:
    """Per-example log-likelihood from the probability-flow ODE.

    Attributes:
        log_prob: ``[B]`` nats: ``log p(x)`` of the density, or with ``num_levels`` the dequantization bound on
            the log-probability of the discrete data, ``log p(x + u) + D log Delta``.
        bits_per_dim: ``[B]`` ``-log_prob / (D ln 2)``.
        latent: ``[B, ...]`` the ODE's end point ``z = x(sigma_max)``.
        nfe: denoiser evaluations (each exact-divergence evaluation counts once, whatever its backward passes).
        prior_log_prob: ``[B]`` the prior's ``log p(z)``: ``process.prior_log_prob(z, sigma_max, prior_variance)``,
            ``log N(z; 0, (sigma_max^2 + prior_variance) I)`` for a Gaussian process or a bare denoiser.
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

    def to_likelihood(self) -> Likelihood:
        """This result as the typed face's :class:`~unidm.likelihood.Likelihood` (``kind="ode"``)."""
        return Likelihood(
            nll=-self.log_prob, bits_per_dim=self.bits_per_dim, kind="ode", nfe=float(self.nfe),
            extra={"latent_scale": self.latent_scale, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                   "prior_variance": self.prior_variance, "n_steps": self.n_steps},
        )


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


def gaussian_prior_log_prob(z: Tensor, variance: float) -> Tensor:
    """``log N(z; 0, variance I)`` per example [B] (:func:`unidm.processes.gaussian_log_prob`)."""
    return gaussian_log_prob(z, variance)


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
            range (its process's ``sigma_min``/``sigma_max``) and ``prior_variance = sigma_data^2``; the prior is
            its process's ``prior_log_prob`` (found through wrappers, :func:`unidm.samplers.process_of`).
        x: data ``[B, ...]``; on a ``num_levels`` grid in [-1, 1] if ``num_levels`` is given.
        sigma_min, sigma_max: integration range (defaults: the process's, else ``1e-3`` and ``80``).
        prior_variance: the data variance the prior keeps, added to ``sigma_max^2`` in the Gaussian prior (default
            ``sigma_data^2`` or 0).
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
    process = process_of(denoiser)
    solved = {}

    def log_density(y: Tensor) -> Tensor:
        probes = None if hutchinson is None else sample_probes(y, hutchinson, probe, generator=generator)
        f = _log_sigma_field(denoiser, probes, cond)
        delta0 = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        sol = solve_ivp(f, math.log(sigma_min), math.log(sigma_max), (y, delta0), rtol=rtol, atol=atol)
        z, delta = sol.y
        if process is not None:
            prior = process.prior_log_prob(z, sigma_max, prior_variance)
        else:
            prior = gaussian_prior_log_prob(z, sigma_max**2 + prior_variance)
        solved.update(sol=sol, z=z, delta=delta, prior=prior)
        return prior + delta

    x = x.detach()
    log_prob, bpd = dequantized_log_prob(log_density, x, num_levels, generator=generator)
    sol, z, delta, prior = solved["sol"], solved["z"], solved["delta"], solved["prior"]
    dim = x[0].numel()
    latent_scale = (z.reshape(z.shape[0], -1).pow(2).mean(1) / (sigma_max**2 + prior_variance)).sqrt()
    outliers = latent_outliers(latent_scale, dim)
    if getattr(process, "gaussian_kernel", True) and bool(outliers.any()):
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
        bits_per_dim=bpd,
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
