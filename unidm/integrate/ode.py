"""ODE integration for samplers, likelihood and continuous normalizing flows.

:func:`solve_ivp` is the adaptive Dormand–Prince 5(4) method (Dormand & Prince 1980, "A family of embedded
Runge-Kutta formulae"; Hairer, Norsett & Wanner, "Solving ODEs I", Sec. II.4-II.5) with first-same-as-last stages,
the same error control as ``scipy.integrate.solve_ivp(method="RK45")`` and torchdiffeq's ``dopri5``:

- local error ``err = h * sum_i e_i k_i`` from the embedded 4th-order solution, scaled by
  ``atol + rtol * max(|y|, |y_new|)`` elementwise;
- the norm is the root mean square **per example and per state component** (a tuple state such as
  ``(x, log p)`` is measured component by component, as torchdiffeq's mixed norm), and the step is accepted when
  the largest of them is ``<= 1``, so every example of the batch meets the tolerance on every component;
- step size update ``h <- h * clip(0.9 * err^(-1/5), 0.2, 10)`` (no growth right after a rejection);
- the first step from Hairer's algorithm (Solving ODEs I, Sec. II.4), unless ``first_step`` is given.

:func:`solve_fixed` runs Euler, Heun or classical RK4 over a given grid of times.

States are a tensor or a tuple of tensors whose first dimension is the batch (a component without that leading
dimension is measured as shared by all examples). Time may run in either direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .tableaus import DOPRI5_A, DOPRI5_C, DOPRI5_E

__all__ = ["OdeSolution", "solve_ivp", "solve_fixed", "State", "OdeFunc"]

State = Union[Tensor, tuple[Tensor, ...]]
OdeFunc = Callable[[Tensor, State], State]

_C, _A, _E = DOPRI5_C, DOPRI5_A, DOPRI5_E  # Dormand–Prince 5(4)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


@dataclass
class OdeSolution:
    """Result of an integration.

    Attributes:
        y: the state at ``t1``, with the structure of ``y0`` (tensor or tuple).
        t: the final time (``t1``).
        nfe: number of evaluations of ``f``.
        n_steps: accepted steps.
        n_rejected: rejected steps (adaptive solver only).
        ts: the accepted times, ``t0`` first.
    """

    y: State
    t: float
    nfe: int
    n_steps: int
    n_rejected: int = 0
    ts: list[float] = field(default_factory=list)


# ---- tuple-state algebra ------------------------------------------------------------------------------------
def _as_tuple(y: State) -> tuple[Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _combine(y: tuple[Tensor, ...], h: float, ks: Sequence[tuple[Tensor, ...]], coeffs: Sequence[float]):
    """``y + h * sum_i c_i k_i`` componentwise (zero coefficients skipped)."""
    out = []
    for j, yj in enumerate(y):
        acc = yj
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = acc + (h * c) * k[j]
        out.append(acc)
    return tuple(out)


def _batch_size(y: tuple[Tensor, ...]) -> int:
    return y[0].shape[0] if y[0].ndim > 0 else 1


def _rms_norm(v: tuple[Tensor, ...], batch: int) -> float:
    """Max over examples and state components of the per-example RMS of ``v``."""
    worst = 0.0
    for vj in v:
        if vj.ndim > 0 and vj.shape[0] == batch:
            rms = vj.reshape(batch, -1).pow(2).mean(1).sqrt()
        else:
            rms = vj.reshape(-1).pow(2).mean().sqrt()
        worst = max(worst, float(rms.max())) if not torch.isnan(rms).any() else math.inf
    return worst


def _scale(y: tuple[Tensor, ...], y_new: tuple[Tensor, ...], rtol: float, atol: float) -> tuple[Tensor, ...]:
    return tuple(atol + rtol * torch.maximum(a.abs(), b.abs()) for a, b in zip(y, y_new))


def _div(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(x / y for x, y in zip(a, b))


# ---- adaptive Dormand–Prince ---------------------------------------------------------------------------------
def _initial_step(f, t0, y0, f0, direction, span, rtol, atol, batch) -> tuple[float, int]:
    """Hairer's starting step (Solving ODEs I, Sec. II.4), as in scipy; returns ``(h, nfe used)``."""
    scale = _scale(y0, y0, rtol, atol)
    d0, d1 = _rms_norm(_div(y0, scale), batch), _rms_norm(_div(f0, scale), batch)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    y1 = _combine(y0, direction * h0, [f0], [1.0])
    f1 = _as_tuple(f(_time(t0 + direction * h0, y0), y1))
    d2 = _rms_norm(_div(tuple(a - b for a, b in zip(f1, f0)), scale), batch) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, span), 1


def _time(t: float, y: tuple[Tensor, ...]) -> Tensor:
    return torch.tensor(t, dtype=y[0].dtype, device=y[0].device)


def _dopri_step(f, t: float, y, k1, h: float):
    """One Dormand–Prince step of size ``h`` (signed): ``(y_new, f(t + h, y_new), error estimate)``."""
    ks = [k1]
    for i in range(1, 7):
        yi = _combine(y, h, ks, _A[i])
        ks.append(_as_tuple(f(_time(t + _C[i] * h, y), yi)))
    y_new = yi  # stage 7 is evaluated at the 5th-order solution (FSAL)
    err = _combine(tuple(torch.zeros_like(v) for v in y), h, ks, _E)
    return y_new, ks[-1], err


def solve_ivp(
    f: Callable[[Tensor, State], State],
    t0: float | Tensor,
    t1: float | Tensor,
    y0: State,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    callback: Callable[[float, State], None] | None = None,
) -> OdeSolution:
    """Integrate ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` with adaptive Dormand–Prince 5(4).

    Args:
        f: ``f(t, y) -> dy/dt`` with ``t`` a 0-d tensor in ``y``'s dtype and ``y`` of ``y0``'s structure.
        t0, t1: start and end times (python floats or 0-d tensors); ``t1 < t0`` integrates backwards.
        y0: tensor ``[B, ...]`` or tuple of tensors with the batch first (e.g. ``(x [B, d], logp [B])``).
        rtol, atol: relative and absolute tolerance of the local error, per element.
        first_step: initial ``|h|``; chosen by Hairer's algorithm if ``None``.
        max_steps: accepted + rejected steps before a ``RuntimeError``.
        callback: ``callback(t, y)`` after every accepted step.

    Returns:
        :class:`OdeSolution` with ``y`` at ``t1``, ``nfe``, ``n_steps`` and ``n_rejected``.

    Example:
        >>> import torch
        >>> sol = solve_ivp(lambda t, y: -y, 0.0, 1.0, torch.ones(3, dtype=torch.float64), rtol=1e-8, atol=1e-8)
        >>> bool(torch.allclose(sol.y, torch.full((3,), 0.36787944117144233, dtype=torch.float64)))
        True
    """
    is_tensor = isinstance(y0, Tensor)
    wrap = (lambda y: y[0]) if is_tensor else (lambda y: y)
    func = lambda t, y: _as_tuple(f(t, wrap(y)))  # noqa: E731
    t0, t1 = float(t0), float(t1)
    y = _as_tuple(y0)
    sol = OdeSolution(y=y0, t=t0, nfe=0, n_steps=0, ts=[t0])
    if t0 == t1:
        return sol
    direction, span, batch = math.copysign(1.0, t1 - t0), abs(t1 - t0), _batch_size(y)
    k1 = func(_time(t0, y), y)
    sol.nfe = 1
    if first_step is None:
        h, used = _initial_step(func, t0, y, k1, direction, span, rtol, atol, batch)
        sol.nfe += used
    else:
        h = min(abs(first_step), span)
    t, rejected_last = t0, False
    while direction * (t1 - t) > 0:
        if sol.n_steps + sol.n_rejected >= max_steps:
            raise RuntimeError(f"solve_ivp: max_steps={max_steps} reached at t={t} (target {t1})")
        last = h >= abs(t1 - t) * (1 - 1e-12)
        h_signed = (t1 - t) if last else direction * h
        y_new, k_new, err = _dopri_step(func, t, y, k1, h_signed)
        sol.nfe += 6
        e = _rms_norm(_div(err, _scale(y, y_new, rtol, atol)), batch)
        if e <= 1.0:
            t = t1 if last else t + h_signed
            y, k1 = y_new, k_new
            sol.n_steps += 1
            sol.ts.append(t)
            if callback is not None:
                callback(t, wrap(y))
            factor = _MAX_FACTOR if e == 0.0 else min(_MAX_FACTOR, _SAFETY * e ** (-1 / 5))
            h = abs(h_signed) * (min(1.0, factor) if rejected_last else factor)
            rejected_last = False
        else:
            sol.n_rejected += 1
            factor = _MIN_FACTOR if not math.isfinite(e) else max(_MIN_FACTOR, _SAFETY * e ** (-1 / 5))
            h = abs(h_signed) * factor
            rejected_last = True
            if h < 1e-14 * max(1.0, abs(t)):
                raise RuntimeError(f"solve_ivp: step size underflow at t={t}")
    sol.y, sol.t = wrap(y), t1
    return sol


# ---- fixed grid ----------------------------------------------------------------------------------------------
_FIXED = {
    # name: (c, a rows, b)
    "euler": ((0.0,), ((),), (1.0,)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def solve_fixed(
    f: Callable[[Tensor, State], State],
    grid: Sequence[float] | Tensor,
    y0: State,
    *,
    method: str = "rk4",
    callback: Callable[[float, State], None] | None = None,
) -> OdeSolution:
    """Explicit Runge–Kutta over the times in ``grid`` (increasing or decreasing), from ``grid[0]`` to
    ``grid[-1]``. ``method`` is ``"euler"`` (order 1), ``"heun"``/``"midpoint"`` (order 2) or ``"rk4"`` (order 4,
    the classical Runge–Kutta, Hairer et al. Table II.1.1). NFE = stages * (len(grid) - 1).

    Example:
        >>> import torch
        >>> sol = solve_fixed(lambda t, y: -y, torch.linspace(0, 1, 11), torch.ones(2, dtype=torch.float64))
        >>> float((sol.y[0] - 0.36787944117144233).abs()) < 1e-6
        True
    """
    if method not in _FIXED:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(_FIXED)}")
    c, a, b = _FIXED[method]
    ts = [float(t) for t in grid]
    is_tensor = isinstance(y0, Tensor)
    wrap = (lambda y: y[0]) if is_tensor else (lambda y: y)
    y = _as_tuple(y0)
    nfe = 0
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        ks: list[tuple[Tensor, ...]] = []
        for i in range(len(c)):
            yi = _combine(y, h, ks, a[i]) if i else y
            ks.append(_as_tuple(f(_time(t + c[i] * h, y), wrap(yi))))
        y = _combine(y, h, ks, b)
        nfe += len(c)
        if callback is not None:
            callback(t_next, wrap(y))
    return OdeSolution(y=wrap(y), t=ts[-1], nfe=nfe, n_steps=len(ts) - 1, ts=ts)
