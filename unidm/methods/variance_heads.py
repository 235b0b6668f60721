"""Extended-Analytic-DPM: a learned state-dependent diagonal reverse variance on a frozen mean model (Bao et al.
2022b, "Estimating the Optimal Covariance with Imperfect Mean in Diffusion Probabilistic Models", ICML).

A ``variance-head`` run trains one network ``h(x, sigma) [B, ...]`` on top of a frozen Gaussian run (the
*teacher*, whose denoiser ``D`` is the mean model; ``method.teacher=RUN``), in eps units of sigma-space
(``x = x0 + sigma eps``, ``eps_hat = (x - D) / sigma``):

| ``kind`` | regression target (MSE) | ``h`` estimates | ``m(x)`` = posterior variance of ``x0`` per dimension |
|---|---|---|---|
| ``npr`` (NPR-DPM) | ``(eps - eps_hat)^2 = ((x0 - D) / sigma)^2`` | ``E[(eps - eps_hat)^2]`` given x | ``sigma^2 h`` |
| ``sn`` (SN-DPM) | ``eps^2`` | ``E[eps^2]`` given ``x`` | ``sigma^2 h - (x - D)^2`` |

NPR's ``m`` is the teacher's own expected squared error at ``x``, the variance that is optimal *for that mean*
(the paper's correction for an imperfect mean); SN's is ``Var(x0 | x)`` only when ``D = E[x0 | x]``. Sampling is the
``ddpm`` / ``ddim`` step of :mod:`unidm.samplers.stochastic` with the teacher's mean and the variance
``u^2 + c^2 m(x)`` (clipped as Analytic-DPM's); the likelihood is the K-step ELBO of a ``vp-discrete`` teacher with
that variance (:func:`head_trajectory_elbo`). See ``docs/variance.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..likelihood.elbo import DiscreteSchedule, ElboResult, _decoder_nll, _sum
from ..likelihood.variance import trajectory_prior, trajectory_timesteps
from ..parameterization import c_in, c_noise
from ..processes import NOISE_LEVELS, VPDiscrete
from ..samplers import GRIDS, check_sampler, make_grid, sample
from ..samplers.stochastic import sample_ddim, sample_ddpm
from ..samplers.variance import (
    DIAGONAL_VARIANCES,
    HeadFn,
    canonical_variance,
    check_variance,
    diagonal_posterior_variance,
    reverse_kernel,
)
from ..utils import as_options, as_sigma_batch, check_choice, check_kwargs
from .base import DenoisingModel, GenerativeModel, SupportsLikelihood, TrainableModel

__all__ = ["VarianceHead", "head_trajectory_elbo", "VARIANCE_HEAD_FAMILIES"]

#: options of the head's K-step ELBO
HEAD_ELBO_OPTIONS = ["steps", "trajectory", "eta", "data_range", "variance"]


def _check_teacher(teacher: Any) -> DenoisingModel:
    if teacher is None:
        raise ValueError("family 'variance-head' needs a frozen mean model: method.teacher=RUN_DIR, the folder of a "
                         "trained Gaussian (diffusion) run")
    process = getattr(teacher, "process", None)
    if not isinstance(teacher, DenoisingModel) or not getattr(process, "gaussian_kernel", False):
        what = getattr(teacher, "family", type(teacher).__name__)
        raise ValueError(f"method.teacher must be a Gaussian diffusion run (a denoiser D(x, sigma) with a Gaussian "
                         f"kernel); got a {what!r} model")
    return teacher


class VarianceHead(GenerativeModel, SupportsLikelihood):
    """NPR-DPM or SN-DPM: a network ``h(x, sigma)`` trained on a frozen Gaussian teacher (module docstring).

    Args:
        net: a noise-agnostic network ``net(c_in x, c_noise, **cond) -> [B, ...]`` (same shape as ``x``).
        teacher: the frozen mean model, a :class:`DenoisingModel` with a Gaussian kernel; attached with
            :meth:`add_frozen`, so it is in neither the optimizer, the EMA nor the exported weights.
        kind: ``"npr"`` (the noise-prediction residual, optimal for the teacher's imperfect mean) or ``"sn"`` (the
            second moment of the noise).
        noise_levels: training distribution of sigma, a name in :data:`unidm.processes.NOISE_LEVELS`, or
            ``"auto"``: ``discrete-t`` for a ``vp-discrete`` teacher (uniform over its timesteps, as the paper),
            else the teacher's own training distribution; ``noise_options`` its arguments.
        data_range: width of the data's interval, for the clipping of ``m`` (2 for images in [-1, 1]); ``None``
            clips at ``sigma^2`` only.
    """

    family = "variance-head"
    frozen_keys = ("teacher",)
    samplers = {"ddpm": sample_ddpm, "ddim": sample_ddim}
    sampler_aliases = {"ancestral": "ddpm", "euler_ancestral": "ddpm", "ddpm_ancestral": "ddpm"}
    grids = tuple(GRIDS)
    default_sampling = {"sampler": "ddpm", "steps": 50, "grid": "ddpm-linspace"}
    #: the teacher family's stream: with the same seeds a head draws the same prior and step noise as the teacher
    sampler_seed_offset = 1_000_003
    sampler_internal = ("denoiser", "x", "grid", "generator", "callback", "cond", "head")

    def __init__(self, net: nn.Module, teacher: TrainableModel | None = None, kind: str = "npr",
                 noise_levels: str = "auto", noise_options: dict | None = None, data_range: float | None = None):
        teacher = _check_teacher(teacher)
        super().__init__(teacher.data_shape, teacher.num_classes)
        check_choice(kind, DIAGONAL_VARIANCES, "method.kind")
        self.kind = kind
        self.net = net
        self.add_frozen("teacher", teacher)
        process = teacher.process
        noise_options = as_options(noise_options, "method.noise_options")
        if noise_levels == "auto":
            if isinstance(process, VPDiscrete):
                self.noise_levels = NOISE_LEVELS["discrete-t"]()
            elif hasattr(getattr(teacher, "loss_fn", None), "noise_levels"):
                self.noise_levels = teacher.loss_fn.noise_levels
            else:
                self.noise_levels = NOISE_LEVELS["uniform-t"]()
        else:
            check_choice(noise_levels, NOISE_LEVELS, "method.noise_levels")
            check_kwargs(NOISE_LEVELS[noise_levels], noise_options, f"noise_options for {noise_levels!r}")
            self.noise_levels = NOISE_LEVELS[noise_levels](**noise_options)
        self.sigma_data = float(getattr(teacher.denoiser, "sigma_data", 1.0))
        self.data_range = None if data_range is None else float(data_range)

    # --- the head -------------------------------------------------------------------------------------------------
    def predict(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """``h(x, sigma) [B, ...]`` in eps units: NPR's ``E[(eps - eps_hat)^2]`` or SN's ``E[eps^2]`` given ``x``."""
        sigma = as_sigma_batch(sigma, x)
        shape = (-1, *([1] * (x.ndim - 1)))
        return self.net(c_in(sigma, self.sigma_data).reshape(shape) * x, c_noise(sigma), **cond).to(x.dtype)

    def posterior_variance(self, x: Tensor, sigma: float, **cond) -> Tensor:
        """``m(x) [B, ...]``: the posterior variance of ``x0`` per dimension the head implies at ``(x, sigma)``,
        clipped (:func:`unidm.samplers.variance.diagonal_posterior_variance`)."""
        s = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        D = self.teacher.denoiser(x, s, **cond)
        return diagonal_posterior_variance(self.kind, self.predict(x, s, **cond), x, D, sigma, self.data_range)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """Per-example MSE of ``h`` against NPR's ``((x0 - D) / sigma)^2`` or SN's ``eps^2`` (mean over dims), at
        ``sigma`` from the training noise levels and ``x = x0 + sigma eps``; the teacher runs without gradients."""
        x0 = batch["x"]
        teacher = self.teacher
        cond = {}
        if self.num_classes > 0:
            cond["class_labels"] = self.drop_labels(batch["y"].long(), teacher.label_dropout, generator)
        sigma = self.noise_levels.draw(teacher.process, x0.shape[0], generator, x0.device, x0.dtype)
        x = teacher.process.perturb(x0, sigma, generator)
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        if self.kind == "npr":
            with torch.no_grad():
                target = ((x0 - teacher.denoiser(x, sigma, **cond)) / s) ** 2
        else:
            target = ((x - x0) / s) ** 2
        err = (self.predict(x, sigma, **cond) - target) ** 2
        return err.reshape(x0.shape[0], -1).mean(1)

    # --- sampling -------------------------------------------------------------------------------------------------
    def _variance_options(self, options: Mapping[str, Any]) -> dict:
        opts = {"variance": self.kind, **options}
        if self.data_range is not None:
            opts.setdefault("data_range", self.data_range)
        name = canonical_variance(opts["variance"], diagonal=True)
        if name in DIAGONAL_VARIANCES and name != self.kind:
            raise ValueError(f"variance={name!r}: this head was trained for {self.kind!r} (a head learns one "
                             f"moment); use variance={self.kind!r}, or beta / beta-tilde / analytic")
        opts["variance"] = name
        if name in DIAGONAL_VARIANCES:
            opts["head"] = self.predict
        return opts

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                       options: Mapping[str, Any] | None = None):
        plan = super().check_sampling(sampler, steps, grid, options)
        opts = self._variance_options(plan.options)
        check_sampler(plan.sampler, self.teacher.process, **plan.options)
        check_variance(opts["variance"], self.teacher.process, opts.get("gamma"), opts.get("head"))
        return plan

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 shape: Sequence[int] | None = None, class_labels: Tensor | None = None,
                 grid_options: dict | None = None, **options) -> Tensor:
        """``n`` samples: the teacher's prior and mean with the head's variance (``ddpm`` or ``ddim``; default
        ``ddpm``, 50 steps, the ``ddpm-linspace`` grid). ``variance`` may be overridden by ``beta``,
        ``beta-tilde`` (or ``analytic`` with ``gamma=``) for comparison on the same seeds."""
        plan = self.check_sampling(sampler, steps, grid, options)
        teacher = self.teacher
        g = make_grid(plan.grid, plan.steps, teacher.process, **(grid_options or {}))
        x = teacher.process.prior_sample((n, *tuple(shape or self.data_shape)), float(g[0]), seeds=seeds,
                                         generator=generator, device=self.device)
        cond = {}
        if class_labels is not None:
            cond["class_labels"] = torch.as_tensor(class_labels, device=x.device).long().expand(n)
        with self.evaluating():
            return sample(teacher.denoiser, x, g, method=plan.sampler,
                          generator=self.sample_generators(seeds, generator), **cond,
                          **self._variance_options(plan.options))

    # --- likelihood -----------------------------------------------------------------------------------------------
    likelihood_note = "the head's ELBO needs a vp-discrete teacher; "

    def likelihood_methods(self) -> dict[str, str]:
        return {"elbo": "bound"} if isinstance(self.teacher.process, VPDiscrete) else {}

    def likelihood_options(self, method: str) -> list[str]:
        return list(HEAD_ELBO_OPTIONS)

    def likelihood(self, x: Tensor, *, method: str | None = None, num_levels: int | None = None,
                   generator: torch.Generator | None = None, class_labels: Tensor | None = None, **options):
        """The K-step ELBO (:func:`head_trajectory_elbo`) of a ``vp-discrete`` teacher with the head's variance on
        the ``even`` (default) or ``quadratic`` trajectory of ``steps`` (default: all ``T``) timesteps, DDPM's prior
        and, for discrete data, the process's ``beta~`` decoder after ``tau_1`` (as :func:`unidm.likelihood.
        kstep_elbo` with ``analytic``)."""
        self.check_likelihood(method, options)
        process = self.teacher.process
        if not isinstance(process, VPDiscrete):
            raise ValueError(f"the head's ELBO needs a vp-discrete teacher (DDPM's discrete steps); this teacher's "
                             f"process is {getattr(process, 'name', type(process).__name__)!r}")
        variance = canonical_variance(options.get("variance", self.kind), diagonal=True)
        if variance != self.kind:
            raise ValueError(f"variance={variance!r}: the head's ELBO uses its own {self.kind!r} variance (the "
                             "teacher's run gives beta, beta-tilde and analytic)")
        trajectory = options.get("trajectory", "even")
        if trajectory not in ("even", "quadratic"):
            raise ValueError(f"trajectory {trajectory!r}: the head's ELBO takes even or quadratic (the dp "
                             "trajectory is Analytic-DPM's, over the teacher's Gamma statistics)")
        sched = DiscreteSchedule.from_process(process)
        T = sched.num_steps
        taus = trajectory_timesteps(trajectory, options.get("steps", T), T)
        levels = torch.sqrt(torch.expm1(-sched.log_abar[1:]))
        dec = None if num_levels is None else float(sched.beta_tilde[min(taus[0] + 1, T)])
        cond = {} if class_labels is None else {"class_labels": class_labels}
        with self.evaluating():
            res = head_trajectory_elbo(self.teacher.denoiser, self.predict, x, levels[[t - 1 for t in taus]],
                                       variance=self.kind, eta=float(options.get("eta", 1.0)),
                                       data_range=options.get("data_range", self.data_range), num_levels=num_levels,
                                       decoder_variance=dec, generator=generator, **cond)
        return res.to_likelihood()

    # --- config ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "VarianceHead":
        """Build the head for ``data`` on ``frozen["teacher"]`` (:func:`unidm.run.build_model` loads the run named
        by ``method.teacher``). ``method.data_range = "auto"`` (the default) is 2 for image data, else ``None``."""
        from ..nn import build_network

        teacher = _check_teacher((frozen or {}).get("teacher"))
        method = dict(method_cfg)
        if method.get("data_range", "auto") == "auto":
            method["data_range"] = 2.0 if data.kind == "image" else None
        check_kwargs(cls, method, "method option for family 'variance-head'", exclude=("net", "teacher"))
        if tuple(data.shape) != tuple(teacher.data_shape):
            raise ValueError(f"the teacher was trained on data of shape {tuple(teacher.data_shape)}, this run's data "
                             f"has shape {tuple(data.shape)}")
        model = dict(model_cfg)
        arch = model.pop("arch", "mlp")
        derived = {"dim": int(torch.tensor(data.shape).prod()), "in_channels": data.shape[0],
                   "image_size": data.shape[-1], "num_classes": teacher.num_classes}
        return cls(build_network(arch, derived, **model), teacher, **method)


@torch.no_grad()
def head_trajectory_elbo(
    denoiser, head: HeadFn, x0: Tensor, sigmas: Sequence[float] | Tensor, *, variance: str = "npr", eta: float = 1.0,
    data_range: float | None = None, num_levels: int | None = 256, decoder_variance: float | None = None,
    prior_mean: float | Tensor = 0.0, prior_variance: float = 1.0, generator: torch.Generator | None = None, **cond,
) -> ElboResult:
    """:func:`unidm.likelihood.trajectory_elbo` with Extended-Analytic-DPM's diagonal variance ``v(x) = u^2 + c^2
    m(x)`` per dimension (``m`` from ``head``, :func:`unidm.samplers.variance.diagonal_posterior_variance`). A step's
    KL between the Gaussians ``q_lambda(x_s | x_r, x0)`` and ``p(x_s | x_r)`` is

        sum_i 1/2 [u^2 / v_i - 1 + log(v_i / u^2) + c^2 (x0 - D)_i^2 / v_i],

    the decoder ``p(x0 | x_1) = N(D, m(x_1))`` per dimension for continuous data (``num_levels=None``), or Ho et
    al.'s discretized decoder with ``decoder_variance`` (required then). The noise is drawn in
    :func:`~unidm.likelihood.trajectory_elbo`'s order, so a head that returns ``1 - Gamma(sigma)`` (NPR) gives its
    ``analytic`` bound on the same draws."""
    name = canonical_variance(variance, diagonal=True)
    if name not in DIAGONAL_VARIANCES:
        raise ValueError(f"head_trajectory_elbo takes npr or sn, got {variance!r}")
    if eta <= 0:
        raise ValueError(f"the ELBO needs eta > 0 (DDIM's q_lambda is deterministic at eta = 0), got {eta}")
    if num_levels is not None and decoder_variance is None:
        raise ValueError("the discretized decoder needs decoder_variance= (the process's beta~ after tau_1)")
    sig, prior = trajectory_prior(x0, sigmas, prior_mean, prior_variance)
    d = x0[0].numel()

    def at(sigma: float) -> tuple[Tensor, Tensor, Tensor]:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = x0 + sigma * eps
        s = torch.full((x0.shape[0],), sigma, dtype=x0.dtype, device=x0.device)
        D = denoiser(x, s, **cond)
        return D, diagonal_posterior_variance(name, head(x, s, **cond), x, D, sigma, data_range), x

    diffusion = torch.zeros_like(prior)
    for k in range(1, len(sig)):
        r, s = sig[k], sig[k - 1]
        kern = reverse_kernel(r, s, eta, "beta-tilde")
        D, m, _ = at(r)
        v = kern.q_variance + kern.x0_coef**2 * m
        u2 = kern.q_variance
        diffusion = diffusion + 0.5 * _sum(u2 / v - 1.0 + torch.log(v / u2) + kern.x0_coef**2 * (x0 - D) ** 2 / v)
    if num_levels is None:
        D, m, _ = at(sig[0])
        var0 = m.clamp(min=1e-12 * sig[0] ** 2)
        decoder = 0.5 * _sum((x0 - D) ** 2 / var0 + torch.log(var0) + math.log(2 * math.pi))
    else:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        s1 = torch.full((x0.shape[0],), sig[0], dtype=x0.dtype, device=x0.device)
        decoder = _decoder_nll(x0, denoiser(x0 + sig[0] * eps, s1, **cond), decoder_variance, num_levels)
    total = prior + diffusion + decoder
    return ElboResult(elbo=-total, bits_per_dim=total / (d * math.log(2)), prior_term=prior,
                      diffusion_term=diffusion, decoder_term=decoder, nfe=len(sig))


#: the family by name (merged into :data:`unidm.methods.FAMILIES`)
VARIANCE_HEAD_FAMILIES: dict[str, type[TrainableModel]] = {"variance-head": VarianceHead}
