"""Divergence ``div_x f(x) = tr(df/dx)`` of a batched vector field, exactly or by Hutchinson's estimator.

The instantaneous change of variables (Chen et al. 2018, "Neural Ordinary Differential Equations", Thm. 1)
needs ``tr(df/dx)`` along an ODE trajectory:

- :func:`exact_divergence`: one vector-Jacobian product per dimension through autograd, ``O(D)`` backward passes;
  exact, for small ``D`` (2-D toys, 8x8 digits).
- :func:`hutchinson_divergence`: ``tr(J) = E[v^T J v]`` for probes with ``E[v v^T] = I`` (Hutchinson 1989;
  Grathwohl et al. 2019, "FFJORD", eq. 7), one vector-Jacobian product per probe. Rademacher probes have the
  smaller variance, ``2 sum_{i != j} J_ij^2`` against ``2 ||J||_F^2`` for Gaussian probes (for symmetric ``J``).

``fn`` maps ``[B, ...] -> [B, ...]`` with examples independent of each other (the Jacobian is block diagonal over
the batch), which is what makes one backward pass give the per-example quantities.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["exact_divergence", "hutchinson_divergence", "sample_probes", "PROBES"]

PROBES = ("rademacher", "gaussian")


def _eval(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    return x, fn(x)


def exact_divergence(
    fn: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """``(fn(x) [B, ...], div_x fn(x) [B])`` with the trace of the Jacobian summed one dimension at a time.

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, dtype=torch.float64)
        >>> _, div = exact_divergence(lambda z: 2 * z + z**2, x)
        >>> bool(torch.allclose(div, (2 + 2 * x).sum(1)))
        True
    """
    with torch.enable_grad():
        x, out = _eval(fn, x)
        flat = out.reshape(out.shape[0], -1)
        div = torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
        n = flat.shape[1]
        for i in range(n):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
            div = div + g.reshape(g.shape[0], -1)[:, i]
    return (out if create_graph else out.detach()), div


def sample_probes(
    x: Tensor, num_probes: int = 1, kind: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """``num_probes`` probes ``[K, B, ...]`` like ``x`` with ``E[v v^T] = I``: Rademacher (+-1) or Gaussian."""
    shape = (num_probes, *x.shape)
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        raise ValueError(f"unknown probe kind {kind!r}; choose from {PROBES}")
    return v


def hutchinson_divergence(
    fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """``(fn(x), mean_k v_k^T (d fn / dx) v_k)``: an unbiased estimate of the divergence [B].

    Args:
        fn: the vector field, ``[B, ...] -> [B, ...]``.
        x: ``[B, ...]``.
        probes: ``[K, B, ...]`` (or ``[B, ...]`` for one probe), e.g. from :func:`sample_probes`; keep the same
            probes along one ODE solve (FFJORD), so the integrand is a smooth function of time.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 5, dtype=torch.float64)
        >>> v = sample_probes(x, 3)
        >>> _, div = hutchinson_divergence(lambda z: 3 * z, x, v)   # J = 3 I: every Rademacher probe is exact
        >>> bool(torch.allclose(div, torch.full((2,), 15.0, dtype=torch.float64)))
        True
    """
    if probes.shape == x.shape:
        probes = probes[None]
    with torch.enable_grad():
        x, out = _eval(fn, x)
        est = torch.zeros(out.shape[0], dtype=out.dtype, device=out.device)
        for k in range(probes.shape[0]):
            v = probes[k]
            (vjp,) = torch.autograd.grad(out, x, v, retain_graph=True, create_graph=create_graph)
            est = est + (vjp * v).reshape(v.shape[0], -1).sum(1)
    return (out if create_graph else out.detach()), est / probes.shape[0]
