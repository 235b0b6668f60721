"""Denoising score matching in sigma-space, the one training loss of every Gaussian model.

``L(theta) = E_{x0, sigma ~ p(sigma), eps} [ lambda(sigma) |D_theta(x0 + sigma eps, sigma) - x0|^2 ]``
(Vincent 2011; Song & Ermon 2019; Karras et al. 2022, eq. 2 and 8). The noise-level distribution ``p(sigma)`` and
the weighting ``lambda`` are the only choices; see :mod:`unidm.losses.weighting`.

**Couplings and fixed pairs.** The noise ``eps`` may be coupled to the data (:mod:`unidm.losses.coupling`: minibatch
OT, Sinkhorn, Schrödinger bridge) or given with each example (a reflow coupling ``(z, x1)``, Liu et al. 2022,
"Flow Straight and Fast", Alg. 1); the noise level ``sigma`` is still drawn from ``p(sigma)``, one per example, and
the loss is still ``lambda(sigma) |D(x0 + sigma eps, sigma) - x0|^2``. Its minimizer is then ``E[x0 | x]`` under
the coupling, no longer the posterior mean of a Gaussian corruption.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from ..parameterization import path_coefficients
from ..processes import GaussianProcess, NoiseLevels
from ..rng import randn
from .coupling import COUPLINGS, coupling_indices, sb_bridge, sb_noise_level
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
        coupling: how ``eps`` is paired with ``x0`` in a batch, a name in
            :data:`~unidm.losses.coupling.COUPLINGS` (``independent``: the Gaussian corruption).
        coupling_reg: the entropic regularisation of ``sinkhorn`` and ``sb`` (``reg = 2 s^2`` for the bridge noise
            level ``s`` of ``sb``).

    With ``coupling="sb"`` (Tong et al. 2023, SB-CFM) the path carries Brownian-bridge noise: on the flow
    path ``x_t = (1 - t) x0 + t eps + s sqrt(t (1 - t)) z`` with target velocity
    ``(eps - x0) + (1 - 2t) / (2t (1 - t)) (x_t - mu_t)``. In sigma-space (``x = x_t / (1 - t)``,
    ``sigma = t / (1 - t)``) that is ``x = x0 + sigma eps + s sqrt(sigma) z`` and, through ``D = x - sigma dx/dsigma``,
    the regression target ``x0 + (s / 2) sqrt(sigma) z`` instead of ``x0``: the same construction holds on any
    process's sigma-space path and is SB-CFM's on ``flow``.

    Example: the exact denoiser of a deterministic pair ``x0 = 2 eps`` has zero loss with the pairs given.

    >>> from unidm.processes import RectifiedFlow, UniformT
    >>> loss = DenoisingLoss(RectifiedFlow(), UniformT(), "x0")
    >>> eps = torch.randn(8, 2)
    >>> exact = lambda x, sigma: 2 * x / (2 + sigma[:, None])  # x = 2 eps + sigma eps
    >>> float(loss(exact, 2 * eps, torch.Generator().manual_seed(0), noise=eps).abs().max()) < 1e-6
    True
    """

    def __init__(
        self,
        process: GaussianProcess,
        noise_levels: NoiseLevels,
        weighting: str = "eps",
        sigma_data: float = 1.0,
        gamma: float = 5.0,
        coupling: str = "independent",
        coupling_reg: float = 0.05,
    ):
        if coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {coupling!r}; valid: {', '.join(COUPLINGS)}")
        self.process, self.noise_levels = process, noise_levels
        self.weighting_name, self.weighting = weighting, weighting_fn(weighting)
        self.sigma_data, self.gamma = sigma_data, gamma
        self.coupling, self.coupling_reg = coupling, float(coupling_reg)

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

    def __call__(self, denoiser: DenoiserFn, x0: Tensor, generator: torch.Generator | None = None, *,
                 noise: Tensor | None = None, labels: Tensor | None = None, **cond) -> Tensor:
        """Draw ``sigma ~ p(sigma)`` and ``x ~ process.perturb(x0, sigma)`` (any location-scale kernel: the
        minimizer is still ``E[x0 | x]``), then :meth:`at_x`.

        With ``noise`` (``[B, ...]``, the standardized prior noise paired with each ``x0``: fixed pairs) ``x = x0 +
        sigma * noise``; with a coupling other than ``independent``, ``eps ~ N(0, I)`` is drawn after ``sigma`` and
        paired with ``x0`` by :func:`~unidm.losses.coupling.coupling_indices` (``labels`` for the ``*-class``
        couplings). In both cases ``sigma`` is drawn as before, one per example from ``p(sigma)``."""
        sigma = self.noise_levels.draw(self.process, x0.shape[0], generator, x0.device, x0.dtype)
        if noise is None and self.coupling == "independent":
            x = self.process.perturb(x0, sigma, generator)
            return self.at_x(denoiser, x0, x, sigma, **cond)
        eps = self._noise(x0, noise, labels, generator)
        if self.coupling.removesuffix("-class") == "sb":  # Brownian-bridge noise of SB-CFM (class docstring)
            z = randn(x0.shape, generator, x0.dtype, x0.device)
            x, target = sb_bridge(x0, eps, sigma, sb_noise_level(self.coupling_reg), z)
        else:
            x, target = x0 + sigma.reshape((-1, *([1] * (x0.ndim - 1)))) * eps, x0
        err = (denoiser(x, sigma, **cond) - target) ** 2
        return self.weight(sigma) * err.reshape(x0.shape[0], -1).mean(1)

    def _noise(self, x0: Tensor, noise: Tensor | None, labels: Tensor | None, generator) -> Tensor:
        if noise is not None:
            if self.coupling != "independent":
                raise ValueError(f"the batch carries fixed pairs ('noise'), which are already a coupling; "
                                 f"coupling {self.coupling!r} does not combine with them (use 'independent')")
            if noise.shape != x0.shape:
                raise ValueError(f"the batch's 'noise' {tuple(noise.shape)} must have the data's shape "
                                 f"{tuple(x0.shape)}")
            return noise.to(x0)
        eps = randn(x0.shape, generator, x0.dtype, x0.device)
        return eps[coupling_indices(x0, eps, self.coupling, reg=self.coupling_reg, labels=labels,
                                    generator=generator)]
