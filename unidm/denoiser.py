"""The one sampler-facing contract: ``D(x, sigma, **cond) -> x0_hat`` in sigma-space (``x = x0 + sigma * eps``).

:class:`Denoiser` turns any noise-agnostic network into that contract through a process and a parameterization
(Karras et al. 2022, eq. 7 and Table 1). Samplers, losses, guidance and likelihood see only this callable; from it,
the probability-flow ODE is ``dx/dsigma = (x - D) / sigma`` and the score is ``(D - x) / sigma^2``.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from .parameterization import Parameterization, c_in, c_noise, path_coefficients
from .processes import GaussianProcess
from .utils import as_sigma_batch  # re-exported: it lives in utils so that oracles need not import this layer

__all__ = ["DenoiserFn", "Denoiser", "as_sigma_batch", "score_from_denoiser"]


class DenoiserFn(Protocol):
    """Anything with ``D(x [B, ...], sigma [B], **cond) -> x0_hat [B, ...]``."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor: ...


def score_from_denoiser(denoised: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2`` (Tweedie's formula)."""
    return (denoised - x) / sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2


class Denoiser(nn.Module):
    """Preconditioning wrapper: network + process + parameterization -> ``D(x, sigma, **cond)``.

    Args:
        net: a module ``net(c_in * x, c_noise, **cond) -> F`` that knows nothing about noise.
        process: the Gaussian process the model is trained under (fixes ``alpha_t`` for x_t-space targets).
        parameterization: what ``F`` means (see :mod:`unidm.parameterization`).

    Example:
        >>> import torch
        >>> from unidm.nn import MLP
        >>> from unidm.processes import EDM
        >>> from unidm.parameterization import PARAMETERIZATIONS
        >>> D = Denoiser(MLP(dim=2, hidden=16, depth=2), EDM(), PARAMETERIZATIONS["edm"](sigma_data=0.5))
        >>> D(torch.randn(4, 2), torch.full((4,), 1.0)).shape
        torch.Size([4, 2])
    """

    def __init__(self, net: nn.Module, process: GaussianProcess, parameterization: Parameterization):
        super().__init__()
        self.net = net
        self.process = process
        self.parameterization = parameterization

    @property
    def sigma_data(self) -> float:
        return self.parameterization.sigma_data

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        shape = (-1, *([1] * (x.ndim - 1)))
        out = self.net(c_in(sigma, self.sigma_data).reshape(shape) * x, c_noise(sigma), **cond)
        pc = path_coefficients(self.process, sigma)
        return self.parameterization.to_x0(out.to(x.dtype), x, pc)
