"""Shared pieces of every sampler: per-sample random numbers, NFE counting, the result type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoiser import DenoiserFn

__all__ = ["Generator", "randn_like", "prior_noise", "CountingDenoiser", "SampleResult", "Callback"]

#: one generator for the whole batch, or one per sample (so a sample's randomness does not depend on its batch).
Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like ``x``; with a list of generators, row ``i`` comes from generator ``i``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device).to(x.device) for g in generator]
    )


def prior_noise(
    shape: Sequence[int], sigma_max: float, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> Tensor:
    """Initial noise ``sigma_max * eps``. With ``seeds``, sample ``i`` depends only on ``seeds[i]``."""
    if seeds is not None:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        eps = randn_like(torch.empty(len(gens), *shape[1:], dtype=dtype), gens)
    else:
        eps = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    return (eps * sigma_max).to(device)


class CountingDenoiser:
    """Wraps a denoiser and counts network function evaluations (one per batched call)."""

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)


@dataclass
class SampleResult:
    """``x``: final samples; ``nfe``: denoiser calls; ``trajectory``: ``x`` after each step (if asked)."""

    x: Tensor
    nfe: int
    trajectory: list[Tensor] = field(default_factory=list)
