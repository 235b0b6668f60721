"""Blur diffusion: the DCT blur is the heat equation with Neumann boundaries (against finite differences), and the
blur family's plumbing (prior, loss, sampling, seeds)."""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
from torch import nn

from unidm.methods.blur import BlurDiffusion
from unidm.processes.blur import HeatBlur, dct2, dct_matrix, heat_eigenvalues, idct2


def _neumann_laplacian(n: int) -> torch.Tensor:
    """The 1-D 5-point (here 3-point) finite-difference Laplacian with reflecting ghost cells, unit spacing."""
    lap = -2 * torch.eye(n, dtype=torch.float64) + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1) \
        + torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    lap[0, 0] = lap[-1, -1] = -1.0
    return lap


def _image(h=6, w=7, seed=0):
    return torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dct_is_orthonormal_and_invertible():
    for n in (1, 5, 8):
        c = dct_matrix(n)
        torch.testing.assert_close(c @ c.T, torch.eye(n, dtype=torch.float64))
    x = _image()
    torch.testing.assert_close(idct2(dct2(x)), x)


def test_dct_blur_is_the_finite_difference_heat_equation():
    """With the finite-difference eigenvalues, the DCT blur equals an explicit RK4 time integration of
    du/dtau = L u + u L^T (the 2-D Neumann Laplacian) to 1e-9."""
    x = _image()
    h, w = x.shape[-2:]
    lh, lw = _neumann_laplacian(h), _neumann_laplacian(w)
    tau, n_steps = 1.5, 300
    dt = tau / n_steps
    u = x.clone()
    f = lambda v: lh @ v + v @ lw.T  # noqa: E731
    for _ in range(n_steps):
        k1 = f(u)
        k2 = f(u + 0.5 * dt * k1)
        k3 = f(u + 0.5 * dt * k2)
        k4 = f(u + dt * k3)
        u = u + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    blur = HeatBlur((h, w), laplacian="discrete")
    torch.testing.assert_close(blur.blur_tau(x, tau), u, rtol=0, atol=1e-9)


def test_continuous_dct_blur_is_the_limit_of_refined_finite_differences():
    """The continuous-eigenvalue blur (IHDM) is the heat equation on the cosine interpolant of the image: a
    finite-difference solution on an r-times finer grid, sampled back at the pixel centres, converges to it at
    second order in the spacing 1/r."""
    x = _image(6, 6)[0, 0]
    n, tau = 6, 0.8
    target = HeatBlur((n, n)).blur_tau(x[None, None], tau)[0, 0]
    coef = dct2(x)
    errors = []
    for r in (3, 9):
        pos = (torch.arange(n * r, dtype=torch.float64) + 0.5) / r - 0.5  # fine cell centres in pixel units
        k = torch.arange(n, dtype=torch.float64)[:, None]
        basis = math.sqrt(2 / n) * torch.cos(math.pi * (pos[None] + 0.5) * k / n)
        basis[0] /= math.sqrt(2)
        fine = basis.T @ coef @ basis  # the cosine interpolant on the fine grid
        e = torch.from_numpy(scipy.linalg.expm(tau * r**2 * _neumann_laplacian(n * r).numpy()))
        sol = e @ fine @ e.T  # exact in time, finite differences in space
        centre = torch.arange(n) * r + (r - 1) // 2
        errors.append(float((sol[centre][:, centre] - target).abs().max()))
    assert errors[1] < 2e-3
    assert errors[0] / errors[1] == pytest.approx(9.0, rel=0.15)  # O(h^2)


@pytest.mark.parametrize("laplacian", ["continuous", "discrete"])
def test_heat_semigroup_and_conservation(laplacian):
    x = _image()
    blur = HeatBlur(x.shape[-2:], laplacian=laplacian)
    torch.testing.assert_close(blur.blur_tau(blur.blur_tau(x, 0.3), 0.9), blur.blur_tau(x, 1.2))
    # Neumann boundaries conserve the total heat; tau -> infinity leaves the mean
    torch.testing.assert_close(blur.blur_tau(x, 2.0).sum((-1, -2)), x.sum((-1, -2)))
    torch.testing.assert_close(blur.blur_tau(x, 1e4), x.mean((-1, -2), keepdim=True).expand_as(x))
    assert float(heat_eigenvalues(4, 4, laplacian)[0, 0]) == 0.0


def test_discrete_blur_obeys_the_maximum_principle():
    x = _image(8, 8, seed=3)
    y = HeatBlur((8, 8), laplacian="discrete").blur_tau(x, 0.7)
    assert float(y.max()) <= float(x.max()) + 1e-12 and float(y.min()) >= float(x.min()) - 1e-12


def test_schedule_is_log_spaced_gaussian_blur_width():
    blur = HeatBlur((8, 8), sigma_blur_min=0.5, sigma_blur_max=8.0)
    t = torch.tensor([0.0, 1e-9, 0.5, 1.0], dtype=torch.float64)
    sigma_b = (2 * blur.tau(t)).sqrt()
    torch.testing.assert_close(sigma_b, torch.tensor([0.0, 0.5, 2.0, 8.0], dtype=torch.float64), rtol=1e-6, atol=0)


class _Zero(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, c_noise, class_labels=None):
        return self.conv(x) * 0


def test_blur_loss_of_the_identity_denoiser_matches_its_closed_form():
    """With D(x_t) = x_t (a zero network) the loss is mean_pixels |F(t) x0 + sigma eps - x0|^2. In the orthonormal
    DCT-II basis (scipy's, not the module's) F(t) multiplies coefficient (k, l) by exp(-lambda_kl tau(t)) with
    lambda_kl = pi^2 (k^2 / H^2 + l^2 / W^2) and tau(t) = (s_min^(1-t) s_max^t)^2 / 2, so for t ~ U(0, 1)
    E[loss | x0] = sigma^2 + E_t sum_kl (1 - exp(-lambda_kl tau(t)))^2 z_kl^2 / (H W), the t-integral by a fine
    midpoint rule."""
    import numpy as np
    import scipy.fft

    h, w, s_min, s_max, sigma, reps = 8, 8, 0.5, 8.0, 0.1, 3000
    images = _image(h, w, seed=4)[:, 0]  # two 8 x 8 images in [0, 1)
    model = BlurDiffusion(_Zero(), (1, h, w), sigma_blur_min=s_min, sigma_blur_max=s_max, sigma=sigma)
    x0 = images[:, None].repeat(reps, 1, 1, 1).float()  # [2 * reps, 1, h, w], the two images interleaved
    loss = model.loss({"x": x0}, torch.Generator().manual_seed(5)).double().reshape(reps, 2)

    z = torch.from_numpy(scipy.fft.dctn(images.numpy(), type=2, norm="ortho", axes=(-2, -1)))
    k, l = np.arange(h)[:, None], np.arange(w)[None]
    lam = torch.from_numpy(np.pi**2 * (k**2 / h**2 + l**2 / w**2))
    t = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    tau = 0.5 * (s_min ** (1 - t) * s_max**t) ** 2
    decay = ((1 - torch.exp(-lam[None] * tau[:, None, None])) ** 2).mean(0)  # E_t (1 - e^(-lambda tau))^2, [h, w]
    expected = sigma**2 + (decay[None] * z**2).sum((-1, -2)) / (h * w)
    se = loss.std(0) / reps**0.5
    assert bool(((loss.mean(0) - expected).abs() < 4 * se).all()), (loss.mean(0), expected, se)
    assert bool((se < 0.05 * expected).all())


def test_blur_model_prior_loss_and_sampling():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(500, 1, 8, 8, generator=g) * 2 - 1
    model = BlurDiffusion(_Zero(), (1, 8, 8))
    model.fit_prior(data)
    # the prior matches the maximally blurred data's mean colour distribution
    prior = model.sample_prior(4000, torch.Generator().manual_seed(1))
    blurred = model.blur(data, torch.ones(500))
    assert float(prior.mean()) == pytest.approx(float(blurred.mean()), abs=0.01)
    assert float(prior.mean((1, 2, 3)).std()) == pytest.approx(float(blurred.mean((1, 2, 3)).std()), rel=0.1)
    loss = model.loss({"x": data[:16]}, g)
    assert loss.shape == (16,)
    # a sample depends on its seed only; the "cold" sampler with the identity denoiser keeps x_1's residual
    a = model.generate(4, seeds=range(4), steps=5)
    b = model.generate(2, seeds=[2, 3], steps=5)
    torch.testing.assert_close(a[2:], b)
    assert a.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="ancestral, cold"):
        model.generate(2, sampler="heun")
