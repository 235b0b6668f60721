"""Samplers against exact mathematics (float64): convergence orders on the Gaussian oracle, the adaptive solver's
tolerance, option validation and conditioning pass-through. Statistics of the stochastic samplers are in
``test_samplers_stochastic.py``; grids in ``test_samplers_grids.py``."""

import numpy as np
import pytest
import torch

from unidm.oracles import GaussianMixtureOracle, GaussianOracle
from unidm.samplers import (ALIASES, METHODS, STOCHASTIC, karras_grid, resolve_method, sample,
                            solve)

torch.set_num_threads(1)
F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.05, 80.0


@pytest.fixture(scope="module")
def gaussian():
    return GaussianOracle(torch.tensor([0.5, -1.0, 0.0], dtype=F64), torch.tensor([1.0, 0.09, 0.3], dtype=F64))


def _x0(n=8, d=3, sigma=SIGMA_MAX, seed=0):
    return sigma * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _grid(n):
    """``n`` Karras steps from SIGMA_MAX down to SIGMA_MIN, without the final step to 0 (whose error does not
    shrink with ``n`` at a fixed ``sigma_min``), so the exact ODE map SIGMA_MAX -> SIGMA_MIN is the target."""
    return karras_grid(n + 1, SIGMA_MIN, SIGMA_MAX)[:-1]


def fitted_order(errors, steps):
    """Least-squares slope of ``-log error`` against ``log steps``."""
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


# (method, options, theoretical order, step counts in the asymptotic range)
ORDER_CASES = [
    ("euler", {}, 1, (32, 64, 128)),
    ("heun", {}, 2, (32, 64, 128)),
    ("rk4", {}, 4, (16, 32, 64)),
    ("lms", {"order": 4}, 4, (64, 128, 256)),
    ("lms", {"order": 3}, 3, (64, 128, 256)),
    ("dpm_solver", {"order": 2}, 2, (32, 64, 128)),
    ("dpm_solver", {"order": 3}, 3, (64, 128, 256)),
    ("dpmpp_2m", {}, 2, (32, 64, 128)),
    ("dpmpp_3m", {}, 3, (32, 64, 128)),
    ("unipc", {"order": 1}, 2, (32, 64, 128)),  # UniC raises the order of UniP-p by one
    ("unipc", {"order": 2}, 3, (32, 64, 128)),
    ("unipc", {"order": 3}, 4, (32, 64, 128)),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, (32, 64, 128)),
]


@pytest.mark.parametrize("method,options,order,steps", ORDER_CASES,
                         ids=[f"{m}-{'-'.join(map(str, o.values())) or 'default'}" for m, o, _, _ in ORDER_CASES])
def test_convergence_order_on_gaussian_ode(gaussian, method, options, order, steps):
    x = _x0()
    exact = gaussian.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    errors = [(sample(gaussian, x, _grid(n), method, **options) - exact).pow(2).mean().sqrt().item() for n in steps]
    assert fitted_order(errors, steps) == pytest.approx(order, abs=0.3)


def test_midpoint_is_second_order_and_superconvergent_on_the_gaussian(gaussian):
    """The midpoint rule is second order (on a mixture's nonlinear ODE), but on a Gaussian's linear ODE
    ``dx/dsigma = a(sigma)(x - mu)``, ``a = sigma/(v + sigma^2)``, the ``h^3`` term of its local error,
    ``a^3/6 + a''/24 + a a'/4``, vanishes identically, so there it converges at order 3."""
    x, steps = _x0(), (32, 64, 128)
    exact = gaussian.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    errors = [(sample(gaussian, x, _grid(n), "midpoint") - exact).pow(2).mean().sqrt().item() for n in steps]
    assert fitted_order(errors, steps) == pytest.approx(3, abs=0.3)

    mixture = GaussianMixtureOracle(torch.tensor([0.6, 0.4], dtype=F64),
                                    torch.tensor([[-1.0, 0.0], [1.5, 0.5]], dtype=F64), torch.tensor([0.1, 0.2]))
    x = _x0(d=2)
    reference = sample(mixture, x, _grid(1024), "rk4")
    steps = (32, 64, 128)
    errors = [(sample(mixture, x, _grid(n), "midpoint") - reference).pow(2).mean().sqrt().item() for n in steps]
    assert fitted_order(errors, steps) == pytest.approx(2, abs=0.3)


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_adaptive_meets_its_tolerance(gaussian, tol):
    x = _x0()
    exact = gaussian.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    res = solve(gaussian, x, _grid(1), "adaptive", rtol=tol, atol=tol)
    err = (res.x - exact).abs().max().item()
    assert err < 10 * tol
    assert res.nfe > 7


def test_adaptive_spends_more_nfe_for_tighter_tolerance(gaussian):
    x = _x0()
    nfe = [solve(gaussian, x, _grid(1), "adaptive", rtol=t, atol=t).nfe for t in (1e-3, 1e-6)]
    assert nfe[1] > 2 * nfe[0]


def test_adaptive_sample_does_not_depend_on_its_batch():
    mixture = GaussianMixtureOracle(torch.tensor([0.5, 0.5], dtype=F64),
                                    torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64), 0.05)
    x = _x0(n=6, d=2)
    grid = karras_grid(10, 0.002, SIGMA_MAX)
    together = sample(mixture, x, grid, "adaptive", rtol=1e-4, atol=1e-4)
    alone = sample(mixture, x[2:3], grid, "adaptive", rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[2:3], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(set(METHODS) - STOCHASTIC))
def test_every_deterministic_method_approaches_the_exact_map_to_zero(gaussian, method):
    """On a grid ending at 0 (the ordinary use), 40 steps land near the exact map sigma_max -> 0."""
    x = _x0()
    exact = gaussian.ode_solution(x, SIGMA_MAX, 0.0)
    out = sample(gaussian, x, karras_grid(40, 0.002, SIGMA_MAX), method)
    assert (out - exact).pow(2).mean().sqrt().item() < 0.05


def test_first_order_methods_coincide(gaussian):
    """Euler in sigma, DDIM (eta = 0), DPM-Solver-1, UniP-1 without corrector and first-order LMS are all the same step (Lu et al. 2022, Sec. 3.4; Song et al. 2021)."""
    x, grid = _x0(), karras_grid(12, 0.002, SIGMA_MAX)
    euler = sample(gaussian, x, grid, "euler")
    for method, opts in [("ddim", {"eta": 0.0}), ("dpm_solver", {"order": 1}),
                         ("unipc", {"order": 1, "corrector": False}), ("lms", {"order": 1}), ("ipndm", {"order": 1})]:
        torch.testing.assert_close(sample(gaussian, x, grid, method, **opts), euler, rtol=1e-10, atol=1e-10)


def test_nfe_is_reported(gaussian):
    x, grid = _x0(), karras_grid(10, 0.002, SIGMA_MAX)
    expected = {"euler": 10, "heun": 19, "midpoint": 20, "rk4": 37, "dpmpp_3m": 10, "unipc": 10, "lms": 10,
                "dpm_solver": 19}
    for method, nfe in expected.items():
        assert solve(gaussian, x, grid, method).nfe == nfe, method


def test_trajectory_and_callback(gaussian):
    seen = []
    res = solve(gaussian, _x0(), karras_grid(5, 0.002, SIGMA_MAX), "dpmpp_2m",
                keep_trajectory=True, callback=lambda info: seen.append(info["sigma_next"]))
    assert len(res.trajectory) == 5 and seen[-1] == 0.0
    torch.testing.assert_close(res.trajectory[-1], res.x)


def test_unknown_option_lists_the_valid_ones(gaussian):
    with pytest.raises(ValueError, match="valid: .*order"):
        sample(gaussian, _x0(), karras_grid(5, 0.002, SIGMA_MAX), "unipc", ordr=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(gaussian, _x0(), karras_grid(5, 0.002, SIGMA_MAX), "no-such-sampler")


def test_conditioning_passes_through_to_the_denoiser(gaussian):
    seen = []

    def denoiser(x, sigma, class_labels=None, context=None):
        assert sigma.shape == (x.shape[0],)
        seen.append((class_labels, context))
        return gaussian(x, sigma)

    labels = torch.arange(8)
    sample(denoiser, _x0(), karras_grid(3, 0.002, SIGMA_MAX), "heun", class_labels=labels)
    assert all(lab is labels for lab, _ in seen)
    seen.clear()
    sample(denoiser, _x0(), karras_grid(3, 0.002, SIGMA_MAX), "dpmpp_3m", cond={"context": "c"})
    assert all(ctx == "c" for _, ctx in seen)


def test_every_method_is_documented_and_aliases_resolve():
    for name, fn in METHODS.items():
        assert fn.__doc__ and len(fn.__doc__) > 80, name
    for alias, target in ALIASES.items():
        assert resolve_method(alias) == target
    assert resolve_method("DPM++_2M") == "dpmpp_2m"


@pytest.mark.parametrize("method", ["heun", "dpmpp_3m", "adaptive"])
def test_sample_is_solve_x(gaussian, method):
    """``sample`` returns the tensor that ``solve`` holds as ``x`` (one run, one implementation); asking ``sample``
    for a result object points to ``solve``."""
    x, grid = _x0(), karras_grid(8, 0.002, SIGMA_MAX)
    out = sample(gaussian, x, grid, method)
    assert isinstance(out, torch.Tensor) and torch.equal(out, solve(gaussian, x, grid, method).x)
    with pytest.raises(TypeError, match="solve"):
        sample(gaussian, x, grid, method, return_result=True)
