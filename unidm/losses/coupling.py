"""Minibatch couplings of data and prior noise for the denoising loss (flow matching's ``pi(x0, eps)``).

With the independent coupling each example ``x0`` is corrupted by its own fresh noise ``eps``. Any other joint law of
``(x0, eps)`` with the same two marginals is also a valid training coupling for the probability-flow ODE (Liu et al.
2022, "Flow Straight and Fast", the marginal-preserving theorem; Tong et al. 2023, "Improving and generalizing flow-based generative models
with minibatch optimal transport", OT-CFM; Pooladian et al. 2023, "Multisample Flow Matching"): the learned ODE
still carries the prior to the data, and a coupling closer to optimal transport gives straighter paths. Here the
coupling is solved inside each training shard:

=================== ===============================================================================================
``independent``      each ``x0`` keeps its own ``eps`` (the Gaussian corruption)
``ot``               exact minibatch OT under ``|x0 - eps|^2``: the assignment of :func:`scipy.optimize.
                     linear_sum_assignment` (Tong et al. 2023, OT-CFM; Pooladian et al. 2023)
``sinkhorn``         entropic OT with regularisation ``reg`` (log-domain Sinkhorn, Cuturi 2013); each ``x0`` draws
                     its partner from its row of the plan
``sb``               Schrödinger-bridge coupling: entropic OT with ``reg = 2 s^2`` for a bridge noise level ``s``
                     (Tong et al. 2023, SB-CFM); the loss adds the Brownian-bridge noise
                     (:class:`~unidm.losses.DenoisingLoss`)
``*-class``          the same within each class of ``labels``: no pair ever crosses classes
=================== ===============================================================================================

The data order is kept: the coupling reorders (or, for the entropic plans, resamples) the noise, so an example's
label, noise level and conditioning stay its own. The squared distance is summed over all dimensions; ``reg`` is in
the same units.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..rng import Generators, rand

__all__ = ["COUPLINGS", "couple", "coupling_indices", "exact_ot_indices", "sinkhorn_plan", "sb_noise_level",
           "sb_bridge", "plan_rows", "transport_cost"]

#: every coupling by name; ``*-class`` couple within a class and need labels
COUPLINGS = ("independent", "ot", "sinkhorn", "sb", "ot-class", "sinkhorn-class", "sb-class")


def sb_noise_level(reg: float) -> float:
    """The Brownian-bridge noise level ``s`` of the Schrödinger-bridge coupling whose entropic regularisation is
    ``reg = 2 s^2`` (Tong et al. 2023, SB-CFM): ``s = sqrt(reg / 2)``.

    >>> sb_noise_level(0.5)
    0.5
    """
    return math.sqrt(float(reg) / 2.0)


def sb_bridge(x0: Tensor, eps: Tensor, sigma: Tensor, noise_level: float, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, target)``: SB-CFM's Brownian-bridge point and its regression target in sigma-space (Tong et al. 2023,
    SB-CFM, with bridge noise ``s``).

    On the flow path the bridge is ``x_t = (1 - t) x0 + t eps + s sqrt(t (1 - t)) z`` with the velocity
    ``u_t = (eps - x0) + (1 - 2t) / (2t (1 - t)) (x_t - mu_t)``, ``mu_t = (1 - t) x0 + t eps``. With
    ``x = x_t / (1 - t)``, ``sigma = t / (1 - t)`` and the sigma-space ODE ``dx/dsigma = (x - D) / sigma`` (so
    ``D = x_t - t u_t``) this is ``x = x0 + sigma eps + s sqrt(sigma) z`` and ``target = x0 + (s / 2) sqrt(sigma) z``:
    regressing ``D`` on the target makes the learned ODE the bridge's marginal flow ``E[u_t | x_t]``.

    >>> x, target = sb_bridge(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([4.0]), 0.5, torch.ones(1, 2))
    >>> x.tolist(), target.tolist()
    ([[5.0, 5.0]], [[0.5, 0.5]])
    """
    shape = (-1, *([1] * (x0.ndim - 1)))
    bridge = float(noise_level) * sigma.sqrt().reshape(shape) * z
    return x0 + sigma.reshape(shape) * eps + bridge, x0 + 0.5 * bridge


def _cost(x0: Tensor, eps: Tensor) -> Tensor:
    """``[B, B']`` squared distances in float64 (on the CPU for a device without float64, e.g. MPS)."""
    a, b = x0.reshape(len(x0), -1), eps.reshape(len(eps), -1)
    if a.device.type == "mps":
        a, b = a.cpu(), b.cpu()
    return torch.cdist(a.double(), b.double()).pow(2)


def transport_cost(x0: Tensor, eps: Tensor) -> Tensor:
    """``[B]`` squared distances ``|x0_i - eps_i|^2`` (summed over dims) of the pairs as they are.

    >>> transport_cost(torch.zeros(2, 3), torch.ones(2, 3))
    tensor([3., 3.])
    """
    return (x0 - eps).reshape(len(x0), -1).pow(2).sum(1)


def exact_ot_indices(x0: Tensor, eps: Tensor) -> Tensor:
    """``[B]`` indices ``j`` such that ``(x0_i, eps_{j_i})`` is the optimal assignment under ``|x0 - eps|^2``
    (Hungarian / Jonker-Volgenant, :func:`scipy.optimize.linear_sum_assignment`).

    >>> x = torch.tensor([[0.0], [1.0], [2.0]])
    >>> exact_ot_indices(x, x[[2, 0, 1]]).tolist()
    [1, 2, 0]
    """
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(_cost(x0, eps).cpu().numpy())
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return torch.from_numpy(out).to(x0.device)


def sinkhorn_plan(cost: Tensor, reg: float, tol: float = 1e-4, max_iter: int = 2000) -> Tensor:
    """The entropic OT plan ``P [B, B']`` between uniform marginals for ``cost`` (Cuturi 2013, "Sinkhorn Distances",
    eq. 2: ``min <P, C> - reg H(P)``) by log-domain Sinkhorn iterations in float64 with reg-scaling (the potentials
    of a larger regularisation warm-start the next, halving down to ``reg``; Schmitzer 2019, "Stabilized sparse scaling algorithms"), so small
    ``reg`` stays stable.

    Stops when the row marginals are within ``tol`` (L1) of uniform (the columns are exact after every update),
    checked every 10 iterations, or after ``max_iter`` iterations at the final ``reg``. Cost: a few hundred
    iterations of two ``[B, B']`` log-sum-exps for ``reg`` around 1/500 of the largest cost (about 0.3 s for
    ``B = 512`` on one CPU core); exact OT (:func:`exact_ot_indices`) is far cheaper at training batch sizes.

    >>> P = sinkhorn_plan(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), reg=0.1)
    >>> torch.allclose(P.sum(0), torch.full((2,), 0.5, dtype=torch.float64))
    True
    >>> bool(P[0, 0] > 0.49)
    True
    """
    if not (math.isfinite(reg) and reg > 0):
        raise ValueError(f"the entropic regularisation must be a finite number > 0, got {reg!r}")
    C = cost.double()
    n, m = C.shape
    log_a = torch.full((n,), -math.log(n), dtype=C.dtype, device=C.device)
    log_b = torch.full((m,), -math.log(m), dtype=C.dtype, device=C.device)
    f = torch.zeros(n, dtype=C.dtype, device=C.device)
    g = torch.zeros(m, dtype=C.dtype, device=C.device)
    scale = float(C.max()) if C.numel() else 1.0
    regs = [reg]
    while regs[-1] * 2 < scale:  # reg-scaling: reg, 2 reg, 4 reg ... up to the cost's scale, taken largest first
        regs.append(regs[-1] * 2)
    for r in reversed(regs):
        for i in range(max_iter if r == reg else 5):
            f = -r * torch.logsumexp((g[None, :] - C) / r + log_b[None, :], dim=1)
            g = -r * torch.logsumexp((f[:, None] - C) / r + log_a[:, None], dim=0)
            if i % 10 == 9:
                rows = torch.exp((f[:, None] + g[None, :] - C) / r + log_a[:, None] + log_b[None, :]).sum(1)
                if float((rows - log_a.exp()).abs().sum()) < tol:
                    break
    return torch.exp((f[:, None] + g[None, :] - C) / reg + log_a[:, None] + log_b[None, :])


def plan_rows(plan: Tensor, generator: Generators = None) -> Tensor:
    """``[B]`` one column index per row of ``plan [B, B']``, drawn with probabilities proportional to the row (one
    uniform per row from ``generator``, inverted through the row's cumulative distribution).

    >>> plan_rows(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).tolist()
    [1, 0]
    """
    cdf = torch.cumsum(plan / plan.sum(1, keepdim=True), dim=1)
    u = rand((len(plan), 1), generator, dtype=torch.float32, device=plan.device).to(cdf)
    return torch.searchsorted(cdf, u).clamp_(max=cdf.shape[1] - 1).reshape(-1)


def _plan_indices(x0: Tensor, eps: Tensor, reg: float, generator: Generators) -> Tensor:
    """Each data row ``i`` draws its partner ``j`` from row ``i`` of the entropic plan."""
    return plan_rows(sinkhorn_plan(_cost(x0, eps), reg), generator).to(x0.device)


def coupling_indices(x0: Tensor, eps: Tensor, kind: str = "independent", *, reg: float = 0.05,
                     labels: Tensor | None = None, generator: Generators = None) -> Tensor:
    """``[B]`` indices ``j`` pairing data row ``i`` with noise row ``j_i`` under coupling ``kind`` (one of
    :data:`COUPLINGS`). ``ot`` is a permutation; ``sinkhorn`` and ``sb`` draw ``j_i`` from row ``i`` of the
    entropic plan with regularisation ``reg`` (so a noise row may be used twice); ``*-class`` solve the same
    problem inside each class of ``labels`` (classes in ascending order, each with the same ``generator``).

    >>> x, eps = torch.tensor([[0.0], [1.0], [5.0], [6.0]]), torch.tensor([[6.0], [5.0], [1.0], [0.0]])
    >>> coupling_indices(x, eps, "ot").tolist()
    [3, 2, 1, 0]
    >>> coupling_indices(x, eps, "ot-class", labels=torch.tensor([0, 0, 1, 1])).tolist()
    [1, 0, 3, 2]
    """
    if kind not in COUPLINGS:
        raise ValueError(f"unknown coupling {kind!r}; valid: {', '.join(COUPLINGS)}")
    if x0.shape != eps.shape:
        raise ValueError(f"the coupling pairs data {tuple(x0.shape)} with noise of the same shape, got "
                         f"{tuple(eps.shape)}")
    base = kind.removesuffix("-class")
    if base == "independent":
        return torch.arange(len(x0), device=x0.device)
    if kind.endswith("-class"):
        if labels is None:
            raise ValueError(f"coupling {kind!r} couples within a class and needs labels; valid without labels: "
                             f"{', '.join(k for k in COUPLINGS if not k.endswith('-class'))}")
        labels = labels.reshape(-1).to(x0.device)
        out = torch.empty(len(x0), dtype=torch.long, device=x0.device)
        for c in torch.unique(labels).tolist():  # sorted
            rows = torch.nonzero(labels == c).reshape(-1)
            out[rows] = rows[coupling_indices(x0[rows], eps[rows], base, reg=reg, generator=generator)]
        return out
    if base == "ot":
        return exact_ot_indices(x0, eps)
    return _plan_indices(x0, eps, reg, generator)


def couple(x0: Tensor, eps: Tensor, kind: str = "independent", *, reg: float = 0.05,
           labels: Tensor | None = None, generator: Generators = None) -> tuple[Tensor, Tensor]:
    """``(x0, eps')``: the data in their order and the noise reordered (``ot``) or drawn from the plan
    (``sinkhorn``, ``sb``) so that row ``i`` is the pair of coupling ``kind`` (see :func:`coupling_indices`).

    Example: on a batch, minibatch OT never costs more than the pairs as drawn.

    >>> g = torch.Generator().manual_seed(0)
    >>> x0, eps = torch.randn(64, 2, generator=g) + 3, torch.randn(64, 2, generator=g)
    >>> x0c, epsc = couple(x0, eps, "ot")
    >>> bool(transport_cost(x0c, epsc).mean() <= transport_cost(x0, eps).mean())
    True
    """
    return x0, eps[coupling_indices(x0, eps, kind, reg=reg, labels=labels, generator=generator)]
