"""Noise-level grids: descending tensors of sigma-space levels ``sigma_0 > ... > sigma_{N-1} > sigma_N = 0``.

A grid is separate from a solver (Karras et al. 2022, Sec. 3): any sampler runs on any grid. Every ``<kind>_grid``
returns ``n`` steps (``n + 1`` levels, the last one 0) in float64. :func:`make_grid` builds one by name for a
process (defaults ``sigma_min``/``sigma_max`` from it).

| kind | levels | reference |
|---|---|---|
| ``karras`` | ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` | Karras et al. 2022, eq. 5 |
| ``uniform-t`` | ``sigma(t)`` at ``n`` times uniform in ``[t_max, t_min]`` of the process | Song et al. 2021 |
| ``log-snr`` | uniform in ``lambda = -2 log sigma`` (k-diffusion's "exponential") | Lu et al. 2022, Sec. 3.3 |
| ``polyexponential`` | ``log sigma`` spaced by ``ramp^rho`` (rho = 1 is ``log-snr``) | k-diffusion |
| ``ddpm`` | DDPM's discrete timesteps, ``spacing`` leading / trailing / linspace | Lin et al. 2024, Table 2 |
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..processes import GaussianProcess
from ..utils import check_kwargs

__all__ = [
    "karras_grid", "uniform_t_grid", "log_snr_grid", "polyexponential_grid", "ddpm_grid", "append_zero",
    "make_grid", "GRIDS",
]


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"a grid needs at least one step, got n={n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")


def _ramp(n: int, dtype: torch.dtype) -> Tensor:
    """``i / (n - 1)`` for ``i = 0..n-1`` (a single step starts at sigma_max)."""
    return torch.linspace(0, 1, n, dtype=dtype) if n > 1 else torch.zeros(1, dtype=dtype)


def karras_grid(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Karras et al. 2022, eq. 5: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..n-1``, then 0. ``n`` steps (``n + 1`` levels).

    >>> [round(s, 6) for s in karras_grid(2, 0.002, 80.0).tolist()]
    [80.0, 0.002, 0.0]
    """
    _check(n, sigma_min, sigma_max)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + _ramp(n, dtype) * (lo - hi)) ** rho)


def uniform_t_grid(
    process: GaussianProcess, n: int, dtype: torch.dtype = torch.float64, t_min: float | None = None,
    t_max: float | None = None,
) -> Tensor:
    """``n`` steps uniform in the process's time from ``t_max`` to ``t_min``, mapped to sigma-space, then 0
    (the grid of Song et al. 2021 and of diffusers' "linspace" schedulers)."""
    t_hi = process.t_max_sampling if t_max is None else t_max
    t_lo = process.t_min if t_min is None else t_min
    t = torch.linspace(t_hi, t_lo, n, dtype=dtype) if n > 1 else torch.full((1,), t_hi, dtype=dtype)
    return append_zero(process.sigma_of_t(t))


def log_snr_grid(n: int, sigma_min: float, sigma_max: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Uniform in log-SNR ``lambda = -2 log sigma`` (Lu et al. 2022, "DPM-Solver", Sec. 3.3, "logSNR"), then 0.

    >>> [round(s, 6) for s in log_snr_grid(3, 0.01, 1.0).tolist()]
    [1.0, 0.1, 0.01, 0.0]
    """
    _check(n, sigma_min, sigma_max)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(hi + _ramp(n, dtype) * (lo - hi)))


def polyexponential_grid(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``log sigma_i = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min)``, then 0 (k-diffusion's
    polyexponential schedule; ``rho = 1`` is :func:`log_snr_grid`, ``rho > 1`` spends more steps at low noise)."""
    _check(n, sigma_min, sigma_max)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(lo + (1 - _ramp(n, dtype)) ** rho * (hi - lo)))


def ddpm_grid(
    process: GaussianProcess, n: int, spacing: str = "trailing", num_train_steps: int | None = None,
    steps_offset: int = 0, dtype: torch.dtype = torch.float64,
) -> Tensor:
    """DDPM's discrete timesteps, as in diffusers' ``timestep_spacing`` (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Table 2), mapped to sigma-space, then 0.

    With ``T = num_train_steps`` (default ``process.num_steps`` or 1000), 0-based training index ``k`` is the
    noise level of ``abar_{k+1}``, i.e. time ``t = (k + 1) / T``:

    - ``leading``: ``k = (N-1, ..., 1, 0) * (T // N) + steps_offset`` (DDIM, Stable Diffusion);
    - ``trailing``: ``k = round(T - j T / N) - 1`` for ``j = 0..N-1`` (starts at the last training step);
    - ``linspace``: ``k = round(linspace(T - 1, 0, N))``.
    """
    T = int(num_train_steps or getattr(process, "num_steps", 1000))
    if not 1 <= n <= T:
        raise ValueError(f"need 1 <= n <= num_train_steps={T}, got n={n}")
    if spacing == "leading":
        k = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (T // n) + steps_offset
    elif spacing == "trailing":
        k = torch.round(T - torch.arange(n, dtype=torch.float64) * (T / n)) - 1
    elif spacing == "linspace":
        k = torch.round(torch.linspace(T - 1, 0, n, dtype=torch.float64))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid: leading, trailing, linspace")
    t = ((k + 1) / T).to(dtype)
    return append_zero(process.sigma_of_t(t))


# ---- by name ----------------------------------------------------------------------------------------------------
def _range(process: GaussianProcess, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    return (process.sigma_min if sigma_min is None else sigma_min,
            process.sigma_max if sigma_max is None else sigma_max)


def _karras(n, process, sigma_min=None, sigma_max=None, rho=7.0):
    return karras_grid(n, *_range(process, sigma_min, sigma_max), rho=rho)


def _log_snr(n, process, sigma_min=None, sigma_max=None):
    return log_snr_grid(n, *_range(process, sigma_min, sigma_max))


def _polyexp(n, process, sigma_min=None, sigma_max=None, rho=1.0):
    return polyexponential_grid(n, *_range(process, sigma_min, sigma_max), rho=rho)


def _uniform_t(n, process, t_min=None, t_max=None):
    return uniform_t_grid(process, n, t_min=t_min, t_max=t_max)


def _ddpm(spacing: str):
    def build(n, process, num_train_steps=None, steps_offset=0):
        return ddpm_grid(process, n, spacing, num_train_steps=num_train_steps, steps_offset=steps_offset)
    return build


#: grid builders by name: ``GRIDS[kind](n, process, **options)``
GRIDS: dict[str, Callable[..., Tensor]] = {
    "karras": _karras,
    "uniform-t": _uniform_t,
    "log-snr": _log_snr,
    "polyexponential": _polyexp,
    "ddpm-leading": _ddpm("leading"),
    "ddpm-trailing": _ddpm("trailing"),
    "ddpm-linspace": _ddpm("linspace"),
}
_GRID_ALIASES = {"exponential": "log-snr", "logsnr": "log-snr", "uniform_t": "uniform-t", "linear": "uniform-t",
                 "leading": "ddpm-leading", "trailing": "ddpm-trailing", "linspace": "ddpm-linspace"}


def make_grid(kind: str, steps: int, process: GaussianProcess, **options) -> Tensor:
    """Grid ``kind`` (a key of :data:`GRIDS` or an alias such as ``exponential``) of ``steps`` steps for
    ``process``; ``options`` are the grid's own (``rho``, ``sigma_min``, ``sigma_max``, ``t_min``, ...)."""
    name = _GRID_ALIASES.get(kind, kind)
    if name not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid: {', '.join(sorted(set(GRIDS) | set(_GRID_ALIASES)))}")
    check_kwargs(GRIDS[name], options, f"option(s) for grid {name!r}", exclude=("n", "process"))
    return GRIDS[name](steps, process, **options)
