"""Gaussian forward processes ``x_t = alpha_t * x0 + sigma_t * eps`` (t = 0 data, t = t_max prior).

Every process here is a pair of schedules ``(alpha_t, sigma_t)`` with their time derivatives. Dividing by
``alpha_t`` maps each of them onto the same variance-exploding process in *sigma-space*,
``x = x_t / alpha_t = x0 + sigma * eps`` with ``sigma = sigma_t / alpha_t`` (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Sec. 2 and Table 1), which is where samplers work.

The forward SDE ``dx_t = f(t) x_t dt + g(t) dW`` (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", eq. 5) that has these marginals has ``f = d log alpha / dt`` and ``g^2 = d sigma_t^2/dt - 2 f sigma_t^2``
(Kingma et al. 2021, "Variational Diffusion Models", App. A).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from ..rng import Generators, randn, row_generators

__all__ = [
    "GaussianProcess",
    "VPLinear",
    "VPDiscrete",
    "VPCosine",
    "VE",
    "SubVP",
    "EDM",
    "RectifiedFlow",
    "PROCESSES",
    "build_process",
    "takes_data_dim",
    "gaussian_prior_sample",
    "gaussian_log_prob",
    "per_example",
]


_LOG_2PI = math.log(2 * math.pi)


def per_example(sigma: Tensor | float, x: Tensor) -> Tensor | float:
    """``sigma`` shaped to broadcast over ``x [B, ...]``: a ``[B]`` tensor becomes ``[B, 1, ...]``; a scalar or an
    already broadcastable tensor is returned as it is."""
    if isinstance(sigma, Tensor) and sigma.ndim == 1 and x.ndim > 1:
        return sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return sigma


def gaussian_prior_sample(
    shape: Sequence[int], sigma_max: float, seeds: Sequence[int] | None = None, generator: Generators = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> Tensor:
    """``sigma_max * eps``, ``eps ~ N(0, I)`` of shape ``shape``, drawn on the CPU and moved to ``device`` (so a
    seed gives the same numbers on every device). With ``seeds`` (one per row), row ``i`` comes from a generator
    seeded with ``seeds[i]`` alone; else from ``generator`` (one, one per row, or the global RNG)."""
    shape = tuple(shape)
    eps = randn(shape, row_generators(shape[0], seeds, generator), dtype, "cpu")
    return (eps * sigma_max).to(device)


def gaussian_log_prob(x: Tensor, variance: float) -> Tensor:
    """``[B]`` ``log N(x; 0, variance I)`` summed over all non-batch dimensions."""
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat.pow(2).sum(1) / variance + d * (math.log(variance) + _LOG_2PI))


def _as_tensor(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    return torch.tensor(t, dtype=dtype)


class GaussianProcess(ABC):
    """A Gaussian forward process ``x_t = alpha_t x0 + sigma_t eps`` on ``t in [0, t_max]``.

    Subclasses give ``alpha``, ``sigma`` and their derivatives; everything else (log-SNR, the map to and from
    sigma-space, SDE drift and diffusion) follows here. All methods take ``t`` as a tensor of any shape and work
    in its dtype (float64 in the tests).

    **The kernel hooks** (the forward process and its prior, after Song et al. 2021's ``sde_lib``: ``marginal_prob``,
    ``prior_sampling``, ``prior_logp``), all in sigma-space ``x = x0 + sigma * z``: :meth:`perturb` draws ``x`` given
    ``x0`` (the denoising loss draws through it), :meth:`prior_sample` draws the start of sampling at ``sigma_max``,
    :meth:`prior_log_prob` scores the end of the ODE likelihood. Here ``z ~ N(0, I)``. A subclass with another
    location-scale law for ``z`` (e.g. the Student-t kernel of PFGM++, Xu et al. 2023, "PFGM++: Unlocking the
    Potential of Physics-Inspired Generative Models", eq. 4 with ``r = sigma sqrt(D)``) overrides the three and sets
    ``gaussian_kernel = False``: the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` with
    ``D = E[x0 | x]`` still transports its marginals, so deterministic samplers and the ODE likelihood carry over,
    while the samplers that draw Gaussian transition noise refuse it (:func:`unidm.samplers.check_sampler`).

    **Data dimension at build time.** A process whose ``__init__`` takes a keyword argument ``data_dim`` gets
    ``data_dim = prod(data_shape)`` from the family that builds it (:func:`build_process`); it is not a user option
    (``process_options`` may not set it), and it is not part of :meth:`config` unless the process chooses to record
    it there.

    Attributes:
        t_max: the prior end of the time axis (1, except EDM where ``t = sigma``).
        t_min: smallest time used in training and as the default end of sampling grids.
        gaussian_kernel: whether ``x | x0`` is Gaussian (Tweedie's score, ancestral and SDE steps, EDM churn are
            valid only then).
    """

    name: str = "gaussian"
    t_max: float = 1.0
    t_min: float = 1e-3
    gaussian_kernel: bool = True

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma_t(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_sigma_t(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_of_t`: the time at which the sigma-space noise level is ``sigma``."""

    # ---- derived quantities -------------------------------------------------------------------------------
    def sigma_of_t(self, t: Tensor) -> Tensor:
        """Sigma-space noise level ``sigma = sigma_t / alpha_t``."""
        return self.sigma_t(t) / self.alpha(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda_t = log(alpha_t^2 / sigma_t^2) = -2 log sigma``."""
        return -2.0 * torch.log(self.sigma_of_t(t))

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt)``."""
        return self.alpha(t), self.sigma_t(t), self.d_alpha(t), self.d_sigma_t(t)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_of_t(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_of_t(torch.tensor(self.t_max_sampling, dtype=torch.float64)))

    @property
    def t_max_sampling(self) -> float:
        """Where sampling starts (``t_max``, or just below it where ``alpha`` vanishes there)."""
        return self.t_max

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """``f(t) = d log alpha_t / dt``; the SDE drift is ``f(t) * x_t``."""
        return self.d_alpha(t) / self.alpha(t)

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t) = sqrt(d sigma_t^2 / dt - 2 f(t) sigma_t^2)``."""
        s = self.sigma_t(t)
        g2 = 2 * s * self.d_sigma_t(t) - 2 * self.drift_coefficient(t) * s**2
        return torch.sqrt(torch.clamp(g2, min=0.0))

    def drift(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Forward SDE drift ``f(t) x_t`` (``t`` broadcast over the batch dimension)."""
        f = self.drift_coefficient(t)
        return f.reshape(-1, *([1] * (x_t.ndim - 1))) * x_t

    def marginal(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = alpha_t x0 + sigma_t eps`` with ``t`` of shape ``(B,)``."""
        shape = (-1, *([1] * (x0.ndim - 1)))
        return self.alpha(t).reshape(shape) * x0 + self.sigma_t(t).reshape(shape) * eps

    # ---- the kernel hooks (sigma-space, x = x0 + sigma z) --------------------------------------------------
    def perturb(self, x0: Tensor, sigma: Tensor | float, generator: Generators = None) -> Tensor:
        """``x = x0 + sigma * z`` with ``z ~ N(0, I)``, a draw from the kernel ``p(x | x0, sigma)``.

        Args:
            x0: data ``[B, ...]``.
            sigma: noise level, a scalar or one per example ``[B]`` (or anything broadcastable to ``x0``).
            generator: one ``torch.Generator``, one per row, or ``None`` (see :func:`unidm.rng.randn`).
        """
        z = randn(x0.shape, generator, x0.dtype, x0.device)
        return x0 + per_example(sigma, x0) * z

    def prior_sample(
        self, shape: Sequence[int], sigma_max: float, seeds: Sequence[int] | None = None,
        generator: Generators = None, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ) -> Tensor:
        """``[shape]`` draws from the prior at ``sigma_max``: ``sigma_max * z``, ``z ~ N(0, I)`` (with ``seeds``,
        row ``i`` depends only on ``seeds[i]``). This is what :func:`unidm.samplers.prior_noise` draws."""
        return gaussian_prior_sample(shape, sigma_max, seeds, generator, dtype, device)

    def prior_log_prob(self, x: Tensor, sigma_max: float, prior_variance: float = 0.0) -> Tensor:
        """``[B]`` ``log N(x; 0, (sigma_max^2 + prior_variance) I)``, the prior of the ODE likelihood
        (Song et al. 2021, App. D.2); ``prior_variance`` is the data variance the Gaussian keeps."""
        return gaussian_log_prob(x, sigma_max**2 + prior_variance)

    def config(self) -> dict:
        """Init arguments, so that ``PROCESSES[name](**config)`` rebuilds this process."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class _VPBase(GaussianProcess):
    """Variance preserving: ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, from ``log abar_t``."""

    @abstractmethod
    def log_alpha_bar(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_log_alpha_bar(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def t_of_log_alpha_bar(self, lab: Tensor) -> Tensor: ...

    def alpha(self, t):
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma_t(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def d_alpha(self, t):
        return 0.5 * self.alpha(t) * self.d_log_alpha_bar(t)

    def d_sigma_t(self, t):
        abar = torch.exp(self.log_alpha_bar(t))
        return -0.5 * abar * self.d_log_alpha_bar(t) / self.sigma_t(t)

    def sigma_of_t(self, t):
        # sigma^2 = (1 - abar) / abar = exp(-log abar) - 1, computed without cancellation
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(t)))

    def t_of_sigma(self, sigma):
        return self.t_of_log_alpha_bar(-torch.log1p(sigma**2))


class VPLinear(_VPBase):
    """Continuous VP SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021, eq. 11;
    the continuous limit of DDPM's linear betas, Ho et al. 2020)."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def log_alpha_bar(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def d_log_alpha_bar(self, t):
        return -(self.beta_min + (self.beta_max - self.beta_min) * t)

    def t_of_log_alpha_bar(self, lab):
        db = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 2 * db * lab)) / db

    def config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VPDiscrete(_VPBase):
    """DDPM's discrete process (Ho et al. 2020, Sec. 2): ``beta_i`` linear from ``beta_start`` to ``beta_end`` for
    ``i = 1..T``, ``abar_i = prod_{j<=i} (1 - beta_j)`` placed at ``t_i = i / T``. Between the grid points
    ``log abar`` is interpolated linearly (and ``log abar(0) = 0``), so the process is defined for every ``t``
    and its discrete steps are exactly DDPM's. Training draws ``t`` from the grid (``discrete_t``)."""

    name = "vp-discrete"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000,
                 betas: Sequence[float] | None = None):
        if betas is None:
            table = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        else:  # any explicit schedule (scaled-linear, cosine-derived, trained): ``num_steps`` follows it
            table = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if len(table) < 1 or not bool(((table > 0) & (table < 1)).all()):
                raise ValueError("process_options.betas must be a non-empty list of numbers in (0, 1)")
            num_steps = len(table)
        self.beta_start, self.beta_end, self.num_steps = beta_start, beta_end, num_steps
        self._explicit = betas is not None
        self._betas = table
        self._lab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-table), 0)])
        self.t_min = 1.0 / num_steps

    @property
    def betas(self) -> Tensor:
        return self._betas.clone()

    def _table(self, t: Tensor) -> Tensor:
        return self._lab.to(device=t.device, dtype=t.dtype)

    def log_alpha_bar(self, t):
        lab = self._table(t)
        u = torch.clamp(t, 0.0, 1.0) * self.num_steps
        i = torch.clamp(u.floor().long(), max=self.num_steps - 1)
        w = u - i.to(t.dtype)
        return lab[i] * (1 - w) + lab[i + 1] * w

    def d_log_alpha_bar(self, t):
        lab = self._table(t)
        u = torch.clamp(t, 0.0, 1.0) * self.num_steps
        i = torch.clamp(u.floor().long(), max=self.num_steps - 1)
        return (lab[i + 1] - lab[i]) * self.num_steps

    def t_of_log_alpha_bar(self, target):
        lab = self._table(target)
        neg = -lab  # increasing
        x = torch.clamp(-target, min=0.0, max=float(neg[-1]))
        i = torch.clamp(torch.searchsorted(neg, x.contiguous(), right=True) - 1, 0, self.num_steps - 1)
        w = (x - neg[i]) / (neg[i + 1] - neg[i])
        return (i.to(target.dtype) + w) / self.num_steps

    def discrete_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``n`` training times drawn uniformly from DDPM's grid ``{1..T} / T``."""
        i = torch.randint(1, self.num_steps + 1, (n,), generator=generator, device=device)
        return i.to(torch.get_default_dtype()) / self.num_steps

    def config(self):
        if self._explicit:
            return {"betas": self._betas.tolist()}
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "num_steps": self.num_steps}


class VPCosine(_VPBase):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): ``abar_t = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s))``,
    with ``t_max`` just short of 1 where ``abar`` would vanish."""

    name = "vp-cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self._t_top = s, t_min, t_max
        self._log_c0 = 2 * math.log(math.cos(math.pi / 2 * s / (1 + s)))

    @property
    def t_max_sampling(self):
        return self._t_top

    def _phase(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def log_alpha_bar(self, t):
        return 2 * torch.log(torch.cos(self._phase(t))) - self._log_c0

    def d_log_alpha_bar(self, t):
        return -2 * torch.tan(self._phase(t)) * math.pi / 2 / (1 + self.s)

    def t_of_log_alpha_bar(self, lab):
        c = torch.exp(0.5 * (lab + self._log_c0))
        return torch.acos(torch.clamp(c, -1.0, 1.0)) * 2 / math.pi * (1 + self.s) - self.s

    def config(self):
        return {"s": self.s, "t_min": self.t_min, "t_max": self._t_top}


class VE(GaussianProcess):
    """Variance exploding (NCSN / SMLD; Song et al. 2021, eq. 9): ``alpha = 1``,
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``. At ``t = 0`` the data carry ``sigma_min`` of noise,
    negligible at the default 0.01; sampling grids go on to 0."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self._smin, self._smax = sigma_min, sigma_max
        self.t_min = 0.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma_t(self, t):
        return self._smin * torch.exp(t * self._log_ratio)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma_t(self, t):
        return self.sigma_t(t) * self._log_ratio

    def t_of_sigma(self, sigma):
        return torch.clamp(torch.log(sigma / self._smin) / self._log_ratio, min=0.0)

    def config(self):
        return {"sigma_min": self._smin, "sigma_max": self._smax}


class SubVP(_VPBase):
    """Sub-VP SDE (Song et al. 2021, eq. 17): ``alpha_t = sqrt(abar_t)``, ``sigma_t = 1 - abar_t`` with the
    linear-beta ``abar_t`` of :class:`VPLinear`."""

    name = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self._vp = VPLinear(beta_min, beta_max, t_min)
        self.t_min = t_min

    def log_alpha_bar(self, t):
        return self._vp.log_alpha_bar(t)

    def d_log_alpha_bar(self, t):
        return self._vp.d_log_alpha_bar(t)

    def t_of_log_alpha_bar(self, lab):
        return self._vp.t_of_log_alpha_bar(lab)

    def sigma_t(self, t):
        return -torch.expm1(self.log_alpha_bar(t))

    def d_sigma_t(self, t):
        return -torch.exp(self.log_alpha_bar(t)) * self.d_log_alpha_bar(t)

    def sigma_of_t(self, t):
        lab = self.log_alpha_bar(t)
        return -torch.expm1(lab) * torch.exp(-0.5 * lab)

    def t_of_sigma(self, sigma):
        # sigma = (1 - a^2) / a with a = sqrt(abar): a = (sqrt(sigma^2 + 4) - sigma) / 2
        a = 2.0 / (torch.sqrt(sigma**2 + 4) + sigma)
        return self.t_of_log_alpha_bar(2 * torch.log(a))

    def config(self):
        return self._vp.config()


class EDM(GaussianProcess):
    """EDM (Karras et al. 2022, Table 1): ``alpha = 1``, ``sigma = t``; time is the noise level itself, so
    ``t_max = sigma_max``."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min, self.t_max = sigma_min, sigma_max

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma_t(self, t):
        return t

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def d_sigma_t(self, t):
        return torch.ones_like(t)

    def t_of_sigma(self, sigma):
        return sigma

    def config(self):
        return {"sigma_min": self.t_min, "sigma_max": self.t_max}


class RectifiedFlow(GaussianProcess):
    """Flow matching / rectified flow with the straight path ``x_t = (1 - t) x0 + t eps`` (Lipman et al. 2023,
    "Flow Matching for Generative Modeling", eq. 20 with sigma_min = 0; Liu et al. 2023, "Flow Straight and
    Fast", eq. 1). In sigma-space ``sigma = t / (1 - t)``; sampling starts just below ``t = 1``."""

    name = "flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999):
        self.t_min, self._t_top = t_min, t_max

    @property
    def t_max_sampling(self):
        return self._t_top

    def alpha(self, t):
        return 1 - t

    def sigma_t(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma_t(self, t):
        return torch.ones_like(t)

    def t_of_sigma(self, sigma):
        return sigma / (1 + sigma)

    def config(self):
        return {"t_min": self.t_min, "t_max": self._t_top}


PROCESSES: dict[str, type[GaussianProcess]] = {
    cls.name: cls for cls in (VPLinear, VPDiscrete, VPCosine, VE, SubVP, EDM, RectifiedFlow)
}


def takes_data_dim(cls: type) -> bool:
    """Whether process class ``cls`` takes the keyword ``data_dim`` (the build-time convention of
    :class:`GaussianProcess`)."""
    params = inspect.signature(cls).parameters.values()
    return any(p.name == "data_dim" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)


def build_process(name: str, options: dict | None = None, data_dim: int | None = None,
                  registry: dict | None = None) -> GaussianProcess:
    """``PROCESSES[name](**options)``, plus ``data_dim=data_dim`` when the class takes it (and ``data_dim`` is
    known). ``options`` may not hold ``data_dim``: the data decide it, not the user."""
    registry = PROCESSES if registry is None else registry
    options = dict(options or {})
    if name not in registry:
        raise ValueError(f"unknown process {name!r}; valid: {', '.join(sorted(registry))}")
    cls = registry[name]
    if "data_dim" in options:
        raise ValueError(f"process option 'data_dim' of {name!r} is set from the data, not by the user")
    if data_dim is not None and takes_data_dim(cls):
        options["data_dim"] = int(data_dim)
    return cls(**options)
