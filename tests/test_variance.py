"""Analytic-DPM (Bao et al. 2022) against closed forms, in float64.

For data ``N(mu, c^2 I)`` everything is exact: ``Gamma(sigma) = sigma^2 / (c^2 + sigma^2)``; the analytic DDPM and
DDIM(eta) kernels are the true reverse conditionals of the forward ``q_lambda`` (derived here from the joint Gaussian
of ``(x_s, x_r)``, not from the library's formula); sampling from the exact prior gives exact samples; the K-step
ELBO equals the true NLL for every trajectory (the DP cost telescopes); plain DDIM(eta=0) shrinks each step by
``cos(atan(sigma_r/c) - atan(sigma_s/c))``. With the exact denoiser of a 2-D mixture the analytic variance beats
``beta`` and ``beta-tilde`` at every K, the DP trajectory beats the even one, and the DP equals brute force.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from unidm.likelihood import (GammaStats, elbo, gamma_statistics, kstep_elbo, statistics_sigmas, trajectory_elbo,
                              trajectory_timesteps)
from unidm.oracles import GaussianMixtureOracle, GaussianOracle
from unidm.processes import VPDiscrete
from unidm.samplers import ddpm_grid, karras_grid, sample
from unidm.samplers.variance import (dp_grid, dp_trajectory, pixel_noise_clip, reverse_kernel, step_costs,
                                     trajectory_cost)

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
C2 = 0.25  # data variance c^2
GAUSS = GaussianOracle(MU, torch.full((3,), C2, dtype=F64))


def exact_gamma(sigma: float) -> float:
    return sigma**2 / (C2 + sigma**2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _true_reverse(sigma_r: float, sigma_s: float, eta: float) -> tuple[float, float]:
    """Slope and variance of q_lambda(x_s | x_r) for x0 ~ N(mu, c^2), from the joint Gaussian of (x_s, x_r):
    x_r = x0 + sigma_r e, x_s = x0 + sd e + u z, so Cov = c^2 + sd sigma_r, Var(x_r) = c^2 + sigma_r^2."""
    u = min(sigma_s, eta * sigma_s * math.sqrt(1 - (sigma_s / sigma_r) ** 2))
    sd = math.sqrt(sigma_s**2 - u**2)
    cov, var_r, var_s = C2 + sd * sigma_r, C2 + sigma_r**2, C2 + sd**2 + u**2
    return cov / var_r, var_s - cov**2 / var_r


# ---- Gamma -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["mse", "score"])
def test_gamma_of_gaussian_data_is_sigma2_over_c2_plus_sigma2(estimator):
    x0 = GAUSS.sample(4000, generator=_gen(0))
    sigmas = torch.tensor([0.05, 0.3, 1.0, 3.0], dtype=F64)
    stats = gamma_statistics(GAUSS, x0, sigmas, generator=_gen(1), progress=False, estimator=estimator)
    exact = torch.tensor([exact_gamma(float(s)) for s in sigmas], dtype=F64)
    z = (stats.gamma - exact).abs() / stats.stderr
    assert bool((z < 4).all()), (stats.gamma, exact, stats.stderr)
    again = gamma_statistics(GAUSS, x0, sigmas, generator=_gen(1), progress=False, batch_size=333,
                             estimator=estimator)
    assert torch.equal(again.gamma, stats.gamma)  # seeded per level: independent of the batch size


def test_gamma_table_lookup_interpolates_with_a_warning_and_refuses_outside():
    stats = GammaStats([0.1, 1.0, 10.0], [0.1, 0.5, 0.9], [0.0, 0.0, 0.0])
    assert stats(1.0 + 1e-12) == 0.5
    with pytest.warns(UserWarning, match="interpolating"):
        assert stats(math.sqrt(10.0)) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="outside"):
        stats(20.0)
    tensors, meta = stats.state()
    back = GammaStats.from_state(tensors, meta)
    assert torch.equal(back.gamma, stats.gamma) and torch.equal(back.sigmas, stats.sigmas)


# ---- the kernels -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_analytic_kernels_are_the_true_reverse_conditionals(eta, steps):
    grid = karras_grid(steps, 0.01, 20.0)[:-1].tolist()
    x = torch.tensor([[1.5, -0.7, 0.2]], dtype=F64)
    for r, s in zip(grid[:-1], grid[1:]):
        k = reverse_kernel(r, s, eta, "analytic", exact_gamma)
        D = GAUSS(x, r)
        mean = D + (k.sigma_down / r) * (x - D)
        slope, var = _true_reverse(r, s, eta)
        torch.testing.assert_close(mean, MU + slope * (x - MU), rtol=1e-12, atol=1e-12)
        assert k.variance == pytest.approx(var, rel=1e-10)
        # the optimum decomposes into the forward posterior's noise and the propagated uncertainty of x0
        assert k.variance == pytest.approx(k.q_variance + k.x0_coef**2 * r**2 * (1 - exact_gamma(r)), rel=1e-12)


def test_plain_ddim_shrinks_each_step_by_a_cosine_and_analytic_ddim_does_not():
    c = math.sqrt(C2)
    for r, s in [(20.0, 3.0), (3.0, 0.5), (0.5, 0.05)]:
        x_r = MU + math.sqrt(C2 + r**2) * torch.ones(1, 3, dtype=F64)  # one marginal std above the mean
        x_s = sample(GAUSS, x_r, torch.tensor([r, s], dtype=F64), "ddim")  # eta = 0, beta-tilde: deterministic
        ratio = (x_s - MU) / (x_r - MU) * math.sqrt(C2 + r**2) / math.sqrt(C2 + s**2)
        torch.testing.assert_close(ratio, torch.full_like(ratio, math.cos(math.atan(r / c) - math.atan(s / c))))
        slope, _ = _true_reverse(r, s, 0.0)
        k = reverse_kernel(r, s, 0.0, "analytic", exact_gamma)  # the missing variance, added back
        assert slope**2 * (C2 + r**2) + k.variance == pytest.approx(C2 + s**2, rel=1e-12)


@pytest.mark.parametrize("method,options", [("ddpm", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5})])
def test_sampling_from_the_exact_prior_with_analytic_variance_gives_exact_samples(method, options):
    n, steps = 20000, 6
    grid = karras_grid(steps, 0.02, 20.0)
    x = MU + math.sqrt(C2 + 20.0**2) * torch.randn(n, 3, dtype=F64, generator=_gen(5))
    seen = {}

    def grab(info):
        seen[info["sigma_next"]] = info["x"]

    sample(GAUSS, x, grid, method, generator=_gen(6), callback=grab, variance="analytic", gamma=exact_gamma, **options)
    last = float(grid[-2])
    xs = seen[last]
    assert (xs.mean(0) - MU).abs().max() < 4 * math.sqrt((C2 + last**2) / n)
    var = xs.var(0)
    assert ((var / (C2 + last**2) - 1).abs() < 4 * math.sqrt(2 / n)).all(), var
    if options.get("eta", 1.0) == 0.0:  # plain DDIM on the same grid is visibly too narrow
        plain = {}
        sample(GAUSS, x, grid, "ddim", callback=lambda i: plain.__setitem__(i["sigma_next"], i["x"]))
        assert (plain[last].var(0) / (C2 + last**2) < 0.9).all()


def test_default_variance_is_bit_for_bit_and_beta_tilde_spelled_out_agrees():
    x = 20.0 * torch.randn(5, 3, dtype=F64, generator=_gen(7))
    grid = karras_grid(8, 0.01, 20.0)
    for method in ("ddpm", "ddim"):
        base = sample(GAUSS, x, grid, method, generator=_gen(8), **({"eta": 0.7} if method == "ddim" else {}))
        spelled = sample(GAUSS, x, grid, method, generator=_gen(8), variance="beta_tilde",
                         **({"eta": 0.7} if method == "ddim" else {}))
        torch.testing.assert_close(spelled, base, rtol=1e-12, atol=1e-12)
    clipped = sample(GAUSS, x, grid, "ddpm", generator=_gen(8), variance="analytic", gamma=exact_gamma,
                     clip_last=pixel_noise_clip())
    assert torch.isfinite(clipped).all()


# ---- the ELBO on Gaussian data -----------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_kstep_elbo_with_analytic_variance_is_the_true_nll(eta):
    """eta = 1 (DDPM's Markov forward): the bound is tight, -ELBO = NLL at every K. eta < 1: each analytic kernel is
    still the true one-step reverse conditional of q_lambda (test above), but q_lambda's reverse is not Markov (x_{k+1}
    carries information on x0 beyond x_k), so a Markov reverse chain cannot match its joint: a strictly positive gap
    for K >= 2 (K = 1 has no chain to mismatch)."""
    x0 = GAUSS.sample(3000, generator=_gen(9))
    nll = -GAUSS.log_prob(x0)
    for steps in (1, 4):
        sig = karras_grid(steps, 0.05, 10.0)[:-1].flip(0)
        res = trajectory_elbo(GAUSS, x0, sig, variance="analytic", eta=eta, gamma=exact_gamma, num_levels=None,
                              prior_mean=MU, prior_variance=C2, generator=_gen(10))
        gap = -res.elbo - nll
        se = float(gap.std()) / math.sqrt(len(gap))
        if eta == 1.0 or steps == 1:
            assert abs(float(gap.mean())) < 4 * se, (steps, float(gap.mean()))
        else:
            assert float(gap.mean()) > 10 * se, (steps, float(gap.mean()))
        beta = trajectory_elbo(GAUSS, x0, sig, variance="beta", eta=eta, num_levels=None, prior_mean=MU,
                               prior_variance=C2, generator=_gen(10))
        assert float(beta.elbo.mean()) < float(res.elbo.mean())


def test_dp_cost_telescopes_for_gaussian_data_so_every_trajectory_is_optimal():
    sig = statistics_sigmas(VPDiscrete(num_steps=12, beta_end=0.3))
    g = torch.tensor([exact_gamma(float(s)) for s in sig], dtype=F64)
    costs = step_costs(sig, g)
    paths = [[0, *mid, 11] for mid in itertools.combinations(range(1, 11), 2)]
    totals = torch.tensor([trajectory_cost(costs, p) for p in paths], dtype=F64)
    torch.testing.assert_close(totals, torch.full_like(totals, float(totals[0])), rtol=1e-12, atol=1e-12)
    closed = 0.5 * (math.log((C2 + float(sig[0]) ** 2) / (C2 + float(sig[-1]) ** 2))
                    + 2 * math.log(float(sig[-1]) / float(sig[0])))
    assert float(totals[0]) == pytest.approx(closed, rel=1e-12)
    dp = dp_trajectory(costs, 4)
    assert len(dp) == 4 and dp[0] == 0 and dp[-1] == 11 and dp == sorted(set(dp))


# ---- the mixture: analytic beats the fixed variances, DP beats even ---------------------------------------------
@pytest.fixture(scope="module")
def mixture():
    mix = GaussianMixtureOracle(torch.tensor([0.5, 0.3, 0.2], dtype=F64),
                                torch.tensor([[-0.6, -0.4], [0.5, 0.5], [0.4, -0.6]], dtype=F64),
                                torch.tensor([0.01, 0.02, 0.005], dtype=F64))
    process = VPDiscrete(num_steps=200, beta_end=0.1)
    train = mix.sample(2000, generator=_gen(0))
    test = mix.sample(2000, generator=_gen(1))
    stats = gamma_statistics(mix, train, statistics_sigmas(process), generator=_gen(2), progress=False)
    return mix, process, test, stats


def _bpd(mix, process, x, stats, steps, variance, trajectory="even"):
    res = kstep_elbo(mix, x, process, steps=steps, trajectory=trajectory, variance=variance, gamma=stats,
                     num_levels=None, generator=_gen(3))
    return res.bits_per_dim


@pytest.mark.parametrize("steps", [2, 10, 50])
def test_analytic_variance_beats_beta_and_beta_tilde_at_every_k(mixture, steps):
    mix, process, x, stats = mixture
    analytic = _bpd(mix, process, x, stats, steps, "analytic")
    for fixed in ("beta", "beta-tilde"):
        diff = _bpd(mix, process, x, stats, steps, fixed) - analytic  # same draws: a paired comparison
        assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(len(diff)), (fixed, float(diff.mean()))


@pytest.mark.parametrize("steps", [5, 10])
def test_dp_trajectory_beats_the_even_one(mixture, steps):
    mix, process, x, stats = mixture
    even, dp = _bpd(mix, process, x, stats, steps, "analytic"), _bpd(mix, process, x, stats, steps, "analytic", "dp")
    gap = float(even.mean() - dp.mean())
    se = math.sqrt(float(even.var() + dp.var()) / len(x))
    assert gap > 4 * se, (float(even.mean()), float(dp.mean()), se)
    grid = dp_grid(stats, steps)
    taus = trajectory_timesteps("dp", steps, 200, stats, stats.sigmas)
    torch.testing.assert_close(grid[:-1], stats.sigmas[[t - 1 for t in taus]].flip(0))


def test_dp_equals_brute_force(mixture):
    mix = mixture[0]
    process = VPDiscrete(num_steps=12, beta_end=0.3)
    sig = statistics_sigmas(process)
    stats = gamma_statistics(mix, mix.sample(1000, generator=_gen(4)), sig, generator=_gen(5), progress=False)
    costs = step_costs(sig, stats.gamma)
    for steps in (3, 4):
        best = min(([0, *mid, 11] for mid in itertools.combinations(range(1, 11), steps - 2)),
                   key=lambda p: trajectory_cost(costs, p))
        dp = dp_trajectory(costs, steps)
        assert trajectory_cost(costs, dp) == pytest.approx(trajectory_cost(costs, best), rel=1e-12)
        assert dp == best


def test_full_trajectory_reproduces_ddpm_elbo_and_even_is_the_linspace_grid():
    process = VPDiscrete(num_steps=50, beta_end=0.3)
    x0 = GAUSS.sample(200, generator=_gen(11))
    for variance in ("beta", "beta_tilde"):
        old = elbo(GAUSS, x0, process, num_levels=None, variance=variance, generator=_gen(12))
        new = kstep_elbo(GAUSS, x0, process, variance=variance, num_levels=None, generator=_gen(12))
        torch.testing.assert_close(new.elbo, old.elbo, rtol=1e-10, atol=1e-10)
    sig = statistics_sigmas(process)
    for steps in (2, 7, 50):
        taus = trajectory_timesteps("even", steps, 50)
        torch.testing.assert_close(sig[[t - 1 for t in taus]].flip(0), ddpm_grid(process, steps, "linspace")[:-1])
        quad = trajectory_timesteps("quadratic", steps, 50)
        assert quad[0] == 1 and quad[-1] == 50 and quad == sorted(set(quad)) and len(quad) == steps


# ---- bad input -------------------------------------------------------------------------------------------------
class _StudentProcess:
    name, gaussian_kernel = "student", False


class _Wrapped:
    def __init__(self):
        self.process = _StudentProcess()

    def __call__(self, x, sigma, **cond):
        return GAUSS(x, sigma)


def test_bad_input_is_refused_with_one_line():
    x = 20.0 * torch.randn(4, 3, dtype=F64, generator=_gen(13))
    grid = karras_grid(4, 0.01, 20.0)
    with pytest.raises(ValueError, match="Gaussian transition kernel"):
        sample(_Wrapped(), x, grid, "ddim", variance="analytic", gamma=exact_gamma)
    with pytest.raises(ValueError, match="needs the Gamma statistics"):
        sample(GAUSS, x, grid, "ddpm", variance="analytic")
    with pytest.raises(ValueError, match="unknown variance"):
        sample(GAUSS, x, grid, "ddpm", variance="large")
    with pytest.raises(ValueError, match="steps <= 12"):
        trajectory_timesteps("dp", 13, 12, exact_gamma, statistics_sigmas(VPDiscrete(num_steps=12)))
    with pytest.raises(ValueError, match="valid: even, quadratic, dp"):
        trajectory_timesteps("cosine", 3, 12)
    with pytest.raises(ValueError, match="eta > 0"):
        trajectory_elbo(GAUSS, x, [0.1, 1.0], variance="beta", eta=0.0)
    stats = GammaStats([0.5, 5.0], [0.5, 0.99], [0.0, 0.0])
    with pytest.raises(ValueError, match="outside the Gamma statistics' range"):
        sample(GAUSS, x, grid, "ddpm", variance="analytic", gamma=stats)


def test_the_gaussian_family_passes_the_options_through_and_others_refuse_them():
    from unidm.methods import FAMILIES
    from unidm.nn import build_network

    net = build_network("mlp", {"dim": 3, "in_channels": 3, "image_size": 3, "num_classes": 0}, hidden=16)
    model = FAMILIES["gaussian"](net, process="vp-discrete", parameterization="eps", noise_levels="uniform-t",
                                 weighting="eps", data_shape=(3,), process_options={"num_steps": 20})
    model = model.double()
    x = GAUSS.sample(16, generator=_gen(14))
    stats = gamma_statistics(model.denoiser, x, statistics_sigmas(model.process), generator=_gen(15),
                             progress=False)
    old = model.likelihood(x, method="elbo", num_levels=None, generator=_gen(16))
    direct = elbo(model.denoiser, x, num_levels=None, generator=_gen(16))
    assert torch.equal(old.nll, -direct.elbo)  # an existing call is the old function, bit for bit
    res = model.likelihood(x, method="elbo", num_levels=None, generator=_gen(16), steps=5, variance="analytic",
                           trajectory="dp", gamma=stats)
    assert res.kind == "bound" and torch.isfinite(res.nll).all() and res.nfe == 5
    samples = model.generate(4, seeds=[0, 1, 2, 3], sampler="ddpm", steps=5, grid="ddpm-linspace",
                             variance="analytic", gamma=stats)
    assert samples.shape == (4, 3) and torch.isfinite(samples).all()
    with pytest.raises(ValueError, match="needs the Gamma statistics"):
        model.check_sampling("ddpm", 5, "ddpm-linspace", {"variance": "analytic"})
    with pytest.raises(ValueError, match="do not apply"):
        model.check_likelihood("ode", {"steps": 5})
    masked = FAMILIES["masked"]
    assert "steps" not in masked.likelihood_options(masked.__new__(masked), "elbo")
