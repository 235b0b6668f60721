"""The heat-dissipation (blur) forward process in the DCT basis (Rissanen et al. 2023, "Generative Modelling With
Inverse Heat Dissipation", Sec. 2-3).

The heat equation ``du/dtau = Laplacian(u)`` on an ``H x W`` image with Neumann (reflecting) boundaries is diagonal in
the orthonormal 2-D DCT-II basis: coefficient ``(k, l)`` decays as ``exp(-lambda_kl tau)`` with

    continuous Laplacian (IHDM eq. 4):    lambda_kl = pi^2 (k^2 / H^2 + l^2 / W^2)          (pixel units)
    5-point finite-difference Laplacian:  lambda_kl = 4 sin^2(pi k / 2H) + 4 sin^2(pi l / 2W)

(the DCT-II vectors are exactly the eigenvectors of the finite-difference Neumann Laplacian; the continuous
eigenvalues are those of the cosine series that interpolates the pixels). Blurring to time ``tau`` equals a Gaussian
blur of standard deviation ``sigma_B = sqrt(2 tau)``. The forward process is

    x_t = F(t) x0 + sigma * eps,    F(t) = V^T diag(exp(-lambda tau_t)) V,

with ``sigma_B(t)`` log-spaced from ``sigma_blur_min`` to ``sigma_blur_max`` (IHDM App. B) and ``tau_0 = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dct_matrix", "dct2", "idct2", "heat_eigenvalues", "HeatBlur"]


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The orthonormal DCT-II matrix ``C [n, n]``: ``C[k, j] = sqrt(2/n) c_k cos(pi (j + 1/2) k / n)``,
    ``c_0 = 1/sqrt(2)``, so ``C @ C.T = I``.

    Example:
        >>> C = dct_matrix(5)
        >>> torch.allclose(C @ C.T, torch.eye(5, dtype=C.dtype))
        True
    """
    k = torch.arange(n, dtype=dtype, device=device)[:, None]
    j = torch.arange(n, dtype=dtype, device=device)[None]
    c = math.sqrt(2.0 / n) * torch.cos(math.pi * (j + 0.5) * k / n)
    c[0] /= math.sqrt(2.0)
    return c


def dct2(x: Tensor) -> Tensor:
    """2-D orthonormal DCT-II over the last two dimensions."""
    ch, cw = dct_matrix(x.shape[-2], x.dtype, x.device), dct_matrix(x.shape[-1], x.dtype, x.device)
    return ch @ x @ cw.T


def idct2(x: Tensor) -> Tensor:
    """Inverse of :func:`dct2`."""
    ch, cw = dct_matrix(x.shape[-2], x.dtype, x.device), dct_matrix(x.shape[-1], x.dtype, x.device)
    return ch.T @ x @ cw


def heat_eigenvalues(h: int, w: int, laplacian: str = "continuous", dtype: torch.dtype = torch.float64) -> Tensor:
    """``lambda [h, w]``: decay rates of the DCT coefficients under the heat equation (module docstring)."""
    k = torch.arange(h, dtype=dtype)[:, None]
    l = torch.arange(w, dtype=dtype)[None]
    if laplacian == "continuous":
        return math.pi**2 * (k**2 / h**2 + l**2 / w**2)
    if laplacian == "discrete":
        return 4 * torch.sin(math.pi * k / (2 * h)) ** 2 + 4 * torch.sin(math.pi * l / (2 * w)) ** 2
    raise ValueError(f"unknown laplacian {laplacian!r}; valid: continuous, discrete")


class HeatBlur:
    """The blur operator ``F(t)`` and its schedule.

    Args:
        image_size: ``(H, W)``.
        sigma_blur_min, sigma_blur_max: Gaussian-blur widths (pixels) at ``t -> 0`` and ``t = 1``; ``t = 0`` itself
            is the unblurred image.
        laplacian: ``"continuous"`` (IHDM) or ``"discrete"`` (the 5-point finite-difference Laplacian).
    """

    def __init__(self, image_size: tuple[int, int], sigma_blur_min: float = 0.3, sigma_blur_max: float = 8.0,
                 laplacian: str = "continuous"):
        if not 0 < sigma_blur_min < sigma_blur_max:
            raise ValueError(f"need 0 < sigma_blur_min < sigma_blur_max, got {sigma_blur_min}, {sigma_blur_max}")
        self.image_size = tuple(image_size)
        self.sigma_blur_min, self.sigma_blur_max = sigma_blur_min, sigma_blur_max
        self.laplacian = laplacian
        self.lam = heat_eigenvalues(*self.image_size, laplacian)

    def tau(self, t: Tensor) -> Tensor:
        """Heat-equation time ``sigma_B(t)^2 / 2`` with ``sigma_B`` log-linear in ``t``; ``tau(0) = 0``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        log_s = math.log(self.sigma_blur_min) * (1 - t) + math.log(self.sigma_blur_max) * t
        return torch.where(t > 0, 0.5 * torch.exp(2 * log_s), torch.zeros_like(t))

    def attenuation(self, t: Tensor) -> Tensor:
        """``exp(-lambda tau_t)`` ``[B, 1, H, W]`` for ``t [B]`` (float64)."""
        tau = self.tau(t).reshape(-1, 1, 1, 1)
        return torch.exp(-self.lam.to(tau.device) * tau)

    def blur_tau(self, x: Tensor, tau: Tensor | float) -> Tensor:
        """``x [B, C, H, W]`` blurred by the heat equation to time ``tau`` (scalar or ``[B]``)."""
        tau = torch.as_tensor(tau, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
        d = torch.exp(-self.lam.to(x.device) * tau).to(x.dtype)
        return idct2(d * dct2(x))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """``F(t) x`` for ``x [B, C, H, W]`` and ``t [B]`` (or a scalar)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        return idct2(self.attenuation(t).to(x.device, x.dtype) * dct2(x))
