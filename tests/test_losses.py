"""The denoising loss: its closed-form minimum with the exact Gaussian denoiser, and every weighting equals the
loss it claims in the parameterization's own output space."""

import pytest
import torch

from unidm.losses import WEIGHTINGS, DenoisingLoss
from unidm.oracles import GaussianOracle
from unidm.parameterization import PARAMETERIZATIONS, path_coefficients
from unidm.processes import EDM, LogNormalSigma, RectifiedFlow, UniformT, VPLinear


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_exact_denoiser_attains_closed_form_minimum(weighting, sigma):
    """E[lambda |D* - x0|^2] at fixed sigma = lambda * mean_d v sigma^2 / (v + sigma^2) (the posterior variance),
    and any other denoiser D* + delta pays lambda * delta^2 more."""
    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    oracle = GaussianOracle(mean, var)
    process = VPLinear()
    loss = DenoisingLoss(process, UniformT(), weighting, sigma_data=1.0)
    n = 200_000
    x0 = oracle.sample(n, generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s = torch.full((n,), sigma, dtype=torch.float64)
    values = loss.at_sigma(oracle, x0, s, eps)
    lam = float(loss.weight(s[:1]))
    expected = lam * float((var * sigma**2 / (var + sigma**2)).mean())
    stderr = float(values.std()) / n**0.5
    assert abs(float(values.mean()) - expected) < 4 * stderr
    delta = 0.1
    shifted = loss.at_sigma(lambda x, sg: oracle(x, sg) + delta, x0, s, eps)
    gap = float((shifted - values).mean())
    assert abs(gap - lam * delta**2) < 4 * float((shifted - values).std()) / n**0.5 + 1e-12


@pytest.mark.parametrize(
    "process,param,weighting",
    [(VPLinear(), "eps", "eps"), (RectifiedFlow(), "velocity", "velocity"), (VPLinear(), "v", "v"),
     (EDM(), "edm", "edm"), (VPLinear(), "x0", "x0")],
)
def test_weighting_equals_native_loss(process, param, weighting):
    """lambda(sigma) |D - x0|^2 == |F - F_target|^2 for the parameterization the weighting is named after."""
    g = torch.Generator().manual_seed(2)
    q = PARAMETERIZATIONS[param](sigma_data=0.5)
    loss = DenoisingLoss(process, LogNormalSigma(), weighting, sigma_data=0.5)
    sigma = torch.logspace(-1.5, 1.2, 16, dtype=torch.float64)
    x0 = torch.randn(16, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 4, generator=g, dtype=torch.float64)
    out = torch.randn(16, 4, generator=g, dtype=torch.float64)  # an arbitrary network output
    pc = path_coefficients(process, sigma)
    x = x0 + sigma[:, None] * eps
    D = q.to_x0(out, x, pc)
    lhs = loss.weight(sigma) * ((D - x0) ** 2).mean(1)
    rhs = ((out - q.target(x0, eps, pc)) ** 2).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


def test_min_snr_clamps_eps_loss():
    loss = DenoisingLoss(VPLinear(), UniformT(), "min-snr", gamma=5.0)
    sigma = torch.tensor([0.1, 0.4472135955, 2.0], dtype=torch.float64)  # SNR = 100, 5, 0.25
    torch.testing.assert_close(loss.weight(sigma), torch.tensor([5.0, 5.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_draws_through_perturb_as_before(dtype):
    """The loss draws ``sigma`` then ``x = process.perturb(x0, sigma)`` from one generator; for a Gaussian process
    that is ``x0 + sigma eps`` with ``eps`` the next standard normal draw, so the losses equal ``at_sigma`` with
    that ``eps`` exactly (the same training losses, bit for bit, as before the hook)."""
    oracle = GaussianOracle(torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype))
    loss = DenoisingLoss(EDM(), LogNormalSigma(), "edm", sigma_data=0.5)
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    got = loss(oracle, x0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sigma = LogNormalSigma().draw(EDM(), 64, g, x0.device, dtype)
    eps = torch.randn(x0.shape, generator=g, dtype=dtype)
    assert torch.equal(got, loss.at_sigma(oracle, x0, sigma, eps))


def test_loss_uses_the_process_kernel():
    """A process whose kernel is the identity (``perturb`` returns ``x0``) makes the identity denoiser's loss
    exactly zero, while the Gaussian kernel does not: the loss sees only what ``perturb`` draws."""

    class NoNoise(EDM):
        def perturb(self, x0, sigma, generator=None):
            return x0.clone()

    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    identity = lambda x, sigma: x  # noqa: E731
    zero = DenoisingLoss(NoNoise(), LogNormalSigma(), "edm")(identity, x0, torch.Generator().manual_seed(0))
    assert torch.equal(zero, torch.zeros(16, dtype=torch.float64))
    assert bool((DenoisingLoss(EDM(), LogNormalSigma(), "edm")(identity, x0) > 0).all())
