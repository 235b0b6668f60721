"""Closed forms written out in the test, in float64, for modules whose own tests compared them with themselves or
with a bound that cannot fail: the processes' schedules (DESIGN.md's table), the loss weightings' lambda(sigma) on
each process, the loss of the identity denoiser, the noise-level laws, and the samplers' declared options."""

from __future__ import annotations

import math

import pytest
import torch

from unidm.losses import DenoisingLoss
from unidm.processes import EDM, PROCESSES, LogitNormalT, LogNormalSigma, RectifiedFlow, UniformT, VPLinear
from unidm.samplers import METHODS, STOCHASTIC, karras_grid, method_options, sample

F64 = torch.float64
T = torch.linspace(0.05, 0.95, 19, dtype=F64)
B_MIN, B_MAX = 0.1, 20.0


def _vp_log_abar(t):
    return -(B_MIN * t + 0.5 * (B_MAX - B_MIN) * t**2)


def _cosine_abar(t, s=0.008):
    return torch.cos(math.pi / 2 * (t + s) / (1 + s)) ** 2 / math.cos(math.pi / 2 * s / (1 + s)) ** 2


# (alpha_t, sigma_t) of each process at its default arguments (DESIGN.md, "The one equation")
SCHEDULES = {
    "vp": lambda t: (torch.exp(0.5 * _vp_log_abar(t)), torch.sqrt(1 - torch.exp(_vp_log_abar(t)))),
    "subvp": lambda t: (torch.exp(0.5 * _vp_log_abar(t)), 1 - torch.exp(_vp_log_abar(t))),
    "vp-cosine": lambda t: (torch.sqrt(_cosine_abar(t)), torch.sqrt(1 - _cosine_abar(t))),
    "ve": lambda t: (torch.ones_like(t), 0.01 * (50.0 / 0.01) ** t),
    "edm": lambda t: (torch.ones_like(t), t),
    "flow": lambda t: (1 - t, t),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_process_schedules_are_the_papers(name):
    assert name in PROCESSES, sorted(PROCESSES)
    process = PROCESSES[name]()
    alpha, sigma_t = SCHEDULES[name](T)
    torch.testing.assert_close(process.alpha(T), alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(process.sigma_t(T), sigma_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(process.sigma_of_t(T), sigma_t / alpha, rtol=1e-10, atol=1e-12)


def _weights(process_name, sigma, sigma_data, gamma):
    """lambda(sigma) of every weighting, derived by hand for each process in sigma-space (x = x0 + sigma eps):
    eps: D - x0 = -sigma (eps_hat - eps); v: D - x0 = -sigma_t (v_hat - v) / (alpha^2 + sigma_t^2);
    velocity: D - x0 = -sigma_t (u_hat - u) / (sigma_t' alpha - sigma_t alpha')."""
    s2 = sigma**2
    common = {"eps": 1 / s2, "x0": torch.ones_like(sigma), "edm": (s2 + sigma_data**2) / (sigma * sigma_data) ** 2,
              "min-snr": torch.clamp(1 / s2, max=gamma)}
    if process_name == "edm":  # alpha = 1, sigma_t = sigma = t
        return {**common, "v": ((1 + s2) / sigma) ** 2, "velocity": 1 / s2}
    if process_name == "flow":  # alpha = 1 - t, sigma_t = t, t = sigma / (1 + sigma)
        t = sigma / (1 + sigma)
        return {**common, "v": (((1 - t) ** 2 + t**2) / t) ** 2, "velocity": 1 / t**2}
    # linear VP: alpha = 1 / sqrt(1 + sigma^2), sigma_t = sigma alpha, d sigma / dt = beta(t) (1 + sigma^2) / (2 sigma)
    t = (-B_MIN + torch.sqrt(B_MIN**2 + 2 * (B_MAX - B_MIN) * torch.log1p(s2))) / (B_MAX - B_MIN)
    beta = B_MIN + (B_MAX - B_MIN) * t
    return {**common, "v": (1 + s2) / s2, "velocity": beta**2 * (1 + s2) / (4 * s2**2)}


@pytest.mark.parametrize("process", [EDM(), RectifiedFlow(), VPLinear(B_MIN, B_MAX)], ids=["edm", "flow", "vp"])
@pytest.mark.parametrize("weighting", ["eps", "x0", "edm", "min-snr", "v", "velocity"])
def test_loss_weighting_closed_forms(process, weighting):
    sigma = torch.logspace(-2, 1.5, 15, dtype=F64)
    loss = DenoisingLoss(process, UniformT(), weighting, sigma_data=0.6, gamma=5.0)
    expected = _weights(process.name, sigma, 0.6, 5.0)[weighting]
    torch.testing.assert_close(loss.weight(sigma), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("weighting", ["eps", "edm", "x0"])
def test_identity_denoiser_loss_is_weight_times_noise_energy(weighting):
    """D(x) = x makes D - x0 = sigma eps exactly: the loss is lambda(sigma) sigma^2 mean_d eps^2, per example."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 5, generator=g, dtype=F64)
    eps = torch.randn(32, 5, generator=g, dtype=F64)
    sigma = torch.exp(torch.randn(32, generator=g, dtype=F64))
    loss = DenoisingLoss(EDM(), LogNormalSigma(), weighting, sigma_data=0.5)
    lam = _weights("edm", sigma, 0.5, 5.0)[weighting]
    got = loss.at_sigma(lambda x, s: x, x0, sigma, eps)
    torch.testing.assert_close(got, lam * sigma**2 * eps.pow(2).mean(1), rtol=1e-12, atol=0)


def _ks(u: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of ``u`` (supposed U(0, 1)) from the uniform law."""
    u = torch.sort(u).values
    n = len(u)
    i = torch.arange(1, n + 1, dtype=F64)
    return float(torch.maximum(i / n - u, u - (i - 1) / n).max())


@pytest.mark.parametrize("law", ["uniform-t", "lognormal", "logit-normal"])
def test_noise_level_laws_by_their_cdfs(law):
    """Each draw pushed through its law's closed-form CDF is U(0, 1): a KS distance below 1.95 / sqrt(n) (the
    0.1 % critical value). The flow process has t = sigma / (1 + sigma) and t in [t_min, t_max] = [1e-3, 0.999]."""
    n = 40_000
    process = RectifiedFlow()
    dist = {"uniform-t": UniformT(), "lognormal": LogNormalSigma(-1.2, 1.2), "logit-normal": LogitNormalT(0.3, 0.8)}
    sigma = dist[law].draw(process, n, torch.Generator().manual_seed(0), dtype=F64)
    r = (sigma / (1 + sigma) - 1e-3) / (0.999 - 1e-3)  # t rescaled to [0, 1]
    u = {"uniform-t": lambda: r,
         "lognormal": lambda: torch.special.ndtr((torch.log(sigma) + 1.2) / 1.2),
         "logit-normal": lambda: torch.special.ndtr((torch.logit(r) - 0.3) / 0.8)}[law]()
    assert _ks(u) < 1.95 / math.sqrt(n)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_options_are_what_the_sampler_takes(method):
    """Every declared option, passed at its declared default, gives the default result bit for bit; an undeclared
    one is refused."""
    from unidm.oracles import GaussianOracle

    oracle = GaussianOracle(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    x = 80.0 * torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = karras_grid(4, 0.002, 80.0)

    def run(**options):
        gen = torch.Generator().manual_seed(1) if method in STOCHASTIC else None
        return sample(oracle, x, grid, method, generator=gen, **options)

    options = method_options(method)
    assert torch.equal(run(**options), run())
    with pytest.raises(ValueError, match="valid"):
        run(not_an_option=1)
