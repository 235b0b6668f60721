"""Pieces shared by the samplers of the discrete token families (masked and uniform-replacement diffusion).

Both families walk a grid of ``alpha`` values from ``t = 1`` to ``t = 0`` and draw tokens from categoricals built
from the model's ``p(x0 | x_t)`` (Austin et al. 2021, D3PM Sec. 3.3; Shi et al. 2024, MD4 Algorithm 2):

- :class:`TokenSample`: what a token sampler returns (tokens, network calls, steps).
- :func:`check_alpha_grid`: the grid is 1-D, at least two values, non-decreasing.
- :func:`temper`: a categorical at a temperature, ``p^(1/T)`` renormalised.
- :func:`categorical`: an inverse-CDF draw with given uniforms, so that randomness is passed in and each sequence
  can draw from its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TokenSample", "categorical", "check_alpha_grid", "temper"]


@dataclass
class TokenSample:
    """Result of a token-diffusion sampler.

    Attributes:
        x: ``[n, L]`` tokens (no MASK left).
        nfe: network calls on a batch (a step counts when at least one sequence needed the network).
        evals_per_sample: mean number of network evaluations per sequence (what a cache saves).
        steps: number of grid steps.

    Example:
        >>> TokenSample(torch.zeros(2, 3).long(), nfe=4, evals_per_sample=4.0, steps=4).x.shape
        torch.Size([2, 3])
    """

    x: Tensor
    nfe: int
    evals_per_sample: float
    steps: int


def categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from ``probs [..., V]`` (unnormalised is fine) with uniforms ``u [...]`` in ``[0, 1)``.

    Example:
        >>> categorical(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([0.1])).tolist(), \\
        ...     categorical(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([0.6])).tolist()
        ([0], [2])
    """
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    return torch.searchsorted(cdf, u[..., None].contiguous()).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def check_alpha_grid(alphas: Tensor) -> None:
    """Refuse a grid of ``alpha`` that is not 1-D, has fewer than two values, or decreases along ``t = 1 -> 0``.

    Example:
        >>> check_alpha_grid(torch.tensor([0.0, 0.5, 1.0]))
        >>> check_alpha_grid(torch.tensor([1.0, 0.0]))
        Traceback (most recent call last):
        ...
        ValueError: alphas must be non-decreasing along the grid (t decreasing)
    """
    if alphas.dim() != 1 or len(alphas) < 2:
        raise ValueError("alphas must be a 1-D grid of at least two values from t = 1 down to t = 0")
    if bool((alphas[1:] < alphas[:-1]).any()):
        raise ValueError("alphas must be non-decreasing along the grid (t decreasing)")


def temper(probs: Tensor, temperature: float) -> Tensor:
    """``probs ** (1 / temperature)`` renormalised over the last axis: the categorical whose log-probabilities are
    divided by ``temperature`` (1: ``probs`` itself, returned as is).

    Example:
        >>> temper(torch.tensor([0.2, 0.8], dtype=torch.float64), 0.5).tolist()  # (0.04, 0.64) / 0.68
        [0.058823529411764705, 0.9411764705882353]
    """
    if temperature == 1.0:
        return probs
    p = probs.clamp_min(1e-30) ** (1.0 / temperature)
    return p / p.sum(-1, keepdim=True)
