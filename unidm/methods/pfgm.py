"""Original PFGM (Xu et al. 2022, "Poisson Flow Generative Models"): the field objective and the backward ODE in z.

The data ``y in R^N`` are charges on the ``z = 0`` hyperplane of the augmented space ``x~ = (x, z) in R^(N+1)``
(``D = 1``). A network ``f(x~) in R^(N+1)`` learns the paper's *normalised* field (Sec. 3.3, Algorithm 1):

    Ê(x~) = c(x~) sum_j (x~ - y~_j) / |x~ - y~_j|^(N+1),   c(x~) = 1 / sum_j |x~ - y~_j|^(-(N+1)),
    v(x~) = -sqrt(N) Ê(x~) / (|Ê(x~)| + gamma),

over a large *reference batch* ``{y_j}`` (``B_L`` in the paper), at points ``x~`` drawn by the paper's perturbation
(Algorithm 2): ``m ~ U[0, M]``, ``eps_x ~ N(0, sigma^2 I_N)``, ``eps_z ~ N(0, sigma^2)``, ``u`` uniform on the unit
sphere, ``x = y + |eps_x| (1 + tau)^m u``, ``z = |eps_z| (1 + tau)^m``. Since the weights ``c |x~ - y~_j|^-(N+1)``
sum to one, ``Ê = (x - E[y | x, r = z], z)`` with the ``D = 1`` posterior mean of
:class:`unidm.oracles.PFGMPPPointSetOracle` over the reference batch, which is how it is computed here
(:func:`field_target`).

Sampling follows the backward ODE ``dx/dz = v_x / v_z`` (the field line, parameterised by its height) from the
hemisphere prior at ``z_max`` down to ``z_min``, in the paper's variable ``t' = log z`` (Sec. 3.3):
``dx/dt' = z v_x / v_z`` (:func:`solve_field_ode`), with unidm's fixed-grid Runge–Kutta methods or its adaptive
Dormand–Prince (:mod:`unidm.integrate`). The prior (Sec. 3.3, App. A.4) is the uniform hemisphere projected onto the
plane ``z = z_max``: ``p(x) ∝ (|x|^2 + z_max^2)^(-(N+1)/2)``, drawn as a uniform direction times a radius with
``|x|^2 / z_max^2 ~ BetaPrime(N/2, 1/2)`` (:func:`hemisphere_prior`) -- the PFGM++ kernel with ``D = 1`` at
``r = z_max``, so the same law as the ``pfgmpp`` process's prior at ``sigma_max = z_max`` for ``aug_dim = 1``.

The same ODE in the perturbation view is ``dx/dsigma = (x - D(x, sigma)) / sigma`` with ``sigma = z`` and
``D(x, z) = x - z v_x / v_z`` (:meth:`PoissonFlow.as_denoiser`), so every deterministic sampler of
:mod:`unidm.samplers` can drive a field model too (docs/pfgm.md, "The field view and the perturbation view").

Not reproduced from the reference code: the ``restrict_M`` trick (smaller ``m`` for the smallest ``|eps_z|``,
App. B.1.1), the clipping of the prior radius (``upper_norm``) and the substitution of ``v_z`` near ``z = 0``
(App. B.2.3). Instead the drift keeps ``v_z`` below the least ``|v_z|`` any field of charges within the data's radius
can have (:func:`_guarded_ratio`): far out on the heavy-tailed prior (``N = 2``: ``P(|x| > k z_max) ~ 1/k``) the
true ``v_z`` is tiny, a network's sign there is unreliable, and an unguarded ratio throws samples to infinity.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..integrate import solve_fixed, solve_ivp
from ..oracles import PFGMPPPointSetOracle
from ..processes.pfgm import PFGMPP, kernel_noise_radial
from ..rng import Generators, rand, randn
from ..utils import check_kwargs
from .base import GenerativeModel, TrainableModel, check_positive

__all__ = ["PoissonFlow", "PFGM_FAMILIES", "FIELD_SAMPLERS", "perturb_augmented", "field_target",
           "hemisphere_prior", "solve_field_ode", "field_grid", "FieldDenoiser"]

#: ``v_z`` is kept at or below ``-_VZ_FLOOR`` in the drift ``z v_x / v_z`` (the reference code adds 1e-5)
_VZ_FLOOR = 1e-5

FieldFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _rows(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def perturb_augmented(x0: Tensor, M: float, sigma: float, tau: float,
                      generator: Generators = None) -> tuple[Tensor, Tensor]:
    """PFGM's perturbation of the augmented data (Xu et al. 2022, Algorithm 2): ``(x [B, ...], z [B])`` with

        m ~ U[0, M],  x = y + |eps_x| (1 + tau)^m u,  z = |eps_z| (1 + tau)^m,

    ``eps_x ~ N(0, sigma^2 I_N)``, ``eps_z ~ N(0, sigma^2)``, ``u`` uniform on the unit sphere of ``R^N``. Drawn from
    ``generator`` in the order ``m``, ``eps_x``, ``eps_z``, ``u`` (with one generator per row, a row's own)."""
    b, dtype, device = x0.shape[0], x0.dtype, x0.device
    n = x0[0].numel()
    m = rand((b,), generator, dtype, device) * M
    eps_x = randn((b, n), generator, dtype, device) * sigma
    eps_z = randn((b,), generator, dtype, device) * sigma
    g = randn((b, n), generator, dtype, device)
    scale = torch.exp(m * math.log1p(tau))
    u = g / g.norm(dim=1, keepdim=True)
    x = _rows(x0) + (eps_x.norm(dim=1) * scale)[:, None] * u
    return x.reshape(x0.shape), eps_z.abs() * scale


def field_target(x: Tensor, z: Tensor, reference: Tensor, gamma: float) -> Tensor:
    """The normalised empirical Poisson field ``v(x~) = -sqrt(N) Ê / (|Ê| + gamma)`` of the reference batch at
    ``x~ = (x, z)`` (Xu et al. 2022, Algorithm 1), ``[B, N + 1]`` with the ``z`` component last.

    ``Ê = c(x~) E(x~)`` with the paper's ``c(x~) = 1 / sum_j |x~ - y~_j|^(-(N+1))`` equals ``(x - E[y | x, r = z], z)``
    where ``E[y | x, r]`` is the ``D = 1`` posterior mean of the reference set (weights
    ``∝ (|x - y_j|^2 + z^2)^(-(N+1)/2)``, :class:`~unidm.oracles.PFGMPPPointSetOracle`, computed in log space).

    Args:
        x: ``[B, ...]`` perturbed data; z: ``[B]`` heights ``> 0``.
        reference: ``[K, ...]`` the reference batch (same trailing shape as ``x``).
        gamma: the paper's ``gamma > 0`` (5 on CIFAR-10).
    """
    flat = _rows(x)
    n = flat.shape[1]
    mean = PFGMPPPointSetOracle(_rows(reference).to(flat), aug_dim=1)(flat, z)
    e = torch.cat([flat - mean, z.reshape(-1, 1).to(flat)], dim=1)
    return -math.sqrt(n) * e / (e.norm(dim=1, keepdim=True) + gamma)


def hemisphere_prior(shape: Sequence[int], z_max: float, generator: Generators = None,
                     dtype: torch.dtype = torch.float32, upper_norm: float | None = None) -> Tensor:
    """``[shape]`` draws of PFGM's prior on the plane ``z = z_max`` (Xu et al. 2022, Sec. 3.3 and App. A.4): the
    uniform distribution on the hemisphere of radius ``z_max`` carried onto the plane, density
    ``∝ (|x|^2 + z_max^2)^(-(N+1)/2)``. Drawn as the paper does: a uniform direction times the radius
    ``z_max sqrt(T)``, ``T ~ BetaPrime(N/2, 1/2)`` (:func:`unidm.processes.kernel_noise_radial` with ``D = 1``), on
    the CPU; with one generator per row, row ``i`` is its generator's alone. ``upper_norm`` clips the radius to at
    most that (the reference code's ``sampling.upper_norm``, 3000 with ``z_max = 40`` on CIFAR-10)."""
    x = z_max * kernel_noise_radial(tuple(shape), 1, generator, dtype, "cpu")
    if upper_norm is None:
        return x
    norm = _rows(x).norm(dim=1)
    return x * (upper_norm / norm).clamp(max=1.0).reshape(-1, *([1] * (x.ndim - 1)))


def field_grid(kind: str, steps: int, z_min: float, z_max: float, rho: float = 7.0) -> Tensor:
    """``steps + 1`` descending heights from ``z_max`` to ``z_min`` (float64): ``"log-z"`` uniform in the paper's
    ``t' = log z``; ``"karras"`` EDM's ``rho = 7`` spacing in ``z`` (Karras et al. 2022, eq. 5)."""
    i = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "log-z":
        return torch.exp(math.log(z_max) + i * (math.log(z_min) - math.log(z_max)))
    if kind == "karras":
        lo, hi = z_min ** (1 / rho), z_max ** (1 / rho)
        return (hi + i * (lo - hi)) ** rho
    raise ValueError(f"unknown grid {kind!r} for family 'pfgm'; valid: log-z, karras")


def _guarded_ratio(x: Tensor, z: Tensor, v_z: Tensor, radius: float, gamma: float) -> Tensor:
    """``z / v_z`` ``[B]`` with ``v_z`` kept at or below ``-sqrt(N) z / (|x~| + radius + gamma)``, the least ``|v_z|``
    of a normalised field (``v_z = -sqrt(N) z / (|Ê| + gamma)``, ``Ê_z = z``) of charges within ``radius`` of the
    origin, since then ``|Ê| <= |x~| + radius``; far out, where the true ``v_z`` is tiny and a network's sign is
    unreliable, the step then stays at most the radial one. ``radius = inf`` keeps only ``v_z <= -1e-5``."""
    n = x[0].numel()
    bound = math.sqrt(n) * z / (torch.sqrt(_rows(x).pow(2).sum(1) + z**2) + radius + gamma)
    return z / torch.minimum(v_z.to(x.dtype), -bound.clamp_min(_VZ_FLOOR))


def _drift(field: FieldFn, radius: float = math.inf, gamma: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """``dx/dt' = z v_x / v_z`` at ``t' = log z`` (the paper's change of variable, Sec. 3.3)."""

    def f(t: Tensor, x: Tensor) -> Tensor:
        z = torch.exp(t).to(x.dtype).expand(x.shape[0])
        v_x, v_z = field(x, z)
        ratio = _guarded_ratio(x, z, v_z, radius, gamma)
        return v_x.to(x.dtype) * ratio.reshape(-1, *([1] * (x.ndim - 1)))

    return f


def solve_field_ode(field: FieldFn, x: Tensor, z_grid: Tensor, method: str = "heun", *, rtol: float = 1e-4,
                    atol: float = 1e-4, radius: float = math.inf, gamma: float = 0.0) -> tuple[Tensor, int]:
    """Carry ``x`` (``[B, ...]`` at height ``z_grid[0]``) down PFGM's backward ODE ``dx/dz = v_x / v_z`` to
    ``z_grid[-1]``, integrated in ``t' = log z``. Returns ``(x at z_grid[-1], NFE)``.

    Args:
        field: ``field(x [B, ...], z [B]) -> (v_x [B, ...], v_z [B])``, the (normalised) field; only the ratio
            ``v_x / v_z`` is used, so any positive multiple of the field gives the same path (the exact
            :func:`unidm.oracles.poisson_field` as well as a network's ``v``).
        method: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"`` on the grid (:func:`unidm.integrate.solve_fixed`),
            or ``"rk45"``: adaptive Dormand–Prince from the first to the last height (the paper's RK45,
            :func:`unidm.integrate.solve_ivp`; its steps are the whole batch's).
        radius, gamma: the guard on ``v_z`` (:func:`_guarded_ratio`): the data's radius and the field's ``gamma``.
    """
    log_z = torch.log(z_grid.to(torch.float64))
    f = _drift(field, radius, gamma)
    if method == "rk45":
        sol = solve_ivp(f, float(log_z[0]), float(log_z[-1]), x, rtol=rtol, atol=atol)
    else:
        sol = solve_fixed(f, log_z.tolist(), x, method=method)
    return sol.y, sol.nfe


def _fixed_sampler(method: str) -> Callable[..., tuple[Tensor, int]]:
    def sampler(field: FieldFn, x: Tensor, z_grid: Tensor, guard: dict) -> tuple[Tensor, int]:
        return solve_field_ode(field, x, z_grid, method, **guard)

    sampler.__name__ = f"sample_field_{method}"
    sampler.__doc__ = f"{method} over the grid in t' = log z ({method} of :func:`unidm.integrate.solve_fixed`)."
    return sampler


def sample_field_rk45(field: FieldFn, x: Tensor, z_grid: Tensor, guard: dict, *, rtol: float = 1e-4,
                      atol: float = 1e-4) -> tuple[Tensor, int]:
    """Adaptive Dormand–Prince in ``t' = log z`` (the paper's RK45 with ``rtol = atol = 1e-4``), one sample at a
    time so that each sample's steps, and so the sample, depend on its own seed only; the grid gives its ends."""
    out, nfe = [], 0
    for i in range(x.shape[0]):
        y, k = solve_field_ode(field, x[i:i + 1], z_grid, "rk45", rtol=rtol, atol=atol, **guard)
        out.append(y)
        nfe += k
    return torch.cat(out), nfe // max(1, x.shape[0])


#: the pfgm family's samplers: ``fn(field, x, z_grid, guard, **options) -> (x, NFE per sample)``
FIELD_SAMPLERS: dict[str, Callable[..., tuple[Tensor, int]]] = {
    **{m: _fixed_sampler(m) for m in ("euler", "heun", "midpoint", "rk4")}, "rk45": sample_field_rk45}


class FieldDenoiser(nn.Module):
    """A field model as a denoiser ``D(x, sigma) = x - sigma v_x / v_z`` with ``sigma = z``: the probability-flow ODE
    ``dx/dsigma = (x - D) / sigma`` is then PFGM's ``dx/dz = v_x / v_z`` exactly, so the samplers of
    :mod:`unidm.samplers` follow the same field lines. ``process`` is ``pfgmpp`` with ``aug_dim = 1`` on
    ``[z_min, z_max]`` (its prior at ``sigma_max`` is PFGM's hemisphere prior at ``z_max``, and its non-Gaussian
    kernel makes the samplers refuse the stochastic methods)."""

    def __init__(self, model: "PoissonFlow"):
        super().__init__()
        self.model = model
        self.process = PFGMPP(aug_dim=1, sigma_min=model.z_min, sigma_max=model.z_max, data_dim=model.data_dim)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        z = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        v_x, v_z = self.model.field(x, z)
        ratio = _guarded_ratio(x, z, v_z, **self.model.guard())
        return x - v_x.to(x.dtype) * ratio.reshape(-1, *([1] * (x.ndim - 1)))


class PoissonFlow(GenerativeModel):
    """PFGM (``D = 1``) trained on the normalised empirical field of a reference batch (Xu et al. 2022).

    Args:
        net: a noise-agnostic network on the augmented shape: ``net(x~_in, c_noise) -> [B, *aug_shape]`` with
            ``aug_shape = (N + 1,)`` for vectors (an MLP of ``dim = N + 1``) or ``(C + 1, H, W)`` for images (the
            ``z`` input a constant extra channel, ``v_z`` the mean of the extra output channel, as the reference
            code does). Input ``x~_in = c_in (x, z)`` with ``c_in = 1 / sqrt(sigma_data^2 + |x~|^2 / (N + 1))``, so
            the input stays bounded however far out the heavy-tailed prior starts (the direction of ``x~`` is what
            the field there depends on), and ``c_noise = log(z) / 4``; the output is ``v`` itself (norm below
            ``sqrt(N)``).
        data_shape: ``(N,)`` or ``(C, H, W)``.
        M, sigma, tau: the perturbation of Algorithm 2 (the paper's CIFAR-10 values 291, 0.01, 0.03).
        gamma: the field's normalisation ``gamma`` (5 on CIFAR-10).
        ref_size: ``|B_L|``, the reference batch. ``None``: the batch itself. Larger than the batch: the batch plus
            ``ref_size - B`` points drawn from the training data the model holds (``reference_data``), so the batch
            is a subset of its reference batch, as in Algorithm 1. Smaller than the batch is refused.
        z_min, z_max: the ends of the backward ODE (the paper: ``1e-3`` and 40 on CIFAR-10).
        sigma_data: the data's standard deviation, for ``c_in``.
        upper_norm: clip the prior's radius to at most this (the reference code's ``upper_norm``); None: no clip.
    """

    family = "pfgm"
    samplers = FIELD_SAMPLERS
    grids = ("log-z", "karras")
    default_sampling = {"sampler": "heun", "steps": 32, "grid": "log-z"}
    sampler_seed_offset = 1_300_021
    sampler_internal = ("field", "x", "z_grid", "guard")

    def __init__(self, net: nn.Module, data_shape: Sequence[int] = (2,), M: float = 291.0, sigma: float = 0.01,
                 tau: float = 0.03, gamma: float = 5.0, ref_size: int | None = None, z_min: float = 1e-3,
                 z_max: float = 40.0, sigma_data: float = 0.5, upper_norm: float | None = None):
        super().__init__(data_shape)
        if len(self.data_shape) not in (1, 3):
            raise ValueError(f"family 'pfgm' takes vectors (N,) or images (C, H, W), got data shape {self.data_shape}")
        self.M = check_positive(M, "method.M")
        self.sigma = check_positive(sigma, "method.sigma")
        self.tau = check_positive(tau, "method.tau")
        self.gamma = check_positive(gamma, "method.gamma")
        self.z_min = check_positive(z_min, "method.z_min")
        self.z_max = check_positive(z_max, "method.z_max")
        self.sigma_data = check_positive(sigma_data, "method.sigma_data")
        self.upper_norm = None if upper_norm is None else check_positive(upper_norm, "method.upper_norm")
        if not self.z_min < self.z_max:
            raise ValueError(f"method.z_min ({z_min}) must be below method.z_max ({z_max})")
        if ref_size is not None and (isinstance(ref_size, bool) or not isinstance(ref_size, int) or ref_size < 1):
            raise ValueError(f"method.ref_size must be a whole number >= 1 (the reference batch) or null (the batch "
                             f"itself), got {ref_size!r}")
        self.ref_size = ref_size
        self.net = net
        self.data_dim = math.prod(self.data_shape)
        self.register_buffer("reference_data", torch.zeros(0, *self.data_shape), persistent=False)
        self.register_buffer("data_radius", torch.tensor(math.inf))

    # --- the field ---------------------------------------------------------------------------------------------
    def field(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The network's normalised field at ``(x [B, *data_shape], z [B])``: ``(v_x [B, *data_shape], v_z [B])``."""
        b = x.shape[0]
        z = z.reshape(b).to(x.dtype)
        c_in = torch.rsqrt(self.sigma_data**2 + (_rows(x).pow(2).sum(1) + z**2) / (self.data_dim + 1))
        if len(self.data_shape) == 1:
            out = self.net(torch.cat([x * c_in[:, None], (z * c_in)[:, None]], 1), torch.log(z) / 4)
            return out[:, :-1], out[:, -1]
        plane = (z * c_in).reshape(b, 1, 1, 1).expand(b, 1, *self.data_shape[1:])
        out = self.net(torch.cat([x * c_in.reshape(b, 1, 1, 1), plane], 1), torch.log(z) / 4)
        return out[:, :-1], out[:, -1].mean((-2, -1))

    def guard(self) -> dict:
        """The ``v_z`` guard of the drift (:func:`_guarded_ratio`): ``data_radius`` (the largest training norm,
        saved with the weights; inf when unknown) and ``gamma``."""
        return {"radius": float(self.data_radius), "gamma": self.gamma}

    def as_denoiser(self) -> FieldDenoiser:
        """This model as ``D(x, sigma)`` for :mod:`unidm.samplers` (:class:`FieldDenoiser`)."""
        return FieldDenoiser(self)

    # --- training ----------------------------------------------------------------------------------------------
    def reference_batch(self, x0: Tensor, generator: Generators = None) -> Tensor:
        """``B_L``: the batch itself, or the batch and ``ref_size - B`` training points drawn uniformly (with
        replacement) from ``reference_data``; a reference batch smaller than the batch, or one larger than the
        batch with no training data to draw from, is refused with one line."""
        b, k = x0.shape[0], self.ref_size
        if k is None or k == b:
            return x0
        if k < b:
            raise ValueError(f"method.ref_size={k} is smaller than the batch of {b}: PFGM's batch is a subset of its "
                             f"reference batch (Algorithm 1); set ref_size >= the batch size or null")
        pool = self.reference_data
        if len(pool) == 0:
            raise ValueError(f"the batch of {b} is smaller than method.ref_size={k} and the model holds no training "
                             f"data to draw the other {k - b} reference points from; raise the batch size to {k} or "
                             f"set ref_size=null (the batch itself)")
        idx = (rand((k - b,), generator, torch.float64, pool.device) * len(pool)).long().clamp_max(len(pool) - 1)
        return torch.cat([x0, pool[idx].to(x0)])

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``|f(x~) - v(x~)|^2`` per example ``[B]`` (mean over the ``N + 1`` coordinates; the paper sums them), at
        ``x~`` from :func:`perturb_augmented` and with the target :func:`field_target` of the reference batch
        (computed without gradients and outside autocast)."""
        x0 = batch["x"]
        x0 = x0 if x0.is_floating_point() else x0.float()
        reference = self.reference_batch(x0, generator)
        x, z = perturb_augmented(x0, self.M, self.sigma, self.tau, generator)
        with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):
            target = field_target(x, z, reference, self.gamma)
        v_x, v_z = self.field(x, z)
        pred = torch.cat([_rows(v_x), v_z[:, None]], 1).to(target.dtype)
        return (pred - target).pow(2).mean(1)

    # --- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, grid: str | None = None,
                 **options) -> Tensor:
        """``n`` samples: the hemisphere prior at ``z_max`` (:func:`hemisphere_prior`) carried down the backward ODE
        to ``z_min`` by ``sampler`` over ``steps`` steps of ``grid`` (defaults: Heun, 32 steps, uniform in
        ``log z``). With ``seeds`` sample ``i`` depends only on ``seeds[i]`` (there is no sampler noise; the prior
        draw is on the family's stream)."""
        plan = self.check_sampling(sampler, steps, grid, options)
        gens = self.sample_generators(seeds, generator)
        x = hemisphere_prior((n, *self.data_shape), self.z_max, gens, upper_norm=self.upper_norm).to(self.device)
        z_grid = field_grid(plan.grid, plan.steps, self.z_min, self.z_max)
        with self.evaluating():
            x, _ = FIELD_SAMPLERS[plan.sampler](self.field, x, z_grid, self.guard(), **plan.options)
        return x

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: Mapping[str, TrainableModel] | None = None) -> "PoissonFlow":
        """Build for vector or image data; ``method.sigma_data = "auto"`` (the default) takes the training data's
        standard deviation; the training split is kept (not saved) to draw reference batches from when
        ``ref_size`` exceeds the batch."""
        from ..nn import build_network

        if data.kind not in ("vector", "image"):
            raise ValueError(f"family 'pfgm' needs continuous data (vectors or images), got {data.name!r} of kind "
                             f"{data.kind!r}")
        method = dict(method_cfg)
        if method.get("sigma_data", "auto") == "auto":
            method["sigma_data"] = round(data.std, 4)
        check_kwargs(cls, method, "method option for family 'pfgm'", exclude=("net", "data_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "mlp" if len(data.shape) == 1 else "unet")
        derived = {"dim": math.prod(data.shape) + 1, "in_channels": data.shape[0] + 1,
                   "image_size": data.shape[-1], "num_classes": 0}
        obj = cls(build_network(arch, derived, **model), data_shape=data.shape, **method)
        if len(data.train):  # (a run loaded without its data keeps the radius in its weights)
            obj.data_radius.fill_(float(_rows(data.train.float()).norm(dim=1).max()))
        if obj.ref_size is not None and len(data.train):
            obj.reference_data = data.train.float().clone()
        return obj


PFGM_FAMILIES: dict[str, type[GenerativeModel]] = {PoissonFlow.family: PoissonFlow}
