"""Processes: schedules, derivatives, sigma-space maps and SDE coefficients against their definitions."""

import math

import pytest
import torch

from unidm.processes import PROCESSES, VPDiscrete

ALL = sorted(PROCESSES)


def _times(p, n=50):
    return torch.linspace(max(p.t_min, 1e-3 * p.t_max), p.t_max_sampling * 0.999, n, dtype=torch.float64)


@pytest.mark.parametrize("name", ALL)
def test_sigma_space_roundtrip(name):
    p = PROCESSES[name]()
    t = _times(p)
    sigma = p.sigma_of_t(t)
    assert torch.all(sigma[1:] > sigma[:-1]), "sigma must increase with t"
    torch.testing.assert_close(p.t_of_sigma(sigma), t, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(sigma, p.sigma_t(t) / p.alpha(t))
    torch.testing.assert_close(p.log_snr(t), 2 * torch.log(p.alpha(t) / p.sigma_t(t)))


@pytest.mark.parametrize("name", [n for n in ALL if n != "vp-discrete"])
def test_derivatives_match_autograd(name):
    p = PROCESSES[name]()
    t = _times(p).requires_grad_(True)
    a, s = p.alpha(t), p.sigma_t(t)
    da = torch.autograd.grad(a.sum(), t)[0] if a.requires_grad else torch.zeros_like(t)
    ds = torch.autograd.grad(s.sum(), t)[0] if s.requires_grad else torch.zeros_like(t)
    torch.testing.assert_close(p.d_alpha(t.detach()), da, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(p.d_sigma_t(t.detach()), ds, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in ALL if n != "vp-discrete"])
def test_sde_coefficients_reproduce_marginals(name):
    """Integrating the mean ODE dm/dt = f m and the variance ODE dv/dt = 2 f v + g^2 from t0 gives alpha_t and
    sigma_t^2 (Song et al. 2021, eq. 5.50-5.51 of Sarkka & Solin)."""
    p = PROCESSES[name]()
    t = torch.linspace(max(p.t_min, 1e-3 * p.t_max), p.t_max_sampling * 0.99, 20001, dtype=torch.float64)
    f, g2 = p.drift_coefficient(t), p.diffusion(t) ** 2
    dt = t[1:] - t[:-1]
    log_m = torch.cat([torch.zeros(1, dtype=t.dtype), torch.cumsum(0.5 * (f[1:] + f[:-1]) * dt, 0)])
    torch.testing.assert_close(torch.exp(log_m), p.alpha(t) / p.alpha(t[:1]), rtol=1e-5, atol=1e-8)
    v = p.sigma_t(t[:1]).clone() ** 2
    vs = [v]
    for i in range(len(dt)):  # Heun on the linear variance ODE
        k1 = 2 * f[i] * v + g2[i]
        vp = v + dt[i] * k1
        v = v + dt[i] * 0.5 * (k1 + 2 * f[i + 1] * vp + g2[i + 1])
        vs.append(v)
    torch.testing.assert_close(torch.cat(vs), p.sigma_t(t) ** 2, rtol=2e-4, atol=1e-7)


def test_vp_discrete_is_ddpm():
    p = VPDiscrete()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(p.alpha(t) ** 2, abar, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.sigma_t(t) ** 2, 1 - abar, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.t_of_sigma(p.sigma_of_t(t)), t)


def test_vp_linear_is_ddpm_continuous_limit():
    """With beta_i = beta(t_i)/T, DDPM's abar approaches the continuous VP's abar (Song et al. 2021, App. B)."""
    from unidm.processes import VPLinear

    cont, disc = VPLinear(), VPDiscrete()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(disc.alpha(t), cont.alpha(t), rtol=2e-2, atol=1e-3)


def test_edm_and_flow_closed_forms():
    e, f = PROCESSES["edm"](), PROCESSES["flow"]()
    s = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(e.t_of_sigma(s), s)
    torch.testing.assert_close(f.t_of_sigma(s), s / (1 + s))
    assert math.isclose(f.sigma_max, 0.999 / 0.001, rel_tol=1e-9)
