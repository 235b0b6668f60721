"""The oracles obey Tweedie's formula and the probability-flow ODE."""

import torch

from unidm.oracles import EmpiricalOracle, GaussianMixtureOracle, GaussianOracle


def _tweedie(log_prob, x, sigma):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x, sigma).sum(), x)
    return x.detach() + sigma**2 * grad


def _mixture():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2
    var = torch.rand(4, 3, generator=g, dtype=torch.float64) * 0.5 + 0.05
    return GaussianMixtureOracle(torch.tensor([1.0, 2.0, 3.0, 4.0]), means, var)


def test_tweedie_gaussian_mixture_and_points():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64) * 2
    gauss = GaussianOracle(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64),
                           torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    points = EmpiricalOracle(torch.randn(20, 3, generator=g, dtype=torch.float64))
    for oracle in (gauss, _mixture(), points):
        for sigma in (0.1, 1.0, 5.0):
            torch.testing.assert_close(oracle(x, sigma), _tweedie(oracle.log_prob, x, sigma), rtol=1e-8, atol=1e-8)


def test_gaussian_ode_solution_solves_the_ode():
    """d x(sigma) / d sigma = (x - D(x, sigma)) / sigma along the closed-form trajectory."""
    o = GaussianOracle(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64))
    x0 = torch.randn(10, 2, dtype=torch.float64) * 3
    s0, s, h = 3.0, 1.3, 1e-5
    xs = o.ode_solution(x0, s0, s)
    deriv = (o.ode_solution(x0, s0, s + h) - o.ode_solution(x0, s0, s - h)) / (2 * h)
    torch.testing.assert_close(deriv, (xs - o(xs, s)) / s, rtol=1e-6, atol=1e-8)


def test_mixture_moments_and_marginal_normalization():
    m = _mixture()
    x = m.sample(400_000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x.mean(0), m.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), m.covariance(), atol=0.05, rtol=0)
    # the noised marginal is a normalized density: E_{N(0, I*4)}[p / q] = 1
    g = torch.Generator().manual_seed(4)
    z = torch.randn(400_000, 3, generator=g, dtype=torch.float64) * 4
    log_q = -0.5 * (z**2 / 16).sum(1) - 1.5 * torch.log(torch.tensor(2 * torch.pi * 16, dtype=torch.float64))
    ratio = torch.exp(m.log_prob(z, 1.0) - log_q)
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / 400_000**0.5
