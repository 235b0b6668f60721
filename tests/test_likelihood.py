"""Exact likelihood (probability-flow ODE) and DDPM's ELBO against closed forms, in float64."""

import math

import pytest
import torch

from unidm.likelihood import (
    DiscreteSchedule,
    Likelihood,
    LikelihoodResult,
    bin_width,
    bits_per_dim,
    dequantize,
    dequantized_log_prob,
    discretized_gaussian_log_likelihood,
    elbo,
    latent_outliers,
    log_likelihood,
    prior_kl,
    reverse_kl,
)
from unidm.oracles import GaussianMixtureOracle, GaussianOracle
from unidm.processes import VPDiscrete

torch.set_num_threads(1)
F64 = torch.float64
LN2 = math.log(2)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gaussian(scale=1.0):
    mean = torch.tensor([0.5, -1.0, 0.2], dtype=F64) * scale
    var = torch.tensor([0.3, 2.0, 0.05], dtype=F64) * scale**2
    return GaussianOracle(mean, var)


def _mixture():
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], dtype=F64)
    return GaussianMixtureOracle(torch.tensor([0.3, 0.5, 0.2], dtype=F64), means, torch.tensor([0.05, 0.2, 0.1]))


# ---- the probability-flow ODE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("oracle_fn", [_gaussian, _mixture], ids=["gaussian", "mixture"])
def test_ode_log_density_matches_closed_form(oracle_fn):
    """log p_{s_min}(x) = log p_{s_max}(z) + delta: exact marginals at both ends, so only the solver errs."""
    oracle = oracle_fn()
    x = oracle.sample(6, generator=_gen(0))
    s_min, s_max = 1e-3, 50.0
    res = log_likelihood(oracle, x, sigma_min=s_min, sigma_max=s_max, rtol=1e-7, atol=1e-7)
    assert isinstance(res, LikelihoodResult) and res.log_prob.shape == (6,) and res.nfe > 0
    via_exact_prior = oracle.log_prob(res.latent, s_max) + res.delta_log_prob
    torch.testing.assert_close(via_exact_prior, oracle.log_prob(x, s_min), rtol=0, atol=2e-5)


def test_ode_latent_is_the_flow_map():
    oracle = _gaussian()
    x = oracle.sample(4, generator=_gen(1))
    res = log_likelihood(oracle, x, sigma_min=1e-2, sigma_max=10.0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.latent, oracle.ode_solution(x, 1e-2, 10.0), rtol=1e-6, atol=1e-6)


def test_log_prob_with_gaussian_prior_matches_data_density():
    """Zero-mean Gaussian data, prior N(0, sigma_max^2 + v): the result is log p_0(x) up to O(sigma_min^2)."""
    var = torch.tensor([0.5, 0.5], dtype=F64)
    oracle = GaussianOracle(torch.zeros(2, dtype=F64), var)
    x = oracle.sample(8, generator=_gen(2))
    res = log_likelihood(oracle, x, sigma_min=1e-3, sigma_max=100.0, prior_variance=0.5, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.log_prob, oracle.log_prob(x, 1e-3), rtol=0, atol=2e-5)
    torch.testing.assert_close(res.log_prob, oracle.log_prob(x, 0.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (2 * LN2))


def test_looser_tolerance_fewer_evaluations():
    oracle = _mixture()
    x = oracle.sample(4, generator=_gen(3))
    nfe = [log_likelihood(oracle, x, sigma_min=1e-3, sigma_max=50.0, rtol=t, atol=t).nfe for t in (1e-7, 1e-4)]
    assert nfe[0] > nfe[1]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_is_unbiased(probe):
    """One point repeated N times gets N independent probes: the mean estimate is the exact log p."""
    oracle = _mixture()
    x = oracle.sample(1, generator=_gen(4))
    n = 400
    kw = dict(sigma_min=1e-2, sigma_max=20.0, rtol=1e-5, atol=1e-5)
    exact = log_likelihood(oracle, x, **kw).log_prob
    est = log_likelihood(oracle, x.expand(n, -1), hutchinson=1, probe=probe, generator=_gen(5), **kw).log_prob
    stderr = est.std() / math.sqrt(n)
    assert est.std() > 0  # the mixture's Jacobian is not diagonal, so the probes do add noise
    assert abs(float(est.mean() - exact[0])) < 4 * float(stderr) + 1e-4


def test_hutchinson_more_probes_less_variance():
    oracle = _mixture()
    x = oracle.sample(1, generator=_gen(6)).expand(200, -1)
    kw = dict(sigma_min=1e-2, sigma_max=20.0, rtol=1e-4, atol=1e-4, probe="gaussian")
    v1 = log_likelihood(oracle, x, hutchinson=1, generator=_gen(7), **kw).log_prob.var()
    v8 = log_likelihood(oracle, x, hutchinson=8, generator=_gen(7), **kw).log_prob.var()
    assert float(v8) < float(v1) / 3  # 1/8 in expectation


# ---- bits/dim and dequantization ------------------------------------------------------------------------------
def test_scaling_data_shifts_bits_per_dim_by_log2_c():
    """p_c(c x) = p(x) / c^D: bits/dim of the density shift by log2 c; with bins scaled too, nothing changes."""
    c = 3.0
    base, scaled = _gaussian(), _gaussian(scale=c)
    x = base.sample(5, generator=_gen(8))
    kw = dict(rtol=1e-7, atol=1e-7)
    r1 = log_likelihood(base, x, sigma_min=1e-3, sigma_max=50.0, prior_variance=1.0, **kw)
    rc = log_likelihood(scaled, c * x, sigma_min=c * 1e-3, sigma_max=c * 50.0, prior_variance=c**2, **kw)
    torch.testing.assert_close(rc.bits_per_dim - r1.bits_per_dim, torch.full((5,), math.log2(c), dtype=F64),
                               rtol=0, atol=1e-5)
    d = x.shape[1]
    torch.testing.assert_close(bits_per_dim(rc.log_prob, d, bin_width=c * 0.1), bits_per_dim(r1.log_prob, d, 0.1),
                               rtol=0, atol=1e-5)


def test_uniform_density_on_8bit_bins_is_8_bits():
    # U over the 256 bins of width 2/255 around the grid -1..1 has log p = -D log(256 * 2 / 255)
    d = 12
    log_p = torch.full((3,), -d * math.log(256 * 2 / 255), dtype=F64)
    torch.testing.assert_close(bits_per_dim(log_p, d, bin_width=2 / 255), torch.full((3,), 8.0, dtype=F64))


def test_dequantized_bits_per_dim_formula():
    """bits/dim = -(log p(x + u) + D log Delta) / (D ln 2) with u ~ U(bin), on K-level data in [-1, 1]."""
    k = 16
    oracle = GaussianOracle(torch.zeros(4, dtype=F64), torch.full((4,), 0.25, dtype=F64))
    grid = torch.linspace(-1, 1, k, dtype=F64)
    x = grid[torch.randint(k, (6, 4), generator=_gen(9))]
    res = log_likelihood(oracle, x, num_levels=k, sigma_min=1e-3, sigma_max=100.0, prior_variance=0.25,
                         generator=_gen(10), rtol=1e-7, atol=1e-7)
    y = dequantize(x, k, generator=_gen(10))
    assert ((y - x).abs() <= 1 / (k - 1) + 1e-12).all() and not torch.equal(x, y)
    width = 2 / (k - 1)
    expected = -(oracle.log_prob(y, 1e-3) + 4 * math.log(width)) / (4 * LN2)
    torch.testing.assert_close(res.bits_per_dim, expected, rtol=0, atol=1e-5)


# ---- DDPM's ELBO -------------------------------------------------------------------------------------------------
def test_prior_and_reverse_kl_match_closed_form_gaussian_kl():
    from torch.distributions import Normal, kl_divergence

    s = DiscreteSchedule.from_process(VPDiscrete(num_steps=50, beta_start=1e-3, beta_end=0.2))
    g = _gen(11)
    x0, x0_hat = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    abar_t = float(s.abar[-1])
    q_t = Normal(math.sqrt(abar_t) * x0, math.sqrt(1 - abar_t))
    torch.testing.assert_close(prior_kl(x0, s), kl_divergence(q_t, Normal(0.0, 1.0)).sum(1))
    t = 7
    x_t = math.sqrt(float(s.abar[t])) * x0 + math.sqrt(float(s.one_minus_abar[t])) * torch.randn(5, 3, generator=g,
                                                                                                dtype=F64)

    def mu(x0_):  # Ho et al. eq. 7
        a_prev, a_t = float(s.abar[t - 1]), float(s.abar[t])
        return (math.sqrt(a_prev) * float(s.beta[t]) / (1 - a_t) * x0_
                + math.sqrt(1 - float(s.beta[t])) * (1 - a_prev) / (1 - a_t) * x_t)

    for kind, p_var in [("beta", float(s.beta[t])), ("beta_tilde", float(s.beta_tilde[t]))]:
        ref = kl_divergence(Normal(mu(x0), math.sqrt(float(s.beta_tilde[t]))), Normal(mu(x0_hat), math.sqrt(p_var)))
        torch.testing.assert_close(reverse_kl(x0, x0_hat, t, s, kind), ref.sum(1))


def test_discretized_decoder_is_a_distribution():
    from scipy.stats import norm

    k = 9
    grid = torch.linspace(-1, 1, k, dtype=F64)[:, None]
    for mean, std in [(0.3, 0.7), (-0.95, 0.01), (5.0, 0.1)]:
        logp = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), std, k)
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    inner = discretized_gaussian_log_likelihood(grid[3:4], torch.full((1, 1), 0.3, dtype=F64), 0.7, k)
    lo, hi = float(grid[3]) - 1 / (k - 1), float(grid[3]) + 1 / (k - 1)
    assert float(inner.exp()) == pytest.approx(norm.cdf(hi, 0.3, 0.7) - norm.cdf(lo, 0.3, 0.7), rel=1e-12)


def _expected_loss(mean, var, schedule, kind):
    """E_{x0, x_t}[L] in closed form for x0 ~ N(mean, var) per dimension and the exact Gaussian denoiser, where
    E (x0 - D(x, sigma))^2 = var sigma^2 / (var + sigma^2)."""
    a_t = float(schedule.abar[-1])
    total = 0.5 * (a_t * (var + mean**2) + (1 - a_t) - 1 - math.log(1 - a_t))
    for t in range(2, schedule.num_steps + 1):
        p_var, q_var, s2 = schedule.variance(t, kind), float(schedule.beta_tilde[t]), schedule.sigma(t) ** 2
        err = var * s2 / (var + s2)
        total += 0.5 * (q_var / p_var - 1 + math.log(p_var / q_var) + schedule.x0_coef(t) ** 2 * err / p_var)
    p_var, s2 = schedule.variance(1, kind), schedule.sigma(1) ** 2
    return total + 0.5 * (var * s2 / (var + s2) / p_var + math.log(2 * math.pi * p_var))


@pytest.mark.parametrize("kind", ["beta", "beta_tilde"])
def test_elbo_bounds_gaussian_log_likelihood(kind):
    """Gaussian data, exact denoiser: the Monte Carlo bound matches its closed-form mean, which lies below the
    true expected log-likelihood -H, and approaches it as the steps multiply (variance beta)."""
    mean, var, n = 0.3, 0.4, 4000
    oracle = GaussianOracle(torch.full((2,), mean, dtype=F64), torch.full((2,), var, dtype=F64))
    process = VPDiscrete(num_steps=200, beta_start=5e-4, beta_end=0.1)
    x0 = oracle.sample(n, generator=_gen(12))
    res = elbo(oracle, x0, process, num_levels=None, variance=kind, generator=_gen(13))
    assert res.nfe == 200
    expected = _expected_loss(mean, var, DiscreteSchedule.from_process(process), kind)
    loss = -res.elbo / 2  # nats per dimension
    assert abs(float(loss.mean()) - expected) < 4 * float(loss.std()) / math.sqrt(n)
    entropy = 0.5 * math.log(2 * math.pi * math.e * var)
    assert expected >= entropy
    if kind == "beta":
        assert expected - entropy < 0.01
        torch.testing.assert_close(res.bits_per_dim, -res.elbo / (2 * LN2))
    for steps, tol in [(50, 0.05), (1000, 0.002)]:  # the gap closes with more steps
        p = VPDiscrete(num_steps=steps, beta_start=0.1 / steps, beta_end=20.0 / steps)
        gap = _expected_loss(mean, var, DiscreteSchedule.from_process(p), "beta") - entropy
        assert 0 <= gap < tol


def test_elbo_stratified_terms_unbiased():
    """One t per stratum, weighted by the stratum's size: the mean over draws is the full sum's mean."""
    oracle = GaussianOracle(torch.zeros(2, dtype=F64), torch.full((2,), 0.2, dtype=F64))
    process = VPDiscrete(num_steps=100, beta_start=1e-3, beta_end=0.2)
    x0 = oracle.sample(1, generator=_gen(14)).expand(2000, -1)
    full = elbo(oracle, x0, process, num_levels=None, generator=_gen(15)).diffusion_term
    # the t draws are shared by a batch, so the independent replicates are the calls
    calls = torch.stack([elbo(oracle, x0[:50], process, num_levels=None, num_terms=10, generator=_gen(16 + i))
                         .diffusion_term.mean() for i in range(100)])
    se = math.sqrt(float(calls.var()) / calls.numel() + float(full.var()) / full.numel())
    assert abs(float(calls.mean() - full.mean())) < 4 * se


def test_discrete_bounds_above_true_discrete_entropy():
    """8-bit quantized Gaussian data: the ELBO (discretized decoder) and the dequantized ODE bound both upper-bound
    the true -log2 P(x0) / D on average (cross-entropy >= entropy), and come close to it."""
    var, k, n = 0.1, 256, 300
    oracle = GaussianOracle(torch.zeros(2, dtype=F64), torch.full((2,), var, dtype=F64))
    width = 2 / (k - 1)
    x0 = (torch.round((oracle.sample(n, generator=_gen(20)).clamp(-1, 1) + 1) / width) * width - 1).clamp(-1, 1)
    # the exact probability of each quantized point: the Gaussian integrated over its bin
    true_bpd = -discretized_gaussian_log_likelihood(x0, torch.zeros_like(x0), math.sqrt(var), k) / (2 * LN2)
    bounds = {
        "elbo": elbo(oracle, x0, VPDiscrete(num_steps=1000), num_levels=k, generator=_gen(21)).bits_per_dim,
        "ode": log_likelihood(oracle, x0, num_levels=k, sigma_min=1e-3, sigma_max=100.0, prior_variance=var,
                              generator=_gen(22), rtol=1e-5, atol=1e-5).bits_per_dim,
    }
    for name, bpd in bounds.items():
        gap = bpd - true_bpd
        se = float(gap.std()) / math.sqrt(n)
        assert -3 * se < float(gap.mean()) < 0.05 + 3 * se, name


# ---- high dimension, and runaway latents ----------------------------------------------------------------------
def _gaussian_64d():
    g = _gen(30)
    mean = torch.rand(64, generator=g, dtype=F64) - 0.8  # digits-like: mostly dark background
    var = 0.02 + 0.4 * torch.rand(64, generator=g, dtype=F64)
    return GaussianOracle(mean, var)


def test_gaussian_64d_hutchinson_over_the_vp_range_matches_exact_density():
    """The digits setting with a perfect denoiser: D = 64, VP's range (sigma_max = 157, prior N(0, 1 + sigma^2)),
    one Gaussian probe per example, one adaptive step size for the whole batch. Every example's log p is right up
    to the probe noise, the mean within its standard error, and every latent is a plausible prior draw."""
    oracle, n = _gaussian_64d(), 200
    x = oracle.sample(n, generator=_gen(31))
    kw = dict(sigma_min=0.01, sigma_max=157.4, prior_variance=1.0, rtol=1e-4, atol=1e-4)
    res = log_likelihood(oracle, x, hutchinson=1, probe="gaussian", generator=_gen(32), **kw)
    err = res.log_prob - oracle.log_prob(x, 0.01)
    assert float(err.std()) > 0  # the probes do add noise
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(n) + 0.02  # prior error ~ mu^2 / 2 sigma^2
    assert float(err.abs().max()) < 8 * float(err.std()) + 0.05
    assert float((res.latent_scale - 1).abs().max()) < 6 / math.sqrt(2 * 64)
    assert not latent_outliers(res.latent_scale, 64).any()


class _EpsNetworkAtLowSnr:
    """What an eps-parameterized network does at large sigma: ``D = x - sigma eps_hat``, with ``eps_hat`` the
    exact noise prediction plus an error that appears at low SNR, ``err = k y sigma^2 / (sigma^2 + 100)`` with
    ``y = x / sqrt(1 + sigma^2)`` (VP's ``x_t``). ``D``'s error is ``sigma`` times the eps error, and in ``y`` the
    PF-ODE is only neutrally stable (``dy/ds = eps_hat - y``, ``s = log sigma``), so the latent grows like
    ``exp(k log(sigma_max / 10))``."""

    def __init__(self, oracle: GaussianOracle, k: float):
        self.oracle, self.k = oracle, k

    def __call__(self, x, sigma, **cond):
        s = sigma.reshape(-1, 1)
        err = self.k * x / torch.sqrt(s**2 + 1.0) * s**2 / (s**2 + 100.0)
        return self.oracle(x, sigma) - s * err


def test_runaway_latents_of_an_eps_network_at_low_snr_are_flagged():
    """The digits benchmark's failure (one held-out digit of 359 at 3.6e5 bits/dim): the integration is right,
    the model's field runs away at low SNR. log_likelihood must say so (latent_scale, a RuntimeWarning), and a
    range that stops before the field goes wrong must give back the right density."""
    oracle = _gaussian_64d()
    model = _EpsNetworkAtLowSnr(oracle, k=1.0)
    x = oracle.sample(32, generator=_gen(33))
    kw = dict(sigma_min=0.01, prior_variance=1.0, rtol=1e-4, atol=1e-4)
    with pytest.warns(RuntimeWarning, match="latents lie far outside the prior"):
        full = log_likelihood(model, x, sigma_max=157.4, **kw)
    assert latent_outliers(full.latent_scale, 64).all()
    true = oracle.log_prob(x, 0.01)
    assert float((true - full.log_prob).min()) > 100  # nats: the prior term swamps them
    short = log_likelihood(model, x, sigma_max=3.0, **kw)
    assert not latent_outliers(short.latent_scale, 64).any()
    assert float((short.log_prob - true).abs().mean()) < 0.05 * 64  # within 0.05 nats/dim


# ---- the one dequantization entry point -------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantized_uniform_is_the_uniform_law_on_the_grid(levels):
    """A density constant on ``[-1 - Delta/2, 1 + Delta/2]^D`` (width ``K Delta``) is constant on every bin, so the
    Jensen bound is tight: ``log P = -D log K`` exactly, ``log2 K`` bits/dim, whatever ``u``."""
    d, width = 3, bin_width(levels)
    x = -1 + width * torch.randint(levels, (50, d), generator=_gen(0)).to(F64)
    uniform = lambda y: torch.full((y.shape[0],), -d * math.log(levels * width), dtype=F64)  # noqa: E731
    log_prob, bpd = dequantized_log_prob(uniform, x, levels, generator=_gen(1))
    torch.testing.assert_close(log_prob, torch.full((50,), -d * math.log(levels), dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(bpd, torch.full((50,), math.log2(levels), dtype=F64), rtol=0, atol=1e-12)


def test_dequantized_gaussian_matches_jensen_closed_form_and_bounds_erf():
    """For ``p = N(0, s^2)`` in 1-D, ``E_u log p(x + u) + log Delta = -log(2 pi s^2)/2 - (x^2 + Delta^2/12)/(2 s^2)
    + log Delta`` (the estimator's mean, checked by Monte Carlo), which lies below the discrete ``log P(x) =
    log(Phi((x + Delta/2)/s) - Phi((x - Delta/2)/s))`` (Jensen), by ``O(Delta^2)``."""
    s, levels = 0.4, 17
    width = bin_width(levels)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(s, dtype=F64))
    for x0 in (-0.5, 0.0, 0.25):
        n = 200_000
        x = torch.full((n, 1), x0, dtype=F64)
        log_prob, bpd = dequantized_log_prob(lambda y: normal.log_prob(y).sum(1), x, levels, generator=_gen(2))
        mean = -0.5 * math.log(2 * math.pi * s**2) - (x0**2 + width**2 / 12) / (2 * s**2) + math.log(width)
        assert abs(float(log_prob.mean()) - mean) < 5 * float(log_prob.std()) / n**0.5
        torch.testing.assert_close(bpd, -log_prob / LN2)
        exact = math.log(float(normal.cdf(torch.tensor(x0 + width / 2)) - normal.cdf(torch.tensor(x0 - width / 2))))
        assert mean < exact < mean + width**2 / s**2  # the Jensen gap: positive and O(Delta^2)


def test_dequantized_log_prob_without_levels_is_the_density():
    x = torch.randn(7, 3, generator=_gen(3), dtype=F64)
    oracle = _gaussian()
    log_prob, bpd = dequantized_log_prob(lambda y: oracle.log_prob(y, 0.0), x, None)
    torch.testing.assert_close(log_prob, oracle.log_prob(x, 0.0))
    torch.testing.assert_close(bpd, bits_per_dim(log_prob, 3))


def test_results_convert_to_the_typed_likelihood():
    """``LikelihoodResult`` and ``ElboResult`` become one :class:`Likelihood` each: ``nll = -log p`` (or the bound
    ``L``), the same bits/dim, and the kind of number it is."""
    oracle = _gaussian()
    x = oracle.sample(4, generator=_gen(4))
    ode = log_likelihood(oracle, x, sigma_min=1e-3, sigma_max=50.0).to_likelihood()
    assert isinstance(ode, Likelihood) and ode.kind == "ode" and ode.nfe > 0
    torch.testing.assert_close(ode.bits_per_dim, ode.nll / (3 * LN2))
    assert ode.extra["latent_scale"].shape == (4,) and ode.extra["sigma_max"] == 50.0
    with pytest.raises(ValueError, match="kind"):
        Likelihood(nll=ode.nll, bits_per_dim=ode.bits_per_dim, kind="approx")


def test_old_import_paths_reexport_the_same_objects():
    import importlib

    import unidm.evaluation as ev
    import unidm.likelihood as lik

    # (``unidm.evaluation.elbo`` the attribute is the function, which shadows the module of that name)
    old_elbo = importlib.import_module("unidm.evaluation.elbo")
    old_lik = importlib.import_module("unidm.evaluation.likelihood")

    for name in old_lik.__all__:
        assert getattr(old_lik, name) is getattr(lik, name), name
    for name in old_elbo.__all__:
        assert getattr(old_elbo, name) is getattr(lik, name), name
    assert ev.log_likelihood is lik.log_likelihood and ev.elbo is lik.elbo
