"""Per-sample randomness: one generator per seed, and draws that take one generator or one per row.

Sample ``i`` of any sampler depends only on its own seed when every random number of row ``i`` comes from its own
``torch.Generator``; these two helpers are the one place that builds such generators and draws from them.

>>> gens = seed_generators([3, 4], offset=7)
>>> a = randn((2, 5), gens)
>>> b = randn((1, 5), seed_generators([4], offset=7))
>>> bool(torch.equal(a[1:], b))
True
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["Generators", "seed_generators", "row_generators", "randn", "rand"]

#: one generator for the whole batch, one per row, or None (the global RNG)
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def seed_generators(seeds: Sequence[int], offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per seed, seeded with ``seed + offset``.

    A family gives its sampler's noise its own ``offset`` so that it is a stream apart from the prior draw, which
    uses the seed itself (:func:`unidm.samplers.prior_noise`); each family's offset is fixed forever, since it
    decides its samples.
    """
    return [torch.Generator().manual_seed(int(s) + int(offset)) for s in seeds]


def row_generators(rows: int, seeds: Sequence[int] | None = None, generator: Generators = None) -> Generators:
    """One generator per seed when ``seeds`` are given (exactly one per row, else a ``ValueError``), else
    ``generator`` as it is: how every prior draw turns its ``seeds``/``generator`` arguments into generators."""
    if seeds is None:
        return generator
    seeds = list(seeds)
    if len(seeds) != rows:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {rows}")
    return seed_generators(seeds)


def _draw(fn, shape: Sequence[int], generator: Generators, dtype, device) -> Tensor:
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return fn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    if shape[0] == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.stack([fn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]).to(device)


def randn(shape: Sequence[int], generator: Generators = None, dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> Tensor:
    """Standard normal ``[shape]``; with a list of generators, row ``i`` comes from generator ``i`` alone."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape: Sequence[int], generator: Generators = None, dtype: torch.dtype = torch.float32,
         device: torch.device | str = "cpu") -> Tensor:
    """Uniform on ``[0, 1)`` ``[shape]``; with a list of generators, row ``i`` comes from generator ``i`` alone."""
    return _draw(torch.rand, shape, generator, dtype, device)
