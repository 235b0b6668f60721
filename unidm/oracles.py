"""Closed-form denoisers and densities at every noise level (DESIGN.md, "Oracles").

For data ``x0 ~ p`` and ``x = x0 + sigma * eps`` the ideal denoiser is ``D(x, sigma) = E[x0 | x]``:

- :class:`GaussianOracle` ``N(mu, diag(v))``: ``D = mu + v / (v + sigma^2) (x - mu)``; the marginal is
  ``N(mu, v + sigma^2)``; the probability-flow ODE carries ``x(sigma0)`` to
  ``mu + sqrt((v + sigma^2) / (v + sigma0^2)) (x(sigma0) - mu)``.
- :class:`GaussianMixtureOracle`: the same per component, weighted by the posterior responsibilities at sigma.
- :class:`EmpiricalOracle` (a finite training set): a softmax over ``-|x - x_i|^2 / (2 sigma^2)`` of the points.

Each is a valid :class:`~unidm.denoiser.DenoiserFn` (``oracle(x, sigma)``), so any sampler, loss or likelihood
can be run against exact mathematics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .utils import as_sigma_batch

__all__ = ["GaussianOracle", "GaussianMixtureOracle", "EmpiricalOracle"]

_LOG_2PI = math.log(2 * math.pi)


def _col(sigma: Tensor) -> Tensor:
    return sigma.reshape(-1, 1)


class GaussianOracle:
    """``x0 ~ N(mu, diag(var))`` on flat vectors of dimension ``d``."""

    def __init__(self, mean: Tensor, var: Tensor):
        self.mean = torch.as_tensor(mean)
        self.var = torch.as_tensor(var, dtype=self.mean.dtype).expand_as(self.mean).clone()

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        mu, v = self.mean.to(x), self.var.to(x)
        return mu + v / (v + s2) * (x - mu)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Exact ``log p_sigma(x)`` of the noised marginal ``N(mu, v + sigma^2)`` [B]."""
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        var = self.var.to(x) + s2
        return -0.5 * (((x - self.mean.to(x)) ** 2 / var) + torch.log(var) + _LOG_2PI).sum(-1)

    def entropy(self) -> float:
        return float(0.5 * (torch.log(2 * math.pi * math.e * self.var)).sum())

    def sample(self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean + torch.sqrt(self.var + sigma**2) * z

    def ode_solution(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        """Exact probability-flow ODE map from noise level ``sigma_from`` to ``sigma_to``."""
        s0 = _col(as_sigma_batch(sigma_from, x)) ** 2
        s1 = _col(as_sigma_batch(sigma_to, x)) ** 2
        mu, v = self.mean.to(x), self.var.to(x)
        return mu + torch.sqrt((v + s1) / (v + s0)) * (x - mu)


class GaussianMixtureOracle:
    """``x0 ~ sum_k w_k N(mu_k, diag(var_k))``.

    Args:
        weights: ``[K]`` mixture weights (normalized here).
        means: ``[K, d]``.
        variances: ``[K, d]``, ``[K]`` or a scalar (per-component isotropic).
    """

    def __init__(self, weights: Tensor, means: Tensor, variances: Tensor | float):
        self.means = torch.as_tensor(means)
        w = torch.as_tensor(weights, dtype=self.means.dtype)
        self.weights = w / w.sum()
        v = torch.as_tensor(variances, dtype=self.means.dtype)
        if v.ndim == 1:
            v = v[:, None]
        self.variances = v.expand_as(self.means).clone()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _component_log_probs(self, x: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        var = self.variances.to(x)[None] + s2[:, :, None]  # [B, K, d]
        diff = x[:, None, :] - self.means.to(x)[None]
        logp = -0.5 * ((diff**2 / var) + torch.log(var) + _LOG_2PI).sum(-1)  # [B, K]
        return logp + torch.log(self.weights.to(x))[None], var

    def responsibilities(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Posterior ``p(k | x)`` at noise level sigma [B, K]."""
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, _ = self._component_log_probs(x, s2)
        return torch.softmax(logp, dim=-1)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, var = self._component_log_probs(x, s2)
        r = torch.softmax(logp, dim=-1)
        mu, v = self.means.to(x)[None], self.variances.to(x)[None]
        per_comp = mu + v / var * (x[:, None, :] - mu)
        return (r[:, :, None] * per_comp).sum(1)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, _ = self._component_log_probs(x, s2)
        return torch.logsumexp(logp, dim=-1)

    def sample(
        self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None, return_labels: bool = False
    ):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        x = self.means[k] + torch.sqrt(self.variances[k] + sigma**2) * z
        return (x, k) if return_labels else x

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        within = (self.weights[:, None] * self.variances).sum(0)
        return torch.diag(within) + (self.weights[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)

    def entropy(self, n: int = 200_000, seed: int = 0) -> float:
        """Monte Carlo ``H = -E log p(x0)`` (standard error ~ std / sqrt(n))."""
        g = torch.Generator().manual_seed(seed)
        return float(-self.log_prob(self.sample(n, generator=g)).mean())


class EmpiricalOracle:
    """The ideal denoiser of a finite training set ``{x_i}`` (uniform weights, no component variance)."""

    def __init__(self, points: Tensor):
        self.points = torch.as_tensor(points)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        return self.weights(x, sigma) @ self.points.to(x)

    def weights(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        d2 = torch.cdist(x, self.points.to(x)) ** 2
        return torch.softmax(-d2 / (2 * s2), dim=-1)

    def log_prob(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        d = x.shape[1]
        d2 = torch.cdist(x, self.points.to(x)) ** 2
        return (
            torch.logsumexp(-d2 / (2 * s2), dim=-1)
            - math.log(self.points.shape[0])
            - 0.5 * d * (torch.log(s2[:, 0]) + _LOG_2PI)
        )
