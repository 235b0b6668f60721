"""Denoising score matching in sigma-space, the one training loss of every Gaussian model.

``L(theta) = E_{x0, sigma ~ p(sigma), eps} [ lambda(sigma) |D_theta(x0 + sigma eps, sigma) - x0|^2 ]``
(Vincent 2011; Song & Ermon 2019; Karras et al. 2022, eq. 2 and 8). The noise-level distribution ``p(sigma)`` and
the weighting ``lambda`` are the only choices; see :mod:`unidm.losses.weighting`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..parameterization import path_coefficients
from ..processes import GaussianProcess, NoiseLevels
from .weighting import weighting_fn

__all__ = ["DenoisingLoss"]


class DenoisingLoss:
    """Callable ``loss(denoiser, x0, generator=None, **cond) -> [B]`` per-example losses (mean over dims).

    Args:
        process: the process (gives ``alpha_t``, ``sigma_t`` for weightings that use them).
        noise_levels: training distribution of sigma.
        weighting: a name from :data:`~unidm.losses.weighting.WEIGHTINGS`.
        sigma_data: data standard deviation (EDM weighting).
        gamma: the clamp of min-SNR-gamma.
    """

    def __init__(
        self,
        process: GaussianProcess,
        noise_levels: NoiseLevels,
        weighting: str = "eps",
        sigma_data: float = 1.0,
        gamma: float = 5.0,
    ):
        self.process, self.noise_levels = process, noise_levels
        self.weighting_name, self.weighting = weighting, weighting_fn(weighting)
        self.sigma_data, self.gamma = sigma_data, gamma

    def weight(self, sigma: Tensor) -> Tensor:
        return self.weighting(path_coefficients(self.process, sigma), self.sigma_data, self.gamma)

    def at_sigma(self, denoiser: DenoiserFn, x0: Tensor, sigma: Tensor, eps: Tensor, **cond) -> Tensor:
        """The loss at given noise levels ``sigma [B]`` and standardized noise ``eps`` (``x = x0 + sigma eps``):
        ``lambda |D - x0|^2`` [B]."""
        shape = (-1, *([1] * (x0.ndim - 1)))
        return self.at_x(denoiser, x0, x0 + sigma.reshape(shape) * eps, sigma, **cond)

    def at_x(self, denoiser: DenoiserFn, x0: Tensor, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """The loss of the corrupted ``x`` at noise levels ``sigma [B]``: ``lambda(sigma) |D(x, sigma) - x0|^2``
        [B] (mean over dims)."""
        err = (denoiser(x, sigma, **cond) - x0) ** 2
        return self.weight(sigma) * err.reshape(x0.shape[0], -1).mean(1)

    def __call__(self, denoiser: DenoiserFn, x0: Tensor, generator: torch.Generator | None = None, **cond) -> Tensor:
        """Draw ``sigma ~ p(sigma)`` and ``x ~ process.perturb(x0, sigma)`` (any location-scale kernel: the
        minimizer is still ``E[x0 | x]``), then :meth:`at_x`."""
        sigma = self.noise_levels.draw(self.process, x0.shape[0], generator, x0.device, x0.dtype)
        x = self.process.perturb(x0, sigma, generator)
        return self.at_x(denoiser, x0, x, sigma, **cond)
