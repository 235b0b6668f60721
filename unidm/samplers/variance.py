"""The reverse step's variance in sigma-space: DDPM's fixed choices and Analytic-DPM's optimal one (Bao et al. 2022,
"Analytic-DPM: an Analytic Estimate of the Optimal Reverse Variance in Diffusion Probabilistic Models", Thm 1-2 and
Sec. 4), and the ELBO-optimal trajectory by dynamic programming. Pure mathematics over noise levels and the Gamma
statistics; the statistics themselves are computed in :mod:`unidm.likelihood.variance`.

A reverse step from ``sigma_r`` down to ``sigma_s`` of the DDIM family (Song et al. 2021, eq. 12 and 16), written in
sigma-space (``x = x_t / alpha_t``, ``x = x0 + sigma eps``), is the Gaussian

    p(x_s | x_r) = N(D + (sigma_down / sigma_r)(x_r - D), v I),   sigma_down = sqrt(sigma_s^2 - u^2),

where ``u = eta sigma_s sqrt(1 - sigma_s^2 / sigma_r^2)`` (capped at ``sigma_s``) is the noise of DDIM's forward
process ``q_lambda(x_s | x_r, x0) = N(x0 + (sigma_down / sigma_r)(x_r - x0), u^2 I)`` (``eta = 1``: DDPM's posterior).
The choices of ``v``:

| variance | ``v`` | note |
|---|---|---|
| ``beta-tilde`` | ``u^2`` | the forward posterior's own variance (today's default of ``ddpm`` and ``ddim``) |
| ``beta`` | ``eta^2 (sigma_r^2 - sigma_s^2)(1 + sigma_s^2) / (1 + sigma_r^2)`` | DDPM's ``1 - abar_r / abar_s`` |
| ``analytic`` | ``u^2 + c^2 m(sigma_r)``, ``c = 1 - sigma_down / sigma_r`` | Analytic-DPM's optimum |

(``beta`` is the skipped step's ``beta`` in sigma-space on the VP clock ``abar = 1 / (1 + sigma^2)``; ``m =
sigma_r^2 (1 - Gamma(sigma_r))``.)

Extended-Analytic-DPM (Bao et al. 2022b, "Estimating the Optimal Covariance with Imperfect Mean in Diffusion
Probabilistic Models", ICML) replaces the scalar ``m`` by a state-dependent diagonal one from a learned head
``h(x, sigma) [B, ...]`` in eps units (:data:`DIAGONAL_VARIANCES`, :func:`diagonal_posterior_variance`):

| variance | head learns | ``m(x)`` per dimension |
|---|---|---|
| ``npr`` | ``E[(eps - eps_hat)^2]`` given ``x``, the noise-prediction residual | ``sigma_r^2 h`` |
| ``sn`` | ``E[eps^2]`` given ``x``, the second moment of the noise | ``sigma_r^2 h - (x - D)^2`` |

and ``v(x) = u^2 + c^2 m(x)``, with ``m`` clipped to ``[0, (data_range / 2)^2]`` (the bound ``sigma^2`` holds for
the mean over ``x`` only).

``m(sigma) = E||x0 - E[x0 | x]||^2 / d`` is the mean posterior variance of ``x0``, and ``Gamma(sigma) =
E||(x - D(x, sigma)) / sigma||^2 / d`` over the data (Bao et al.'s ``E||eps_hat||^2 / d``). It is clipped to Bao et
al.'s bounds (Thm 2): ``0 <= m <= sigma_r^2`` always, and ``m <= (data_range / 2)^2`` for data in an interval of
width ``data_range`` (2 for images in [-1, 1]). See ``docs/variance.md`` for the derivation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "VARIANCES", "DIAGONAL_VARIANCES", "GammaFn", "HeadFn", "GammaStats", "ReverseKernel", "canonical_variance",
    "check_variance", "reverse_kernel", "posterior_variance_bound", "diagonal_posterior_variance", "step_costs",
    "trajectory_cost", "dp_trajectory", "dp_grid", "pixel_noise_clip",
]

#: the reverse variances of the ``ddpm`` and ``ddim`` samplers and of the K-step ELBO
VARIANCES = ("beta-tilde", "beta", "analytic")

#: the state-dependent diagonal variances of Extended-Analytic-DPM (Bao et al. 2022b): a learned head's
#: ``E[(eps - eps_hat)^2 | x]`` (NPR-DPM) or ``E[eps^2 | x]`` (SN-DPM); the ``ddpm`` and ``ddim`` samplers take them
#: with ``head=``
DIAGONAL_VARIANCES = ("npr", "sn")

#: ``Gamma(sigma)``: a :class:`GammaStats` table or any callable of a float noise level
GammaFn = Callable[[float], float]

#: a learned head ``h(x [B, ...], sigma [B], **cond) -> [B, ...]`` in eps units (see :data:`DIAGONAL_VARIANCES`)
HeadFn = Callable[..., Tensor]


def canonical_variance(variance: str, diagonal: bool = False) -> str:
    """``variance`` checked against :data:`VARIANCES` (``beta_tilde`` is accepted for ``beta-tilde``), and also
    against :data:`DIAGONAL_VARIANCES` when ``diagonal`` (the samplers take them; the Gamma-based ELBO does not)."""
    name = str(variance).replace("_", "-")
    valid = VARIANCES + DIAGONAL_VARIANCES if diagonal else VARIANCES
    if name not in valid:
        raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(valid)}")
    return name


def check_variance(variance: str, process=None, gamma: GammaFn | None = None, head: HeadFn | None = None,
                   diagonal: bool = False) -> str:
    """Refuse, with one line, a variance that cannot be used: ``analytic`` without Gamma statistics, ``npr`` or
    ``sn`` without a head (accepted at all only with ``diagonal=True`` or a ``head``), or any variance other than
    ``beta-tilde`` (which at ``eta = 0`` draws nothing) on a process whose kernel is not Gaussian (the optimal
    variance is that of a Gaussian posterior). Returns the canonical name."""
    name = canonical_variance(variance, diagonal=diagonal or head is not None)
    if name != "beta-tilde" and process is not None and not getattr(process, "gaussian_kernel", True):
        pname = getattr(process, "name", type(process).__name__)
        note = getattr(process, "kernel_note", None) or "has another (gaussian_kernel=False)"
        raise ValueError(f"variance={name!r} assumes a Gaussian transition kernel, but process {pname!r} "
                         f"{note}; use a deterministic sampler")
    if name == "analytic" and gamma is None:
        raise ValueError("variance='analytic' needs the Gamma statistics: pass gamma=unidm.likelihood."
                         "gamma_statistics(denoiser, x_train, sigmas) (or any callable sigma -> Gamma)")
    if name in DIAGONAL_VARIANCES and head is None:
        raise ValueError(f"variance={name!r} needs a learned head: sample a 'variance-head' run of kind {name!r} "
                         f"(unidm sample HEAD_RUN), or pass head=<that model>.predict")
    return name


# ---- the Gamma table ---------------------------------------------------------------------------------------------
@dataclass
class GammaStats:
    """``Gamma(sigma) = E||(x - D(x, sigma)) / sigma||^2 / d`` on a grid of noise levels, with Monte Carlo standard
    errors (:func:`unidm.likelihood.gamma_statistics` computes it).

    Calling it at a level of the table returns the stored value (relative tolerance 1e-9). Between two levels it
    interpolates linearly in ``log sigma`` and **warns once** that the grid was not the one the statistics were
    computed for; outside the table's range it refuses.

    Attributes:
        sigmas: ``[N]`` ascending float64 noise levels.
        gamma: ``[N]`` the estimates.
        stderr: ``[N]`` their standard errors.
        n: examples used; ``n_mc``: noise draws per example.
    """

    sigmas: Tensor
    gamma: Tensor
    stderr: Tensor
    n: int = 0
    n_mc: int = 1
    _warned: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).reshape(-1).cpu()
        self.gamma = torch.as_tensor(self.gamma, dtype=torch.float64).reshape(-1).cpu()
        self.stderr = torch.as_tensor(self.stderr, dtype=torch.float64).reshape(-1).cpu()
        if not (self.sigmas.numel() == self.gamma.numel() == self.stderr.numel() >= 1):
            raise ValueError("GammaStats needs sigmas, gamma and stderr of one length >= 1")
        if bool((self.sigmas.diff() <= 0).any()) or bool((self.sigmas <= 0).any()):
            raise ValueError("GammaStats sigmas must be positive and strictly ascending")

    def index(self, sigma: float) -> int | None:
        """The table index of ``sigma`` (relative tolerance 1e-9), or ``None``."""
        i = int(torch.searchsorted(self.sigmas, torch.tensor([sigma], dtype=torch.float64)).item())
        for j in (i - 1, i):
            if 0 <= j < len(self.sigmas) and abs(float(self.sigmas[j]) - sigma) <= 1e-9 * sigma:
                return j
        return None

    def __call__(self, sigma: float) -> float:
        sigma = float(sigma)
        j = self.index(sigma)
        if j is not None:
            return float(self.gamma[j])
        lo, hi = float(self.sigmas[0]), float(self.sigmas[-1])
        if not lo < sigma < hi:
            raise ValueError(f"noise level {sigma:.6g} is outside the Gamma statistics' range [{lo:.6g}, {hi:.6g}]; "
                             "compute them on the levels of this grid")
        if not self._warned:
            warnings.warn(f"noise level {sigma:.6g} is not one the Gamma statistics were computed for; "
                          "interpolating linearly in log sigma (compute them on this grid for exact values)",
                          stacklevel=2)
            self._warned = True
        log_s = torch.log(self.sigmas)
        i = int(torch.searchsorted(self.sigmas, torch.tensor([sigma], dtype=torch.float64)).item())
        w = (math.log(sigma) - float(log_s[i - 1])) / float(log_s[i] - log_s[i - 1])
        return float(self.gamma[i - 1]) * (1 - w) + float(self.gamma[i]) * w

    def posterior_variance(self, sigma: float) -> float:
        """``m(sigma) = sigma^2 (1 - Gamma(sigma))``, unclipped."""
        return float(sigma) ** 2 * (1.0 - self(sigma))

    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """``(tensors, metadata)`` for a safetensors file (the caller writes it, e.g. atomically, keyed by the
        weights' digest); :meth:`from_state` reads it back."""
        return ({"sigmas": self.sigmas, "gamma": self.gamma, "stderr": self.stderr},
                {"kind": "unidm.gamma_statistics", "n": str(self.n), "n_mc": str(self.n_mc)})

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> GammaStats:
        meta = metadata or {}
        return cls(tensors["sigmas"], tensors["gamma"], tensors["stderr"], n=int(meta.get("n", 0)),
                   n_mc=int(meta.get("n_mc", 1)))


# ---- one reverse step --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReverseKernel:
    """``p(x_s | x_r) = N(D + (sigma_down / sigma_r)(x_r - D), variance I)`` in sigma-space; ``q_variance`` is
    ``u^2`` of the forward ``q_lambda(x_s | x_r, x0)`` it approximates, ``x0_coef = 1 - sigma_down / sigma_r`` the
    weight of ``x0`` in that mean."""

    sigma_down: float
    q_variance: float
    variance: float
    x0_coef: float


def posterior_variance_bound(sigma: float, data_range: float | None = None) -> float:
    """The upper bound of ``m(sigma)`` (Bao et al. 2022, Thm 2): ``sigma^2``, and ``(data_range / 2)^2`` for data in
    an interval of that width."""
    bound = sigma**2
    return bound if data_range is None else min(bound, (data_range / 2) ** 2)


def reverse_kernel(sigma: float, sigma_next: float, eta: float = 1.0, variance: str = "beta-tilde",
                   gamma: GammaFn | None = None, data_range: float | None = None) -> ReverseKernel:
    """The reverse step ``sigma -> sigma_next`` (``0 < sigma_next < sigma``) of the DDIM family with stochasticity
    ``eta`` and the chosen variance (module docstring). For ``analytic`` the mean posterior variance
    ``m = sigma^2 (1 - gamma(sigma))`` is clipped to ``[0, posterior_variance_bound(sigma, data_range)]``.

    >>> k = reverse_kernel(2.0, 1.0, 1.0, "analytic", gamma=lambda s: s**2 / (1 + s**2))
    >>> round(k.variance, 6)  # the true Var(x_s | x_r) of x0 ~ N(0, 1): 2 - 2^2 / 5
    1.2
    """
    name = canonical_variance(variance)
    u = min(sigma_next, eta * sigma_next * math.sqrt(max(0.0, 1 - (sigma_next / sigma) ** 2)))
    sigma_down = math.sqrt(sigma_next**2 - u**2)
    c = 1.0 - sigma_down / sigma
    if name == "beta-tilde":
        v = u**2
    elif name == "beta":
        v = eta**2 * (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
    else:
        if gamma is None:
            raise ValueError("variance='analytic' needs gamma= (the Gamma statistics)")
        m = min(max(sigma**2 * (1.0 - float(gamma(sigma))), 0.0), posterior_variance_bound(sigma, data_range))
        v = u**2 + c**2 * m
    return ReverseKernel(sigma_down, u**2, v, c)


def diagonal_posterior_variance(variance: str, head_out: Tensor, x: Tensor, denoised: Tensor, sigma: float,
                                data_range: float | None = None) -> Tensor:
    """The state-dependent posterior variance of ``x0`` per dimension, ``m(x) [B, ...]`` in sigma-space, from a
    learned head's output ``head_out`` (eps units) at ``x`` with the mean model's ``denoised = D(x, sigma)`` (Bao et
    al. 2022b, the optimal diagonal covariance corrected for an imperfect mean (NPR-DPM) and the plain optimal one
    (SN-DPM)):

    - ``npr``: ``m = sigma^2 h``, ``h ~ E[(eps - eps_hat)^2 | x]`` (``eps - eps_hat = (D - x0) / sigma``, so
      ``m ~ E[(x0 - D)^2 | x]``, the mean model's own error);
    - ``sn``: ``m = sigma^2 (h - eps_hat^2) = sigma^2 h - (x - D)^2``, ``h ~ E[eps^2 | x]``
      (``= Var(x0 | x)`` per dimension when ``D = E[x0 | x]``),

    clipped elementwise to ``[0, (data_range / 2)^2]`` (``[0, inf)`` without ``data_range``). Of the ``analytic``
    variance's bounds only these hold pointwise: ``m <= sigma^2`` bounds the *mean* ``E Var(x0 | x)`` but not
    ``Var(x0 | x)`` at one ``x`` (between two modes it is of the order of their distance squared at any sigma),
    while the variance of a variable in an interval never exceeds a quarter of its width squared. The step's
    variance is then ``u^2 + c^2 m`` (:class:`ReverseKernel`'s ``q_variance`` and ``x0_coef``)."""
    name = canonical_variance(variance, diagonal=True)
    if name not in DIAGONAL_VARIANCES:
        raise ValueError(f"{name!r} is not a state-dependent variance; valid: {', '.join(DIAGONAL_VARIANCES)}")
    sigma = float(sigma)
    m = sigma**2 * head_out if name == "npr" else sigma**2 * head_out - (x - denoised) ** 2
    return m.clamp(0.0, None if data_range is None else (data_range / 2) ** 2)


def pixel_noise_clip(num_levels: int = 256, pixels: float = 2.0) -> float:
    """Bao et al.'s clip of the noise of the step that lands on the smallest level (their released sampler): the
    standard deviation at which the mean absolute noise ``std sqrt(2 / pi)`` is ``pixels`` quantization steps of
    data in [-1, 1], i.e. ``pixels (2 / (num_levels - 1)) sqrt(pi / 2)``. Pass it as the samplers' ``clip_last``."""
    return pixels * 2.0 / (num_levels - 1) * math.sqrt(math.pi / 2)


# ---- the trajectory ----------------------------------------------------------------------------------------------
def step_costs(sigmas: Tensor, gamma: Tensor, eta: float = 1.0, variance: str = "analytic",
               data_range: float | None = None) -> Tensor:
    """``[N, N]`` expected KL per dimension (nats) of the reverse step ``sigmas[r] -> sigmas[s]`` for ``s < r``
    (``inf`` elsewhere), when the denoiser's mean posterior variance is ``m = sigma_r^2 (1 - gamma_r)`` (clipped as in
    :func:`reverse_kernel`):

        KL / d = 1/2 [(u^2 + c^2 m) / v - 1 + log(v / u^2)],

    which for the analytic ``v = u^2 + c^2 m`` is ``1/2 log(v / u^2)`` (Bao et al. 2022, eq. 11). ``sigmas``
    ascending and positive, ``gamma`` the statistics there; needs ``eta > 0``."""
    if eta <= 0:
        raise ValueError(f"the per-step KL needs eta > 0 (DDIM's q_lambda is deterministic at eta = 0), got {eta}")
    name = canonical_variance(variance)
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    g = torch.as_tensor(gamma, dtype=torch.float64)
    s, r = sig[:, None], sig[None, :]
    valid = s < r
    ratio = torch.where(valid, (s / r) ** 2, torch.zeros_like(s * r))
    u2 = torch.minimum(s**2, eta**2 * s**2 * (1 - ratio))
    sd = torch.sqrt(torch.clamp(s**2 - u2, min=0.0))
    c = 1 - sd / r
    bound = sig**2 if data_range is None else torch.clamp(sig**2, max=(data_range / 2) ** 2)
    m = torch.minimum(torch.clamp(sig**2 * (1 - g), min=0.0), bound)[None, :]
    if name == "beta-tilde":
        v = u2
    elif name == "beta":
        v = eta**2 * (r**2 - s**2) * (1 + s**2) / (1 + r**2)
    else:
        v = u2 + c**2 * m
    cost = 0.5 * ((u2 + c**2 * m) / v - 1 + torch.log(v / u2))
    return torch.where(valid, cost, torch.full_like(cost, math.inf))


def trajectory_cost(costs: Tensor, indices: Sequence[int]) -> float:
    """The sum of ``costs[s, r]`` over consecutive ``(s, r)`` of ascending ``indices``."""
    return float(sum(costs[a, b] for a, b in zip(indices[:-1], indices[1:])))


def dp_trajectory(costs: Tensor, steps: int) -> list[int]:
    """The ``steps`` indices ``0 = i_1 < ... < i_K = N - 1`` that minimize the summed step cost (Bao et al. 2022,
    Sec. 4): ``best_k(r) = min_{s < r} best_{k-1}(s) + costs[s, r]``, ``O(K N^2)`` time. The first and last level are
    fixed (the decoder's level and the prior's), as in the paper. ``costs`` is :func:`step_costs`' matrix."""
    n = costs.shape[0]
    if not 1 <= steps <= n:
        raise ValueError(f"the dp trajectory needs 1 <= steps <= {n} (the number of levels), got steps={steps}")
    if steps == 1:
        return [n - 1]
    if steps == n:
        return list(range(n))
    best = torch.full((n,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    back = torch.zeros((steps, n), dtype=torch.long)
    for k in range(1, steps):
        total = best[:, None] + costs
        best, back[k] = total.min(0)
    path = [n - 1]
    for k in range(steps - 1, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


def dp_grid(stats: GammaStats, steps: int, eta: float = 1.0, variance: str = "analytic",
            data_range: float | None = None) -> Tensor:
    """The ELBO-optimal ``steps``-step sampling grid over the levels of ``stats`` (for a ``vp-discrete`` model, its
    timesteps): descending, then 0, as every grid of :mod:`unidm.samplers.grids`."""
    costs = step_costs(stats.sigmas, stats.gamma, eta, variance, data_range)
    idx = dp_trajectory(costs, steps)
    levels = stats.sigmas[idx].flip(0)
    return torch.cat([levels, levels.new_zeros(1)])
