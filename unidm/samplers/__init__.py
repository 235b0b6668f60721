"""Samplers: pure functions ``sample_<method>(denoiser, x, grid, *, generator, callback, cond, **options)`` over a
precomputed descending grid of sigma-space levels, and one entry point :func:`sample`.

Every sampler sees only the denoiser contract ``D(x, sigma [B], **cond)`` and the probability-flow ODE
``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022); history lives in local variables and randomness comes only
from ``generator`` (one ``torch.Generator`` or one per sample). See ``docs/samplers.md`` for the table of methods,
orders, NFE and aliases.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from .adaptive import sample_adaptive
from .base import CountingDenoiser, SampleResult, churn, prior_noise, randn_like
from .dpm import (sample_dpm_solver, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m, sample_dpmpp_3m_sde,
                  sample_dpmpp_multistep, sample_unipc)
from .grids import (GRIDS, append_zero, ddpm_grid, karras_grid, log_snr_grid, make_grid, polyexponential_grid,
                    uniform_t_grid)
from .multistep import sample_ipndm, sample_lms
from .ode import sample_euler, sample_heun, sample_midpoint, sample_rk4
from .stochastic import sample_ddim, sample_ddpm, sample_edm, sample_euler_maruyama, sample_pc

__all__ = [
    "sample", "solve", "METHODS", "ALIASES", "STOCHASTIC", "GAUSSIAN_ONLY", "GAUSSIAN_WHEN", "COND_KEYS",
    "resolve_method", "method_options", "check_sampler", "process_of", "SampleResult",
    "prior_noise", "randn_like", "churn",
    "karras_grid", "uniform_t_grid", "log_snr_grid", "polyexponential_grid", "ddpm_grid", "append_zero",
    "make_grid", "GRIDS",
    "sample_euler", "sample_heun", "sample_midpoint", "sample_rk4", "sample_lms", "sample_ipndm",
    "sample_dpm_solver", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
    "sample_dpmpp_multistep", "sample_unipc", "sample_ddim", "sample_ddpm", "sample_edm",
    "sample_euler_maruyama", "sample_pc", "sample_adaptive",
]

#: every sampler by name
METHODS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "midpoint": sample_midpoint,
    "rk4": sample_rk4,
    "lms": sample_lms,
    "ipndm": sample_ipndm,
    "dpm_solver": sample_dpm_solver,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "adaptive": sample_adaptive,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "edm": sample_edm,
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
}

#: methods that draw noise while sampling
STOCHASTIC = frozenset({"ddpm", "edm", "euler_maruyama", "pc", "dpmpp_2m_sde", "dpmpp_3m_sde"})

#: methods whose steps assume a Gaussian transition kernel: ancestral steps (the Gaussian posterior
#: ``q(x_{sigma'} | x_sigma, x0)``), reverse-SDE and Langevin steps (Tweedie's score ``(D - x) / sigma^2`` and Gaussian
#: increments), EDM's churn (Gaussian noise raising sigma). Refused for a process with ``gaussian_kernel = False``.
GAUSSIAN_ONLY = frozenset({"ddpm", "edm", "euler_maruyama", "pc", "dpmpp_2m_sde", "dpmpp_3m_sde"})

#: deterministic methods that become Gaussian-only when this option is > 0: DDIM's ``eta`` (its noise is the
#: Gaussian posterior's, Song et al. 2021 eq. 16; ``eta = 0`` is the probability-flow ODE and stays valid) and the
#: churn of Euler and Heun (EDM, Algorithm 2).
GAUSSIAN_WHEN: dict[str, str] = {"ddim": "eta", "euler": "s_churn", "heun": "s_churn"}

#: names other ecosystems use for the same method (k-diffusion, diffusers, ComfyUI/A1111, papers)
ALIASES: dict[str, str] = {
    "ancestral": "ddpm",
    "euler_ancestral": "ddpm",
    "euler_a": "ddpm",
    "ddpm_ancestral": "ddpm",
    "edm_stochastic": "edm",
    "heun_edm": "heun",
    "rk45": "adaptive",
    "dopri5": "adaptive",
    "dormand_prince": "adaptive",
    "rk": "rk4",
    "deis": "lms",  # rho-AB-DEIS in sigma-space is the linear multistep method
    "ipndm_v": "lms",
    "plms": "ipndm",
    "pndm": "ipndm",
    "dpm_2": "dpm_solver",
    "dpmsolver": "dpm_solver",
    "dpm_solver_singlestep": "dpm_solver",
    "dpmpp_2m_karras": "dpmpp_2m",
    "dpm++_2m": "dpmpp_2m",
    "dpm++_3m": "dpmpp_3m",
    "dpm_solver++": "dpmpp_2m",
    "dpmsolver++": "dpmpp_2m",
    "dpm++_2m_sde": "dpmpp_2m_sde",
    "dpm++_3m_sde": "dpmpp_3m_sde",
    "sde_dpmsolver++": "dpmpp_2m_sde",
    "unipc_bh2": "unipc",
    "uni_pc": "unipc",
    "em": "euler_maruyama",
    "reverse_sde": "euler_maruyama",
    "reverse_diffusion": "euler_maruyama",
    "predictor_corrector": "pc",
    "langevin": "pc",
}

#: keyword arguments of :func:`sample` that are conditioning (passed to the denoiser), not sampler options
COND_KEYS = frozenset({"class_labels", "labels", "y", "context", "encoder_hidden_states", "mask", "attention_mask"})
_RESERVED = ("denoiser", "x", "grid", "generator", "callback", "cond")


def resolve_method(method: str) -> str:
    """The canonical name of ``method`` (a key of :data:`METHODS` or :data:`ALIASES`, case-insensitive)."""
    key = method.lower().replace("-", "_")
    name = ALIASES.get(key, key)
    if name not in METHODS:
        valid = sorted(set(METHODS) | set(ALIASES))
        raise ValueError(f"unknown sampler {method!r}; valid: {', '.join(valid)}")
    return name


def method_options(method: str) -> dict[str, object]:
    """The options sampler ``method`` takes, with their defaults (e.g. ``{"order": 3, "variant": "bh2", ...}``)."""
    params = inspect.signature(METHODS[resolve_method(method)]).parameters.values()
    return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name not in _RESERVED}


def process_of(denoiser) -> object | None:
    """The forward process behind ``denoiser``: its ``.process``, else that of the denoiser it wraps (guidance
    wrappers and :class:`CountingDenoiser` hold theirs as ``.denoiser``; ``torch.compile`` as ``._orig_mod``), else
    ``None`` (a bare function or oracle)."""
    obj = denoiser
    for _ in range(16):
        if obj is None:
            return None
        process = getattr(obj, "process", None)
        if process is not None:
            return process
        inner = getattr(obj, "denoiser", None)
        obj = inner if inner is not None else getattr(obj, "_orig_mod", None)
    return None


def _deterministic_alternatives() -> str:
    names = sorted(m for m in METHODS if m not in GAUSSIAN_ONLY and m not in GAUSSIAN_WHEN)
    return ", ".join(names) + ", " + ", ".join(f"{m} ({o}=0)" for m, o in sorted(GAUSSIAN_WHEN.items()))


def check_sampler(method: str, process, **options) -> None:
    """Refuse a sampler that assumes a Gaussian transition kernel for a process that has another.

    ``method`` is refused when ``process.gaussian_kernel`` is ``False`` and the method is in
    :data:`GAUSSIAN_ONLY`, or in :data:`GAUSSIAN_WHEN` with that option > 0 in ``options``. Any location-scale
    kernel keeps the probability-flow ODE (``DESIGN.md``, "Beyond the Gaussian kernel"), so every deterministic
    sampler stays valid. A ``None`` process (a bare denoiser) is not checked. A process may say why its kernel is not
    Gaussian in ``kernel_note`` (a run trained with a coupling: :class:`unidm.methods.GaussianDiffusion`).

    Raises:
        ValueError: one line naming the sampler, the process and the deterministic alternatives.
    """
    name = resolve_method(method)
    if process is None or getattr(process, "gaussian_kernel", True):
        return
    option = GAUSSIAN_WHEN.get(name)
    if name not in GAUSSIAN_ONLY and (option is None or not float(options.get(option, 0.0)) > 0):
        return
    why = "draws Gaussian transition noise" if option is None else f"with {option} > 0 draws Gaussian noise"
    pname = getattr(process, "name", type(process).__name__)
    note = getattr(process, "kernel_note", None) or "has a non-Gaussian kernel (gaussian_kernel=False)"
    raise ValueError(
        f"sampler {name!r} {why}, but process {pname!r} {note}; "
        f"use a deterministic sampler: {_deterministic_alternatives()}"
    )


def sample(
    denoiser: DenoiserFn,
    x: Tensor,
    grid: Tensor,
    method: str = "heun",
    generator=None,
    callback=None,
    cond: dict | None = None,
    **options,
) -> Tensor:
    """Run sampler ``method`` from ``x`` (noise at ``grid[0]``) down the grid and return the samples ``[B, ...]``.

    The same run as :func:`solve`, which returns a :class:`SampleResult` (the samples with the NFE and, if asked,
    the trajectory).

    Args:
        denoiser: ``D(x, sigma [B], **cond) -> x0_hat``; if it (or the denoiser it wraps) has a ``.process`` with
            ``gaussian_kernel = False``, a Gaussian-only method is refused (:func:`check_sampler`).
        x: initial state ``[B, ...]``, usually ``grid[0] * eps`` (see :func:`prior_noise`, or the process's
            ``prior_sample``).
        grid: descending sigma-space levels, normally ending at 0 (see :mod:`unidm.samplers.grids`).
        method: a name in :data:`METHODS` or :data:`ALIASES`.
        generator: a ``torch.Generator`` or one per sample (see :func:`randn_like`).
        callback: called after every step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        cond: conditioning passed to every denoiser call as keyword arguments.
        options: the sampler's own options (see :func:`method_options`); the conditioning keys in
            :data:`COND_KEYS` (``class_labels=...``) are also accepted here and moved into ``cond``.

    Raises:
        ValueError: for an unknown method, an option the sampler does not take (the message lists the valid
            ones), or a Gaussian-only method on a non-Gaussian process.

    Example:
        >>> import torch
        >>> from unidm.oracles import GaussianOracle
        >>> D = GaussianOracle(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
        >>> sample(D, 80.0 * torch.randn(4, 2, dtype=torch.float64), karras_grid(10, 0.002, 80.0), "heun").shape
        torch.Size([4, 2])
    """
    if "return_result" in options or "keep_trajectory" in options:
        raise TypeError("sample() returns the samples only; call unidm.samplers.solve(...) for a SampleResult "
                        "(x, nfe, trajectory with keep_trajectory=True)")
    return solve(denoiser, x, grid, method, generator, callback, cond=cond, **options).x


def solve(
    denoiser: DenoiserFn,
    x: Tensor,
    grid: Tensor,
    method: str = "heun",
    generator=None,
    callback=None,
    keep_trajectory: bool = False,
    cond: dict | None = None,
    **options,
) -> SampleResult:
    """:func:`sample` that returns a :class:`SampleResult`: ``x`` the samples, ``nfe`` the denoiser calls,
    ``trajectory`` the state after every step if ``keep_trajectory``. Arguments as for :func:`sample`.

    Example:
        >>> import torch
        >>> from unidm.oracles import GaussianOracle
        >>> D = GaussianOracle(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
        >>> res = solve(D, 80.0 * torch.randn(4, 2, dtype=torch.float64), karras_grid(10, 0.002, 80.0), "dpmpp_3m")
        >>> res.x.shape, res.nfe
        (torch.Size([4, 2]), 10)
    """
    name = resolve_method(method)
    fn = METHODS[name]
    valid = method_options(name)
    cond = dict(cond or {})
    for key in list(options):
        if key in COND_KEYS and key not in valid:
            cond[key] = options.pop(key)
    bad = [k for k in options if k not in valid]
    if bad:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, bad))} for sampler {name!r}; valid: "
            f"{', '.join(valid) or '(none)'}; conditioning goes in cond={{...}} or as one of {sorted(COND_KEYS)}"
        )
    check_sampler(name, process_of(denoiser), **options)
    counted = CountingDenoiser(denoiser)
    trajectory: list[Tensor] = []

    def cb(info: dict) -> None:
        if keep_trajectory:
            trajectory.append(info["x"].detach().clone())
        if callback is not None:
            callback(info)

    with torch.no_grad():
        out = fn(counted, x, grid, generator=generator, callback=cb, cond=cond or None, **options)
    return SampleResult(out, counted.nfe, trajectory)
