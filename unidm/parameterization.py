"""What a network's output means, as pure algebra onto the one denoiser contract ``D(x, sigma) ~ E[x0 | x]``.

Every parameterization is affine in the network output ``F`` (Karras et al. 2022, eq. 7):

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

with ``x = x0 + sigma * eps`` in sigma-space and ``x_t = alpha_t * x`` in the process's own space. This module is
the only place that converts between targets; everything else speaks ``D``.

| name       | network predicts                         | paper                                      |
|------------|------------------------------------------|--------------------------------------------|
| ``eps``    | ``eps``                                  | Ho et al. 2020, eq. 11                      |
| ``x0``     | ``x0``                                   | Ramesh et al. 2022 / Ho et al. 2020 App.    |
| ``v``      | ``v = alpha_t eps - sigma_t x0``         | Salimans & Ho 2022, Sec. 4                  |
| ``velocity``| ``u = d x_t / dt = a' x0 + s' eps``     | Lipman et al. 2023, eq. 23; Liu et al. 2023 |
| ``score``  | ``grad log p_t(x_t) = -eps / sigma_t``   | Song et al. 2021, eq. 7 (NCSN)              |
| ``edm``    | ``(x0 - c_skip x) / c_out``              | Karras et al. 2022, Table 1 and eq. 7       |

For every one of them ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` (unit-variance input whatever the process: in
the process's own space this is ``x_t / sqrt(alpha_t^2 sigma_data^2 + sigma_t^2)``) and
``c_noise = log(sigma) / 4``, so a network is portable across processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .processes import GaussianProcess

__all__ = ["Parameterization", "PathCoefficients", "PARAMETERIZATIONS", "path_coefficients", "c_in", "c_noise"]


@dataclass
class PathCoefficients:
    """``alpha_t, sigma_t`` and their time derivatives at the time whose sigma-space level is ``sigma``."""

    sigma: Tensor
    alpha: Tensor
    sigma_t: Tensor
    d_alpha: Tensor
    d_sigma_t: Tensor


def path_coefficients(process: GaussianProcess, sigma: Tensor) -> PathCoefficients:
    t = process.t_of_sigma(sigma)
    a, s, da, ds = process.coefficients(t)
    return PathCoefficients(sigma, a, s, da, ds)


def c_in(sigma: Tensor, sigma_data: float) -> Tensor:
    return 1.0 / torch.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma: Tensor) -> Tensor:
    return torch.log(sigma) / 4


class Parameterization:
    """Base class: ``coefficients -> (c_skip, c_out)`` and ``target(x0, eps)``; ``to_x0`` follows."""

    name = "base"

    def __init__(self, sigma_data: float = 1.0):
        self.sigma_data = sigma_data

    def coefficients(self, pc: PathCoefficients) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def target(self, x0: Tensor, eps: Tensor, pc: PathCoefficients) -> Tensor:
        """What the network should output for clean data ``x0`` and noise ``eps`` (its own definition)."""
        raise NotImplementedError

    def to_x0(self, out: Tensor, x: Tensor, pc: PathCoefficients) -> Tensor:
        """``D = c_skip x + c_out F`` with ``x`` in sigma-space; coefficients broadcast over ``x``'s trailing dims."""
        c_skip, c_out = self.coefficients(pc)
        shape = (-1, *([1] * (x.ndim - 1)))
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * out


class Eps(Parameterization):
    name = "eps"

    def coefficients(self, pc):
        return torch.ones_like(pc.sigma), -pc.sigma

    def target(self, x0, eps, pc):
        return eps


class X0(Parameterization):
    name = "x0"

    def coefficients(self, pc):
        return torch.zeros_like(pc.sigma), torch.ones_like(pc.sigma)

    def target(self, x0, eps, pc):
        return x0


class V(Parameterization):
    name = "v"

    def coefficients(self, pc):
        a, s = pc.alpha, pc.sigma_t
        norm = a**2 + s**2
        # x0 = (alpha x_t - sigma_t v) / (alpha^2 + sigma_t^2) with x_t = alpha x
        return a**2 / norm, -s / norm

    def target(self, x0, eps, pc):
        shape = (-1, *([1] * (x0.ndim - 1)))
        return pc.alpha.reshape(shape) * eps - pc.sigma_t.reshape(shape) * x0


class Velocity(Parameterization):
    name = "velocity"

    def coefficients(self, pc):
        a, s, da, ds = pc.alpha, pc.sigma_t, pc.d_alpha, pc.d_sigma_t
        det = ds * a - s * da
        # x0 = (s' x_t - s u) / (s' a - s a')
        return ds * a / det, -s / det

    def target(self, x0, eps, pc):
        shape = (-1, *([1] * (x0.ndim - 1)))
        return pc.d_alpha.reshape(shape) * x0 + pc.d_sigma_t.reshape(shape) * eps


class Score(Parameterization):
    name = "score"

    def coefficients(self, pc):
        # x0 = (x_t + sigma_t^2 score) / alpha_t = x + sigma_t^2 / alpha_t * score
        return torch.ones_like(pc.sigma), pc.sigma_t**2 / pc.alpha

    def target(self, x0, eps, pc):
        shape = (-1, *([1] * (x0.ndim - 1)))
        return -eps / pc.sigma_t.reshape(shape)


class EDMPrecond(Parameterization):
    name = "edm"

    def coefficients(self, pc):
        sd2 = self.sigma_data**2
        s2 = pc.sigma**2
        return sd2 / (s2 + sd2), pc.sigma * self.sigma_data / torch.sqrt(s2 + sd2)

    def target(self, x0, eps, pc):
        shape = (-1, *([1] * (x0.ndim - 1)))
        c_skip, c_out = self.coefficients(pc)
        x = x0 + pc.sigma.reshape(shape) * eps
        return (x0 - c_skip.reshape(shape) * x) / c_out.reshape(shape)


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    c.name: c for c in (Eps, X0, V, Velocity, Score, EDMPrecond)
}
