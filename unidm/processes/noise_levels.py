"""Training-time distributions over noise levels. Each draws sigma-space levels ``sigma`` of shape ``(n,)``.

- :class:`UniformT`: ``t ~ U[t_min, t_max]`` under the process (Ho et al. 2020; Song et al. 2021).
- :class:`LogNormalSigma`: ``log sigma ~ N(P_mean, P_std^2)`` (Karras et al. 2022, Table 1, "EDM" column).
- :class:`LogitNormalT`: ``logit t ~ N(m, s^2)`` (Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 3.1).
- :class:`DiscreteT`: DDPM's ``t = i / T`` with ``i ~ U{1..T}`` for :class:`~unidm.processes.VPDiscrete`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import GaussianProcess

__all__ = ["NoiseLevels", "UniformT", "LogNormalSigma", "LogitNormalT", "DiscreteT", "NOISE_LEVELS"]


class NoiseLevels:
    """Base class: ``draw(process, n, generator, device, dtype) -> sigma [n]``."""

    name = "base"

    def draw(self, process: GaussianProcess, n: int, generator=None, device=None, dtype=None) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {}


class UniformT(NoiseLevels):
    name = "uniform-t"

    def draw(self, process, n, generator=None, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        t = process.t_min + (process.t_max_sampling - process.t_min) * u
        return process.sigma_of_t(t)


class LogNormalSigma(NoiseLevels):
    name = "lognormal"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ValueError(f"noise_options.p_std (the standard deviation of log sigma) must be > 0, got {p_std!r}")
        self.p_mean, self.p_std = p_mean, p_std

    def draw(self, process, n, generator=None, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.exp(self.p_mean + self.p_std * z)

    def config(self):
        return {"p_mean": self.p_mean, "p_std": self.p_std}


class LogitNormalT(NoiseLevels):
    name = "logit-normal"

    def __init__(self, m: float = 0.0, s: float = 1.0):
        self.m, self.s = m, s

    def draw(self, process, n, generator=None, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        u = torch.sigmoid(self.m + self.s * z)
        t = process.t_min + (process.t_max_sampling - process.t_min) * u
        return process.sigma_of_t(t)

    def config(self):
        return {"m": self.m, "s": self.s}


class DiscreteT(NoiseLevels):
    name = "discrete-t"

    def draw(self, process, n, generator=None, device=None, dtype=None):
        steps = int(getattr(process, "num_steps", 1000))
        dtype = dtype or torch.get_default_dtype()
        i = torch.randint(1, steps + 1, (n,), generator=generator, device=device)
        return process.sigma_of_t(i.to(dtype) / steps * process.t_max)


NOISE_LEVELS: dict[str, type[NoiseLevels]] = {
    c.name: c for c in (UniformT, LogNormalSigma, LogitNormalT, DiscreteT)
}
