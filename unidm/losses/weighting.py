"""Loss weightings ``lambda(sigma)`` expressed on the x0 error ``|D(x, sigma) - x0|^2``.

Every Gaussian training loss in the family is ``lambda(sigma) |D - x0|^2`` for some weight, because every
parameterization is affine in D (Karras et al. 2022, eq. 2 and 8; Kingma & Gao 2023, "Understanding Diffusion
Objectives as the ELBO with Simple Data Augmentation", Sec. 2). In sigma-space:

| name       | lambda(sigma)                          | equals                                                |
|------------|----------------------------------------|-------------------------------------------------------|
| ``eps``    | ``1 / sigma^2``                        | DDPM's simple loss ``|eps_hat - eps|^2`` (Ho et al. 2020, eq. 14) |
| ``x0``     | ``1``                                  | plain x0 regression                                   |
| ``edm``    | ``(sigma^2 + s_d^2) / (sigma s_d)^2``  | EDM (Karras et al. 2022, Table 1)                     |
| ``min-snr``| ``min(1 / sigma^2, gamma)``            | Min-SNR-gamma on the eps loss (Hang et al. 2023, eq. 6)|
| ``velocity``| ``((s' a - s a') / s)^2``             | flow matching's ``|u_hat - u|^2`` (Lipman et al. 2023, eq. 23) |
| ``v``      | ``((a^2 + s^2) / s)^2``                | ``|v_hat - v|^2`` (Salimans & Ho 2022)                 |
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..parameterization import PathCoefficients

__all__ = ["WEIGHTINGS", "weighting_fn"]


def _eps(pc: PathCoefficients, sigma_data: float, gamma: float) -> Tensor:
    return 1.0 / pc.sigma**2


def _x0(pc, sigma_data, gamma):
    return torch.ones_like(pc.sigma)


def _edm(pc, sigma_data, gamma):
    return (pc.sigma**2 + sigma_data**2) / (pc.sigma * sigma_data) ** 2


def _min_snr(pc, sigma_data, gamma):
    return torch.clamp(1.0 / pc.sigma**2, max=gamma)


def _velocity(pc, sigma_data, gamma):
    return ((pc.d_sigma_t * pc.alpha - pc.sigma_t * pc.d_alpha) / pc.sigma_t) ** 2


def _v(pc, sigma_data, gamma):
    return ((pc.alpha**2 + pc.sigma_t**2) / pc.sigma_t) ** 2


WEIGHTINGS: dict[str, Callable[[PathCoefficients, float, float], Tensor]] = {
    "eps": _eps, "x0": _x0, "edm": _edm, "min-snr": _min_snr, "velocity": _velocity, "v": _v,
}


def weighting_fn(name: str) -> Callable[[PathCoefficients, float, float], Tensor]:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(sorted(WEIGHTINGS))}")
    return WEIGHTINGS[name]
