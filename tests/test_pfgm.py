"""PFGM++ (Xu et al. 2023) as a process, in float64 against closed forms: the Gamma sampler and the kernel's
Beta-prime radial law (Kolmogorov–Smirnov), the two kernel samplers against each other, the multivariate-t prior
density (quadrature, sampler mass), the point-set posterior mean and its 1/D approach to the Gaussian one, the exact
Poisson field (brute force, Gauss's law, its direction = the posterior-mean ODE), deterministic sampling and the ODE
likelihood with the exact oracle, the refusals, the family, and ``D = inf`` as EDM bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from _checks import check_kernel_family
from unidm.likelihood import log_likelihood
from unidm.oracles import (EmpiricalOracle, PFGMPPPointSetOracle, check_aug_dim, pfgmpp_kernel_log_prob,
                           poisson_field, sphere_area)
from unidm.processes import EDM, PFGMPP, PROCESSES, build_process, kernel_noise, kernel_noise_radial, sample_gamma
from unidm.rng import seed_generators
from unidm.samplers import GAUSSIAN_ONLY, GAUSSIAN_WHEN, check_sampler, karras_grid, sample

torch.set_num_threads(1)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _beta_prime_cdf(t: np.ndarray, a: float, b: float) -> np.ndarray:
    """``P(T <= t)`` for ``T ~ BetaPrime(a, b)``: ``T / (1 + T) ~ Beta(a, b)``, so ``I_{t/(1+t)}(a, b)``."""
    return special.betainc(a, b, t / (1 + t))


def _radial_t(z: torch.Tensor, aug_dim: int) -> np.ndarray:
    """``|x - y|^2 / r^2`` with ``r = sigma sqrt(D)``, for kernel offsets ``z`` at ``sigma = 1``."""
    return (z.reshape(z.shape[0], -1).pow(2).sum(1) / aug_dim).numpy()


# ---- the generator-driven Gamma sampler --------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.7, 1024.0])
def test_sample_gamma_is_gamma(alpha):
    """KS against ``Gamma(alpha, 1)`` (p > 1e-3 at fixed seeds), and its mean within 5 standard errors."""
    n = 20_000
    g = sample_gamma((n,), alpha, _gen(int(alpha * 10)))
    assert g.dtype == F64 and bool((g > 0).all())
    assert stats.kstest(g.numpy(), stats.gamma(alpha).cdf).pvalue > 1e-3
    assert abs(float(g.mean()) - alpha) < 5 * math.sqrt(alpha / n)


def test_sample_gamma_rows_depend_only_on_their_generator():
    together = sample_gamma((6, 3), 0.7, seed_generators(range(6)))
    alone = sample_gamma((1, 3), 0.7, seed_generators([4]))
    assert torch.equal(together[4:5], alone)
    assert torch.equal(sample_gamma((5,), 2.0, _gen(1)), sample_gamma((5,), 2.0, _gen(1)))
    with pytest.raises(ValueError, match="concentration"):
        sample_gamma((2,), 0.0)


# ---- the kernel: radial law, the two samplers, per-row draws ------------------------------------------------------
CASES = [(1, 1), (2, 1), (3, 4), (64, 128), (16, 2048)]


@pytest.mark.parametrize("draw", [kernel_noise, kernel_noise_radial], ids=["student_t", "radial"])
@pytest.mark.parametrize("n_dim,aug_dim", CASES)
def test_kernel_radius_follows_its_beta_prime_law(draw, n_dim, aug_dim):
    """``|x - y|^2 / r^2 ~ BetaPrime(N/2, D/2)`` with ``r = sigma sqrt(D)`` (the radial law of
    ``p_r(x | y) ∝ (|x - y|^2 + r^2)^(-(N+D)/2)``): KS p > 1e-3; the same draws are rejected against the law of a
    neighbouring ``D`` or ``N`` (the test has power)."""
    n = 20_000
    t = _radial_t(draw((n, n_dim), aug_dim, _gen(7), F64), aug_dim)
    assert stats.kstest(t, lambda s: _beta_prime_cdf(s, n_dim / 2, aug_dim / 2)).pvalue > 1e-3
    wrong = (n_dim / 2, 2 * aug_dim / 2) if aug_dim < 1000 else (2 * n_dim / 2, aug_dim / 2)
    assert stats.kstest(t, lambda s: _beta_prime_cdf(s, *wrong)).pvalue < 1e-6


@pytest.mark.parametrize("n_dim,aug_dim", [(2, 1), (3, 4), (8, 2048)])
def test_student_t_and_radial_samplers_agree(n_dim, aug_dim):
    """Two-sample KS between the two samplers on the radius, on a coordinate and on a direction cosine
    (p > 1e-3), and the direction is uniform: ``E[u u^T] = I / N``."""
    n = 20_000
    a = kernel_noise((n, n_dim), aug_dim, _gen(1), F64)
    b = kernel_noise_radial((n, n_dim), aug_dim, _gen(2), F64)
    for f in (lambda z: z.norm(dim=1), lambda z: z[:, 0], lambda z: z[:, -1] / z.norm(dim=1)):
        assert stats.ks_2samp(f(a).numpy(), f(b).numpy()).pvalue > 1e-3
    u = b / b.norm(dim=1, keepdim=True)
    assert float((u.T @ u / n - torch.eye(n_dim, dtype=F64) / n_dim).abs().max()) < 5 / (n_dim * math.sqrt(n))


def test_perturb_and_prior_sample_draw_the_kernel_per_row():
    """``perturb`` is ``x0 + sigma z`` with per-example ``sigma`` (scales each row's radius law), a row's draw
    depends only on its generator, and ``prior_sample`` rows only on their seed; shapes ``[B, ...]`` flatten to
    ``N``."""
    p = PFGMPP(aug_dim=5)
    x0 = torch.randn(8, 2, 3, generator=_gen(0), dtype=F64)
    sigma = torch.linspace(0.5, 4.0, 8, dtype=F64)
    gens = seed_generators(range(8))
    x = p.perturb(x0, sigma, gens)
    z = kernel_noise((1, 2, 3), 5, seed_generators([3]), F64)
    torch.testing.assert_close(x[3:4], x0[3:4] + sigma[3] * z, rtol=0, atol=1e-14)
    together = p.prior_sample((6, 2, 3), 80.0, seeds=range(6), dtype=F64)
    assert torch.equal(together[4:5], p.prior_sample((1, 2, 3), 80.0, seeds=[4], dtype=F64))
    assert together.dtype == F64 and p.prior_sample((2, 3), 80.0, seeds=[0, 1]).dtype == torch.float32
    with pytest.raises(ValueError, match="3 seeds for a batch of 4"):
        p.prior_sample((4, 2), 80.0, seeds=[0, 1, 2])
    n = 20_000
    s = torch.where(torch.arange(n) % 2 == 0, 0.5, 3.0).to(F64)
    u = p.perturb(torch.zeros(n, 2, dtype=F64), s, _gen(1))
    for level in (0.5, 3.0):
        t = _radial_t(u[s == level] / level, 5)
        assert stats.kstest(t, lambda v: _beta_prime_cdf(v, 1.0, 2.5)).pvalue > 1e-3


# ---- the prior density ---------------------------------------------------------------------------------------------
def _radial_mass(p: PFGMPP, scale: float, theta_max: float = math.pi / 2, n: int = 40_001) -> float:
    """``int_{|x| < R} p(x) dx`` of the 2-D prior by quadrature in polar coordinates with ``|x| = c tan(theta)``,
    ``c = scale sqrt(D)``, ``R = c tan(theta_max)`` (trapezoid rule in ``theta``; the angle gives ``2 pi``). At
    ``theta = pi/2`` the integrand's limit is used: ``2 pi K c^2 sin(theta) cos(theta)^(D-1)``, i.e. 0 for D > 1."""
    c = scale * math.sqrt(p.aug_dim)
    theta = torch.linspace(0, theta_max, n, dtype=F64)
    inner = theta[:-1] if theta_max == math.pi / 2 else theta
    x = torch.stack([c * torch.tan(inner), torch.zeros_like(inner)], 1)
    integrand = torch.exp(p.prior_log_prob(x, scale)) * 2 * math.pi * x[:, 0] * c / torch.cos(inner) ** 2
    if theta_max == math.pi / 2:
        peak = math.exp(float(p.prior_log_prob(torch.zeros(1, 2, dtype=F64), scale)))  # K
        integrand = torch.cat([integrand, torch.tensor([2 * math.pi * peak * c**2 * (p.aug_dim == 1)], dtype=F64)])
    return float(torch.trapezoid(integrand, theta))


@pytest.mark.parametrize("aug_dim", [1, 4, 128])
def test_prior_log_prob_is_the_multivariate_t(aug_dim):
    """1-D: ``torch.distributions.StudentT(df=D, scale=sqrt(sigma_max^2 + prior_variance))``; the density
    integrates to 1 on a 1-D grid and in 2-D (radial quadrature), and the mass of a ball matches the fraction of
    ``prior_sample`` draws inside it (5 standard errors)."""
    p = PFGMPP(aug_dim=aug_dim)
    x = torch.linspace(-40, 40, 101, dtype=F64).reshape(-1, 1)
    ref = torch.distributions.StudentT(torch.tensor(float(aug_dim), dtype=F64), 0.0, torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(p.prior_log_prob(x, math.sqrt(3.0), prior_variance=1.0), ref.log_prob(x[:, 0]))
    scale = 3.0
    theta = torch.linspace(-math.pi / 2, math.pi / 2, 200_001, dtype=F64)[1:-1]  # x = scale tan(theta) in 1-D
    dens = torch.exp(p.prior_log_prob((scale * torch.tan(theta))[:, None], scale)) * scale / torch.cos(theta) ** 2
    assert abs(float(torch.trapezoid(dens, theta)) - 1) < 1e-4
    assert abs(_radial_mass(p, scale) - 1) < 1e-6
    n = 40_000
    draws = p.prior_sample((n, 2), scale, generator=_gen(aug_dim), dtype=F64)
    theta_max = math.atan(1.5)
    inside = float((draws.norm(dim=1) < 1.5 * scale * math.sqrt(aug_dim)).to(F64).mean())
    mass = _radial_mass(p, scale, theta_max)
    assert abs(inside - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


# ---- the point-set oracle ----------------------------------------------------------------------------------------
def _points(n=5, d=3, seed=0):
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


def test_point_set_oracle_is_the_posterior_mean():
    """Weights ``∝ w_i p_r(x | y_i)`` from the normalized kernel density, the mean of the weighted points; images
    ``[B, C, H]`` flatten; ``log_prob`` is the mixture of kernels; ``sigma = 0`` is the nearest point;
    ``aug_dim=None`` is :class:`EmpiricalOracle`."""
    pts, w = _points(4, 6).reshape(4, 2, 3), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    oracle = PFGMPPPointSetOracle(pts, aug_dim=7, weights=w)
    x = torch.randn(5, 2, 3, generator=_gen(1), dtype=F64)
    sigma = torch.linspace(0.3, 2.0, 5, dtype=F64)
    logk = torch.stack([pfgmpp_kernel_log_prob(x - p, sigma, 7) for p in pts], 1) + torch.log(w)
    expected = torch.einsum("bk,kij->bij", torch.softmax(logk, 1), pts)
    torch.testing.assert_close(oracle(x, sigma), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(oracle.log_prob(x, sigma), torch.logsumexp(logk, 1), rtol=1e-12, atol=1e-12)
    nearest = pts[torch.cdist(x.reshape(5, -1), pts.reshape(4, -1)).argmin(1)]
    assert torch.equal(oracle(x, torch.zeros(5, dtype=F64)), nearest)
    flat, xf = pts.reshape(4, -1), x.reshape(5, -1)
    torch.testing.assert_close(PFGMPPPointSetOracle(flat, "inf")(xf, sigma), EmpiricalOracle(flat)(xf, sigma))
    with pytest.raises(ValueError, match="aug_dim"):
        PFGMPPPointSetOracle(flat, 7, process=PFGMPP(aug_dim=8))


def test_point_set_oracle_tends_to_the_gaussian_one_like_one_over_d():
    """With ``r = sigma sqrt(D)`` the log-weights differ from the Gaussian's by ``O(1/D)``
    (``-(N+D)/2 log1p(d^2 / (D sigma^2)) = -d^2/(2 sigma^2) + (d^4 / (4 sigma^4) - N d^2 / (2 sigma^2)) / D +
    O(1/D^2)``), so ``max |E_D[y | x] - E_inf[y | x]|`` falls like ``1/D``: the fitted log-log slope over
    D in {64, 256, 1024, 4096} is -1 within 0.05."""
    pts, x = _points(6, 3), 0.8 * torch.randn(64, 3, generator=_gen(2), dtype=F64)
    sigma, gauss = 0.7, EmpiricalOracle(pts)(x, 0.7)
    dims = [64, 256, 1024, 4096]
    err = [float((PFGMPPPointSetOracle(pts, d)(x, sigma) - gauss).abs().max()) for d in dims]
    slope = np.polyfit(np.log(dims), np.log(err), 1)[0]
    assert abs(slope + 1) < 0.05, (slope, err)
    assert err[0] > 1e-3 and err[-1] < 1e-3


# ---- the exact Poisson field ---------------------------------------------------------------------------------------
def _coulomb(x_aug: torch.Tensor, pts: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Brute force: ``sum_i w_i (x~ - y~_i) / |x~ - y~_i|^(N+D) / S_{N+D-1}`` one point and one charge at a time."""
    m = x_aug.shape[1]
    out = torch.zeros_like(x_aug)
    for b in range(x_aug.shape[0]):
        for i in range(pts.shape[0]):
            diff = x_aug[b] - torch.cat([pts[i], torch.zeros(m - pts.shape[1], dtype=F64)])
            out[b] += w[i] / w.sum() * diff / diff.norm() ** m
    return out / sphere_area(m)


@pytest.mark.parametrize("aug_dim", [1, 3])
def test_poisson_field_matches_brute_force(aug_dim):
    pts, w = _points(5, 2), torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0], dtype=F64)
    x_aug = torch.randn(7, 2 + aug_dim, generator=_gen(3), dtype=F64)
    exact = _coulomb(x_aug, pts, w)
    torch.testing.assert_close(poisson_field(x_aug, pts, weights=w), exact, rtol=1e-12, atol=0)
    unit = poisson_field(x_aug, pts, weights=w, normalize=True)
    torch.testing.assert_close(unit, exact / exact.norm(dim=1, keepdim=True), rtol=1e-12, atol=1e-14)
    aug_pts = torch.nn.functional.pad(pts, (0, aug_dim))
    torch.testing.assert_close(poisson_field(x_aug, aug_pts, weights=w), exact, rtol=1e-12, atol=0)


def test_poisson_field_obeys_gauss_law():
    """PFGM's setting (N = 2, D = 1): the flux of the field of unit total charge through a sphere enclosing every
    charge is 1 (Gauss–Legendre in cos(theta) times the periodic trapezoid rule in phi); ``S_2 = 4 pi``."""
    assert sphere_area(2) == pytest.approx(2 * math.pi) and sphere_area(3) == pytest.approx(4 * math.pi)
    pts = 0.5 * _points(4, 2)
    nodes, wts = np.polynomial.legendre.leggauss(96)
    cos_t = torch.tensor(nodes, dtype=F64)
    phi = torch.arange(192, dtype=F64) * 2 * math.pi / 192
    ct, ph = torch.meshgrid(cos_t, phi, indexing="ij")
    st = torch.sqrt(1 - ct**2)
    normal = torch.stack([st * torch.cos(ph), st * torch.sin(ph), ct], -1).reshape(-1, 3)
    radius = 4.0
    flux_density = (poisson_field(radius * normal, pts) * normal).sum(1).reshape(96, 192)
    area_weights = torch.tensor(wts, dtype=F64)[:, None] * (2 * math.pi / 192) * radius**2
    assert abs(float((flux_density * area_weights).sum()) - 1) < 1e-10


@pytest.mark.parametrize("aug_dim", [1, 2, 128, 2048])
def test_poisson_field_points_along_the_posterior_mean_ode(aug_dim):
    """At ``x~ = (x, z)`` with ``|z| = r``: ``E = c (x - E[y | x, r], z)``, ``c > 0``, with ``E[y | x, r]`` the
    point-set oracle at ``sigma = r / sqrt(D)`` (the weights are the field's ``|x~ - y~_i|^-(N+D)``). So the field
    line ``dx/dr = E_x / E_r = (x - E[y | x, r]) / r`` is the probability-flow ODE. For D = 1 this is PFGM's field;
    at D = 2048 the unnormalized field underflows and the normalized one still holds."""
    pts, n = _points(5, 2), 2
    x = torch.randn(6, n, generator=_gen(4), dtype=F64)
    r = torch.tensor([0.3, 0.8, 1.5, 3.0, 10.0, 40.0], dtype=F64) * math.sqrt(aug_dim)
    direction = torch.randn(6, aug_dim, generator=_gen(5), dtype=F64)
    z = direction / direction.norm(dim=1, keepdim=True) * r[:, None]
    field = poisson_field(torch.cat([x, z], 1), pts, normalize=True)
    mean = PFGMPPPointSetOracle(pts, aug_dim)(x, r / math.sqrt(aug_dim))
    expected = torch.cat([x - mean, z], 1)
    torch.testing.assert_close(field, expected / expected.norm(dim=1, keepdim=True), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(field[:, :n] / field[:, n:].norm(dim=1, keepdim=True), (x - mean) / r[:, None],
                               rtol=1e-9, atol=1e-12)


# ---- sampling and likelihood with the exact oracle -----------------------------------------------------------------
@pytest.mark.parametrize("aug_dim", [1, 128])
@pytest.mark.parametrize("method", ["heun", "dpmpp_2m", "adaptive"])
def test_deterministic_samplers_carry_the_prior_onto_the_points(method, aug_dim):
    """From ``prior_sample`` at ``sigma_max = 80``, the probability-flow ODE with the exact PFGM++ posterior mean
    lands within 1e-3 of a point for every draw, and on the two points in proportion 0.3 / 0.7 (4.5 standard
    errors). The grid ends at ``sigma_min = 1e-6``: the ODE transports exactly onto ``p_{sigma_min}``, whose kernel
    for N = 2, D = 1 has the tail ``P(|x - y| > eps) = (1 + eps^2 / sigma_min^2)^(-1/2) ~ sigma_min / eps``, so
    at EDM's 0.002 about 1% of exact draws still lie 0.2 away from both points (measured: 1 of 1500 ends 0.75
    from the nearest point with Heun); at 1e-6 that is ~5e-6."""
    process = PFGMPP(aug_dim=aug_dim)
    pts = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=F64)
    oracle = PFGMPPPointSetOracle(pts, aug_dim, weights=torch.tensor([0.3, 0.7], dtype=F64), process=process)
    n = 1500
    x = process.prior_sample((n, 2), 80.0, seeds=range(n), dtype=F64)
    opts = {"rtol": 1e-5, "atol": 1e-5} if method == "adaptive" else {}
    out = sample(oracle, x, karras_grid(40, 1e-6, 80.0), method, **opts)
    dist = torch.cdist(out, pts)
    assert float(dist.min(1).values.max()) < 1e-3
    share = float((dist.argmin(1) == 1).to(F64).mean())
    assert abs(share - 0.7) < 4.5 * math.sqrt(0.21 / n)


def _flow_map(oracle, x: torch.Tensor, s_min: float, s_max: float, steps: int = 1500) -> torch.Tensor:
    """The probability-flow ODE from ``s_min`` to ``s_max`` by classical RK4 in ``s = log sigma``
    (``dx/ds = x - D(x, e^s)``), independent of the library's integrators."""
    h = (math.log(s_max) - math.log(s_min)) / steps

    def f(s, y):
        return y - oracle(y, torch.full((y.shape[0],), math.exp(s), dtype=F64))

    s = math.log(s_min)
    for _ in range(steps):
        k1 = f(s, x)
        k2 = f(s + h / 2, x + h / 2 * k1)
        k3 = f(s + h / 2, x + h / 2 * k2)
        k4 = f(s + h, x + h * k3)
        x, s = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    return x


def test_ode_likelihood_matches_brute_force_change_of_variables_in_1d():
    """1-D, ``D = 3`` (heavy tails): the flow map ``T`` from ``sigma_min`` to ``sigma_max`` by RK4 and its derivative
    by central differences give ``log p_{sigma_min}(x) = log p_{sigma_max}(T(x)) + log T'(x)``, exactly with the
    true marginal (the oracle's mixture of kernels) and, with the process's prior, equal to what
    :func:`log_likelihood` returns; its prior term is ``process.prior_log_prob`` (the t density)."""
    process = PFGMPP(aug_dim=3)
    pts = torch.tensor([[-1.0], [0.5], [2.0]], dtype=F64)
    oracle = PFGMPPPointSetOracle(pts, 3, weights=torch.tensor([0.5, 0.3, 0.2], dtype=F64), process=process)
    x = torch.tensor([[-1.2], [0.3], [0.9], [2.4]], dtype=F64)
    s_min, s_max, h = 0.05, 50.0, 1e-5
    ends = _flow_map(oracle, torch.cat([x, x + h, x - h]), s_min, s_max)
    latent, up, down = ends.chunk(3)
    log_jac = torch.log((up - down)[:, 0] / (2 * h))
    exact = oracle.log_prob(x, s_min)
    torch.testing.assert_close(oracle.log_prob(latent, s_max) + log_jac, exact, rtol=0, atol=1e-6)
    res = log_likelihood(oracle, x, sigma_min=s_min, sigma_max=s_max, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.latent, latent, rtol=1e-8, atol=1e-8)  # |latent| ~ 700
    torch.testing.assert_close(res.delta_log_prob, log_jac, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.prior_log_prob, process.prior_log_prob(latent, s_max), rtol=0, atol=1e-6)
    torch.testing.assert_close(res.log_prob, process.prior_log_prob(latent, s_max) + log_jac, rtol=0, atol=1e-6)
    mismatch = process.prior_log_prob(latent, s_max) - oracle.log_prob(latent, s_max)  # prior vs true p_{sigma_max}
    torch.testing.assert_close(res.log_prob - exact, mismatch, rtol=0, atol=1e-6)
    assert float(mismatch.abs().max()) < 2e-3


# ---- refusals and validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,opts", [(m, {}) for m in sorted(GAUSSIAN_ONLY)]
                         + [(m, {o: 0.5}) for m, o in sorted(GAUSSIAN_WHEN.items())])
def test_stochastic_samplers_are_refused_for_finite_d(method, opts):
    pts = _points(2, 2)
    oracle = PFGMPPPointSetOracle(pts, 16, process=PFGMPP(aug_dim=16))
    with pytest.raises(ValueError, match="pfgmpp") as err:
        sample(oracle, torch.zeros(2, 2, dtype=F64), karras_grid(4, 0.002, 80.0), method, generator=_gen(0), **opts)
    assert "\n" not in str(err.value)
    check_sampler(method, PFGMPP(aug_dim="inf"), **opts)


@pytest.mark.parametrize("bad", [0, -3, 1.5, 128.0, True, "many", [4], -math.inf])
def test_bad_aug_dim_is_refused(bad):
    from unidm.methods.gaussian import GaussianDiffusion
    from unidm.nn import MLP

    for make in (lambda: PFGMPP(aug_dim=bad), lambda: build_process("pfgmpp", {"aug_dim": bad}, data_dim=2),
                 lambda: GaussianDiffusion(MLP(dim=2, hidden=8, depth=1), process="pfgmpp",
                                           process_options={"aug_dim": bad}, data_shape=(2,)),
                 lambda: PFGMPPPointSetOracle(_points(2, 2), bad)):
        with pytest.raises(ValueError, match="aug_dim") as err:
            make()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("inf", [None, "inf", "Infinity", math.inf])
def test_infinite_d_is_edm(inf):
    p = PFGMPP(aug_dim=inf, data_dim=4)
    assert p.aug_dim is None and p.gaussian_kernel and p.config()["aug_dim"] == "inf"
    assert PROCESSES["pfgmpp"](**p.config()).aug_dim is None
    assert check_aug_dim(12) == 12


# ---- the family ----------------------------------------------------------------------------------------------------
def test_family_trains_and_samples_with_pfgmpp():
    """``GaussianDiffusion(process="pfgmpp", aug_dim=128)``: it gets ``data_dim``, its loss draws through
    ``perturb`` (the t kernel), it trains a few steps, generates with Heun from ``prior_sample`` and refuses ddpm."""
    from unidm.methods.gaussian import GaussianDiffusion
    from unidm.nn import MLP

    torch.manual_seed(0)
    model = GaussianDiffusion(MLP(dim=2, hidden=32, depth=2), process="pfgmpp", process_options={"aug_dim": 128},
                              data_shape=(2,))
    assert isinstance(model.process, PFGMPP) and model.process.data_dim == 2 and not model.process.gaussian_kernel
    out = check_kernel_family(model)
    assert bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="ddpm.*pfgmpp"):
        model.generate(4, seeds=range(4), sampler="ddpm", steps=6)


@pytest.mark.parametrize("inf", ["inf", None])
def test_infinite_d_gives_edm_bit_for_bit(inf):
    """``aug_dim=inf``: the same network gives the same losses and the same samples as ``process="edm"``, for a
    deterministic and a stochastic sampler."""
    from unidm.methods.gaussian import GaussianDiffusion
    from unidm.nn import MLP

    models = []
    for process, options in (("edm", {}), ("pfgmpp", {"aug_dim": inf})):
        torch.manual_seed(0)
        models.append(GaussianDiffusion(MLP(dim=2, hidden=16, depth=2), process=process, process_options=options,
                                        data_shape=(2,)))
    edm, pfgm = models
    assert isinstance(pfgm.process, EDM) and pfgm.process.gaussian_kernel
    x0 = torch.randn(16, 2, generator=_gen(0))
    assert torch.equal(edm.loss({"x": x0}, _gen(1)), pfgm.loss({"x": x0}, _gen(1)))
    for sampler in ("heun", "ddpm"):
        assert torch.equal(edm.generate(6, seeds=range(6), sampler=sampler, steps=5),
                           pfgm.generate(6, seeds=range(6), sampler=sampler, steps=5))


def test_presets_validate_build_and_carry_their_d():
    from unidm.config import validate_config
    from unidm.presets import PRESETS, get_preset
    from unidm.run import build_data, build_model

    names = [n for n in PRESETS if "-pfgmpp-" in n]
    assert {n.rsplit("-d", 1)[1] for n in names} == {"1", "128", "2048"}
    assert {n.split("-pfgmpp-")[0] for n in names} >= {"moons", "checkerboard", "gmm-ring", "digits"}
    for name in names:
        cfg = get_preset(name)
        validate_config(cfg)
        mine, edm = cfg.to_dict(), get_preset(name.split("-pfgmpp-")[0] + "-edm").to_dict()
        assert mine["model"] == edm["model"] and mine["train"] == edm["train"]
        assert {k: v for k, v in mine["method"].items() if k not in ("process", "process_options")} == {
            k: v for k, v in edm["method"].items() if k not in ("process", "process_options")}
        assert cfg.sample.sampler == "heun"
        if name.startswith("moons"):
            model = build_model(cfg, build_data(cfg))
            assert model.process.aug_dim == int(name.rsplit("-d", 1)[1]) and model.process.data_dim == 2
