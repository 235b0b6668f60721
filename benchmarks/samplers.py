"""Sampler benchmark: error vs NFE with the exact denoiser of a Gaussian mixture (2-D and 16-D).

For every sampler of unidm (and, when installed, the matching samplers of diffusers and k-diffusion, run on the
same oracle from the same initial noise) at NFE 5, 10, 20, 50:

- ``rmse``: RMSE over all samples and coordinates (the root of the mean squared per-sample error) against a
  high-precision adaptive solution of the probability-flow ODE from the same initial noise (deterministic samplers
  only), the quantity ``unidm.samplers.tuning.tune_grid`` minimises;
- ``sw``: sliced Wasserstein-2 distance to fresh samples of the true mixture, next to its noise floor (the same
  distance between two independent true sample sets of the same size);
- per-step overhead with a trivial model.

Writes a table to stdout and ``benchmarks/results/samplers.json`` + ``samplers.png``. Runs in a few minutes on
one CPU core. Usage: ``python benchmarks/samplers.py [--quick]``.

Noise range: diffusers' schedulers are tied to DDPM's linear betas (1000 steps), whose sigma-space levels span
``[0.01, 157.4]``; every library starts from the same ``x = 157.4 * eps`` (diffusers' VP schedulers get
``x / sqrt(1 + sigma^2)``) and integrates down to 0. The oracle is evaluated at the exact level each library's
update uses (for diffusers, its ``sigmas``), the most favourable setting for it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import types
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unidm.oracles import GaussianMixtureOracle  # noqa: E402
from unidm.processes import VPDiscrete  # noqa: E402
from unidm.samplers import STOCHASTIC, karras_grid, log_snr_grid, sample, solve, uniform_t_grid  # noqa: E402
from unidm.samplers.tuning import tune_grid  # noqa: E402

F64 = torch.float64
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
ABAR = torch.cumprod(1 - BETAS, 0)
SIGMA_MAX = float(((1 - ABAR[-1]) / ABAR[-1]).sqrt())  # 157.4
SIGMA_MIN_DDPM = float(((1 - ABAR[0]) / ABAR[0]).sqrt())  # 0.01
BUDGETS = (4, 5, 6, 8, 10, 20, 50)
#: unidm samplers whose grid is tuned to each problem (unidm.samplers.tuning), on calibration noises of their own
TUNED = {"ipndm": ("ipndm", {}), "unipc-2": ("unipc", {"order": 2}), "dpmpp_3m": ("dpmpp_3m", {}),
         "unipc-3": ("unipc", {"order": 3})}
DEFAULT_TUNED = ("unipc-3", "unipc-2", "ipndm")
#: the sampler whose grid is also fitted to the test noises themselves: a lower bound on any grid's error
BOUND = "unipc-3"
TUNED_BUDGETS = (4, 5, 6, 8, 10)
RESULTS = Path(__file__).resolve().parent / "results"


# ---- problems ----------------------------------------------------------------------------------------------------
def make_mixture(dim: int, k: int, seed: int) -> GaussianMixtureOracle:
    g = torch.Generator().manual_seed(seed)
    spread = 2.0 if dim == 2 else 1.5
    means = spread * (2 * torch.rand(k, dim, generator=g, dtype=F64) - 1) * (1 if dim == 2 else 1.5)
    std = 0.03 + 0.07 * torch.rand(k, 1, generator=g, dtype=F64) if dim == 2 else \
        0.1 + 0.2 * torch.rand(k, dim, generator=g, dtype=F64)
    weights = 0.5 + torch.rand(k, generator=g, dtype=F64)
    return GaussianMixtureOracle(weights, means, (std**2).expand(k, dim))


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 128, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(a.shape[1], n_proj, generator=g, dtype=F64)
    proj = proj / proj.norm(dim=0, keepdim=True)
    pa, pb = torch.sort(a @ proj, dim=0)[0], torch.sort(b @ proj, dim=0)[0]
    return float(((pa - pb) ** 2).mean().sqrt())


# ---- unidm --------------------------------------------------------------------------------------------------------
def unidm_grids(n: int) -> dict[str, torch.Tensor]:
    return {
        "karras": karras_grid(n, 0.002, SIGMA_MAX),
        "log-snr": log_snr_grid(n, 0.002, SIGMA_MAX),
        # uniform in DDPM time from t = 1 down to t = (1 + 999/n)/1000, as diffusers' default "linspace" grid
        "uniform-t": uniform_t_grid(VPDiscrete(), n, t_min=(1 + 999 / n) / 1000, t_max=1.0),
    }


# name -> (method, options, nfe(n steps on a grid ending at 0))
UNIDM = {
    "euler": ("euler", {}, lambda n: n),
    "heun": ("heun", {}, lambda n: 2 * n - 1),
    "midpoint": ("midpoint", {}, lambda n: 2 * n),
    "rk4": ("rk4", {}, lambda n: 4 * n - 3),
    "lms": ("lms", {}, lambda n: n),
    "ipndm": ("ipndm", {}, lambda n: n),
    "dpm_solver-2": ("dpm_solver", {"order": 2}, lambda n: 2 * n - 1),
    "dpm_solver-3": ("dpm_solver", {"order": 3}, lambda n: 3 * n - 2),
    "dpmpp_2m": ("dpmpp_2m", {}, lambda n: n),
    "dpmpp_3m": ("dpmpp_3m", {}, lambda n: n),
    "unipc-2": ("unipc", {"order": 2}, lambda n: n),
    "unipc-3": ("unipc", {"order": 3}, lambda n: n),
    "unipc-3-bh1": ("unipc", {"order": 3, "variant": "bh1"}, lambda n: n),
    "ddim": ("ddim", {}, lambda n: n),
    "ddpm": ("ddpm", {}, lambda n: n),
    "edm": ("edm", {}, lambda n: 2 * n - 1),
    "euler_maruyama": ("euler_maruyama", {}, lambda n: n),
    "pc": ("pc", {}, lambda n: 2 * n),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, lambda n: n),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, lambda n: n),
}


def steps_for(nfe_of, budget: int) -> int | None:
    n = max((n for n in range(1, budget + 1) if nfe_of(n) <= budget), default=None)
    return n


def run_unidm(oracle, x, budget):
    for name, (method, opts, nfe_of) in UNIDM.items():
        n = steps_for(nfe_of, budget)
        if n is None:
            continue
        for gname, grid in unidm_grids(n).items():
            gen = torch.Generator().manual_seed(1)
            res = solve(oracle, x, grid, method, generator=gen, **opts)
            yield f"{name}@{gname}", res.x, res.nfe, method in STOCHASTIC


def run_tuned(oracle, x, budget, samples, tuning_log, tuned=DEFAULT_TUNED, tune_options=None):
    """unidm's samplers on grids fitted to ``oracle`` (``tune_grid`` on ``samples`` calibration noises drawn with
    seed 7, never the benchmark's own noises ``x``)."""
    if budget not in TUNED_BUDGETS:
        return
    for name in tuned:
        method, opts = TUNED[name]
        t = tune_grid(oracle, method, budget, shape=x.shape[1:], process=VPDiscrete(), sigma_max=SIGMA_MAX,
                      sigma_min=0.002, samples=samples, seed=7, options=opts, **(tune_options or {}))
        tuning_log.append(_tuning_record(name, budget, t))
        res = solve(oracle, x, t.sigmas, method, **opts)
        yield f"{name}@tuned", res.x, res.nfe, False


def _tuning_record(name, budget, t) -> dict:
    return {"name": name, "budget": budget, "seconds": t.seconds, "evaluations": t.evaluations, "init": t.init,
            "init_error": t.init_error, "error": t.error, "holdout_error": t.holdout_error,
            "holdout_init_error": t.holdout_init_error, "karras_error": t.fixed_errors["karras-rho7"],
            "optimizer": t.optimizer, "sigmas": [float(v) for v in t.sigmas]}


def run_bound(oracle, x, budget, tuning_log, tune_options=None):
    """The grid of :data:`BOUND` fitted to the test noises ``x`` themselves: no grid does better on them for that
    sampler (up to the optimiser's local optimum), a bound on what tuning can reach."""
    if budget not in TUNED_BUDGETS:
        return
    method, opts = TUNED[BOUND]
    t = tune_grid(oracle, method, budget, noise=x, process=VPDiscrete(), sigma_max=SIGMA_MAX, sigma_min=0.002,
                  options=opts, **(tune_options or {}))
    tuning_log.append(_tuning_record(f"{BOUND}@oracle-tuned", budget, t))
    res = solve(oracle, x, t.sigmas, method, **opts)
    yield f"{BOUND}@oracle-tuned", res.x, res.nfe, False


# ---- diffusers ----------------------------------------------------------------------------------------------------
def diffusers_configs():
    try:
        import diffusers as d
    except Exception as e:  # pragma: no cover - optional
        print(f"# diffusers not available ({type(e).__name__}: {e}); skipped", file=sys.stderr)
        return {}
    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon")
    two = lambda n: 2 * n - 1  # noqa: E731
    one = lambda n: n  # noqa: E731
    cfg = {}
    for karras in (False, True):
        tag = "@karras" if karras else "@default"
        kw = dict(base, use_karras_sigmas=karras)
        cfg[f"dpmpp_2m{tag}"] = (d.DPMSolverMultistepScheduler, dict(kw, solver_order=2), one, False)
        cfg[f"dpmpp_3m{tag}"] = (d.DPMSolverMultistepScheduler, dict(kw, solver_order=3), one, False)
        cfg[f"dpmpp_2m_sde{tag}"] = (d.DPMSolverMultistepScheduler,
                                     dict(kw, solver_order=2, algorithm_type="sde-dpmsolver++"), one, True)
        cfg[f"unipc-3-bh2{tag}"] = (d.UniPCMultistepScheduler, dict(kw, solver_order=3), one, False)
        cfg[f"unipc-2-bh2{tag}"] = (d.UniPCMultistepScheduler, dict(kw, solver_order=2), one, False)
        cfg[f"unipc-3-bh1{tag}"] = (d.UniPCMultistepScheduler,
                                    dict(kw, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
                                    one, False)
        cfg[f"deis-3{tag}"] = (d.DEISMultistepScheduler, dict(kw, solver_order=3), one, False)
        cfg[f"euler{tag}"] = (d.EulerDiscreteScheduler, kw, one, False)
        cfg[f"heun{tag}"] = (d.HeunDiscreteScheduler, kw, two, False)
        cfg[f"lms{tag}"] = (d.LMSDiscreteScheduler, kw, one, False)
        cfg[f"dpm_2{tag}"] = (d.KDPM2DiscreteScheduler, kw, two, False)
    # flow matching (rectified flow, x_t = (1 - t) x0 + t eps, v = eps - x0) on the schedulers' own time grids,
    # with their shift options (SD3 / Flux use shift 3)
    flow = dict(num_train_timesteps=1000)
    fkw = dict(flow, use_flow_sigmas=True, prediction_type="flow_prediction")
    for shift in (1.0, 3.0):
        tag = f"@flow-shift{shift:g}"
        cfg[f"euler{tag}"] = (d.FlowMatchEulerDiscreteScheduler, dict(flow, shift=shift), one, False)
        cfg[f"heun{tag}"] = (d.FlowMatchHeunDiscreteScheduler, dict(flow, shift=shift), two, False)
        for order in (2, 3):
            cfg[f"dpmpp_{order}m{tag}"] = (d.DPMSolverMultistepScheduler,
                                           dict(fkw, flow_shift=shift, solver_order=order), one, False)
            # (UniPC bh1 returns NaN with flow sigmas in diffusers 0.42.1: left out)
            cfg[f"unipc-{order}-bh2{tag}"] = (d.UniPCMultistepScheduler,
                                              dict(fkw, flow_shift=shift, solver_order=order), one, False)
    cfg["ddim@trailing"] = (d.DDIMScheduler, dict(base, clip_sample=False, timestep_spacing="trailing",
                                                  set_alpha_to_one=True), one, False)
    cfg["ddpm@trailing"] = (d.DDPMScheduler, dict(base, clip_sample=False, timestep_spacing="trailing",
                                                  variance_type="fixed_small"), one, True)
    return cfg


def _flow_velocity(oracle, xt, t):
    """``v = eps - x0`` of the flow-matching path at time ``t`` from the sigma-space oracle: ``x_ve = x_t / (1 - t)``,
    ``sigma = t / (1 - t)`` (``t = 1``: ``sigma = 1e8``)."""
    t = min(float(t), 1.0)
    s = t / (1 - t) if t < 1 - 1e-8 else 1e8
    xs = xt * (1 + s)  # = x_t / (1 - t)
    d0 = oracle(xs, torch.full((xt.shape[0],), s, dtype=F64))
    return (xt - d0) / t


def run_flow_one(cls, kw, oracle, x, n):
    """A diffusers flow-matching scheduler from ``t = 1``. The state there is the reference trajectory's: ``x``
    at ``sigma_max`` is ``x_t = x / (1 + sigma_max)`` at ``t0 = sigma_max / (1 + sigma_max)``, carried to ``t = 1``
    by one Heun step (``1 - t0 = 0.006``; these two calls are not counted)."""
    t0 = SIGMA_MAX / (1 + SIGMA_MAX)
    xt = x / (1 + SIGMA_MAX)
    v0 = _flow_velocity(oracle, xt, t0)
    v1 = _flow_velocity(oracle, xt + (1 - t0) * v0, 1.0)
    sample_ = xt + (1 - t0) * (v0 + v1) / 2
    sched = cls(**kw)
    sched.set_timesteps(n)
    nfe = 0
    for k, t in enumerate(sched.timesteps):
        tt = float(t) / sched.config.num_train_timesteps
        sig = getattr(sched, "sigmas", None)
        if sig is not None:  # the scheduler's own sigma (= t) at this call, when it keeps one
            i = getattr(sched, "step_index", None)
            tt = float(sig[i if i is not None else k])
        v = _flow_velocity(oracle, sample_, tt)
        nfe += 1
        sample_ = sched.step(v.to(sample_.dtype), t, sample_).prev_sample.to(F64)
    return sample_, nfe


def run_diffusers_one(cls, kw, oracle, x, n, seed=1):
    import warnings
    warnings.filterwarnings("ignore")
    if "flow" in cls.__name__.lower() or kw.get("use_flow_sigmas"):
        return run_flow_one(cls, kw, oracle, x, n)
    sched = cls(**kw)
    sched.set_timesteps(n)
    abar = sched.alphas_cumprod.to(F64)
    probe = torch.ones(1, dtype=F64)
    sigma_space = not torch.equal(sched.scale_model_input(probe.clone(), sched.timesteps[0]), probe)
    sched = cls(**kw)  # fresh (scale_model_input may have advanced its index)
    sched.set_timesteps(n)
    sig = getattr(sched, "sigmas", None)
    sample_ = x.clone() if sigma_space else x / math.sqrt(1 + SIGMA_MAX**2)
    gen = torch.Generator().manual_seed(seed)
    nfe = 0
    for k, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(sample_, t)
        if sig is not None and k < len(sig) - (0 if sigma_space else 0):
            s = float(sig[k])
        else:
            a = float(abar[int(t)])
            s = math.sqrt((1 - a) / a)
        xs = inp * math.sqrt(1 + s**2)  # sigma-space
        eps = (xs - oracle(xs, torch.full((xs.shape[0],), s, dtype=F64))) / s
        nfe += 1
        kwargs = {"generator": gen} if "generator" in sched.step.__code__.co_varnames else {}
        sample_ = sched.step(eps.to(sample_.dtype), t, sample_, **kwargs).prev_sample.to(F64)
    return sample_, nfe


def run_diffusers(oracle, x, budget, configs):
    for name, (cls, kw, nfe_of, stochastic) in configs.items():
        n = steps_for(nfe_of, budget)
        if n is None or (cls.__name__ in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler") and n < 2):
            continue
        try:
            out, nfe = run_diffusers_one(cls, kw, oracle, x, n)
        except Exception as e:  # a scheduler that fails at this NFE is reported, not fatal
            print(f"# diffusers {name} at {n} steps failed: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        yield name, out, nfe, stochastic


# ---- k-diffusion --------------------------------------------------------------------------------------------------
def load_k_sampling():
    """``k_diffusion/sampling.py`` on its own (the package ``__init__`` imports torchvision and more)."""
    try:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            raise ImportError("k_diffusion not installed")
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        utils = types.ModuleType("k_diffusion.utils")
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
        sys.modules.setdefault("k_diffusion", pkg)
        sys.modules.setdefault("k_diffusion.utils", utils)
        return importlib.import_module("k_diffusion.sampling")
    except Exception as e:  # pragma: no cover - optional
        print(f"# k-diffusion not available ({type(e).__name__}: {e}); skipped", file=sys.stderr)
        return None


def k_configs(K):
    if K is None:
        return {}
    one, two = (lambda n: n), (lambda n: 2 * n - 1)
    return {
        "euler": (K.sample_euler, {}, one, False),
        "heun": (K.sample_heun, {}, two, False),
        "dpm_2": (K.sample_dpm_2, {}, two, False),
        "lms": (K.sample_lms, {}, one, False),
        "dpmpp_2m": (K.sample_dpmpp_2m, {}, one, False),
        "dpmpp_3m": (K.sample_dpmpp_3m_sde, {"eta": 0.0}, one, False),
        "euler_ancestral": (K.sample_euler_ancestral, {}, one, True),
        "dpmpp_2m_sde": (K.sample_dpmpp_2m_sde, {}, one, True),
        "dpmpp_3m_sde": (K.sample_dpmpp_3m_sde, {}, one, True),
    }


def run_k(K, oracle, x, budget, configs):
    for name, (fn, opts, nfe_of, stochastic) in configs.items():
        n = steps_for(nfe_of, budget)
        if n is None:
            continue
        for gname, grid in {"karras": K.get_sigmas_karras(n, 0.002, SIGMA_MAX),
                            "exponential": K.get_sigmas_exponential(n, 0.002, SIGMA_MAX)}.items():
            calls = [0]

            def model(xx, s, **kw):
                calls[0] += 1
                return oracle(xx, s)

            torch.manual_seed(1)
            if stochastic:  # k-diffusion draws from the global RNG or a Brownian tree seeded from it
                opts = dict(opts)
                g = torch.Generator().manual_seed(1)
                opts["noise_sampler"] = lambda a, b, g=g: torch.randn(x.shape, generator=g, dtype=F64)
            out = fn(model, x.clone(), grid.to(F64), disable=True, **opts)
            yield f"{name}@{gname}", out, calls[0], stochastic


# ---- overhead -----------------------------------------------------------------------------------------------------
def overhead(K, dcfg, steps=100):
    x = torch.randn(1, 2, dtype=torch.float32)
    trivial = lambda xx, s, **kw: xx * 0.5  # noqa: E731
    rows = {}
    for m in ("euler", "dpmpp_2m", "dpmpp_3m", "unipc"):
        grid = karras_grid(steps, 0.002, SIGMA_MAX).float()
        t = time.perf_counter()
        sample(trivial, x, grid, m)
        rows[f"unidm {m}"] = (time.perf_counter() - t) / steps * 1e6
    if K is not None:
        for m, fn in (("euler", K.sample_euler), ("dpmpp_2m", K.sample_dpmpp_2m)):
            grid = K.get_sigmas_karras(steps, 0.002, SIGMA_MAX)
            t = time.perf_counter()
            fn(trivial, x.clone(), grid, disable=True)
            rows[f"k-diffusion {m}"] = (time.perf_counter() - t) / steps * 1e6
    for name in ("dpmpp_2m@karras", "unipc-3-bh2@karras"):
        if name in dcfg:
            cls, kw, _, _ = dcfg[name]
            sched = cls(**kw)
            sched.set_timesteps(steps)
            s_ = x.clone()
            t = time.perf_counter()
            for tt in sched.timesteps:
                inp = sched.scale_model_input(s_, tt)
                s_ = sched.step(trivial(inp, None), tt, s_).prev_sample
            rows[f"diffusers {name.split('@')[0]}"] = (time.perf_counter() - t) / steps * 1e6
    return rows


# ---- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples and budgets (smoke run)")
    ap.add_argument("--tune-samples", type=int, default=0,
                    help="calibration noises for the tuned grids (default 2000)")
    ap.add_argument("--budgets", help="comma-separated NFE budgets (default 4,5,6,8,10,20,50)")
    ap.add_argument("--tuned", default=",".join(DEFAULT_TUNED),
                    help=f"samplers whose grid is tuned (of {', '.join(TUNED)})")
    ap.add_argument("--optimizer", default="lbfgs", help="tune_grid's optimizer: lbfgs or nelder-mead")
    ap.add_argument("--starts", type=int, default=1, help="tune_grid's starts (best fixed grids searched from)")
    ap.add_argument("--tuned-only", action="store_true",
                    help="only the tuned grids, the bound and diffusers' schedulers (no unidm fixed grids, no "
                         "k-diffusion): the ratio table in a fraction of the time")
    ap.add_argument("--no-bound", action="store_true", help="skip the grid fitted to the test noises themselves")
    ap.add_argument("--fresh", type=int, default=-1,
                    help="fresh noises on which diffusers' schedulers and the tuned grids are measured again, "
                         "the anchor the best on them (default 10000; 0: none)")
    ap.add_argument("--digits", metavar="RUN", help="also the digits section on this trained run folder")
    ap.add_argument("--digits-nfe", default="4,6,8,10")
    ap.add_argument("--digits-samplers", default="dpmpp_2m,unipc")
    ap.add_argument("--digits-tune-samples", type=int, default=128)
    ap.add_argument("--digits-max-evals", type=int, default=300, help="K-step solves of the digits grid search")
    ap.add_argument("--toy", metavar="RUN", help="also the 2-D run section (e.g. the default moons run): sliced W2 "
                                                 "of 10-NFE samplers on Karras and tuned grids vs the run's default")
    ap.add_argument("--toy-samplers", default="dpmpp_3m,unipc")
    ap.add_argument("--toy-n", type=int, default=5000, help="samples (and held-out examples) for sliced W2")
    ap.add_argument("--skip-mixtures", action="store_true", help="only the digits / toy sections")
    ap.add_argument("--dims", default="2,16", help="which mixtures: 2, 16 or both (2,16)")
    ap.add_argument("--plot-grids", metavar="PNG", help="only plot the tuned grids against Karras's from the JSON "
                                                        "files in benchmarks/results/ (samplers*.json) to PNG")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.plot_grids:
        return plot_grids(args.plot_grids)
    n_samples = {2: 2000, 16: 1000} if not args.quick else {2: 300, 16: 200}
    tune_samples = {2: args.tune_samples or 2000, 16: args.tune_samples or 2000}
    fresh = {2: 10000, 16: 10000} if args.fresh < 0 else {2: args.fresh, 16: args.fresh}
    budgets = BUDGETS if not args.quick else (10,)
    if args.budgets:
        budgets = tuple(int(b) for b in args.budgets.split(","))
    tuned = tuple(t for t in args.tuned.split(",") if t)
    tune_options = {"optimizer": args.optimizer, "starts": args.starts}
    K = None if args.tuned_only else load_k_sampling()
    kcfg, dcfg = k_configs(K), diffusers_configs()
    results = {"budgets": list(budgets), "sigma_max": SIGMA_MAX, "problems": {}, "tune_options": tune_options,
               "tuned_only": args.tuned_only}
    t_all = time.time()
    dims = () if args.skip_mixtures else tuple(int(d) for d in args.dims.split(","))
    for dim, k in ((d, {2: 6, 16: 8}[d]) for d in dims):
        oracle = make_mixture(dim, k, seed=dim)
        n = n_samples[dim]
        x = SIGMA_MAX * torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(0))
        t = time.time()
        ref = solve(oracle, x, torch.tensor([SIGMA_MAX, 1e-5, 0.0], dtype=F64), "adaptive", rtol=1e-9, atol=1e-9)
        truth = oracle.sample(n, generator=torch.Generator().manual_seed(123))
        floor = sum(sliced_w2(oracle.sample(n, generator=torch.Generator().manual_seed(200 + j)),
                              oracle.sample(n, generator=torch.Generator().manual_seed(300 + j)))
                    for j in range(5)) / 5
        prob = {"dim": dim, "components": k, "n": n, "sw_floor": floor, "reference_nfe": ref.nfe,
                "sw_reference": sliced_w2(ref.x, truth), "rows": [], "tuning": []}
        print(f"\n## {dim}-D mixture, {k} components, {n} samples; reference: adaptive rtol=atol=1e-9 "
              f"({ref.nfe} NFE, {time.time() - t:.1f}s); SW2 noise floor {floor:.4f}, "
              f"reference SW2 {prob['sw_reference']:.4f}", flush=True)
        for budget in budgets:
            sources = [] if args.tuned_only else [("unidm", run_unidm(oracle, x, budget))]
            sources.append(("unidm", run_tuned(oracle, x, budget, tune_samples[dim], prob["tuning"], tuned,
                                               tune_options)))
            if not args.no_bound:
                sources.append(("bound", run_bound(oracle, x, budget, prob["tuning"], tune_options)))
            if dcfg:
                sources.append(("diffusers", run_diffusers(oracle, x, budget, dcfg)))
            if K is not None:
                sources.append(("k-diffusion", run_k(K, oracle, x, budget, kcfg)))
            for lib, gen in sources:
                for name, out, nfe, stochastic in gen:
                    ok = bool(torch.isfinite(out).all())
                    rmse = float(((out - ref.x) ** 2).mean().sqrt()) if ok and not stochastic else None
                    sw = sliced_w2(out, truth) if ok else None
                    prob["rows"].append({"lib": lib, "name": name, "budget": budget, "nfe": nfe,
                                         "stochastic": stochastic, "rmse": rmse, "sw": sw, "finite": ok})
            print_ratios(prob, (budget,), header=False)
        if fresh[dim]:
            prob["fresh"] = fresh_check(oracle, dim, fresh[dim], prob, dcfg, budgets)
        results["problems"][str(dim)] = prob
        print_table(prob, budgets)
        print_ratios(prob, budgets)
    if not args.skip_mixtures:
        results["overhead_us_per_step"] = overhead(K, dcfg)
        print("\n## per-step overhead, trivial model, batch 1, 100 steps (microseconds per step)")
        for k_, v in results["overhead_us_per_step"].items():
            print(f"  {k_:28s} {v:8.1f}")
    if args.digits:
        results["digits"] = digits_section(args.digits, [int(v) for v in args.digits_nfe.split(",")],
                                           args.digits_samplers.split(","), args.digits_tune_samples,
                                           {**tune_options, "max_evals": args.digits_max_evals})
    if args.toy:
        results["toy"] = toy_section(args.toy, args.toy_samplers.split(","), args.toy_n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "samplers" if not args.skip_mixtures else f"samplers-{'digits' if args.digits else 'toy'}"
    if dims and dims != (2, 16):
        name = f"samplers-{'-'.join(map(str, dims))}d"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    if not args.skip_mixtures:
        plot(results)
    print(f"\nwrote {RESULTS / (name + '.json')} ({time.time() - t_all:.0f}s)")


def toy_section(run_path: str, samplers, n: int, nfe: int = 10) -> dict:
    """A trained 2-D run: sliced W2 to the held-out split (``unidm eval``'s metric) of ``n`` samples with the
    run's own sampling settings and with each sampler at ``nfe`` NFE on the Karras grid and on a grid tuned by
    ``unidm tune-grid`` (``tuned_grid_for_run``, 256 calibration noises, stored in the run folder)."""
    from unidm.evaluation.sample_quality import evaluate_samples
    from unidm.run import load_run, load_tuned_grid, tuned_grid_for_run

    run = load_run(run_path)
    m, s = run.model, run.config.sample
    rows = []

    def sw(sampler, steps, grid, **extra) -> float:
        x = m.generate(n, seeds=range(n), sampler=sampler, steps=steps, grid=grid, **extra)
        return evaluate_samples(x.cpu(), run.data)["metrics"]["sliced_w2"]

    print(f"\n## {run_path} (step {run.step}): sliced W2 of {n} samples", flush=True)
    default = sw(s.sampler, s.steps, s.grid)
    print(f"  default {s.sampler} {s.steps} steps: {default['value']:.4f} (floor {default['floor']:.4f})", flush=True)
    for sampler in samplers:
        tuned, info = tuned_grid_for_run(run, sampler, nfe, progress=False)
        grid = load_tuned_grid(run, sampler, tuned.steps)
        k, t = sw(sampler, tuned.steps, "karras")["value"], sw(sampler, tuned.steps, "tuned",
                                                                 grid_options={"tuned": grid})["value"]
        rows.append({"sampler": sampler, "nfe": tuned.nfe, "karras": k, "tuned": t, "tune_seconds": tuned.seconds,
                     "cached": info["cached"], "sigmas": [float(v) for v in tuned.sigmas]})
        print(f"  {sampler} {tuned.nfe} NFE: Karras {k:.4f}, tuned {t:.4f} ({t / default['value']:.2f}x the default; "
              f"tuning {tuned.seconds:.0f} s{', cached' if info['cached'] else ''})", flush=True)
    return {"run": run_path, "n": n, "default": {"sampler": s.sampler, "steps": s.steps, **default}, "rows": rows}


def plot_grids(out: str) -> None:
    """The tuned grids (sigma against step, log scale) of every ``samplers*.json`` in ``benchmarks/results/``, with
    the Karras grid (rho 7) of the same steps: 2-D and 16-D mixtures (UniPC-3) and digits (its samplers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for path in sorted(RESULTS.glob("samplers*.json")):
        res = json.loads(path.read_text())
        for dim, prob in res.get("problems", {}).items():
            recs = [t for t in prob["tuning"] if t["name"] == "unipc-3" and t["budget"] in (5, 10)]
            if recs:
                panels.append((f"{dim}-D mixture, UniPC-3 (sigma_max {SIGMA_MAX:.0f})", recs, 0.002, SIGMA_MAX))
        if "digits" in res:
            from unidm.run import load_run
            proc = load_run(res["digits"]["run"]).model.process
            recs = [{"name": r["sampler"], "budget": r["nfe"], "sigmas": r["sigmas"]} for r in res["digits"]["rows"]
                    if r["nfe"] in (4, 10)]
            panels.append((f"digits, {', '.join(sorted({r['name'] for r in recs}))}", recs, proc.sigma_min,
                           proc.sigma_max))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, recs, smin, smax) in zip(axes[0], panels):
        for i, r in enumerate(recs):
            sig = r["sigmas"][:-1]
            c = f"C{i}"
            ax.semilogy(range(len(sig)), sig, "o-", color=c, label=f"tuned, {r['budget']} NFE")
            kg = karras_grid(len(sig), smin, smax)[:-1]
            ax.semilogy(range(len(sig)), kg, "x--", color=c, alpha=0.6, label=f"Karras, {len(sig)} steps")
        ax.set_xlabel("step i")
        ax.set_ylabel("sigma_i (last level 0 not shown)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def fresh_check(oracle, dim, n, prob, dcfg, budgets) -> list[dict]:
    """diffusers' deterministic schedulers and every tuned grid, again on ``n`` fresh noises (seed 11), the anchor
    the best of them on these noises (not the one that was best on the test noises): the test RMSE at 4-10 NFE is
    dominated by the few noises that end near a boundary between modes, so it varies by tens of percent between
    noise sets of a thousand, and which anchor is best with it."""
    x = SIGMA_MAX * torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(11))
    ref = solve(oracle, x, torch.tensor([SIGMA_MAX, 1e-5, 0.0], dtype=F64), "adaptive", rtol=1e-9, atol=1e-9).x
    out = []
    for b in budgets:
        if not dcfg or b not in TUNED_BUDGETS:
            continue
        anchors = {name: float(((y - ref) ** 2).mean().sqrt())
                   for name, y, _, stochastic in run_diffusers(oracle, x, b, dcfg)
                   if not stochastic and bool(torch.isfinite(y).all())}
        if not anchors:
            continue
        name = min(anchors, key=anchors.get)
        row = {"budget": b, "anchor": name, "anchor_rmse": anchors[name]}
        for t in prob["tuning"]:
            if t["budget"] == b and not t["name"].endswith("oracle-tuned"):
                method, opts = TUNED[t["name"]]
                y = solve(oracle, x, torch.tensor(t["sigmas"], dtype=F64), method, **opts).x
                row[t["name"]] = float(((y - ref) ** 2).mean().sqrt())
        out.append(row)
    return out


def digits_section(run_path: str, nfes, samplers, tune_samples: int, tune_options: dict) -> dict:
    """A trained digits run: Fréchet distance (feature net of ``unidm.evaluation``) of as many samples as training
    images against the held-out split, with the Karras grid and with a grid tuned to the run
    (``tune_grid`` on ``tune_samples`` prior noises with the training class frequencies, stratified), at each NFE;
    next to the floor and the resampled floor (fresh draws from the training split, within classes)."""
    from unidm.commands.guidance import prior_labels
    from unidm.evaluation.feature_net import feature_net_for, features
    from unidm.evaluation.image_metrics import frechet_distance, resampled_floor
    from unidm.run import load_run
    from unidm.samplers import make_grid, prior_noise

    run = load_run(run_path)
    model, data = run.model, run.data
    net = feature_net_for(data)
    f_test, f_train = features(net, data.test), features(net, data.train)
    n = len(data.train)
    stratified = bool(prior_labels(model, data, range(1)))
    floor = frechet_distance(f_train, f_test)
    resampled = resampled_floor(f_train, f_test, n, labels=data.train_labels if stratified else None)["mean"]
    seeds = range(n)
    cond = prior_labels(model, data, seeds)
    print(f"\n## digits ({run_path}, step {run.step}): {n} samples vs {len(data.test)} held-out; Fréchet floor "
          f"{floor:.3f}, resampled floor {resampled:.3f}", flush=True)
    print(f"{'sampler':10s} {'NFE':>4s} {'karras':>8s} {'tuned':>8s} {'k/res':>6s} {'t/res':>6s} {'tune s':>7s}")
    rows = []
    with torch.no_grad(), model.evaluating():
        for sampler in samplers:
            for nfe in nfes:
                kg = make_grid("karras", nfe, model.process)
                t = tune_grid(model.denoiser, sampler, nfe, shape=model.data_shape, process=model.process,
                              samples=tune_samples, seed=1, dtype=torch.float32,
                              cond=prior_labels(model, data, range(10**6, 10**6 + tune_samples)), **tune_options)
                fd = {}
                for gname, g in (("karras", kg), ("tuned", t.sigmas)):
                    x = prior_noise((n, *model.data_shape), float(g[0]), seeds=seeds)
                    y = solve(model.denoiser, x, g, sampler, **cond).x
                    fd[gname] = frechet_distance(features(net, y.clamp(-1, 1)), f_test)
                rows.append({"sampler": sampler, "nfe": nfe, "karras": fd["karras"], "tuned": fd["tuned"],
                             "tune_seconds": t.seconds, "tune_error": t.error, "tune_init": t.init,
                             "karras_error": t.fixed_errors["karras-rho7"], "sigmas": [float(v) for v in t.sigmas]})
                print(f"{sampler:10s} {nfe:4d} {fd['karras']:8.3f} {fd['tuned']:8.3f} {fd['karras'] / resampled:6.2f} "
                      f"{fd['tuned'] / resampled:6.2f} {t.seconds:7.1f}", flush=True)
    return {"run": run_path, "step": run.step, "n": n, "floor": floor, "resampled_floor": resampled,
            "tune_samples": tune_samples, "rows": rows}


def print_ratios(prob, budgets, header=True):
    """unidm's best tuned grid against the best anchor (diffusers or k-diffusion) per NFE, with the bound."""
    rows = prob["rows"]
    if header:
        print(f"\n{prob['dim']}-D: unidm tuned vs the best anchor (RMSE vs reference; ratio < 1: unidm ahead)")
        print(f"{'NFE':>4s} {'best anchor':>34s} {'unidm tuned':>22s} {'ratio':>6s} {'bound':>9s} {'ratio':>6s}"
              f" | fresh: {'anchor':>9s} {'tuned':>9s} {'ratio':>6s}")
    for b in budgets:
        anchors = [r for r in (best(rows, lib, b, "rmse") for lib in ("diffusers", "k-diffusion")) if r]
        u = min((r for r in rows if r["budget"] == b and r["name"].endswith("@tuned") and r["rmse"] is not None),
                key=lambda r: r["rmse"], default=None)
        if not anchors or u is None:
            continue
        a = min(anchors, key=lambda r: r["rmse"])
        bd = best(rows, "bound", b, "rmse")
        f = next((f for f in prob.get("fresh", []) if f["budget"] == b), None)
        fr = ""
        if f:
            ft = min(v for k, v in f.items() if k in TUNED)
            fr = f" | fresh: {f['anchor_rmse']:9.3e} {ft:9.3e} {ft / f['anchor_rmse']:6.2f}"
        bds = f"{bd['rmse']:9.3e} {bd['rmse'] / a['rmse']:6.2f}" if bd else f"{'-':>9s} {'-':>6s}"
        print(f"{b:4d} {a['lib'] + ' ' + a['name']:>34s} {u['name'] + ' ' + format(u['rmse'], '.3e'):>22s} "
              f"{u['rmse'] / a['rmse']:6.2f} {bds}{fr}", flush=True)


def best(rows, lib, budget, key):
    cands = [r for r in rows if r["lib"] == lib and r["budget"] == budget and r[key] is not None]
    return min(cands, key=lambda r: r[key]) if cands else None


def print_table(prob, budgets):
    rows = prob["rows"]
    print(f"\n{'library':12s} {'sampler@grid':28s} " + " ".join(f"{'NFE' + str(b) + ' rmse':>12s}" for b in budgets)
          + "   " + " ".join(f"{'NFE' + str(b) + ' sw':>10s}" for b in budgets))
    names = []
    for r in rows:
        if (r["lib"], r["name"]) not in names:
            names.append((r["lib"], r["name"]))
    for lib, name in names:
        cells, swc = [], []
        for b in budgets:
            r = next((r for r in rows if r["lib"] == lib and r["name"] == name and r["budget"] == b), None)
            cells.append(f"{r['rmse']:12.2e}" if r and r["rmse"] is not None else f"{'-':>12s}")
            swc.append(f"{r['sw']:10.4f}" if r and r["sw"] is not None else f"{'-':>10s}")
        print(f"{lib:12s} {name:28s} " + " ".join(cells) + "   " + " ".join(swc))
    print("\nbest per library (deterministic rmse vs reference | any sampler sw vs truth, floor "
          f"{prob['sw_floor']:.4f}):")
    for b in budgets:
        parts = []
        for lib in ("unidm", "diffusers", "k-diffusion"):
            r, s = best(rows, lib, b, "rmse"), best(rows, lib, b, "sw")
            if r:
                parts.append(f"{lib}: {r['name']} {r['rmse']:.2e} | {s['name']} {s['sw']:.4f}")
        print(f"  NFE {b:3d}: " + ";  ".join(parts))


def plot(results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return
    probs = results["problems"]
    fig, axes = plt.subplots(1, len(probs), figsize=(7 * len(probs), 5.5))
    axes = [axes] if len(probs) == 1 else axes
    styles = {"unidm": "-", "diffusers": "--", "k-diffusion": ":", "bound": "-."}
    for ax, (dim, prob) in zip(axes, probs.items()):
        rows = [r for r in prob["rows"] if r["rmse"] is not None]
        series = {}
        for r in rows:
            series.setdefault((r["lib"], r["name"]), []).append((r["nfe"], r["rmse"]))
        # one line per sampler family and library: its best grid at 10 NFE
        keep = {}
        for (lib, name), pts in series.items():
            fam = name.split("@")[0]
            at10 = [e for n, e in pts if n <= 10]
            score = min(at10) if at10 else math.inf
            if (lib, fam) not in keep or score < keep[(lib, fam)][0]:
                keep[(lib, fam)] = (score, name, sorted(pts))
        top = sorted(keep.items(), key=lambda kv: kv[1][0])
        shown = [kv for kv in top if kv[0][0] == "unidm"][:6] + [kv for kv in top if kv[0][0] != "unidm"][:6]
        for (lib, fam), (_, name, pts) in shown:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], styles[lib], marker="o", ms=3,
                      label=f"{lib} {name}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMSE vs adaptive reference")
        ax.set_title(f"{dim}-D Gaussian mixture ({prob['components']} components)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "samplers.png", dpi=110)


if __name__ == "__main__":
    main()
