"""PFGM++ as a forward process: EDM's noise levels with the Poisson-flow perturbation kernel.

PFGM++ (Xu et al. 2023, "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models") places the data
``y in R^N`` as charges in ``R^(N+D)`` and perturbs them with the kernel

    p_r(x | y) ∝ (|x - y|^2 + r^2)^(-(N+D)/2)                                     (eq. 4)

whose radius obeys ``|x - y|^2 / r^2 ~ BetaPrime(N/2, D/2)``. With the alignment ``r = sigma sqrt(D)`` (Sec. 4) this
is the ``N``-variate Student-t with ``D`` degrees of freedom and scale ``sigma``, i.e. the location-scale kernel
``x = y + sigma z``, ``z = g / sqrt(chi2_D / D)``, ``g ~ N(0, I_N)``; as ``D -> inf``, ``z -> N(0, I)`` and the process
is EDM (Karras et al. 2022). Because the kernel is location-scale, the backward ODE ``dx/dr = (x - E[y | x, r]) / r``
(eq. 6) is the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` with ``D = E[y | x]`` under this kernel
(DESIGN.md, "Beyond the Gaussian kernel"): every deterministic sampler, grid, guidance wrapper and the ODE likelihood
work unchanged, and training is the denoising loss drawn through :meth:`PFGMPP.perturb` with EDM's preconditioning
and log-normal noise levels, as in the paper (App. C). See ``docs/pfgm.md``.

Random numbers come from :mod:`unidm.rng` (one generator, or one per row so that a row's draw is its own); the
chi-square (and Beta-prime) draws use :func:`sample_gamma`, Marsaglia and Tsang's method driven by those generators
(``torch._standard_gamma`` takes none).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..oracles import check_aug_dim, pfgmpp_kernel_log_prob
from ..rng import Generators, rand, randn, row_generators, seed_generators  # noqa: F401 (seed_generators: the doctests)
from .gaussian import EDM, per_example

__all__ = ["PFGMPP", "PFGM_PROCESSES", "sample_gamma", "kernel_noise", "kernel_noise_radial", "check_aug_dim"]

#: candidates drawn per element and round of :func:`sample_gamma` (acceptance >= 95% each, so one round nearly always)
_BLOCK = 4


def _work_dtype(device) -> torch.dtype:
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _per_row(generator: Generators) -> bool:
    return generator is not None and not isinstance(generator, torch.Generator)


def sample_gamma(shape: Sequence[int], concentration: float, generator: Generators = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """``Gamma(concentration, 1)`` draws of shape ``shape``, exactly, from ``generator``.

    Marsaglia & Tsang (2000), "A Simple Method for Generating Gamma Variables": for ``a >= 1``, with
    ``d = a - 1/3``, ``c = 1 / sqrt(9 d)``, ``x ~ N(0, 1)``, ``v = (1 + c x)^3``, ``u ~ U(0, 1)``, accept ``d v`` when
    ``v > 0`` and ``log u < x^2 / 2 + d - d v + d log v``; for ``a < 1``, ``Gamma(a) = Gamma(a + 1) U^(1/a)``.
    Each element draws a block of candidates at a time and keeps the first accepted one, so the draw is vectorized;
    with one generator per row (``shape[0]`` of them) a row's numbers, and so its values, depend on its generator
    alone. Computed in float64 and cast to ``dtype``.

    >>> g = sample_gamma((3,), 2.5, seed_generators([0, 1, 2]))
    >>> bool(torch.equal(g[2:], sample_gamma((1,), 2.5, seed_generators([2]))))
    True
    """
    alpha = float(concentration)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"gamma concentration must be a finite positive number, got {concentration!r}")
    shape = tuple(int(s) for s in shape)
    work = _work_dtype(device)
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.zeros(shape, dtype=work, device=device)
    todo = torch.ones(shape, dtype=torch.bool, device=device)
    rows = torch.arange(shape[0] if shape else 0, device=device)
    while rows.numel():
        gens = [generator[i] for i in rows.tolist()] if _per_row(generator) else generator
        block = (rows.numel(), *shape[1:], _BLOCK)
        x = randn(block, gens, work, device)
        u = rand(block, gens, work, device)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        first = ok.to(work).argmax(-1, keepdim=True)  # the first accepted candidate
        value = d * v.gather(-1, first).squeeze(-1)
        hit = ok.any(-1) & todo[rows]
        out[rows] = torch.where(hit, value, out[rows])
        left = todo[rows] & ~hit
        todo[rows] = left
        rows = rows[left.reshape(rows.numel(), -1).any(1)]
    if alpha < 1:  # boost: Gamma(a) = Gamma(a + 1) U^(1/a), with U in (0, 1]
        u = 1 - rand(shape, generator, work, device)
        out = torch.exp(torch.log(out) + torch.log(u) / alpha)
    return out.to(dtype)


def kernel_noise(shape: Sequence[int], aug_dim: int, generator: Generators = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """``z = g / sqrt(chi2_D / D)`` of shape ``shape`` (``[B, ...]``): the PFGM++ kernel offset at ``sigma = 1``,
    so that ``y + sigma z ~ p_r(. | y)`` with ``r = sigma sqrt(D)``. ``g ~ N(0, I_N)`` per row (``N`` =
    ``prod(shape[1:])``) and one ``chi2_D = 2 Gamma(D/2)`` per row (:func:`sample_gamma`), drawn in that order from the
    row's generator."""
    d = check_aug_dim(aug_dim)
    if d is None:
        raise ValueError("kernel_noise needs a finite aug_dim; D = inf is the Gaussian eps")
    shape = tuple(shape)
    g = randn(shape, generator, dtype, device)
    chi2 = 2 * sample_gamma(shape[:1], d / 2, generator, device=device)
    return g * per_example(torch.rsqrt(chi2 / d).to(dtype), g)


def kernel_noise_radial(shape: Sequence[int], aug_dim: int, generator: Generators = None,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The same law as :func:`kernel_noise`, drawn as PFGM++'s reference implementation does (Xu et al. 2023,
    App. B): a uniform direction ``g / |g|`` times the radius ``|z| = sqrt(D T)``,
    ``T = |x - y|^2 / r^2 ~ BetaPrime(N/2, D/2)``, the ratio ``Gamma(N/2) / Gamma(D/2)`` of two independent
    :func:`sample_gamma` draws. Per row: the normals, then ``Gamma(N/2)``, then ``Gamma(D/2)``."""
    d = check_aug_dim(aug_dim)
    if d is None:
        raise ValueError("kernel_noise_radial needs a finite aug_dim; D = inf is the Gaussian eps")
    shape = tuple(shape)
    n = math.prod(shape[1:])
    g = randn(shape, generator, dtype, device)
    ratio = sample_gamma(shape[:1], n / 2, generator, device=device) / sample_gamma(shape[:1], d / 2, generator,
                                                                                      device=device)
    norm = g.reshape(shape[0], -1).norm(dim=1).to(ratio.dtype)
    return g * per_example((torch.sqrt(d * ratio) / norm).to(dtype), g)


class PFGMPP(EDM):
    """PFGM++ with ``D = aug_dim`` augmented dimensions, on EDM's clock (``alpha = 1``, ``sigma = t``,
    ``sigma`` in ``[sigma_min, sigma_max]``) and with ``r = sigma sqrt(D)``.

    Hooks (sigma-space, ``x = x0 + sigma z``): :meth:`perturb` draws the kernel ``p_r(x | x0)``
    (:func:`kernel_noise`); :meth:`prior_sample` draws the same kernel around 0 at ``sigma_max``, a generator per
    seed; :meth:`prior_log_prob` is its multivariate-t log density; ``gaussian_kernel`` is ``False``, so the samplers
    that draw Gaussian noise are refused (:func:`unidm.samplers.check_sampler`).

    ``aug_dim=None`` (or ``"inf"``, ``math.inf``) is ``D = inf``: then every hook is EDM's, ``gaussian_kernel`` is
    ``True``, and losses and samples are bit for bit those of ``process="edm"``. A finite ``D``, however large, keeps
    the exact t kernel (within ``O(1/D)`` of EDM's, never switched silently).

    Args:
        aug_dim: ``D``, a positive integer (the paper recommends 128 or 2048 for CIFAR-10's ``N = 3072``), or
            ``None`` / ``"inf"``.
        sigma_min, sigma_max: EDM's range (0.002, 80).
        data_dim: ``N = prod(data_shape)``, passed by :func:`~unidm.processes.build_process` (not a user option);
            recorded for reference (``r``, the docs' ``D/N``): the hooks read ``N`` from the tensors they get.
    """

    name = "pfgmpp"

    def __init__(self, aug_dim: int | str | None = 128, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 data_dim: int | None = None):
        super().__init__(sigma_min, sigma_max)
        self.aug_dim = check_aug_dim(aug_dim, "process option aug_dim")
        self.data_dim = None if data_dim is None else int(data_dim)
        self.gaussian_kernel = self.aug_dim is None

    def r_of_sigma(self, sigma: Tensor | float) -> Tensor | float:
        """``r = sigma sqrt(D)``, the augmented-space radius of noise level ``sigma`` (inf for ``D = inf``)."""
        return sigma * math.sqrt(self.aug_dim) if self.aug_dim is not None else sigma * math.inf

    def perturb(self, x0: Tensor, sigma: Tensor | float, generator: Generators = None) -> Tensor:
        """``x = x0 + sigma z``, ``z`` from :func:`kernel_noise`: a draw from ``p_r(x | x0)`` with
        ``r = sigma sqrt(D)`` (EDM's ``x0 + sigma eps`` for ``D = inf``). ``sigma`` scalar or ``[B]``."""
        if self.aug_dim is None:
            return super().perturb(x0, sigma, generator)
        z = kernel_noise(x0.shape, self.aug_dim, generator, x0.dtype, x0.device)
        return x0 + per_example(sigma, x0) * z

    def prior_sample(
        self, shape: Sequence[int], sigma_max: float, seeds: Sequence[int] | None = None,
        generator: Generators = None, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> Tensor:
        """``sigma_max z``, the kernel around ``y = 0`` at ``r_max = sigma_max sqrt(D)`` (the paper's prior,
        Sec. 3.2), drawn on the CPU and moved to ``device``; with ``seeds`` row ``i`` depends only on ``seeds[i]``."""
        if self.aug_dim is None:
            return super().prior_sample(shape, sigma_max, seeds, generator, dtype, device)
        shape = tuple(shape)
        generator = row_generators(shape[0], seeds, generator)
        return (sigma_max * kernel_noise(shape, self.aug_dim, generator, dtype, "cpu")).to(device)

    def prior_log_prob(self, x: Tensor, sigma_max: float, prior_variance: float = 0.0) -> Tensor:
        """``[B]`` log density of the prior: the kernel around 0 with its scale inflated to
        ``s = sqrt(sigma_max^2 + prior_variance)`` (:func:`unidm.oracles.pfgmpp_kernel_log_prob`), the same rule as
        the Gaussian prior's ``N(0, (sigma_max^2 + prior_variance) I)``, which it becomes as ``D -> inf``.

        ``prior_variance`` is the data's per-dimension second moment (the ODE likelihood passes ``sigma_data^2``):
        the true ``p_{sigma_max}`` is the data convolved with the kernel; widening the kernel's scale by the data's
        spread leaves an error of order ``prior_variance / sigma_max^2`` per dimension, like the Gaussian's (and,
        for ``D <= 2``, where the t has no variance to match, it is a matched scale rather than a matched moment)."""
        if self.aug_dim is None:
            return super().prior_log_prob(x, sigma_max, prior_variance)
        return pfgmpp_kernel_log_prob(x, math.sqrt(sigma_max**2 + prior_variance), self.aug_dim)

    def config(self) -> dict:
        return {"aug_dim": "inf" if self.aug_dim is None else self.aug_dim, **super().config()}


#: this module's processes, merged into :data:`unidm.processes.PROCESSES`
PFGM_PROCESSES: dict[str, type[EDM]] = {PFGMPP.name: PFGMPP}
