"""Samplers: pure functions ``sample_<method>(denoiser, x, grid, *, generator, callback, **options)`` over a
precomputed descending grid of sigma-space levels, and one entry point :func:`sample`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import CountingDenoiser, SampleResult, prior_noise, randn_like
from .grids import append_zero, karras_grid, uniform_t_grid
from .ode import sample_euler, sample_heun
from .stochastic import sample_ddpm

__all__ = [
    "sample", "METHODS", "ALIASES", "SampleResult", "prior_noise", "randn_like",
    "karras_grid", "uniform_t_grid", "append_zero", "sample_euler", "sample_heun", "sample_ddpm",
]

#: every sampler by name
METHODS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddpm": sample_ddpm,
}

#: names other ecosystems use for the same method
ALIASES: dict[str, str] = {
    "ddim": "euler",  # DDIM with eta = 0 is Euler in sigma-space
    "ancestral": "ddpm",
}


def resolve_method(method: str) -> str:
    name = ALIASES.get(method, method)
    if name not in METHODS:
        valid = sorted(set(METHODS) | set(ALIASES))
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(valid)}")
    return name


def sample(
    denoiser: DenoiserFn,
    x: Tensor,
    grid: Tensor,
    method: str = "heun",
    generator=None,
    callback=None,
    return_result: bool = False,
    keep_trajectory: bool = False,
    **options,
) -> Tensor | SampleResult:
    """Run sampler ``method`` from ``x`` (noise at ``grid[0]``) down the grid.

    Args:
        denoiser: ``D(x, sigma [B], **cond)``.
        x: initial state ``[B, ...]``, usually ``grid[0] * eps``.
        grid: descending sigma-space levels ending at 0.
        generator: a ``torch.Generator`` or one per sample (see :func:`randn_like`).
        return_result: return a :class:`SampleResult` with NFE (and trajectory if ``keep_trajectory``).
        options: sampler options and conditioning (``class_labels=...``).
    """
    fn = METHODS[resolve_method(method)]
    counted = CountingDenoiser(denoiser)
    trajectory: list[Tensor] = []

    def cb(info: dict) -> None:
        if keep_trajectory:
            trajectory.append(info["x"].detach().clone())
        if callback is not None:
            callback(info)

    with torch.no_grad():
        out = fn(counted, x, grid.to(x.device), generator=generator, callback=cb, **options)
    if return_result:
        return SampleResult(out, counted.nfe, trajectory)
    return out
