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

Optimiser: Nelder–Mead (adaptive coefficients of Gao & Han 2012) on ``z``, restarted from its best point. The
samplers are not differentiable in the grid (they read it as python floats to compute the step coefficients in
float64), and with ``K - 1 <= ~10`` parameters and one K-step solve per evaluation, a derivative-free search costs
a few hundred solves: seconds for a 2-D or 16-D mixture oracle (measured in ``docs/samplers.md``). It is
deterministic: the calibration noises come from ``seed``, and Nelder–Mead has no randomness.
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
           "logits_from_grid", "nelder_mead"]


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
def nelder_mead(f: Callable[[Tensor], float], x0: Tensor, step: float = 0.5, max_evals: int = 400,
                xtol: float = 1e-4, ftol: float = 1e-7, on_eval: Callable[[], None] | None = None
                ) -> tuple[Tensor, float, int]:
    """Minimise ``f`` from ``x0`` by Nelder–Mead with the dimension-adaptive coefficients of Gao & Han 2012
    (reflection 1, expansion ``1 + 2/n``, contraction ``3/4 - 1/(2n)``, shrink ``1 - 1/n``). Deterministic.
    Stops after ``max_evals`` evaluations, or when the simplex is within ``xtol`` and its values within ``ftol``
    (relative). Returns ``(x_best, f_best, evaluations)``."""
    n = x0.numel()
    a, g, c, s = 1.0, 1.0 + 2.0 / n, 0.75 - 0.5 / n, 1.0 - 1.0 / n
    evals = 0

    def F(x: Tensor) -> float:
        nonlocal evals
        evals += 1
        if on_eval is not None:
            on_eval()
        v = f(x)
        return v if math.isfinite(v) else math.inf

    pts = [x0.clone()] + [x0 + step * torch.eye(n, dtype=x0.dtype)[i] for i in range(n)]
    vals = [F(p) for p in pts]
    while evals < max_evals:
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
    return pts[i], vals[i], evals


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
    max_evals: int | None = None,
    restarts: int = 2,
    rtol: float = 1e-7,
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
        init: ``"best"`` (the fixed grid with the least error among Karras rho 7 and 3, log-SNR,
            polyexponential rho 2 and the process's uniform-t, ending at 1, 10 and 100 times ``sigma_min``, and
            rectified flow's uniform-t grid with shift 1 and 3; their names are the keys of ``fixed_errors``), one
            of those names, or a grid tensor.
        max_evals: per Nelder–Mead run (default ``150 + 60 (K - 1)``), ``restarts`` more from its best point.
        rtol: tolerance (``rtol = atol``) of the adaptive reference.

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
    from . import STOCHASTIC, resolve_method, solve

    t0 = time.perf_counter()
    name = resolve_method(sampler)
    options = dict(options or {})
    if name == "adaptive" or name in STOCHASTIC or float(options.get("eta", 0.0)) > 0 \
            or float(options.get("s_churn", 0.0)) > 0:
        raise ValueError(f"tune_grid fits the grid of a deterministic fixed-grid sampler; {name!r} with "
                         f"{options or 'its defaults'} is not one (the reference is the probability-flow ODE)")
    steps = steps_for_nfe(name, int(nfe), **options)
    used_nfe = nfe_of(name, steps, **options)
    sigma_max = float(sigma_max if sigma_max is not None else process.sigma_max)
    sigma_min = float(sigma_min if sigma_min is not None else process.sigma_min)
    floor = float(sigma_floor if sigma_floor is not None else sigma_min / 10)
    if not 0 < floor < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_floor < sigma_min < sigma_max, got {floor}, {sigma_min}, {sigma_max}")
    if noise is None:
        if shape is None:
            raise ValueError("tune_grid needs shape= (the per-sample data shape) or noise=")
        gen = torch.Generator().manual_seed(int(seed))
        draw = process.prior_sample if process is not None else prior_noise
        noise = draw((int(samples), *shape), sigma_max, generator=gen, dtype=dtype, device=device)
    x = noise
    ref = solve(denoiser, x, torch.tensor([sigma_max, floor, 0.0], dtype=torch.float64), "adaptive", cond=cond,
                rtol=rtol, atol=rtol)

    def err(grid: Tensor) -> float:
        try:
            return grid_error(denoiser, x, grid, name, ref.x, cond=cond, **options)
        except ValueError:  # levels merged in float64 (an increment underflowed): not a grid
            return math.inf

    fixed = _fixed_grids(steps, sigma_min, sigma_max, process)
    fixed_errors = {k: err(g) for k, g in fixed.items()}
    if isinstance(init, str):
        init_name = min(fixed_errors, key=fixed_errors.get) if init == "best" else init
        if init_name not in fixed:
            raise ValueError(f"unknown init grid {init!r}; valid: best, {', '.join(fixed)}")
        start, init_error = fixed[init_name], fixed_errors[init_name]
    else:
        init_name, start = "given", torch.as_tensor(init, dtype=torch.float64)
        if len(start) != steps + 1:
            raise ValueError(f"init grid has {len(start) - 1} steps; {name} at {nfe} NFE takes {steps}")
        init_error = err(start)
    if steps == 1:
        best, best_err, evals = start, init_error, 0
    else:
        z0 = logits_from_grid(start, floor)
        budget = int(max_evals or 150 + 60 * (steps - 1))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=budget * (1 + restarts), desc=f"tune {name} {used_nfe} NFE", dynamic_ncols=True,
                       leave=False)
        f = lambda z: err(grid_from_logits(z, sigma_max, floor)) ** 2  # noqa: E731
        z, fz, evals = z0, init_error ** 2, 0
        for r in range(1 + restarts):
            z_new, f_new, n = nelder_mead(f, z, step=0.5 if r == 0 else 0.2, max_evals=budget,
                                          on_eval=bar.update if bar is not None else None)
            evals += n
            if f_new < fz:
                z, fz = z_new, f_new
        if bar is not None:
            bar.close()
        best, best_err = grid_from_logits(z, sigma_max, floor), math.sqrt(fz)
        if best_err >= init_error:  # never worse than the start
            best, best_err = start, init_error
    return TunedGrid(sigmas=best, sampler=name, nfe=used_nfe, steps=steps, error=best_err, init_error=init_error,
                     init=init_name, options=options, fixed_errors=fixed_errors, sigma_floor=floor,
                     samples=int(x.shape[0]), seed=int(seed), evaluations=evals,
                     seconds=time.perf_counter() - t0, reference_nfe=ref.nfe)
