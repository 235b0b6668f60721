"""Uniform dequantization: the one way every density in unidm turns into bits/dim of discrete data.

Data on a grid of ``K`` levels spanning ``[low, high]`` (``low + k Delta``, ``Delta = (high - low) / (K - 1)``) have
bins of width ``Delta`` centred on the grid points (the bins of Ho et al. 2020's decoder, eq. 13). With
``u ~ U(-Delta/2, Delta/2)^D`` and any density ``p`` (Theis et al. 2016, "A note on the evaluation of generative
models", Sec. 3.1; Jensen's inequality):

    log P(x) = log(Delta^D E_u p(x + u)) >= E_u log p(x + u) + D log Delta,

so ``-(log p(x + u) + D log Delta) / (D ln 2)`` is an unbiased estimate of an upper bound on the discrete data's
bits/dim, equal to it when ``p`` is constant on each bin. For 8-bit images in [-1, 1] the offset over the density's
bits/dim is ``-log2(2/255) = +6.99``.

Example:
    >>> import math, torch
    >>> K, D = 256, 3
    >>> width = bin_width(K)
    >>> x = -1 + width * torch.randint(K, (4, D)).double()
    >>> uniform = lambda y: torch.full((y.shape[0],), -D * math.log(K * width), dtype=y.dtype)  # U[-1-w/2, 1+w/2]^D
    >>> log_prob, bpd = dequantized_log_prob(uniform, x, K)
    >>> [round(float(b), 9) for b in bpd]  # the uniform law over K^D points: log2 K bits/dim
    [8.0, 8.0, 8.0, 8.0]
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["bin_width", "dequantize", "bits_per_dim", "dequantized_log_prob"]


def bin_width(num_levels: int, low: float = -1.0, high: float = 1.0) -> float:
    """Width ``Delta = (high - low) / (K - 1)`` of the bins around a ``K``-level grid spanning ``[low, high]``."""
    return (high - low) / (num_levels - 1)


def dequantize(
    x: Tensor, num_levels: int, *, low: float = -1.0, high: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """``x + u`` with ``u ~ U(-Delta/2, Delta/2)`` per element, ``Delta = bin_width(num_levels, low, high)``."""
    width = bin_width(num_levels, low, high)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + width * u


def bits_per_dim(log_prob: Tensor, dim: int, bin_width: float | None = None) -> Tensor:
    """``-(log_prob + dim log Delta) / (dim ln 2)``: bits/dim of a density, or with ``bin_width`` of the
    discrete data whose bins have that width (the dequantization offset, module docstring)."""
    offset = 0.0 if bin_width is None else dim * math.log(bin_width)
    return -(log_prob + offset) / (dim * math.log(2))


def dequantized_log_prob(
    log_prob_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    num_levels: int | None,
    *,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log_prob [B], bits_per_dim [B])`` of ``x [B, ...]`` under the density ``log_prob_fn(y) -> [B]`` (nats).

    With ``num_levels = K``: ``x`` lies on the ``K``-level grid of ``[low, high]``; ``log_prob`` is
    ``log p(x + u) + D log Delta``, the single-draw dequantization bound on ``log P(x)`` of the discrete data
    (Theis et al. 2016; module docstring), and ``bits_per_dim = -log_prob / (D ln 2)``. With ``num_levels=None``:
    the density itself, ``log p(x)``, and its bits/dim. Every density family (the ODE likelihood, exact-likelihood
    models) goes through this, so their bits/dim mean the same thing.
    """
    dim = x[0].numel()
    if num_levels is None:
        log_prob = log_prob_fn(x)
    else:
        width = bin_width(num_levels, low, high)
        log_prob = log_prob_fn(dequantize(x, num_levels, low=low, high=high, generator=generator))
        log_prob = log_prob + dim * math.log(width)
    return log_prob, bits_per_dim(log_prob, dim)
