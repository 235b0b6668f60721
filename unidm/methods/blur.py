"""Blur diffusion (inverse heat dissipation) as a :class:`GenerativeModel`.

Forward process: ``x_t = F(t) x0 + sigma eps`` with ``F(t)`` the heat equation in the DCT basis
(:class:`unidm.processes.blur.HeatBlur`; Rissanen et al. 2023, IHDM, eq. 5-6). The network predicts ``x0`` from
``x_t`` (``D = x_t + net(x_t, t)``); trained with the mean squared error. Since ``F`` is linear,
``E[x_s | x_t] = F(s) E[x0 | x_t]``, so this is IHDM's "predict the less blurred image" for every ``s`` at once and
the number of sampling steps is free.

Sampling walks the blur back from the prior at ``t = 1`` (a Gaussian fit of the maximally blurred training images,
almost only their mean colour) by predicting ``x0`` and blurring it again to the next level:

- ``"ancestral"``: ``x_s = F(s) D(x_t, t) + delta eps`` (IHDM Algorithm 2; the small fresh noise ``delta`` is what
  makes the reverse process stochastic and the samples diverse, IHDM Sec. 3.2);
- ``"cold"``: ``x_s = x_t - F(t) D(x_t, t) + F(s) D(x_t, t)`` (Bansal et al. 2022, "Cold Diffusion", Algorithm 2),
  deterministic after the prior draw.

The last step returns ``D(x_{t_K}, t_K)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..processes.blur import HeatBlur, dct2, idct2
from ..rng import Generators, randn
from ..utils import check_kwargs
from .base import GenerativeModel, TrainableModel

__all__ = ["BlurDiffusion", "BLUR_FAMILIES", "BLUR_SAMPLERS"]


def step_ancestral(model: "BlurDiffusion", x: Tensor, x0: Tensor, t: Tensor, s: Tensor, generator: Generators, *,
                   delta: float | None = None) -> Tensor:
    """IHDM's reverse step (Rissanen et al. 2023, Algorithm 2): ``x_s = F(s) D(x_t, t) + delta eps``; ``delta``
    defaults to the model's."""
    delta = model.delta if delta is None else delta
    return model.blur(x0, s) + delta * randn(x.shape, generator, device=x.device)


def step_cold(model: "BlurDiffusion", x: Tensor, x0: Tensor, t: Tensor, s: Tensor, generator: Generators) -> Tensor:
    """Cold Diffusion's improved step (Bansal et al. 2022, Algorithm 2): ``x_s = x_t - F(t) D + F(s) D``."""
    return x - model.blur(x0, t) + model.blur(x0, s)


#: the blur family's samplers: one reverse step each
BLUR_SAMPLERS = {"ancestral": step_ancestral, "cold": step_cold}


class BlurDiffusion(GenerativeModel):
    """Inverse heat dissipation on images ``[B, C, H, W]``.

    Args:
        net: ``net(x_t, c_noise, class_labels=None) -> [B, C, H, W]``, a noise-agnostic image network (UNet).
        image_shape: ``(C, H, W)``.
        sigma_blur_min, sigma_blur_max, laplacian: the blur schedule (:class:`HeatBlur`).
        sigma: training noise added to the blurred image; delta: sampling noise (IHDM uses ``delta = 1.25 sigma``).
        prior_coefficients: the lowest-frequency DCT coefficients modelled with a full covariance in the prior.
    """

    family = "blur"
    samplers = BLUR_SAMPLERS
    grids = ("uniform-t",)
    default_sampling = {"sampler": "ancestral", "steps": 64, "grid": "uniform-t"}
    sampler_seed_offset = 104_729
    sampler_internal = ("model", "x", "x0", "t", "s", "generator")

    def __init__(self, net: nn.Module, image_shape: Sequence[int], sigma_blur_min: float = 0.3,
                 sigma_blur_max: float = 8.0, laplacian: str = "continuous", sigma: float = 0.02,
                 delta: float = 0.025, prior_coefficients: int = 16):
        super().__init__(image_shape)
        self.net = net
        self.blur = HeatBlur(self.data_shape[-2:], sigma_blur_min, sigma_blur_max, laplacian)
        self.sigma, self.delta = sigma, delta
        c, h, w = self.data_shape
        order = self.blur.lam.flatten().argsort()[: max(1, min(prior_coefficients, h * w))]
        idx = (torch.arange(c)[:, None] * h * w + order[None]).flatten()
        self.register_buffer("prior_index", idx)
        self.register_buffer("prior_mean", torch.zeros(c * h * w))
        self.register_buffer("prior_std", torch.zeros(c * h * w))
        self.register_buffer("prior_chol", torch.zeros(len(idx), len(idx)))

    @torch.no_grad()
    def fit_prior(self, x0: Tensor) -> None:
        """The prior at ``t = 1``: the maximally blurred training images as a Gaussian in the DCT basis, with a full
        covariance over the lowest frequencies (of each channel) and independent coefficients elsewhere."""
        z = dct2(self.blur(x0.double(), torch.ones(len(x0), dtype=torch.float64))).reshape(len(x0), -1)
        self.prior_mean.copy_(z.mean(0))
        self.prior_std.copy_(z.std(0))
        low = z[:, self.prior_index] - z[:, self.prior_index].mean(0)
        cov = low.T @ low / max(len(z) - 1, 1) + 1e-8 * torch.eye(len(self.prior_index), dtype=z.dtype)
        self.prior_chol.copy_(torch.linalg.cholesky(cov))

    def sample_prior(self, n: int, generator=None) -> Tensor:
        """``x_1 [n, C, H, W]``: a draw from the fitted prior plus the noise ``sigma``."""
        d = self.prior_mean.numel()
        eps = randn((n, d + len(self.prior_index)), generator, device=self.prior_mean.device).to(self.prior_mean.dtype)
        z = self.prior_mean + self.prior_std * eps[:, :d]
        z[:, self.prior_index] = self.prior_mean[self.prior_index] + eps[:, d:] @ self.prior_chol.T
        x = idct2(z.reshape(n, *self.data_shape))
        noise = randn((n, *self.data_shape), generator, device=x.device)
        return x + self.sigma * noise

    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``D(x_t, t) ~ E[x0 | x_t]`` ``[B, C, H, W]``."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return x_t + self.net(x_t, t)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``|D(F(t) x0 + sigma eps, t) - x0|^2`` averaged over pixels, ``t ~ U(0, 1)`` ``[B]``."""
        x0 = batch["x"].float()
        b = x0.shape[0]
        t = torch.rand(b, generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = self.blur(x0, t) + self.sigma * eps
        return (self.denoise(x_t, t) - x0).pow(2).reshape(b, -1).mean(-1)

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 **options) -> Tensor:
        """``n`` images by walking the blur back over ``steps`` equal steps of ``t`` with one of
        :data:`BLUR_SAMPLERS` (``ancestral`` takes ``delta``, the sampling noise)."""
        plan = self.check_sampling(sampler, steps, grid, options)
        step = BLUR_SAMPLERS[plan.sampler]
        gens = self.sample_generators(seeds, generator)
        with self.evaluating():
            x = self.sample_prior(n, gens).float()
            ts = torch.linspace(1.0, 0.0, plan.steps + 1)
            for k in range(plan.steps):
                t, s = ts[k], ts[k + 1]
                x0 = self.denoise(x, t)
                x = x0 if k == plan.steps - 1 else step(self, x, x0, t, s, gens, **plan.options)
        return x

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: dict[str, TrainableModel] | None = None) -> "BlurDiffusion":
        """Build for an image dataset (``kind="image"``, ``[N, C, H, W]``); the prior is fitted on its training
        split."""
        from ..nn import build_network

        if data.kind != "image" or len(data.shape) != 3:
            raise ValueError(f"family 'blur' needs image data [N, C, H, W], got {data.name!r} of kind {data.kind!r}")
        method = dict(method_cfg)
        check_kwargs(cls, method, "method option for family 'blur'", exclude=("net", "image_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "unet")
        derived = {"dim": int(torch.tensor(data.shape).prod()), "in_channels": data.shape[0],
                   "image_size": data.shape[-1], "num_classes": 0}
        net = build_network(arch, derived, **model)
        obj = cls(net, data.shape, **method)
        if len(data.train):  # (a run loaded without its data keeps the fitted prior in its weights)
            obj.fit_prior(data.train)
        return obj


BLUR_FAMILIES: dict[str, type[GenerativeModel]] = {"blur": BlurDiffusion}
