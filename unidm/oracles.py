"""Closed-form denoisers and densities at every noise level (DESIGN.md, "Oracles").

For data ``x0 ~ p`` and ``x = x0 + sigma * eps`` the ideal denoiser is ``D(x, sigma) = E[x0 | x]``:

- :class:`GaussianOracle` ``N(mu, diag(v))``: ``D = mu + v / (v + sigma^2) (x - mu)``; the marginal is
  ``N(mu, v + sigma^2)``; the probability-flow ODE carries ``x(sigma0)`` to
  ``mu + sqrt((v + sigma^2) / (v + sigma0^2)) (x(sigma0) - mu)``.
- :class:`GaussianMixtureOracle`: the same per component, weighted by the posterior responsibilities at sigma.
- :class:`GaussianRectifiedFlow`: the exact 1- and 2-rectified flows from ``N(0, I)`` to ``N(mu, c^2 I)`` (Liu et al.
  2022), as velocities in both time conventions and as denoisers.
- :class:`EmpiricalOracle` (a finite training set): a softmax over ``-|x - x_i|^2 / (2 sigma^2)`` of the points.
- :class:`PFGMPPPointSetOracle`: the same finite set under the PFGM++ kernel (Xu et al. 2023), a softmax over
  ``-(N + D)/2 log(|x - x_i|^2 + r^2)`` with ``r = sigma sqrt(D)``; :func:`pfgmpp_kernel_log_prob` is that kernel's
  normalized density and :func:`poisson_field` the exact electric field of the point set in the augmented
  ``(N + D)``-dimensional space (Xu et al. 2022, PFGM, for ``D = 1``).

Each is a valid :class:`~unidm.denoiser.DenoiserFn` (``oracle(x, sigma)``), so any sampler, loss or likelihood
can be run against exact mathematics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .utils import as_sigma_batch

__all__ = ["GaussianOracle", "GaussianMixtureOracle", "GaussianRectifiedFlow", "EmpiricalOracle", "PFGMPPPointSetOracle",
           "pfgmpp_kernel_log_prob", "poisson_field", "sphere_area"]

_LOG_2PI = math.log(2 * math.pi)


def _col(sigma: Tensor) -> Tensor:
    return sigma.reshape(-1, 1)


class GaussianOracle:
    """``x0 ~ N(mu, diag(var))`` on flat vectors of dimension ``d``."""

    def __init__(self, mean: Tensor, var: Tensor):
        self.mean = torch.as_tensor(mean)
        self.var = torch.as_tensor(var, dtype=self.mean.dtype).expand_as(self.mean).clone()

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        mu, v = self.mean.to(x), self.var.to(x)
        return mu + v / (v + s2) * (x - mu)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """Exact ``log p_sigma(x)`` of the noised marginal ``N(mu, v + sigma^2)`` [B]."""
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        var = self.var.to(x) + s2
        return -0.5 * (((x - self.mean.to(x)) ** 2 / var) + torch.log(var) + _LOG_2PI).sum(-1)

    def entropy(self) -> float:
        return float(0.5 * (torch.log(2 * math.pi * math.e * self.var)).sum())

    def sample(self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype)
        return self.mean + torch.sqrt(self.var + sigma**2) * z

    def ode_solution(self, x: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
        """Exact probability-flow ODE map from noise level ``sigma_from`` to ``sigma_to``."""
        s0 = _col(as_sigma_batch(sigma_from, x)) ** 2
        s1 = _col(as_sigma_batch(sigma_to, x)) ** 2
        mu, v = self.mean.to(x), self.var.to(x)
        return mu + torch.sqrt((v + s1) / (v + s0)) * (x - mu)


class GaussianMixtureOracle:
    """``x0 ~ sum_k w_k N(mu_k, diag(var_k))``.

    Args:
        weights: ``[K]`` mixture weights (normalized here).
        means: ``[K, d]``.
        variances: ``[K, d]``, ``[K]`` or a scalar (per-component isotropic).
    """

    def __init__(self, weights: Tensor, means: Tensor, variances: Tensor | float):
        self.means = torch.as_tensor(means)
        w = torch.as_tensor(weights, dtype=self.means.dtype)
        self.weights = w / w.sum()
        v = torch.as_tensor(variances, dtype=self.means.dtype)
        if v.ndim == 1:
            v = v[:, None]
        self.variances = v.expand_as(self.means).clone()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _component_log_probs(self, x: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
        var = self.variances.to(x)[None] + s2[:, :, None]  # [B, K, d]
        diff = x[:, None, :] - self.means.to(x)[None]
        logp = -0.5 * ((diff**2 / var) + torch.log(var) + _LOG_2PI).sum(-1)  # [B, K]
        return logp + torch.log(self.weights.to(x))[None], var

    def responsibilities(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Posterior ``p(k | x)`` at noise level sigma [B, K]."""
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, _ = self._component_log_probs(x, s2)
        return torch.softmax(logp, dim=-1)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, var = self._component_log_probs(x, s2)
        r = torch.softmax(logp, dim=-1)
        mu, v = self.means.to(x)[None], self.variances.to(x)[None]
        per_comp = mu + v / var * (x[:, None, :] - mu)
        return (r[:, :, None] * per_comp).sum(1)

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        logp, _ = self._component_log_probs(x, s2)
        return torch.logsumexp(logp, dim=-1)

    def sample(
        self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None, return_labels: bool = False
    ):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        x = self.means[k] + torch.sqrt(self.variances[k] + sigma**2) * z
        return (x, k) if return_labels else x

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        within = (self.weights[:, None] * self.variances).sum(0)
        return torch.diag(within) + (self.weights[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)

    def entropy(self, n: int = 200_000, seed: int = 0) -> float:
        """Monte Carlo ``H = -E log p(x0)`` (standard error ~ std / sqrt(n))."""
        g = torch.Generator().manual_seed(seed)
        return float(-self.log_prob(self.sample(n, generator=g)).mean())


class GaussianRectifiedFlow:
    """The exact ``k``-rectified flow from ``N(0, I)`` to ``N(mu, c^2 I)`` (Liu et al. 2022, "Flow Straight and
    Fast", Sec. 2-3; the Gaussian case in closed form).

    **Time conventions.** Liu et al. run ``tau`` from noise (``tau = 0``, ``X0 ~ N(0, I)``) to data (``tau = 1``,
    ``X1``) on ``X_tau = tau X1 + (1 - tau) X0``; unidm runs ``t = 1 - tau`` from data (``t = 0``) to the prior
    (``t = 1``) on ``x_t = (1 - t) x0 + t eps`` (the ``flow`` process), so ``v_unidm(x, t) = -v_liu(x, 1 - t)``.
    In sigma-space (``x = x_t / (1 - t)``, ``sigma = t / (1 - t)``) the ODE ``dx_t/dt = v`` is the probability flow of
    the denoiser ``D(x, sigma) = x_t - t v_unidm(x_t, t)``.

    - ``k = 1`` (the independent coupling): ``v_liu(x, tau) = mu + (tau c^2 - (1 - tau)) / (tau^2 c^2 + (1 - tau)^2)
      (x - tau mu)``, the flow-matching velocity ``E[X1 - X0 | X_tau = x]``; as a denoiser it is exactly
      :class:`GaussianOracle` ``(mu, c^2)``. Its path from ``z`` is ``tau mu + s(tau) z`` with ``s(tau) =
      sqrt(tau^2 c^2 + (1 - tau)^2)``: curved for every ``c > 0`` (``s`` is not affine in ``tau``), with
      straightness ``d c (2 - pi / 2)``.
    - ``k >= 2`` (one reflow of the 1-RF coupling ``(z, mu + c z)``, a straight deterministic coupling, which further
      reflows leave unchanged): ``mu + (c - 1) z`` along the straight path from ``z``; as a field
      ``v_liu(x, tau) = mu + (c - 1) (x - tau mu) / (1 + tau (c - 1))``. Straightness 0; one Euler step is exact.

    Args:
        mean: ``mu`` ``[d]``.
        scale: ``c > 0`` (the data's standard deviation per coordinate).
        k: the reflow count (1 or more).

    Example:
        >>> mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
        >>> rf, gauss = GaussianRectifiedFlow(mu, 0.5), GaussianOracle(mu, torch.full((2,), 0.25, dtype=torch.float64))
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> torch.allclose(rf(x, 0.7), gauss(x, 0.7))
        True
        >>> z = torch.randn(4, 2, dtype=torch.float64)
        >>> two = GaussianRectifiedFlow(mu, 0.5, k=2)
        >>> torch.allclose(z - 1.0 * two.velocity(z, torch.ones(4, dtype=torch.float64)), two.transport(z))
        True
    """

    def __init__(self, mean: Tensor, scale: float, k: int = 1):
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale c must be a finite number > 0, got {scale!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (the reflow count) must be a whole number >= 1, got {k!r}")
        self.mean, self.scale, self.k = torch.as_tensor(mean), float(scale), k

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def velocity_liu(self, x: Tensor, tau: Tensor | float) -> Tensor:
        """``v(x, tau)`` in Liu et al.'s convention (``tau = 0`` noise, ``tau = 1`` data) [B, d]."""
        tau = _col(as_sigma_batch(tau, x))
        mu, c = self.mean.to(x), self.scale
        if self.k == 1:
            return mu + (tau * c**2 - (1 - tau)) / (tau**2 * c**2 + (1 - tau) ** 2) * (x - tau * mu)
        return mu + (c - 1) * (x - tau * mu) / (1 + tau * (c - 1))

    def velocity(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """``dx_t / dt`` in unidm's convention (``t = 0`` data, ``t = 1`` prior): ``-v_liu(x_t, 1 - t)``."""
        return -self.velocity_liu(x_t, 1 - as_sigma_batch(t, x_t))

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """The denoiser ``D(x, sigma) = x_t - t v(x_t, t)`` with ``t = sigma / (1 + sigma)``,
        ``x_t = x / (1 + sigma)``."""
        sigma = as_sigma_batch(sigma, x)
        t = sigma / (1 + sigma)
        x_t = x / _col(1 + sigma)
        return x_t - _col(t) * self.velocity(x_t, t)

    def path(self, z: Tensor, t: Tensor | float) -> Tensor:
        """The exact ODE state at unidm time ``t`` of the trajectory that starts at the prior point ``z`` (t = 1)."""
        tau = _col(1 - as_sigma_batch(t, z))
        mu, c = self.mean.to(z), self.scale
        s = torch.sqrt(tau**2 * c**2 + (1 - tau) ** 2) if self.k == 1 else 1 + tau * (c - 1)
        return tau * mu + s * z

    def transport(self, z: Tensor) -> Tensor:
        """The map from the prior to the data, ``mu + c z`` (the same for every ``k``)."""
        return self.mean.to(z) + self.scale * z

    def straightness(self) -> float:
        """The exact straightness ``E int_0^1 |(Z1 - Z0) - dZ_t/dt|^2 dt`` of its trajectories (summed over dims):
        ``d c (2 - pi / 2)`` for ``k = 1`` (from ``int s'^2 = 1 + c^2 - c pi / 2``), 0 for ``k >= 2``."""
        return self.dim * self.scale * (2 - math.pi / 2) if self.k == 1 else 0.0

    def coupling_straightness(self) -> float:
        """``E int_0^1 Var(X1 - X0 | X_tau) dtau`` of the **independent** coupling (summed over dims):
        ``d c pi / 2``, the flow-matching loss of the exact 1-RF velocity on independent pairs."""
        return self.dim * self.scale * math.pi / 2


class EmpiricalOracle:
    """The ideal denoiser of a finite training set ``{x_i}`` (uniform weights, no component variance)."""

    def __init__(self, points: Tensor):
        self.points = torch.as_tensor(points)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        return self.weights(x, sigma) @ self.points.to(x)

    def weights(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        d2 = torch.cdist(x, self.points.to(x)) ** 2
        return torch.softmax(-d2 / (2 * s2), dim=-1)

    def log_prob(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s2 = _col(as_sigma_batch(sigma, x)) ** 2
        d = x.shape[1]
        d2 = torch.cdist(x, self.points.to(x)) ** 2
        return (
            torch.logsumexp(-d2 / (2 * s2), dim=-1)
            - math.log(self.points.shape[0])
            - 0.5 * d * (torch.log(s2[:, 0]) + _LOG_2PI)
        )


# ---- Poisson flows: the PFGM++ kernel, its point-set posterior mean, and the exact field ------------------------
def check_aug_dim(aug_dim, what: str = "aug_dim") -> int | None:
    """``aug_dim`` as PFGM++'s number ``D`` of augmented dimensions: a positive integer, or ``None`` for
    ``D = inf`` (written ``None``, ``"inf"`` or ``math.inf``), where the kernel is EDM's Gaussian.

    Raises:
        ValueError: one line naming ``what`` for 0, a negative number, a non-integer, a bool or any other value.

    >>> check_aug_dim(128), check_aug_dim("inf"), check_aug_dim(None)
    (128, None, None)
    """
    if aug_dim is None or (isinstance(aug_dim, str) and aug_dim.strip().lower() in ("inf", "infinity")):
        return None
    if isinstance(aug_dim, float) and math.isinf(aug_dim) and aug_dim > 0:
        return None
    if isinstance(aug_dim, bool) or not isinstance(aug_dim, int) or aug_dim <= 0:
        raise ValueError(f"{what} must be a positive integer D (the augmented dimensions of PFGM++) or 'inf' "
                         f"(EDM's Gaussian kernel), got {aug_dim!r}")
    return int(aug_dim)


def pfgmpp_kernel_log_prob(u: Tensor, sigma: Tensor | float, aug_dim: int | None) -> Tensor:
    """``[B]`` log density of the PFGM++ perturbation kernel at the offsets ``u = x - y`` (``[B, ...]``, flattened to
    ``N`` dimensions), with ``r = sigma sqrt(D)`` (Xu et al. 2023, "PFGM++", eq. 4 and Sec. 3.2):

        p_r(x | y) = Gamma((N+D)/2) / (Gamma(D/2) (pi D)^(N/2) sigma^N) (1 + |u|^2 / (D sigma^2))^(-(N+D)/2)

    which is ``(|u|^2 + r^2)^(-(N+D)/2)`` normalized: the ``N``-variate Student-t with ``D`` degrees of freedom and
    scale ``sigma``. ``aug_dim=None`` (``D = inf``) gives ``log N(u; 0, sigma^2 I)``. ``sigma`` is a scalar or ``[B]``.

    >>> u = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    >>> ref = torch.distributions.StudentT(torch.tensor(3.0, dtype=torch.float64), 0.0, 2.0).log_prob(u[:, 0])
    >>> bool(torch.allclose(pfgmpp_kernel_log_prob(u, 2.0, 3), ref))
    True
    """
    flat = u.reshape(u.shape[0], -1)
    n = flat.shape[1]
    s = as_sigma_batch(sigma, flat)
    sq = flat.pow(2).sum(1)
    if aug_dim is None:
        return -0.5 * sq / s**2 - n * torch.log(s) - 0.5 * n * _LOG_2PI
    d = aug_dim
    const = math.lgamma((n + d) / 2) - math.lgamma(d / 2) - n / 2 * math.log(math.pi * d)
    return const - n * torch.log(s) - (n + d) / 2 * torch.log1p(sq / (d * s**2))


def _sq_dist(x: Tensor, points: Tensor) -> Tensor:
    """``[B, K]`` squared distances, without the cancellation of the ``|x|^2 - 2 x.y + |y|^2`` expansion."""
    return torch.cdist(x, points, compute_mode="donot_use_mm_for_euclid_dist") ** 2


class PFGMPPPointSetOracle:
    """The exact posterior mean ``E[y | x, r]`` of a finite, weighted point set ``{y_i}`` under the PFGM++ kernel
    ``p_r(x | y) ∝ (|x - y|^2 + r^2)^(-(N+D)/2)`` with ``r = sigma sqrt(D)`` (Xu et al. 2023, "PFGM++: Unlocking
    the Potential of Physics-Inspired Generative Models", eq. 4 and the alignment of Sec. 4):

        D(x, sigma) = sum_i w_i(x) y_i,   w_i ∝ w_i0 (|x - y_i|^2 + r^2)^(-(N+D)/2),

    computed in log space as a softmax over ``log w_i0 - (N+D)/2 log1p(|x - y_i|^2 / r^2)`` (the ``r``-only factor
    cancels, and ``log1p`` keeps the ``O(1/D)`` departure from the Gaussian weights exact for large ``D``). As
    ``D -> inf`` the weights tend to :class:`EmpiricalOracle`'s ``exp(-|x - y_i|^2 / (2 sigma^2))``, with an error of
    order ``1/D``; ``aug_dim=None`` is that limit exactly. At ``sigma = 0`` the mean is the nearest point.

    A :class:`~unidm.denoiser.DenoiserFn`: with it, the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
    is PFGM++'s backward ODE ``dx/dr = (x - E[y | x, r]) / r`` (eq. 6 of the paper after the change of variable).

    Args:
        points: ``[K, ...]`` the set (each flattened to ``N`` numbers); ``x`` passed to the oracle has shape
            ``[B, ...]`` with the same trailing shape.
        aug_dim: ``D`` (a positive integer) or ``None`` / ``"inf"`` for the Gaussian limit.
        weights: ``[K]`` non-negative point weights (normalized here), uniform by default.
        process: optional forward process the oracle belongs to (kept as ``.process``, so samplers refuse the
            Gaussian-only methods and the ODE likelihood takes its prior from it); its ``aug_dim`` must agree.

    Example:
        >>> pts = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
        >>> D = PFGMPPPointSetOracle(pts, aug_dim=128)
        >>> D(torch.tensor([[0.9, 0.1]], dtype=torch.float64), 0.05)
        tensor([[1., 0.]], dtype=torch.float64)
    """

    def __init__(self, points: Tensor, aug_dim: int | str | None, weights: Tensor | None = None,
                 process: object | None = None):
        self.points = torch.as_tensor(points)
        self.aug_dim = check_aug_dim(aug_dim)
        w = torch.ones(self.points.shape[0], dtype=self.points.dtype) if weights is None else torch.as_tensor(
            weights, dtype=self.points.dtype)
        if w.shape != (self.points.shape[0],) or bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ValueError(f"weights must be {self.points.shape[0]} non-negative numbers with a positive sum")
        self.log_weights = torch.log(w / w.sum())
        if process is not None and getattr(process, "aug_dim", self.aug_dim) != self.aug_dim:
            raise ValueError(f"process has aug_dim={process.aug_dim!r} but the oracle aug_dim={self.aug_dim!r}")
        self.process = process

    @property
    def dim(self) -> int:
        """``N``, the data dimension."""
        return self.points[0].numel()

    def r(self, sigma: Tensor | float) -> Tensor | float:
        """``r = sigma sqrt(D)``, the augmented radius of noise level ``sigma``."""
        return sigma * math.sqrt(self.aug_dim) if self.aug_dim is not None else math.inf * sigma

    def _flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), self.points.reshape(self.points.shape[0], -1).to(x)

    def _log_kernel(self, d2: Tensor, s2: Tensor) -> Tensor:
        """``[B, K]`` ``log p_r(x | y_i)`` up to the ``x``-independent normalization (minus ``-N log sigma``)."""
        if self.aug_dim is None:
            return -d2 / (2 * s2)
        n, d = self.dim, self.aug_dim
        return -(n + d) / 2 * torch.log1p(d2 / (d * s2))

    def weights(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``[B, K]`` posterior weights ``p(y_i | x, r)``; one-hot on the nearest point where ``sigma = 0``."""
        flat, pts = self._flat(x)
        s2 = _col(as_sigma_batch(sigma, flat)) ** 2
        d2 = _sq_dist(flat, pts)
        zero = s2 == 0
        logits = self.log_weights.to(x)[None] + self._log_kernel(d2, torch.where(zero, torch.ones_like(s2), s2))
        w = torch.softmax(logits, dim=-1)
        if bool(zero.any()):
            nearest = torch.nn.functional.one_hot(d2.argmin(-1), pts.shape[0]).to(w)
            w = torch.where(zero, nearest, w)
        return w

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        _, pts = self._flat(x)
        return (self.weights(x, sigma) @ pts).reshape(x.shape)

    def log_prob(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``[B]`` exact ``log p_sigma(x) = log sum_i w_i0 p_r(x | y_i)`` (:func:`pfgmpp_kernel_log_prob` per point)."""
        flat, pts = self._flat(x)
        s = as_sigma_batch(sigma, flat)
        per = torch.stack([pfgmpp_kernel_log_prob(flat - p, s, self.aug_dim) for p in pts], 1)
        return torch.logsumexp(self.log_weights.to(x)[None] + per, dim=-1)


def sphere_area(dim: int) -> float:
    """``S_{dim-1}(1) = 2 pi^(dim/2) / Gamma(dim/2)``, the area of the unit sphere in ``R^dim``."""
    return math.exp(math.log(2) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2))


def poisson_field(x_aug: Tensor, points: Tensor, *, weights: Tensor | None = None, normalize: bool = False) -> Tensor:
    """The exact electric (Poisson) field of a point set at augmented points ``x_aug`` (Xu et al. 2022, "Poisson Flow
    Generative Models", eq. 3 for ``D = 1``; Xu et al. 2023, "PFGM++", eq. 3 for any ``D``).

    The charges sit at ``(y_i, 0)`` in ``R^(N+D)`` with total charge 1 (``w_i``, uniform by default); the field is
    minus the gradient of the potential that solves ``lap phi = -rho``:

        E(x~) = 1 / S_{N+D-1}(1) * sum_i w_i (x~ - y~_i) / |x~ - y~_i|^(N+D),

    computed with every magnitude in log space (a common factor taken out), so the direction stays exact where
    ``|x~ - y~_i|^(N+D)`` under- or overflows.

    Args:
        x_aug: ``[B, N + D]`` augmented points ``(x, z)``, ``z`` the ``D`` extra coordinates.
        points: ``[K, N]`` the data (placed at ``z = 0``) or ``[K, N + D]`` already augmented.
        weights: ``[K]`` charges (normalized to sum 1).
        normalize: return the unit vector ``E / |E|`` (PFGM's normalized field without its ``sqrt(N)`` factor)
            instead of ``E``; use it for large ``N + D``, where ``|E|`` itself underflows.

    Returns:
        ``[B, N + D]``. At ``x~ = (x, z)`` with ``|z| = r`` it equals ``c (x - E[y | x, r], z)`` with ``c > 0``, the
        posterior mean of :class:`PFGMPPPointSetOracle`: following the field is following the PFGM++ ODE
        ``dx/dr = (x - E[y | x, r]) / r``. Singular (NaN) exactly at a charge.

    Memory ``B K (N + D)`` numbers (one difference vector per query and charge): batch large sets.

    >>> pts = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    >>> poisson_field(torch.tensor([[3.0, 0.0, 4.0]], dtype=torch.float64), pts, normalize=True)
    tensor([[0.6000, 0.0000, 0.8000]], dtype=torch.float64)
    """
    m = x_aug.shape[1]
    pts = torch.as_tensor(points).to(x_aug).reshape(points.shape[0], -1)
    if pts.shape[1] > m:
        raise ValueError(f"points have {pts.shape[1]} coordinates, more than x_aug's {m}")
    pts = torch.nn.functional.pad(pts, (0, m - pts.shape[1]))
    w = torch.ones(pts.shape[0], dtype=x_aug.dtype) if weights is None else torch.as_tensor(weights).to(x_aug)
    diff = x_aug[:, None, :] - pts[None]  # [B, K, N + D]
    log_c = torch.log(w / w.sum()).to(x_aug)[None] - m / 2 * torch.log(diff.pow(2).sum(-1))  # [B, K]
    top = log_c.max(1, keepdim=True).values
    vec = (torch.exp(log_c - top)[..., None] * diff).sum(1)
    if normalize:
        return vec / vec.norm(dim=1, keepdim=True)
    return vec * torch.exp(top - math.log(sphere_area(m)))
