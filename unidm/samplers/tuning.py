"""Per-model sampling grids: fit the K-step sigma grid of a deterministic sampler to a denoiser.

The error of a few-step sample is mostly in where the steps fall, and the best place depends on the model. The
tuner draws ``M`` calibration noises from the prior (no data needed), solves the probability-flow ODE from them
accurately once (the adaptive Dormand–Prince solver at a tight tolerance) and minimises the RMSE of the K-step
solution of sampler ``S`` against that reference over the grid.

Parameterisation (always a valid grid): ``sigma_0 = sigma_max`` and the last level 0 are fixed; the ``K - 1``
levels in between are ``log sigma_i = log sigma_max - L (w_1 + ... + w_i)`` with ``w = softmax(z, 0)`` (``K``
increments of ``log sigma``, the last one the slack down to ``sigma_floor``, ``L = log(sigma_max / sigma_floor)``),
so every ``z in R^{K-1}`` gives a strictly decreasing grid whose last positive level lies in
``(sigma_floor, sigma_max)``.

Optimiser (``optimizer=``): L-BFGS-B (Byrd et al. 1995) with central finite-difference gradients, the default,
or Nelder–Mead (adaptive coefficients of Gao & Han 2012). The samplers are not differentiable in the grid (they
read it as python floats to compute the step coefficients in float64), so the gradient is taken by finite
differences through the very samplers that sample, ``2 (K - 1)`` K-step solves per gradient. On the mixtures of
``benchmarks/samplers.py`` both reach the same optimum, L-BFGS in a third of the solves at 5 NFE; searching from
several start grids (``starts``) found the same optimum there (``docs/samplers.md``). The error of a few-step
solution on multimodal data is dominated by the rare noises that end near a boundary between modes, so a grid fit
to few noises overfits: held-out noises (``holdout``) check the fit, and the start grid is kept if the tuned one is
worse on them. More noises generalise better where the denoiser is cheap (the 2-D mixture at 10 NFE: fresh error
1.17x, 1.11x, 0.93x, 0.92x the best diffusers anchor's with 1000, 3000, 10000, 20000 noises). The objective is the
RMSE over all samples and coordinates, the benchmark's metric; the mean of per-sample RMSEs, which weighs those rare
noises less, gave grids worse on it for every solver tried. Deterministic: the noises come from ``seed`` and
neither search draws random numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoiser import DenoiserFn
from .base import prior_noise
from .grids import karras_grid, log_snr_grid, polyexponential_grid, uniform_t_grid

__all__ = ["TunedGrid", "tune_grid", "grid_error", "nfe_of", "steps_for_nfe", "grid_from_logits",
           "logits_from_grid", "nelder_mead", "lbfgs", "OPTIMIZERS", "reference_solve"]


@dataclass
class TunedGrid:
    """A grid fitted by :func:`tune_grid`: ``sigmas`` (``steps + 1`` levels in float64, the last 0) for
    ``sampler`` with ``options`` at ``nfe`` denoiser calls; ``error`` its RMSE against the reference on the
    calibration noises, ``init_error`` that of the start grid ``init``, ``fixed_errors`` every fixed grid tried."""

    sigmas: Tensor
    sampler: str
    nfe: int
    steps: int
    error: float
    init_error: float
    init: str
    options: dict = field(default_factory=dict)
    fixed_errors: dict = field(default_factory=dict)
    sigma_floor: float = 0.0
    samples: int = 0
    seed: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    reference_nfe: int = 0
    optimizer: str = "nelder-mead"
    holdout: int = 0
    holdout_error: float | None = None
    holdout_init_error: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = [float(s) for s in self.sigmas]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TunedGrid":
        d = dict(d)
        d["sigmas"] = torch.tensor(d["sigmas"], dtype=torch.float64)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- steps and NFE ------------------------------------------------------------------------------------------------
def nfe_of(sampler: str, steps: int, **options) -> int:
    """Denoiser calls of ``sampler`` for ``steps`` steps on a grid ending at 0 (counted by :func:`solve`)."""
    from . import solve

    x = torch.zeros(1, 1, dtype=torch.float64)
    return solve(lambda x, s, **c: torch.zeros_like(x), x, karras_grid(steps, 0.01, 1.0), sampler, **options).nfe


def steps_for_nfe(sampler: str, nfe: int, **options) -> int:
    """The most steps of ``sampler`` that take at most ``nfe`` denoiser calls (Heun: ``(nfe + 1) // 2``)."""
    for n in range(nfe, 0, -1):
        if nfe_of(sampler, n, **options) <= nfe:
            return n
    raise ValueError(f"sampler {sampler!r} needs more than {nfe} denoiser calls for one step")


# ---- parameterisation -----------------------------------------------------------------------------------------------
def grid_from_logits(z: Tensor, sigma_max: float, sigma_floor: float) -> Tensor:
    """The grid of ``len(z) + 1`` steps: ``sigma_max``, ``K - 1`` levels from ``softmax(z, 0)`` increments of
    ``log sigma`` (see the module docstring), then 0. Strictly decreasing for every finite ``z``."""
    w = torch.softmax(torch.cat([z.to(torch.float64), z.new_zeros(1, dtype=torch.float64)]), 0)
    L = math.log(sigma_max / sigma_floor)
    inner = torch.exp(math.log(sigma_max) - L * torch.cumsum(w, 0)[:-1])
    return torch.cat([torch.tensor([sigma_max], dtype=torch.float64), inner, torch.zeros(1, dtype=torch.float64)])


def logits_from_grid(grid: Tensor, sigma_floor: float) -> Tensor:
    """The ``z`` of :func:`grid_from_logits` for a grid (``grid[-2] > sigma_floor``), the inverse map."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    pos = g[:-1]
    if float(pos[-1]) <= sigma_floor:
        raise ValueError(f"the grid's last positive level {float(pos[-1]):g} must exceed sigma_floor={sigma_floor:g}")
    logs = torch.cat([pos.log(), torch.tensor([math.log(sigma_floor)], dtype=torch.float64)])
    w = logs[:-1] - logs[1:]
    return (w[:-1] / w[-1]).log()


# ---- optimiser ----------------------------------------------------------------------------------------------------
class _Counted:
    """An objective as the optimisers call it: counts evaluations, calls ``on_eval`` before each, reads a
    non-finite value as ``inf`` and keeps the best point evaluated."""

    def __init__(self, f: Callable[[Tensor], float], on_eval: Callable[[], None] | None):
        self.f, self.on_eval = f, on_eval
        self.evals, self.best, self.best_x = 0, math.inf, None

    def __call__(self, x: Tensor) -> float:
        self.evals += 1
        if self.on_eval is not None:
            self.on_eval()
        v = self.f(x)
        v = v if math.isfinite(v) else math.inf
        if v < self.best:
            self.best, self.best_x = v, x.clone()
        return v


def nelder_mead(f: Callable[[Tensor], float], x0: Tensor, step: float = 0.5, max_evals: int = 400,
                xtol: float = 1e-4, ftol: float = 1e-7, on_eval: Callable[[], None] | None = None
                ) -> tuple[Tensor, float, int]:
    """Minimise ``f`` from ``x0`` by Nelder–Mead with the dimension-adaptive coefficients of Gao & Han 2012
    (reflection 1, expansion ``1 + 2/n``, contraction ``3/4 - 1/(2n)``, shrink ``1 - 1/n``). Deterministic.
    Stops after ``max_evals`` evaluations, or when the simplex is within ``xtol`` and its values within ``ftol``
    (relative). Returns ``(x_best, f_best, evaluations)``."""
    n = x0.numel()
    a, g, c, s = 1.0, 1.0 + 2.0 / n, 0.75 - 0.5 / n, 1.0 - 1.0 / n
    F = _Counted(f, on_eval)

    pts = [x0.clone()] + [x0 + step * torch.eye(n, dtype=x0.dtype)[i] for i in range(n)]
    vals = [F(p) for p in pts]
    while F.evals < max_evals:
        order = sorted(range(n + 1), key=lambda i: vals[i])
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        spread_x = max(float((p - pts[0]).abs().max()) for p in pts[1:])
        if spread_x < xtol and vals[-1] - vals[0] <= ftol * max(abs(vals[0]), 1e-300):
            break
        centroid = torch.stack(pts[:-1]).mean(0)
        xr = centroid + a * (centroid - pts[-1])
        fr = F(xr)
        if fr < vals[0]:
            xe = centroid + g * (xr - centroid)
            fe = F(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            outside = fr < vals[-1]
            xc = centroid + c * ((xr if outside else pts[-1]) - centroid)
            fc = F(xc)
            if fc < (fr if outside else vals[-1]):
                pts[-1], vals[-1] = xc, fc
            else:  # shrink towards the best point
                for i in range(1, n + 1):
                    pts[i] = pts[0] + s * (pts[i] - pts[0])
                    vals[i] = F(pts[i])
    i = min(range(n + 1), key=lambda j: vals[j])
    return pts[i], vals[i], F.evals


def lbfgs(f: Callable[[Tensor], float], x0: Tensor, h: float = 1e-5, max_evals: int = 400,
          on_eval: Callable[[], None] | None = None) -> tuple[Tensor, float, int]:
    """Minimise ``f`` from ``x0`` by L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995; ``scipy.optimize``) with central
    finite-difference gradients (step ``h``, ``2 n`` evaluations per gradient), inside the box ``[-30, 30]^n``.
    ``f`` is divided by ``f(x0)`` so that the stopping tests are relative. Deterministic. Returns the best point
    evaluated, its value and the evaluations (at most about ``max_evals``)."""
    import numpy as np
    from scipy.optimize import minimize

    n = x0.numel()
    F = _Counted(f, on_eval)

    f0 = F(x0)
    scale = f0 if math.isfinite(f0) and f0 > 0 else 1.0
    big = 1e6  # an invalid grid (merged levels): a wall for the line search

    def fun(z):
        zt = torch.from_numpy(np.array(z, dtype=np.float64))
        v = F(zt) / scale
        if not math.isfinite(v) or F.evals + 2 * n > max_evals:
            return (v if math.isfinite(v) else big), np.zeros(n)
        g = np.zeros(n)
        for i in range(n):
            e = torch.zeros(n, dtype=torch.float64)
            e[i] = h
            fp, fm = F(zt + e) / scale, F(zt - e) / scale
            g[i] = (fp - fm) / (2 * h) if math.isfinite(fp) and math.isfinite(fm) else 0.0
        return v, g

    minimize(fun, x0.numpy().astype(np.float64), jac=True, method="L-BFGS-B", bounds=[(-30.0, 30.0)] * n,
             options={"maxiter": max(1, max_evals // (2 * n + 1)), "maxfun": max(1, max_evals // (2 * n + 1)),
                      "ftol": 1e-10, "gtol": 1e-8})
    return F.best_x if F.best_x is not None else x0.clone(), F.best, F.evals


# ---- the objective --------------------------------------------------------------------------------------------------
def grid_error(denoiser: DenoiserFn, x: Tensor, grid: Tensor, sampler: str, reference: Tensor,
               cond: dict | None = None, **options) -> float:
    """RMSE over all samples and coordinates of ``sampler`` on ``grid`` from ``x`` against ``reference``."""
    from . import solve

    out = solve(denoiser, x, grid, sampler, cond=cond, **options).x
    return float((out.double() - reference.double()).pow(2).mean().sqrt())


def _fixed_grids(steps: int, sigma_min: float, sigma_max: float, process) -> dict[str, Tensor]:
    """The fixed start grids: Karras rho 7 and 3, log-SNR, polyexponential rho 2 and the process's uniform-t, each
    ending at ``sigma_min`` and (few steps favour a later last level) at 10x and 100x ``sigma_min``; and rectified
    flow's grid uniform in ``t = sigma / (1 + sigma)`` (shift 1 and 3, diffusers' FlowMatch schedulers)."""
    grids = {}
    for mult in (1, 10, 100):
        lo = sigma_min * mult
        if lo >= sigma_max / 10:
            break
        tag = "" if mult == 1 else f"@{mult}x"
        for r in (7.0, 3.0):
            grids[f"karras-rho{r:g}{tag}"] = karras_grid(steps, lo, sigma_max, rho=r)
        grids[f"log-snr{tag}"] = log_snr_grid(steps, lo, sigma_max)
        grids[f"polyexponential-rho2{tag}"] = polyexponential_grid(steps, lo, sigma_max, rho=2.0)
        if process is not None and hasattr(process, "t_of_sigma") and hasattr(process, "sigma_of_t"):
            try:  # uniform in the process's time between the levels sigma_max and lo
                t_hi, t_lo = (float(process.t_of_sigma(torch.tensor(s, dtype=torch.float64))) for s in (sigma_max, lo))
                g = uniform_t_grid(process, steps, t_min=t_lo, t_max=t_hi)
                if bool(torch.isfinite(g).all()) and bool((g[:-1] > 0).all()) and bool((g[1:] < g[:-1]).all()):
                    grids[f"uniform-t{tag}"] = g
            except (NotImplementedError, AttributeError, ValueError, TypeError):
                pass
    for shift in (1.0, 3.0):  # rectified flow's grid (diffusers' FlowMatch schedulers): t = sigma / (1 + sigma)
        t_max = sigma_max / (1 + sigma_max)  # uniform in t from t_max, the last positive level at t_max / n
        t = t_max * torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
        t = shift * t / (1 + (shift - 1) * t)
        g = torch.cat([t / (1 - t), torch.zeros(1, dtype=torch.float64)])
        g[0] = sigma_max
        if bool((g[1:] < g[:-1]).all()) and float(g[-2]) > sigma_min:
            grids[f"flow-shift{shift:g}"] = g
    return grids


#: the optimisers :func:`tune_grid` takes (``optimizer=``)
OPTIMIZERS = ("lbfgs", "nelder-mead")


def _search(f: Callable[[Tensor], float], z0: Tensor, optimizer: str, budget: int, restarts: int, h: float,
            on_eval) -> tuple[Tensor, float, int]:
    """One local search from ``z0``: L-BFGS with finite-difference gradients, or Nelder–Mead restarted
    ``restarts`` times from its best point. Returns ``(z, f(z), evaluations)``, never worse than ``z0``."""
    fz = f(z0)
    z, evals = z0, 1
    if optimizer == "lbfgs":
        z_new, f_new, n = lbfgs(f, z0, h=h, max_evals=budget, on_eval=on_eval)
        evals += n
        return (z_new, f_new, evals) if f_new < fz else (z, fz, evals)
    for r in range(1 + restarts):
        z_new, f_new, n = nelder_mead(f, z, step=0.5 if r == 0 else 0.2, max_evals=budget, on_eval=on_eval)
        evals += n
        if f_new < fz:
            z, fz = z_new, f_new
    return z, fz, evals


def _draw(denoiser, process, shape, n: int, generator, sigma_max: float, dtype, device, cond, rtol: float,
          floor: float) -> tuple[Tensor, Tensor, int]:
    """``n`` prior noises and their adaptive reference solutions (to ``floor``, then ``x <- D(x, floor)``)."""
    draw = process.prior_sample if process is not None else prior_noise
    x = draw((int(n), *shape), sigma_max, generator=generator, dtype=dtype, device=device)
    return (x, *reference_solve(denoiser, x, sigma_max, floor, cond, rtol))


def _cycle_cond(cond: dict | None, n: int, m: int) -> dict | None:
    """The conditioning of ``m`` held-out noises: per-sample tensors (``n`` rows) repeated cyclically."""
    if not cond:
        return cond
    idx = torch.arange(m) % max(n, 1)
    return {k: (v[idx.to(v.device)] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n else v)
            for k, v in cond.items()}


def tune_grid(
    denoiser: DenoiserFn,
    sampler: str,
    nfe: int,
    *,
    shape: Sequence[int] | None = None,
    process=None,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    sigma_floor: float | None = None,
    samples: int = 256,
    seed: int = 0,
    noise: Tensor | None = None,
    init: str | Tensor = "best",
    options: dict | None = None,
    cond: dict | None = None,
    optimizer: str = "lbfgs",
    starts: int = 1,
    holdout: int | None = None,
    max_evals: int | None = None,
    restarts: int = 2,
    rtol: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TunedGrid:
    """Fit the grid of deterministic ``sampler`` at ``nfe`` denoiser calls to ``denoiser``.

    Args:
        denoiser: ``D(x, sigma [B], **cond)`` (an oracle, a run's denoiser, a guided wrapper).
        sampler: a deterministic method of :data:`unidm.samplers.METHODS` (not ``adaptive``, not a stochastic
            one); ``options`` its options. Its steps are the most that fit in ``nfe`` calls (:func:`steps_for_nfe`).
        shape: per-sample shape of the data (``[samples, *shape]`` noises), unless ``noise`` is given.
        process: a process for ``prior_sample`` and the default ``sigma_max`` / ``sigma_min`` (its own); without
            one, ``sigma_max`` and ``sigma_min`` are needed and the prior is ``sigma_max * eps``.
        sigma_min: the last positive level of the fixed start grids; ``sigma_floor`` (default ``sigma_min / 10``)
            the lowest the tuned grid may reach, and where the reference solve stops (then ``x <- D(x, floor)``).
        samples, seed: ``M`` calibration noises drawn with ``torch.Generator().manual_seed(seed)``; or ``noise``.
        init: ``"best"`` (the fixed grids with the least error among Karras rho 7 and 3, log-SNR,
            polyexponential rho 2 and the process's uniform-t, ending at 1, 10 and 100 times ``sigma_min``, and
            rectified flow's uniform-t grid with shift 1 and 3; their names are the keys of ``fixed_errors``), one
            of those names, or a grid tensor.
        optimizer: ``"lbfgs"`` (L-BFGS-B with finite-difference gradients, :func:`lbfgs`) or ``"nelder-mead"``
            (:func:`nelder_mead`, ``restarts`` more runs from its best point); see ``docs/samplers.md``.
        starts: with ``init="best"``, the search runs from the ``starts`` best fixed grids and keeps the grid
            with the least calibration error.
        holdout: held-out noises (default ``max(64, samples // 4)``, drawn after the calibration noises; 0: none):
            if the tuned grid's error on them exceeds the start grid's, the start grid is returned
            (``holdout_error``, ``holdout_init_error``).
        max_evals: K-step solves per search (default ``150 + 60 (K - 1)`` for Nelder–Mead, which then restarts
            ``restarts`` times, and twice that for L-BFGS).
        rtol: tolerance (``rtol = atol``) of the adaptive reference (default 1e-7 in float64, 1e-5 in lower
            precision, where a tighter one stalls the adaptive solver on round-off).

    Returns:
        a :class:`TunedGrid` (the grid, its error and the start grid's on the calibration noises).

    Example:
        >>> import torch
        >>> from unidm.oracles import GaussianOracle
        >>> D = GaussianOracle(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
        >>> t = tune_grid(D, "euler", 3, shape=(2,), sigma_max=80.0, sigma_min=0.002, samples=16)
        >>> t.steps, t.error < t.init_error, bool((t.sigmas[1:] < t.sigmas[:-1]).all())
        (3, True, True)
    """
    from . import STOCHASTIC, resolve_method

    t0 = time.perf_counter()
    name = resolve_method(sampler)
    options = dict(options or {})
    if name == "adaptive" or name in STOCHASTIC or float(options.get("eta", 0.0)) > 0 \
            or float(options.get("s_churn", 0.0)) > 0:
        raise ValueError(f"tune_grid fits the grid of a deterministic fixed-grid sampler; {name!r} with "
                         f"{options or 'its defaults'} is not one (the reference is the probability-flow ODE)")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    steps = steps_for_nfe(name, int(nfe), **options)
    sigma_max = float(sigma_max if sigma_max is not None else process.sigma_max)
    sigma_min = float(sigma_min if sigma_min is not None else process.sigma_min)
    floor = float(sigma_floor if sigma_floor is not None else sigma_min / 10)
    if not 0 < floor < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_floor < sigma_min < sigma_max, got {floor}, {sigma_min}, {sigma_max}")
    gen = torch.Generator().manual_seed(int(seed))
    if rtol is None:
        rtol = 1e-7 if (noise.dtype if noise is not None else dtype) == torch.float64 else 1e-5
    if noise is None:
        if shape is None:
            raise ValueError("tune_grid needs shape= (the per-sample data shape) or noise=")
        n_held = int(max(64, samples // 4) if holdout is None else holdout)
        x, ref, ref_nfe = _draw(denoiser, process, shape, int(samples), gen, sigma_max, dtype, device, cond, rtol,
                                floor)
    else:
        n_held = 0
        x, (ref, ref_nfe) = noise, reference_solve(denoiser, noise, sigma_max, floor, cond, rtol)
    cond_fit, cond_held = cond, _cycle_cond(cond, x.shape[0], n_held)
    if n_held:  # held-out noises: the next draws of the same generator
        x_held, ref_held, _ = _draw(denoiser, process, shape, n_held, gen, sigma_max, dtype, device, cond_held,
                                    rtol, floor)

    def err(grid: Tensor, held: bool = False) -> float:
        try:
            if held:
                return grid_error(denoiser, x_held, grid, name, ref_held, cond=cond_held, **options)
            return grid_error(denoiser, x, grid, name, ref, cond=cond_fit, **options)
        except ValueError:  # levels merged in float64 (an increment underflowed): not a grid
            return math.inf

    fixed = _fixed_grids(steps, sigma_min, sigma_max, process)
    fixed_errors = {k: err(g) for k, g in fixed.items()}
    inits = _starts(init, fixed, fixed_errors, starts, steps, name, nfe, err)
    h = 1e-5 if x.dtype == torch.float64 else 3e-3
    best, best_err, evals, init_name, start, init_error = _fit(inits, err, steps, sigma_max, floor, optimizer,
                                                              max_evals, restarts, h, progress, name, nfe)
    held_err = held_init = None
    if n_held:
        held_err, held_init = err(best, True), err(start, True)
        if held_err > held_init:  # the fit did not carry over to fresh noises: keep the start grid
            best, best_err, held_err = start, init_error, held_init
    return TunedGrid(sigmas=best, sampler=name, nfe=nfe_of(name, steps, **options), steps=steps, error=best_err,
                     init_error=init_error, init=init_name, options=options, fixed_errors=fixed_errors,
                     sigma_floor=floor, samples=int(x.shape[0]), seed=int(seed), evaluations=evals,
                     seconds=time.perf_counter() - t0, reference_nfe=ref_nfe, optimizer=optimizer,
                     holdout=n_held, holdout_error=held_err, holdout_init_error=held_init)


def reference_solve(denoiser, x: Tensor, sigma_max: float, floor: float, cond, rtol: float) -> tuple[Tensor, int]:
    """The adaptive solution from ``x`` and its NFE. The adaptive solver evaluates only its still-running samples,
    so per-sample conditioning (one label per noise) is solved group by group, each group with its label."""
    from . import solve

    levels = torch.tensor([sigma_max, floor, 0.0], dtype=torch.float64)
    per = {k: v for k, v in (cond or {}).items()
           if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == x.shape[0] and x.shape[0] > 1}
    if not per:
        ref = solve(denoiser, x, levels, "adaptive", cond=cond, rtol=rtol, atol=rtol)
        return ref.x, ref.nfe
    def expanded(xa: Tensor, sigma: Tensor, **c) -> Tensor:  # a group's one label, to the running samples' rows
        return denoiser(xa, sigma, **{k: (v.expand(xa.shape[0]) if k in per and v.ndim == 0 else v)
                                      for k, v in c.items()})

    keys = torch.cat([v.reshape(x.shape[0], -1).double().cpu() for v in per.values()], 1)
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    out, nfe = torch.empty_like(x), 0
    for j in range(int(group.max()) + 1):
        idx = (group == j).nonzero().reshape(-1)
        rows = [idx[:1]] if all(v.ndim == 1 for v in per.values()) else [i.reshape(1) for i in idx]
        for r in rows:  # one label for the group (broadcast); other per-sample tensors one noise at a time
            sub = idx if len(rows) == 1 else r
            c = {**cond, **{k: (v[r.to(v.device)].reshape(()) if v.ndim == 1 else v[r.to(v.device)])
                            for k, v in per.items()}}
            ref = solve(expanded, x[sub.to(x.device)], levels, "adaptive", cond=c, rtol=rtol, atol=rtol)
            out[sub.to(x.device)] = ref.x
            nfe += ref.nfe
    return out, nfe


def _starts(init, fixed: dict, fixed_errors: dict, starts: int, steps: int, name: str, nfe: int, err
            ) -> list[tuple[str, Tensor, float]]:
    """The start grids ``(name, grid, error)``, best first."""
    if not isinstance(init, str):
        g = torch.as_tensor(init, dtype=torch.float64)
        if len(g) != steps + 1:
            raise ValueError(f"init grid has {len(g) - 1} steps; {name} at {nfe} NFE takes {steps}")
        return [("given", g, err(g))]
    if init != "best":
        if init not in fixed:
            raise ValueError(f"unknown init grid {init!r}; valid: best, {', '.join(fixed)}")
        return [(init, fixed[init], fixed_errors[init])]
    order = sorted((k for k in fixed if math.isfinite(fixed_errors[k])), key=fixed_errors.get)
    return [(k, fixed[k], fixed_errors[k]) for k in order[:max(1, int(starts))]]


def _fit(inits, err, steps, sigma_max, floor, optimizer, max_evals, restarts, h, progress, name, nfe):
    """Search from every start; the grid with the least calibration error, with its start."""
    init_name, start, init_error = inits[0]
    best, best_err, evals = start, init_error, 0
    if steps == 1:
        return best, best_err, evals, init_name, start, init_error
    budget = int(max_evals or (150 + 60 * (steps - 1)) * (1 if optimizer == "nelder-mead" else 2))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        per = budget * (1 + restarts) if optimizer == "nelder-mead" else budget
        bar = tqdm(total=per * len(inits), desc=f"tune {name} {nfe} NFE", dynamic_ncols=True, leave=False)
    f = lambda z: err(grid_from_logits(z, sigma_max, floor)) ** 2  # noqa: E731
    for k, g, e in inits:
        z, fz, n = _search(f, logits_from_grid(g, floor), optimizer, budget, restarts, h,
                           bar.update if bar is not None else None)
        evals += n
        if math.sqrt(fz) < best_err:
            best, best_err, init_name, start, init_error = grid_from_logits(z, sigma_max, floor), math.sqrt(fz), k, g, e
    if bar is not None:
        bar.close()
    return best, best_err, evals, init_name, start, init_error
