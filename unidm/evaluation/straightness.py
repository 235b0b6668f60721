"""Straightness and transport cost of a flow (Liu et al. 2022, "Flow Straight and Fast").

``S(Z) = int_0^1 E |(Z_1 - Z_0) - dZ_t/dt|^2 dt``: zero exactly when every trajectory is a straight line walked at
constant speed, which is when one Euler step is exact. Two readings are computed here:

- along the model's **own ODE trajectories** (:func:`ode_straightness`): start at prior points, integrate the
  learned velocity to the data with Euler on a uniform grid, and measure how far the velocity strays from the
  straight chord between the two ends; the **transport cost** ``E |Z_1 - Z_0|^2`` of the same run is the cost of
  the coupling the model's ODE defines between prior and data (lower: closer to optimal transport).
- for **given pairs** (:func:`coupling_straightness`): ``E int_0^1 |(x1 - x0) - v(x_t, t)|^2 dt`` on the
  interpolation ``x_t = (1 - t) x0 + t x1`` of a coupling ``(x0, x1)``; with the exact velocity
  ``v* = E[x1 - x0 | x_t]`` it is ``int_0^1 E Var(x1 - x0 | x_t) dt``, zero for a deterministic straight coupling,
  and what rectification lowers.

**Time convention.** unidm's: ``t = 0`` is the data and ``t = 1`` the prior, and the flow process is
``x_t = (1 - t) x0 + t eps`` (``alpha_t = 1 - t``, ``sigma_t = t``), so the velocity ``v = dx_t/dt`` points from the
data to the noise (``x1 - x0`` with ``x1`` the prior end). Liu et al. run ``tau = 1 - t`` from noise (``tau = 0``) to
data (``tau = 1``): their velocity is ``-v``, and both the straightness and the transport cost are the same numbers
in either convention (the chord and the velocity change sign together). Norms are summed over all dimensions.
A denoiser ``D(x, sigma)`` of the flow process gives the velocity ``v(x_t, t) = (x_t - D(x_t / (1 - t),
t / (1 - t))) / t`` (:func:`flow_velocity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["StraightnessResult", "flow_velocity", "ode_straightness", "coupling_straightness", "is_linear_path",
           "straightness", "flow_report"]

#: ``v(x_t, t [B]) -> [B, ...]`` in unidm's convention
Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StraightnessResult:
    """Per-trajectory figures of :func:`ode_straightness` (sums over dims).

    Attributes:
        straightness: ``[B]`` ``int_0^1 |(x1 - x0) - v(x_t, t)|^2 dt`` along each Euler trajectory.
        transport_cost: ``[B]`` ``|x1 - x0|^2``, the prior point and the data point it was carried to.
        x0: ``[B, ...]`` the data ends; ``x1``: the prior starts.
        nfe: velocity evaluations per trajectory.
    """

    straightness: Tensor
    transport_cost: Tensor
    x0: Tensor
    x1: Tensor
    nfe: int


def _flat_sq(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).pow(2).sum(1)


def _col(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def is_linear_path(process) -> bool:
    """Whether ``process`` has the straight path ``alpha_t = 1 - t``, ``sigma_t = t`` (flow matching / rectified
    flow), checked on its coefficients, not its name.

    >>> from unidm.processes import EDM, RectifiedFlow
    >>> is_linear_path(RectifiedFlow()), is_linear_path(EDM())
    (True, False)
    """
    if process is None or not all(hasattr(process, k) for k in ("alpha", "sigma_t")):
        return False
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    try:
        return bool(torch.allclose(process.alpha(t), 1 - t) and torch.allclose(process.sigma_t(t), t))
    except Exception:  # a process whose coefficients are not functions of t
        return False


def flow_velocity(denoiser, process=None, **cond) -> Velocity:
    """The velocity ``v(x_t, t) = (x_t - D(x_t / (1 - t), t / (1 - t))) / t`` of a denoiser of the flow process, in
    unidm's convention. With ``process``, ``t`` is clamped to ``[process.t_min, process.t_max_sampling]`` (the
    levels the network knows; the flow's velocity is smooth at both ends); ``cond`` goes to every call.

    >>> from unidm.oracles import GaussianRectifiedFlow
    >>> rf = GaussianRectifiedFlow(torch.tensor([1.0, 0.0], dtype=torch.float64), 2.0)
    >>> x, t = torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.4, dtype=torch.float64)
    >>> torch.allclose(flow_velocity(rf)(x, t), rf.velocity(x, t))
    True
    """
    lo = float(getattr(process, "t_min", 0.0)) if process is not None else 0.0
    hi = float(getattr(process, "t_max_sampling", 1.0)) if process is not None else 1.0

    def velocity(x_t: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0]).clamp(lo, hi)
        D = denoiser(x_t / _col(1 - t, x_t), t / (1 - t), **cond)
        return (x_t - D) / _col(t, x_t)

    return velocity


@torch.no_grad()
def ode_straightness(velocity: Velocity, x1: Tensor, steps: int = 64) -> StraightnessResult:
    """Straightness and transport cost along the ODE trajectories of ``velocity`` from the prior points ``x1``
    (``t = 1``) to ``t = 0``, by Euler on the uniform grid ``t_k = 1 - k / steps`` (Liu et al. 2022).

    With the Euler steps ``v_k`` the chord is ``x1 - x0 = mean_k v_k`` and the straightness of the discrete path is
    ``mean_k |mean_j v_j - v_k|^2 >= 0`` (exactly 0 for a constant velocity, whatever ``steps``).

    >>> from unidm.oracles import GaussianRectifiedFlow
    >>> rf2 = GaussianRectifiedFlow(torch.zeros(2, dtype=torch.float64), 2.0, k=2)
    >>> r = ode_straightness(rf2.velocity, torch.randn(5, 2, dtype=torch.float64), steps=4)
    >>> float(r.straightness.abs().max()) < 1e-24
    True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    x, h = x1.clone(), 1.0 / steps
    vs = []
    for k in range(steps):
        t = torch.full((x.shape[0],), 1.0 - k * h, dtype=x.dtype, device=x.device)
        v = velocity(x, t)
        vs.append(v)
        x = x - h * v
    chord = x1 - x
    s = torch.stack([_flat_sq(chord - v) for v in vs]).mean(0)
    return StraightnessResult(s, _flat_sq(chord), x, x1, steps)


@torch.no_grad()
def coupling_straightness(velocity: Velocity, x0: Tensor, x1: Tensor, steps: int = 64) -> Tensor:
    """``[B]`` ``int_0^1 |(x1 - x0) - v(x_t, t)|^2 dt`` on the straight interpolation ``x_t = (1 - t) x0 + t x1`` of
    each pair, by the midpoint rule at ``steps`` levels (``t_k = (k + 1/2) / steps``). Its mean over pairs drawn from a
    coupling, with ``v`` that coupling's exact velocity ``E[x1 - x0 | x_t]``, is ``int_0^1 E Var(x1 - x0 | x_t) dt``.

    >>> x0 = torch.randn(6, 3, dtype=torch.float64)
    >>> x1 = 2 * x0 + 1  # a deterministic straight coupling; its exact velocity at x_t is x1 - x0
    >>> v = lambda x, t: (x + 1) / (1 + t[:, None])  # x_t = (1 + t) x0 + t, so x1 - x0 = x0 + 1 = (x_t + 1) / (1 + t)
    >>> float(coupling_straightness(v, x0, x1).abs().max()) < 1e-24
    True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    chord = x1 - x0
    total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    for k in range(steps):
        t = torch.full((x0.shape[0],), (k + 0.5) / steps, dtype=x0.dtype, device=x0.device)
        x_t = x0 + _col(t, x0) * chord
        total += _flat_sq(chord - velocity(x_t, t))
    return total / steps


def straightness(velocity: Velocity, x1: Tensor, x0: Tensor | None = None, steps: int = 64):
    """Straightness of ``velocity`` (unidm's convention; :func:`flow_velocity` turns a denoiser into one): along its
    own ODE trajectories from the prior points ``x1`` (:func:`ode_straightness`, a :class:`StraightnessResult`), or,
    given the pairs' data ends ``x0``, on the interpolation of the pairs (:func:`coupling_straightness`, ``[B]``).

    >>> v = lambda x, t: torch.ones_like(x)  # x_t = x0 + t: straight
    >>> float(straightness(v, torch.zeros(2, 2)).straightness.max())
    0.0
    """
    if x0 is None:
        return ode_straightness(velocity, x1, steps)
    return coupling_straightness(velocity, x0, x1, steps)


def flow_report(model, n: int, seeds: Sequence[int] | None = None, steps: int = 64, max_n: int = 2000,
                **cond) -> dict[str, float]:
    """``{"straightness", "transport_cost"}`` (means over ``min(n, max_n)`` trajectories of ``steps`` Euler steps,
    summed over dims) for a model with a denoiser on a straight-path process; ``{}`` for any other model.

    Reads only the :class:`~unidm.methods.DenoisingModel` face (``denoiser``, ``process``, ``data_shape``) and the
    process's coefficients (:func:`is_linear_path`). Trajectory ``i`` starts from the prior point of seed
    ``seeds[i]`` (the same noise :meth:`generate` starts from, standardized).
    """
    from ..methods import DenoisingModel

    if not isinstance(model, DenoisingModel) or not is_linear_path(model.process):
        return {}
    m = min(int(n), int(max_n))
    seeds = list(range(m)) if seeds is None else list(seeds)[:m]
    device = model.device
    x1 = model.process.prior_sample((m, *model.data_shape), 1.0, seeds=seeds, device=device)
    cond = {k: (v[:m] if isinstance(v, Tensor) and v.ndim else v) for k, v in cond.items()}
    with model.evaluating():
        r = ode_straightness(flow_velocity(model.denoiser, model.process, **cond), x1, steps)
    return {"straightness": float(r.straightness.mean()), "transport_cost": float(r.transport_cost.mean()),
            "straightness_trajectories": m, "straightness_steps": steps}
