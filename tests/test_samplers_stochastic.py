"""Stochastic samplers with the exact denoiser of a Gaussian mixture reproduce its mean, covariance and component
weights within their statistical error; a sample drawn with seed s is the same in any batch."""

import pytest
import torch

from unidm.oracles import GaussianMixtureOracle
from unidm.samplers import METHODS, STOCHASTIC, karras_grid, prior_noise, sample

torch.set_num_threads(1)
F64 = torch.float64
N = 4000


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureOracle(
        torch.tensor([0.5, 0.3, 0.2], dtype=F64),
        torch.tensor([[-2.0, 0.0], [2.0, -0.5], [0.0, 2.5]], dtype=F64),
        torch.tensor([[0.3, 0.2], [0.5, 0.4], [0.25, 0.25]], dtype=F64),
    )


CASES = [  # (method, steps, options): enough steps that the discretization bias is below the statistical error
    ("ddpm", 150, {}),
    ("ddim", 100, {"eta": 0.5}),
    ("edm", 50, {}),
    ("euler_maruyama", 200, {}),
    ("euler_maruyama", 200, {"langevin": 3.0}),
    ("pc", 100, {}),
    ("dpmpp_2m_sde", 50, {}),
    ("dpmpp_3m_sde", 50, {}),
]


@pytest.mark.parametrize("method,steps,options", CASES, ids=[f"{m}-{s}" for m, s, _ in CASES])
def test_stochastic_sampler_reproduces_the_mixture(mixture, method, steps, options):
    x = 80.0 * torch.randn(N, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = sample(mixture, x, karras_grid(steps, 0.002, 80.0), method,
                 generator=torch.Generator().manual_seed(1), **options)
    mean, cov = mixture.mean(), mixture.covariance()
    var = torch.diag(cov)
    z_mean = (out.mean(0) - mean) / (var / N).sqrt()
    # standard error of a sample covariance entry, (var_i var_j + cov_ij^2) / N for near-Gaussian data
    z_cov = (torch.cov(out.T) - cov) / ((var[:, None] * var[None] + cov**2) / N).sqrt()
    labels = mixture.responsibilities(out, 1e-3).argmax(1)  # the components are well separated
    frac = torch.bincount(labels, minlength=3).to(F64) / N
    w = mixture.weights
    z_w = (frac - w) / (w * (1 - w) / N).sqrt()
    assert z_mean.abs().max() < 4.5, z_mean
    assert z_cov.abs().max() < 5.0, z_cov
    assert z_w.abs().max() < 4.5, z_w


def test_stochastic_set_is_the_set_of_methods_that_draw_noise(mixture):
    x = prior_noise((3, 2), 80.0, seeds=[0, 1, 2], dtype=F64)
    grid = karras_grid(6, 0.002, 80.0)
    for method in METHODS:
        a = sample(mixture, x, grid, method, generator=torch.Generator().manual_seed(1))
        b = sample(mixture, x, grid, method, generator=torch.Generator().manual_seed(2))
        assert (not torch.equal(a, b)) == (method in STOCHASTIC), method


@pytest.mark.parametrize("method", sorted(STOCHASTIC))
def test_a_seeded_sample_does_not_depend_on_its_batch(mixture, method):
    grid = karras_grid(8, 0.002, 80.0)
    seeds = [10, 11, 12]

    def draw(idx):
        x = prior_noise((len(idx), 2), 80.0, seeds=[seeds[i] for i in idx], dtype=F64)
        gens = [torch.Generator().manual_seed(1000 + seeds[i]) for i in idx]
        return sample(mixture, x, grid, method, generator=gens)

    torch.testing.assert_close(draw([0, 1, 2])[1:2], draw([1]), rtol=1e-12, atol=1e-12)


def test_ddpm_is_ddim_with_eta_one_and_ddim_eta_zero_is_euler(mixture):
    x = prior_noise((5, 2), 80.0, seeds=range(5), dtype=F64)
    grid = karras_grid(7, 0.002, 80.0)
    ddpm = sample(mixture, x, grid, "ddpm", generator=torch.Generator().manual_seed(3))
    ddim = sample(mixture, x, grid, "ddim", eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddpm, ddim)
    torch.testing.assert_close(sample(mixture, x, grid, "ddim"), sample(mixture, x, grid, "euler"))


def test_churn_only_inside_its_window(mixture):
    """EDM's churn adds noise only for sigma in [S_tmin, S_tmax]; an empty window is Heun exactly."""
    x = prior_noise((4, 2), 80.0, seeds=range(4), dtype=F64)
    grid = karras_grid(10, 0.002, 80.0)
    heun = sample(mixture, x, grid, "heun")
    empty = sample(mixture, x, grid, "edm", s_tmin=100.0, s_tmax=200.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(empty, heun)
    assert not torch.allclose(sample(mixture, x, grid, "edm", generator=torch.Generator().manual_seed(0)), heun)
