"""Analytic Gaussian mixtures: data with an exact density, entropy and denoiser (:mod:`unidm.oracles`)."""

from __future__ import annotations

import math

import torch

from ..oracles import GaussianMixtureOracle

__all__ = ["MIXTURES", "make_mixture"]


def ring(k: int = 6, radius: float = 1.5, std: float = 0.15) -> GaussianMixtureOracle:
    a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = torch.stack([torch.cos(a), torch.sin(a)], 1) * radius
    return GaussianMixtureOracle(torch.ones(k), means, torch.full((k,), std**2, dtype=torch.float64))


def grid(side: int = 3, spacing: float = 1.2, std: float = 0.12) -> GaussianMixtureOracle:
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixtureOracle(torch.ones(side * side), means, torch.full((side * side,), std**2, dtype=torch.float64))


def random_mixture(dim: int = 16, k: int = 8, spread: float = 1.0, std: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64) * spread
    variances = (std * (0.5 + torch.rand(k, dim, generator=g, dtype=torch.float64))) ** 2
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixtureOracle(weights, means, variances)


MIXTURES = {"gmm-ring": ring, "gmm-grid": grid, "gmm-16d": random_mixture}


def make_mixture(name: str, **kwargs) -> GaussianMixtureOracle:
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; valid: {', '.join(sorted(MIXTURES))}")
    return MIXTURES[name](**kwargs)
